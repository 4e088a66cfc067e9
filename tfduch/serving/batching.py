"""Server-side request batching, as TF Serving's ``--enable_batching``.

Concurrent requests for the same signature wait in a queue; a batch thread takes them when the queued
items reach ``max_batch_size`` or the oldest has waited ``batch_timeout_micros``, runs one merged call
(inputs concatenated along the batch dimension) and splits the outputs back per request. While every
batch thread is busy the queue keeps filling, so batches grow with load: on a CPU-bound model one call
on 16 items costs far less than 16 calls on one.

Differences from TF Serving, both on the side of the caller: a request larger than ``max_batch_size``
runs on its own instead of being refused (the per-request cap is ``--max_request_batch_size``), and a
merged batch that fails is re-run request by request, so one undecodable image fails only its own
request.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tfduch.serving.errors import ServingError, StatusCode
from tfduch.serving.models import SignatureRunner

__all__ = ["BatchingOptions", "BatchScheduler"]


@dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's batching parameters (same names as its flags and ``BatchingParameters``)."""

    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    num_batch_threads: int = os.cpu_count() or 2
    max_enqueued_batches: int = 100
    # Count the timeout from when a batch thread became free too, not only from the oldest request's
    # arrival (an extension, off by default = TF Serving's rule). Under a closed loop of N clients, the
    # oldest queued request has always waited longer than the timeout by the time a thread is free, so
    # TF Serving's rule runs whatever is queued and the clients settle into two half-size cohorts that
    # alternate; waiting up to the timeout after each batch lets the clients just answered rejoin, and
    # the batches stay full (a full batch still runs at once).
    timeout_from_free: bool = False
    # TF Serving's ``allowed_batch_sizes``: a merged batch is padded (with copies of its first item) up to the
    # next allowed size, so the graph only ever sees these sizes; the padding rows are dropped from the
    # outputs. Must increase and end at ``max_batch_size``. Empty = run the merged size as it is.
    allowed_batch_sizes: tuple[int, ...] = ()
    # TF Serving pads inputs whose non-batch dimensions differ so they can share a batch. Accepted for file
    # compatibility; here requests with different per-item shapes always go to separate batches instead.
    pad_variable_length_inputs: bool = False

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.num_batch_threads < 1 or self.max_enqueued_batches < 1:
            raise ValueError(f"batching options must be positive: {self}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")
        sizes = tuple(self.allowed_batch_sizes)
        object.__setattr__(self, "allowed_batch_sizes", sizes)
        if sizes and (any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)) or sizes[0] < 1
                      or sizes[-1] != self.max_batch_size):
            raise ValueError(f"allowed_batch_sizes {list(sizes)} must be positive, increasing and end at "
                             f"max_batch_size {self.max_batch_size}")

    def padded_size(self, size: int) -> int:
        """The batch size the graph runs for ``size`` merged items (the next allowed size, if any)."""
        return next((s for s in self.allowed_batch_sizes if s >= size), size)

    def get_config(self) -> dict[str, Any]:
        return asdict(self)


class _Task:
    __slots__ = ("inputs", "size", "enqueued", "done", "result", "error")

    def __init__(self, inputs: Mapping[str, np.ndarray], size: int) -> None:
        self.inputs = inputs
        self.size = size
        self.enqueued = time.monotonic()
        # Released once by whoever finishes the task; the request thread blocks acquiring it. A bare lock, not
        # an Event: an Event is a Python-level Condition, and its set/wait cost a visible share of the
        # server's Python time per request (bench/serving_load.py, py-spy).
        self.done = threading.Lock()
        self.done.acquire()
        self.result: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None


class _Queue:
    """Pending tasks of one (signature, per-item shape) pair: only those can be concatenated."""

    def __init__(self, runner: SignatureRunner) -> None:
        self.runner = runner
        self.tasks: deque[_Task] = deque()
        self.size = 0


