"""TensorFlow's native start-up lines are dropped from fd 2; tfduch's own stderr (errors, progress bars) is kept."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(r'''
    import os, time
    from tfduch.logs import quiet_native_logs
    with quiet_native_logs(enabled={enabled}):
        w = lambda b: os.write(2, b)
        w(b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
          b"I0000 00:00:1796591294.055192    2723 port.cc:153] oneDNN custom operations are on.\n")
        w(b"tfduch: error: a real problem\n")
        w(b"\rencode captions:   0%|          | 0/10 [00:00<?, ?cap/s]")
        time.sleep(0.3)
        w(b"E0000 00:00:1796591359.862774    2723 util.cc:131] oneDNN supports DT_INT64 only on AVX-512.\n")
        w(b"\rencode captions: 100%|##########| 10/10 [00:01<00:00]")
        w(b"E0000 00:00:1796591298.634211    2723 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n")
        w(b"\n")
        print("stdout line", flush=True)
    os.write(2, b"after the block\n")
''')


def _run(enabled: bool) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(enabled=enabled)], capture_output=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)


def test_native_lines_are_dropped_and_the_rest_is_kept() -> None:
    out = _run(True)
    err = out.stderr.decode()
    assert out.returncode == 0, err
    for noise in ("InitializeLog", "oneDNN", "cuInit", "port.cc"):
        assert noise not in err
    assert "tfduch: error: a real problem\n" in err
    assert "\rencode captions:   0%|" in err and "\rencode captions: 100%|##########| 10/10" in err
    assert err.endswith("after the block\n") and out.stdout.decode() == "stdout line\n"


def test_disabled_filter_passes_everything() -> None:
    err = _run(False).stderr.decode()
    assert "InitializeLog" in err and "cuInit" in err and "oneDNN" in err
