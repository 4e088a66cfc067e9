"""Keep TensorFlow's native start-up noise out of tfduch's output (``--verbose`` brings it back).

Why an fd-level filter: TensorFlow 2.21 logs through absl *before* ``absl::InitializeLog()`` runs, and those lines
("oneDNN custom operations are on", "Could not find cuda drivers", "failed call to cuInit") ignore
``TF_CPP_MIN_LOG_LEVEL`` and are written by C++ straight to file descriptor 2. The only way to drop them without
losing tfduch's own stderr (errors, progress bars) is to route fd 2 through a pipe and filter it line by line.
Python-side noise (Keras UserWarnings such as the "build() was called on layer" warning, the ``tensorflow``
logger) is silenced with the standard ``warnings`` / ``logging`` filters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import sys
import threading
import warnings
from collections.abc import Iterator

__all__ = ["NATIVE_NOISE", "is_native_noise", "quiet_native_logs", "silence_python_warnings"]

#: A line TensorFlow / absl / CUDA writes natively: glog/absl prefix "I0000 00:00:17.5   1234 file.cc:52] ...",
#: or absl's "WARNING: All log messages before absl::InitializeLog() ..." banner.
NATIVE_NOISE = re.compile(
    rb"^(?:[\r\n]*)(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./-]+:\d+\] |"
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called)"
)


_NOISE_INSIDE = re.compile(rb"[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./-]+:\d+\] |"
                           rb"WARNING: All log messages before absl::InitializeLog")


def is_native_noise(line: bytes) -> bool:
    return NATIVE_NOISE.match(line) is not None


def silence_python_warnings() -> None:
    """Keras / TensorFlow Python-level warnings that say nothing actionable to a tfduch user."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"keras(\.|$)")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"tensorflow(\.|$)")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


def _pump(read_fd: int, out_fd: int) -> None:
    buf = b""
    while True:
        ready, _, _ = select.select([read_fd], [], [], 0.1 if buf else None)
        if not ready:  # a partial line (a progress bar) waited 0.1 s: it is not native noise, show it
            os.write(out_fd, buf)
            buf = b""
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            if buf:
                os.write(out_fd, buf)
            return
        buf += chunk
        while True:
            ends = [i for i in (buf.find(b"\n"), buf.find(b"\r", 1)) if i >= 0]
            inside = _NOISE_INSIDE.search(buf, 1, min(ends) if ends else len(buf))
            if inside is not None:  # a native line right after a progress bar's text: cut the bar off first
                os.write(out_fd, buf[:inside.start()])
                buf = buf[inside.start():]
                continue
            if not ends:
                break
            cut = min(ends) + 1
            segment, buf = buf[:cut], buf[cut:]
            if not is_native_noise(segment):  # native lines are written whole, so a segment is the unit
                os.write(out_fd, segment)


@contextlib.contextmanager
def quiet_native_logs(enabled: bool = True) -> Iterator[None]:
    """Drop native TensorFlow/absl/CUDA log lines from fd 2 inside the block; everything else passes through."""
    if not enabled or os.name != "posix":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters, some test runners)
        yield
        return
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    thread = threading.Thread(target=_pump, args=(read_fd, saved), name="tfduch-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump drains and stops
        thread.join(timeout=5)
        os.close(read_fd)
        os.close(saved)
