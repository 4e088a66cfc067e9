"""`tfduch serve --ready_file`: the file announces a live server, so it disappears when the server stops."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import tfduch.serving.server as server_module
from tfduch.serving.cli import run_server


class StubServer:
    grpc_port, rest_port, grpc_address = 1234, 5678, "127.0.0.1:1234"
    stopped = False

    def __init__(self, options: object) -> None:
        pass

    def start(self) -> StubServer:
        return self

    def stop(self) -> None:
        StubServer.stopped = True


def test_ready_file_is_removed_on_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "ModelServer", StubServer)
    ready = tmp_path / "ready.json"
    stop = threading.Event()
    options = SimpleNamespace(host="127.0.0.1", models=[], enable_batching=False, ssl=None,
                              monitoring=SimpleNamespace(enable=False, path=""))
    thread = threading.Thread(target=run_server, args=(options, stop, ready))
    thread.start()
    deadline = time.time() + 10
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert ready.exists() and '"grpc_port": 1234' in ready.read_text()
    stop.set()  # what the SIGTERM / SIGINT handler does
    thread.join(timeout=10)
    assert StubServer.stopped and not ready.exists()
