"""`tfduch export` rejects impossible paths at once, before TensorFlow is loaded (it used to die after 13 s)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _export(*args: str) -> subprocess.CompletedProcess:
    code = ("import sys; from tfduch.cli import main; rc = main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'; sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, "export", *args], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)


def test_base_that_is_a_file_fails_fast_without_a_traceback(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    base = tmp_path / "base.txt"
    base.write_text("not a folder")
    started = time.perf_counter()
    out = _export("--run", str(run), "--base", str(base))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == f"tfduch: error: --base {base} is a file: pass a folder (the TF Serving model " \
                                 "base; it is created if missing)"
    assert time.perf_counter() - started < 60  # no model is built; mostly interpreter start-up on a busy machine


def test_missing_run_and_name_that_is_a_file(tmp_path: Path) -> None:
    out = _export("--run", str(tmp_path / "nope"), "--base", str(tmp_path))
    assert out.returncode == 2 and "--run" in out.stderr and "is not a folder" in out.stderr
    (tmp_path / "run").mkdir()
    (tmp_path / "tfduch").write_text("")
    out = _export("--run", str(tmp_path / "run"), "--base", str(tmp_path))
    assert out.returncode == 2 and "--name must name a model folder" in out.stderr