class BatchScheduler:
    """Merges concurrent requests per signature; :meth:`run` blocks until its own slice is back."""

    def __init__(self, options: BatchingOptions = BatchingOptions(),
                 on_batch: Callable[[SignatureRunner, int], None] | None = None) -> None:
        self.options = options
        self.on_batch = on_batch  # called with each run's batch size in items (after padding), e.g. metrics
        self._sizes: Counter[int] = Counter()
        self._cond = threading.Condition()
        self._queues: dict[tuple, _Queue] = {}
        self._queued_items = 0
        self._stopping = False
        self._stats = {"batches": 0, "tasks": 0, "items": 0, "largest_batch": 0, "fallbacks": 0, "direct": 0}
        # Lone-request fast path: once a key's last batch held a single request (its timeout brought no
        # company), a request that finds the scheduler idle (nothing queued, nothing running) runs at once in
        # its own thread. The first request that arrives while another runs queues again, so under concurrent
        # load batches form exactly as before.
        self._alone: dict[tuple, bool] = {}
        self._running = 0
        self._free_since = 0.0  # when a run last ended (timeout_from_free)
        self._threads = [threading.Thread(target=self._work, name=f"tfduch-batch-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, runner: SignatureRunner, inputs: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
        """Outputs for this request's ``size`` items, computed alone or inside a merged batch."""
        if not runner.batchable or size > self.options.max_batch_size:
            return runner.run(inputs)
        key = (runner,) + tuple((name, inputs[name].dtype.str, inputs[name].shape[1:]) for name in sorted(inputs))
        task = _Task(inputs, size)
        with self._cond:
            if self._stopping:
                raise ServingError(StatusCode.UNAVAILABLE, "server is shutting down")
            if self._queued_items + size > self.options.max_enqueued_batches * self.options.max_batch_size:
                raise ServingError(StatusCode.UNAVAILABLE, (
                    "The batch scheduling queue to which this task was submitted is full"))
            direct = self._running == 0 and not self._queues and self._alone.get(key, False)
            if direct:  # nothing to batch with: run in this thread, no handoff and no timeout wait
                self._running += 1
                self._stats["direct"] += 1
                self._count([task])
            else:
                queue = self._queues.get(key)
                fresh = queue is None
                if fresh:
                    queue = self._queues[key] = _Queue(runner)
                queue.tasks.append(task)
                queue.size += size
                self._queued_items += size
                # Wake a batch thread only when this arrival changes what it would do: a new queue (a new
                # deadline) or a full batch. A thread already waiting on this queue's timeout wakes on its own;
                # waking it for every arrival cost a thread switch per request.
                if fresh or queue.size >= self.options.max_batch_size:
                    self._cond.notify()
        if direct:
            try:
                self._ran(runner, size)
                return runner.run(inputs)
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()
        task.done.acquire()
        if task.error is not None:
            raise task.error
        assert task.result is not None
        return task.result

    def stats(self) -> dict[str, int]:
        """Counters since start: batches run, requests and items in them, the largest batch."""
        with self._cond:
            return dict(self._stats)

    def batch_sizes(self) -> dict[int, int]:
        """How many runs had each batch size (in items, after ``allowed_batch_sizes`` padding)."""
        with self._cond:
            return dict(self._sizes)

    def _ran(self, runner: SignatureRunner, size: int) -> None:
        with self._cond:
            self._sizes[size] += 1
        if self.on_batch is not None:
            self.on_batch(runner, size)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    # -- batch threads ---------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            runner, tasks = batch
            try:
                self._execute(runner, tasks)
            finally:
                with self._cond:
                    self._running -= 1
                    self._free_since = time.monotonic()
                    self._cond.notify_all()

    def _next_batch(self) -> tuple[SignatureRunner, list[_Task]] | None:
        timeout = self.options.batch_timeout_micros / 1e6
        limit = self.options.max_batch_size
        with self._cond:
            while True:
                if self._stopping and not self._queues:
                    return None
                if self._running >= self.options.num_batch_threads and not self._stopping:
                    self._cond.wait()  # a lone request runs directly: at most num_batch_threads runs at once
                    continue
                now, wait = time.monotonic(), None
                free_since = self._free_since if self.options.timeout_from_free else 0.0
                for key, queue in self._queues.items():
                    age = now - max(queue.tasks[0].enqueued, free_since)
                    if queue.size >= limit or age >= timeout or self._stopping:
                        tasks, total = [], 0
                        while queue.tasks and total + queue.tasks[0].size <= limit:
                            task = queue.tasks.popleft()
                            tasks.append(task)
                            total += task.size
                        queue.size -= total
                        self._queued_items -= total
                        if not queue.tasks:
                            del self._queues[key]
                        self._running += 1
                        self._alone[key] = len(tasks) == 1 and not queue.tasks
                        self._count(tasks)
                        return queue.runner, tasks
                    remaining = timeout - age
                    wait = remaining if wait is None else min(wait, remaining)
                self._cond.wait(wait)

    def _count(self, tasks: list[_Task]) -> None:
        """Statistics of one batch about to run (called with the lock held)."""
        total = sum(t.size for t in tasks)
        self._stats["batches"] += 1
        self._stats["tasks"] += len(tasks)
        self._stats["items"] += total
        self._stats["largest_batch"] = max(self._stats["largest_batch"], total)

    def _execute(self, runner: SignatureRunner, tasks: list[_Task]) -> None:
        sizes = [t.size for t in tasks]
        total = sum(sizes)
        padded = self.options.padded_size(total)
        if len(tasks) == 1 and padded == total:
            self._ran(runner, total)
            self._finish_alone(runner, tasks[0])
            return
        try:
            parts = {name: [t.inputs[name] for t in tasks] for name in tasks[0].inputs}
            if padded > total:  # TF Serving pads with copies of the first item; the extra rows are dropped below
                parts = {name: [*arrays, np.repeat(arrays[0][:1], padded - total, axis=0)]
                         for name, arrays in parts.items()}
            merged = {name: np.concatenate(arrays) for name, arrays in parts.items()}
            self._ran(runner, padded)
            outputs = runner.run(merged)
            if any(value.shape[:1] != (padded,) for value in outputs.values()):
                raise ServingError(StatusCode.INTERNAL, "an output does not follow the batch dimension")
        except Exception:  # noqa: BLE001 - isolate the failing request(s): run each one alone
            with self._cond:
                self._stats["fallbacks"] += 1
            for task in tasks:
                self._finish_alone(runner, task)
            return
        bounds = np.cumsum([0] + sizes)
        for task, start, stop in zip(tasks, bounds[:-1], bounds[1:], strict=True):
            task.result = {name: value[start:stop] for name, value in outputs.items()}
            task.done.release()

    @staticmethod
    def _finish_alone(runner: SignatureRunner, task: _Task) -> None:
        try:
            task.result = runner.run(task.inputs)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting request thread
            task.error = exc
        finally:
            task.done.release()
