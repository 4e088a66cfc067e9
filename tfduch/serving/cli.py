"""``tfduch serve`` (a TF-Serving-protocol model server) and ``tfduch encode --server`` (its client)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from tfduch.codes import packed_hex
from tfduch.errors import ConfigError, TfduchError, run_command

log = logging.getLogger("tfduch.serving")

SERVE_EPILOG = """\
examples:
  tfduch serve --model_base_path /exports/tfduch                       # gRPC :8500, REST :8501
  tfduch serve --model_name tfduch --model_base_path /exports/tfduch --enable_batching
  tfduch serve --model_config_file /exports/models.config --port 9000 --rest_api_port -1
  tfduch serve --model_config_file serving/models.config --model_config_file_poll_wait_seconds 60 \
      --enable_batching --batching_parameters_file serving/batching.config \
      --monitoring_config_file serving/monitoring.config --ssl_config_file /secrets/ssl.config

--host 0.0.0.0 (the default, as TF Serving) accepts connections from every network the machine is on;
use --host 127.0.0.1 for this machine only, or put the server behind a firewall / TLS (see docs/serving.md).

The model folder holds integer version folders (/exports/tfduch/1, /exports/tfduch/2, ...), each a
SavedModel. The newest is served, folders are polled every --file_system_poll_wait_seconds and a new
version is picked up without a restart (folders that are not plain integers, e.g. export temp folders,
are ignored). The protocol is TF Serving's: any TF Serving client works, and the same folder can be
served by the real tensorflow_model_server (see docs/serving.md).
"""

ENCODE_EPILOG = """\
examples:
  tfduch encode --server localhost:8500 --text "planes parked next to a terminal" --text "a river"
  tfduch encode --server localhost:8500 --text-file captions.txt --output codes.npy
  tfduch encode --server localhost:8500 --image scenes/*.tif --output codes.json
  tfduch encode --server localhost:8500 --metadata

Without --output, one line per input: the code as hex (bit j = 1 where code j is +1, numpy.packbits
order) and the input. --output FILE.npy writes the int8 ±1 codes, FILE.json codes + inputs + model.
"""


def register(subparsers: Any) -> None:
    _register_serve(subparsers)
    _register_encode(subparsers)


# --------------------------------------------------------------------------------------------------
# tfduch serve
# --------------------------------------------------------------------------------------------------
def _register_serve(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help="serve exported models over the TF Serving gRPC + REST protocol",
        description="Serve SavedModels in the TF Serving layout <base>/<model_name>/<version>/ over TF Serving's "
        "gRPC API (PredictionService.Predict/GetModelMetadata, ModelService.GetModelStatus) and REST API. "
        "Flag names follow tensorflow_model_server.",
        epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("models")
    src.add_argument("--model_name", default="tfduch", help="name clients ask for (default: tfduch)")
    src.add_argument("--model_base_path", type=Path,
                     help="the model's folder <base>/<model_name> holding integer version folders")
    src.add_argument("--model_config_file", type=Path,
                     help="TF Serving ModelServerConfig text proto listing several models (instead of the two above)")
    src.add_argument("--model_version_policy", default="latest",
                     help="latest, latest:N, all or specific:V1,V2 (default: latest = the newest version)")
    src.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                     help="how often to look for new/removed versions; <= 0 loads once (default 1)")
    src.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0,
                     help="re-read --model_config_file this often (models, policies, labels change without a "
                          "restart); 0 = read once (default, as TF Serving)")
    src.add_argument("--enable_model_warmup", type=_bool, nargs="?", const=True, default=True,
                     metavar="true|false",
                     help="replay assets.extra/tf_serving_warmup_requests before a version is AVAILABLE "
                          "(default true)")
    net = p.add_argument_group("network")
    net.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0; 127.0.0.1 = local only)")
    net.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500; 0 = any free port)")
    net.add_argument("--rest_api_port", type=int, default=8501,
                     help="REST port (default 8501; 0 = any free port; -1 = no REST)")
    net.add_argument("--grpc_max_threads", type=int, default=64, help="gRPC worker threads (default 64)")
    net.add_argument("--ssl_config_file", type=Path,
                     help="TF Serving SSLConfig text proto (server_key, server_cert, custom_ca, client_verify): "
                          "TLS on the gRPC port, mutual TLS with client_verify")
    net.add_argument("--monitoring_config_file", type=Path,
                     help="TF Serving MonitoringConfig text proto: prometheus_config { enable: true path: ... } "
                          "serves Prometheus metrics on the REST port")
    net.add_argument("--ready_file", type=Path,
                     help="write {\"grpc_port\", \"rest_api_port\", \"pid\"} JSON here once serving (for scripts)")
    bat = p.add_argument_group("batching (as tensorflow_model_server --enable_batching)")
    bat.add_argument("--enable_batching", action="store_true",
                     help="merge concurrent requests to the same signature into one call")
    bat.add_argument("--batching_parameters_file", type=Path,
                     help="TF Serving BatchingParameters text proto (e.g. serving/batching.config); its fields "
                          "override the flags below")
    bat.add_argument("--max_batch_size", type=int, default=32, help="largest merged batch in items (default 32)")
    bat.add_argument("--batch_timeout_micros", type=int, default=1000,
                     help="longest a request waits for others to join its batch (default 1000)")
    bat.add_argument("--num_batch_threads", type=int, default=os.cpu_count() or 2,
                     help="batches run in parallel (default: CPU count)")
    bat.add_argument("--batch_timeout_from_free", action="store_true",
                     help="also count --batch_timeout_micros from when the batch thread became free (keeps "
                          "batches full under a closed loop of clients; extension, off = TF Serving's rule)")
    bat.add_argument("--max_enqueued_batches", type=int, default=100,
                     help="queue bound in batches; beyond it requests get UNAVAILABLE (default 100)")
    thr = p.add_argument_group("TensorFlow threads (as tensorflow_model_server)")
    thr.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                     help="threads one op may use; 0 = TensorFlow's choice (the CPU count), except with "
                          "--enable_batching and several batch threads: max(1, CPUs / num_batch_threads), so "
                          "concurrent merged batches do not fight over the same cores (docs/serving.md)")
    thr.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                     help="ops of one call run in parallel; 0 = TensorFlow's choice")
    lim = p.add_argument_group("request checks")
    lim.add_argument("--max_request_batch_size", type=int, default=1024,
                     help="larger requests get INVALID_ARGUMENT (default 1024)")
    lim.add_argument("--utf8_input", action="append", dest="utf8_inputs", metavar="NAME",
                     help="string input names that must be UTF-8 text (repeatable; default: text)")
    p.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_serve)


def _bool(text: str) -> bool:
    """TF Serving's boolean flag values (``--enable_model_warmup=false``)."""
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("true", "1")


def serve_options(args: argparse.Namespace) -> Any:
    """:class:`ServerOptions` from the parsed ``tfduch serve`` flags."""
    from tfduch.serving.batching import BatchingOptions
    from tfduch.serving.configs import read_batching_parameters, read_monitoring_config, read_ssl_config
    from tfduch.serving.metrics import MonitoringOptions
    from tfduch.serving.models import ModelSource, RequestLimits, VersionPolicy, read_model_config_file
    from tfduch.serving.server import ServerOptions

    if args.model_config_file is not None:
        if args.model_base_path is not None:
            raise ConfigError("give either --model_config_file or --model_base_path, not both")
        sources = read_model_config_file(args.model_config_file)
    elif args.model_base_path is not None:
        sources = [ModelSource(args.model_name, args.model_base_path, VersionPolicy.parse(args.model_version_policy))]
    else:
        raise ConfigError("tfduch serve needs --model_base_path <base>/<model_name> or --model_config_file")
    try:
        batching = BatchingOptions(args.max_batch_size, args.batch_timeout_micros, args.num_batch_threads,
                                   args.max_enqueued_batches, args.batch_timeout_from_free)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if args.batching_parameters_file is not None:
        if not args.enable_batching:
            raise ConfigError("--batching_parameters_file needs --enable_batching")
        batching = read_batching_parameters(args.batching_parameters_file, batching)
    if args.max_request_batch_size < 1:
        raise ConfigError(f"--max_request_batch_size must be >= 1, got {args.max_request_batch_size}")
    limits = RequestLimits(args.max_request_batch_size, tuple(args.utf8_inputs or ("text",)))
    return ServerOptions(models=sources, host=args.host, port=args.port, rest_api_port=args.rest_api_port,
                         file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
                         enable_batching=args.enable_batching, batching=batching, limits=limits,
                         grpc_max_threads=args.grpc_max_threads, model_config_file=args.model_config_file,
                         model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
                         enable_model_warmup=args.enable_model_warmup,
                         monitoring=(read_monitoring_config(args.monitoring_config_file)
                                     if args.monitoring_config_file is not None else MonitoringOptions()),
                         ssl=read_ssl_config(args.ssl_config_file) if args.ssl_config_file is not None else None)


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    options = serve_options(args)
    set_tensorflow_threads(intra_op_threads(args.tensorflow_intra_op_parallelism, options),
                           args.tensorflow_inter_op_parallelism)
    return run_server(options, stop, args.ready_file)


def intra_op_threads(flag: int, options: Any, cpus: int | None = None) -> int:
    """The intra-op pool size: the flag when given; with batching on, the CPUs shared out among the batch threads.

    Why: each batch thread runs its merged batch while the others run theirs; with a pool sized for the whole
    machine every op of every batch is split across all cores and the concurrent batches contend for them.
    One core per batch thread served 16 batch-1 clients 1.35x faster here (docs/serving.md); with more batch
    threads than CPUs each still gets one. Without batching, or with one batch thread, TensorFlow's default stays.
    """
    if flag or not options.enable_batching:
        return flag
    cpus = cpus or os.cpu_count() or 1
    threads = options.batching.num_batch_threads
    if threads <= 1:
        return 0
    per_thread = max(1, cpus // threads)
    log.info("batching on %d threads over %d CPUs: %d TensorFlow intra-op thread(s) per op "
             "(--tensorflow_intra_op_parallelism overrides)", threads, cpus, per_thread)
    return per_thread


def set_tensorflow_threads(intra_op: int, inter_op: int) -> None:
    """TF Serving's ``--tensorflow_{intra,inter}_op_parallelism`` (0 = TensorFlow's default); before any model loads."""
    if intra_op < 0 or inter_op < 0:
        raise ConfigError(f"--tensorflow_intra_op_parallelism / --tensorflow_inter_op_parallelism must be >= 0, "
                          f"got {intra_op} / {inter_op}")
    if not (intra_op or inter_op):
        return
    import tensorflow as tf

    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError as exc:  # TensorFlow's runtime already started in this process
        raise ConfigError(f"cannot set TensorFlow's thread pools now: {exc}") from exc


def run_server(options: Any, stop: threading.Event, ready_file: Path | None = None) -> int:
    """Serve until ``stop`` is set; announce the ports on stdout (and in ``ready_file``)."""
    from tfduch.io import atomic_write_json
    from tfduch.serving.server import ModelServer

    try:
        server = ModelServer(options).start()
    except OSError as exc:
        raise TfduchError(str(exc)) from None
    try:
        rest = f", REST on {options.host}:{server.rest_port}" if server.rest_port is not None else ""
        names = ", ".join(f"{m.name} ({m.base_path}, {m.policy})" for m in options.models)
        extras = [text for on, text in ((options.enable_batching, "batching on"), (options.ssl is not None, "TLS"),
                                        (options.monitoring.enable, f"metrics at {options.monitoring.path}"))
                  if on]
        print(f"tfduch serve: gRPC on {server.grpc_address}{rest}; models: {names}"
              f"{''.join('; ' + e for e in extras)}", flush=True)
        if ready_file is not None:
            atomic_write_json(ready_file, {"grpc_port": server.grpc_port, "rest_api_port": server.rest_port,
                                           "pid": os.getpid()})
        while not stop.wait(0.5):
            pass
        print("tfduch serve: shutting down", flush=True)
    finally:
        server.stop()
        if ready_file is not None:  # a ready file left behind would announce a server that is gone
            ready_file.unlink(missing_ok=True)
    return 0


# --------------------------------------------------------------------------------------------------
# tfduch encode --server
# --------------------------------------------------------------------------------------------------
def _register_encode(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "encode", help="encode captions / images / features into binary codes through a model server",
        description="Send inputs to a TF-Serving-protocol server (tfduch serve or tensorflow_model_server) "
        "serving a tfduch export and get their binary codes back.",
        epilog=ENCODE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="gRPC address of the server")
    p.add_argument("--model", default="tfduch", help="served model name (default: tfduch)")
    p.add_argument("--version", type=int, help="model version (default: the newest served)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", action="append", metavar="CAPTION", help="a caption (repeatable)")
    what.add_argument("--text-file", type=Path, help="captions, one per line ('-' = stdin)")
    what.add_argument("--image", nargs="+", type=Path, metavar="PATH", help="image files (JPEG, PNG, TIFF, ...)")
    what.add_argument("--features", type=Path, help=".npy array [N, D] of encoder features (with --modality)")
    what.add_argument("--metadata", action="store_true", help="print the model's signatures and metadata")
    p.add_argument("--modality", choices=["image", "text"], help="modality of --features")
    p.add_argument("--output", type=Path, help="FILE.npy (int8 codes) or FILE.json (codes, inputs, model)")
    p.add_argument("--batch-size", type=int, default=64, help="items per request (default 64)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    p.add_argument("--retries", type=int, default=3, help="retries while the server is unavailable (default 3)")
    p.set_defaults(func=cmd_encode)


def _read_lines(path: Path) -> list[str]:
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    return [line for line in (raw.strip() for raw in text.splitlines()) if line]


def _encode_inputs(client: Any, args: argparse.Namespace) -> tuple[list[str], Any]:
    """(a label per input, int8 codes) for the --text / --text-file / --image / --features inputs."""
    import numpy as np

    if args.text or args.text_file:
        labels = args.text or _read_lines(args.text_file)
        return labels, client.encode_texts(labels)
    if args.image:
        return [str(p) for p in args.image], client.encode_images(args.image)
    features = np.load(args.features)
    return [f"{args.features}[{i}]" for i in range(len(features))], client.encode_features(features, args.modality)


def cmd_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from tfduch.serving.client import Client

    if args.features is not None and args.modality is None:
        raise ConfigError("--features needs --modality image|text")
    with Client(args.server, args.model, version=args.version, timeout=args.timeout, retries=args.retries,
                batch_size=args.batch_size) as client:
        if args.metadata:
            meta = client.metadata()
            print(json.dumps({"model": meta.model_name, "version": meta.version, "signatures": meta.signatures,
                              "tfduch": meta.tfduch}, indent=2))
            return 0
        try:
            labels, codes = _encode_inputs(client, args)
        except (OSError, ValueError) as exc:  # unreadable input file, wrong feature array
            raise ConfigError(f"cannot encode the inputs: {exc}") from None
        hexes = packed_hex(codes)
        if args.output is None:
            for code, label in zip(hexes, labels, strict=True):
                print(f"{code}\t{label}")
        elif args.output.suffix == ".npy":
            from tfduch.io import atomic_path

            with atomic_path(args.output, suffix=".npy") as tmp:
                np.save(tmp, codes)
        else:
            from tfduch.io import atomic_write_json

            meta = client.metadata()
            atomic_write_json(args.output, {"model": meta.model_name, "version": meta.version,
                                            "code_length": int(codes.shape[1]), "inputs": labels,
                                            "codes_hex": hexes, "codes": codes.tolist()})
        if args.output is not None:
            print(f"wrote {len(codes)} codes of {codes.shape[1]} bits to {args.output}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tfduch.serving.cli serve|encode ...``: these two commands without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="python -m tfduch.serving.cli")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
