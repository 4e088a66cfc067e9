"""The CPU that Python gRPC itself costs per batch-1 Predict, with no model: the floor under `tfduch serve`.

    python bench/grpc_floor.py                    # sync and asyncio servers, 3 alternating rounds
    python bench/grpc_floor.py --rounds 5 --wait-ms 10

A bare ``PredictionService`` (no TensorFlow run, no tfduch serving code) parses the request's TensorProto,
parks the request until a shared timer thread releases every parked request each ``--wait-ms`` (as a batch
thread's timeout would), and answers a canned 64-bit ``codes`` tensor. 16 concurrent clients (4 processes x
4 threads, as in ``bench/serving_load.py``) send batch-1 caption requests. Printed per server kind and round:
req/s, server CPU ms per request, client CPU ms per request (every thread of the process, gRPC's own
included). Compare them with the CPU per item that ``bench/serving_load.py --production`` prints: what is
above this floor is tfduch's serving path and the model.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import numpy as np
from serving_load import cpu_seconds  # bench/ is the script's folder, so its sibling imports
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfduch.serving.tensors import array_to_tensor_proto, tensor_proto_to_array

CLIENT_PROCESSES, CLIENT_THREADS = 4, 4


class _Releaser:
    """Releases every parked request each ``wait`` seconds, from one thread (a batch thread's timeout)."""

    def __init__(self, wait: float) -> None:
        self.wait, self.lock = wait, threading.Lock()
        self.parked: list[Callable[[], Any]] = []
        threading.Thread(target=self._loop, daemon=True).start()

    def park(self, release: Callable[[], Any]) -> None:
        with self.lock:
            self.parked.append(release)

    def _loop(self) -> None:
        while True:
            time.sleep(self.wait)
            with self.lock:
                parked, self.parked = self.parked, []
            for release in parked:
                release()


def _response(request: Any) -> Any:
    response = predict_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.outputs["codes"].CopyFrom(array_to_tensor_proto(np.ones((1, 64), np.int8)))
    return response


def _serve(kind: str, wait: float, port_queue: Any) -> None:
    releaser = _Releaser(wait)

    class Sync(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802
            {name: tensor_proto_to_array(proto) for name, proto in request.inputs.items()}
            done = threading.Lock()
            done.acquire()
            releaser.park(done.release)
            done.acquire()
            return _response(request)

    class Aio(prediction_service_pb2_grpc.PredictionServiceServicer):
        async def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802
            {name: tensor_proto_to_array(proto) for name, proto in request.inputs.items()}
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            releaser.park(lambda: loop.call_soon_threadsafe(done.set_result, None))
            await done
            return _response(request)

    if kind == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Sync(), server)
        port_queue.put(server.add_insecure_port("127.0.0.1:0"))
        server.start()
        server.wait_for_termination()
        return

    async def serve_aio() -> None:
        server = grpc.aio.server()
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Aio(), server)
        port_queue.put(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve_aio())


def _clients(port: int, n: int, ready: Any, go: Any, done: Any) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    text = array_to_tensor_proto(np.array([b"planes parked next to a terminal"], dtype=object))

    def loop(count: int) -> None:
        for _ in range(count):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "floor"
            request.inputs["text"].CopyFrom(text)
            stub.Predict(request, timeout=60)

    loop(3)  # connect and warm up before the clock starts
    ready.put(1)
    go.wait()
    cpu = time.process_time()  # every thread of this process, gRPC's own included
    threads = [threading.Thread(target=loop, args=(n,)) for _ in range(CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.put(time.process_time() - cpu)


def measure(kind: str, wait: float, per_thread: int) -> tuple[float, float, float]:
    """(req/s, server CPU ms per request, client CPU ms per request) of one run."""
    context = multiprocessing.get_context("spawn")
    ports, ready, done, go = context.Queue(), context.Queue(), context.Queue(), context.Event()
    server = context.Process(target=_serve, args=(kind, wait, ports), daemon=True)
    server.start()
    port = ports.get(timeout=120)
    clients = [context.Process(target=_clients, args=(port, per_thread, ready, go, done))
               for _ in range(CLIENT_PROCESSES)]
    for client in clients:
        client.start()
    for _ in clients:
        ready.get(timeout=300)
    server_before, start = cpu_seconds(server.pid), time.perf_counter()
    go.set()
    client_cpu = sum(done.get(timeout=600) for _ in clients)
    wall = time.perf_counter() - start
    server_cpu = cpu_seconds(server.pid) - server_before
    for client in clients:
        client.join()
    server.kill()
    total = CLIENT_PROCESSES * CLIENT_THREADS * per_thread
    return total / wall, server_cpu / total * 1e3, client_cpu / total * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each server kind")
    parser.add_argument("--wait-ms", type=float, default=20.0, help="how long requests stay parked (batch timeout)")
    parser.add_argument("--requests", type=int, default=500, help="requests per client thread per run")
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float, float]]] = {"sync": [], "aio": []}
    for _ in range(args.rounds):
        for kind, rows in results.items():
            rows.append(measure(kind, args.wait_ms / 1e3, args.requests))
            rate, server, client = rows[-1]
            print(f"{kind:5s} {rate:7.1f} req/s   server {server:.3f} ms/req   clients {client:.3f} ms/req",
                  flush=True)
    print("\n| server | req/s (median) | server CPU ms/request (median, range) | client CPU ms/request (median) |")
    print("|---|---:|---:|---:|")
    for kind, rows in results.items():
        rate, server, client = (float(np.median([r[i] for r in rows])) for i in range(3))
        low, high = min(r[1] for r in rows), max(r[1] for r in rows)
        name = "grpc sync (thread pool)" if kind == "sync" else "grpc.aio"
        print(f"| {name} | {rate:.1f} | {server:.3f} ({low:.3f}-{high:.3f}) | {client:.3f} |")


if __name__ == "__main__":
    main()
