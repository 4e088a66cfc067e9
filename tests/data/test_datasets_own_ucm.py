"""End to end on the user's path: a CSV of ~60 real UCM images → `datasets import` → `tfduch run --data <it>`.

Real data (skips when absent) and a real encoder + training run, so it is marked slow. Both relevance modes are
checked: with a class column the table is mAP@K; without one it is recall@K (docs/datasets.md).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tfduch.logs import NATIVE_NOISE

REPO = Path(__file__).resolve().parents[2]
NOISE = re.compile(r"cuInit|absl|oneDNN|cuda_|cudart|UserWarning|warnings\.warn")


def _own_csv(ucm_root: Path, out: Path, with_class: bool) -> Path:
    entries = json.loads((ucm_root / "captions.json").read_text())["images"]
    chosen = [e for e in entries if e["imgid"] % 100 < 20 and e["imgid"] < 300]  # 3 classes x 20 images
    out.mkdir(parents=True, exist_ok=True)
    path = out / "own.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption", "class"] if with_class else ["image", "caption"])
        for e in chosen:
            image = str(ucm_root / "images" / e["filename"])
            for s in e["sentences"]:
                w.writerow([image, s["raw"], e["classname"]] if with_class else [image, s["raw"]])
    return path


def _tfduch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI's own quieting must do it
    return subprocess.run([sys.executable, "-m", "tfduch.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=1200)


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("with_class", [True, False], ids=["classes", "no-classes"])
def test_run_on_an_imported_own_dataset(ucm_root: Path, tmp_path: Path, with_class: bool) -> None:
    source = _own_csv(ucm_root, tmp_path / "src", with_class)
    data = tmp_path / "own"
    imported = _tfduch("datasets", "import", str(source), str(data))
    assert imported.returncode == 0, imported.stderr
    assert "imported 60 images, 300 captions from 300 rows" in imported.stdout
    run = _tfduch("run", "--data", str(data), "--bits", "16", "--epochs", "3", "--output", str(tmp_path / "run"),
                  "--set", "train.batch_size=16", "--quiet")
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout + run.stderr
    assert not [line for line in out.splitlines() if NATIVE_NOISE.match(line.encode()) or NOISE.search(line)]
    if with_class:
        assert re.search(r"\| DUCH-16 +\| +0\.\d{4}", run.stdout) and "i2t mAP@20" in run.stdout
    else:
        assert "recall@K" in run.stdout and "i2t R@1" in run.stdout and re.search(r"\| DUCH-16 +\| +[01]\.\d{4}",
                                                                                run.stdout)
