"""The whole protocol through the CLI on a small synthetic image/caption dataset, real encoders included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tfduch.cli import main
from tfduch.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("e2e")
    data = make_synthetic_dataset(root / "data", n_classes=4, per_class=10, image_size=64)
    out = root / "run"
    common = ["--data", str(data), "--output", str(out), "--cache-dir", str(root / "cache"), "--bits", "16",
              "--epochs", "6", "--quiet", "--set", "model.hidden_dim=128", "--set", "train.batch_size=16",
              "--set", "train.lr=0.001"]
    code = main(["run", *common])
    return root, out, common, code


def test_run_writes_a_complete_run_folder(finished_run, capsys) -> None:
    _, out, _, code = finished_run
    assert code == 0
    for name in ("config.yaml", "split-seed42.json", "model.weights.h5", "model.json", "metrics.json", "metrics.md",
                 "pr_curve.png", "p_at_k.png", "summary.json"):
        assert (out / name).is_file(), name
    assert any((out / "checkpoints").iterdir()) and (out / "tensorboard").is_dir()
    metrics = json.loads((out / "metrics.json").read_text())
    # 4 well-separated classes: chance mAP is ~0.25; the frozen encoders + 6 epochs do far better
    assert metrics["directions"]["i2t"]["map_reference"] > 0.5
    assert metrics["directions"]["t2i"]["map_reference"] > 0.5
    meta = json.loads((out / "model.json").read_text())
    assert meta["bits"] == 16 and meta["encoders"]["image"].startswith("efficientnet-lite0")


def test_evaluate_reproduces_the_run_metrics(finished_run, capsys) -> None:
    _, out, _, _ = finished_run
    before = json.loads((out / "metrics.json").read_text())["directions"]
    assert main(["evaluate", "--run", str(out), "--quiet"]) == 0
    after = json.loads((out / "metrics.json").read_text())["directions"]
    for d in ("i2t", "t2i", "i2i", "t2t"):
        assert after[d]["map_reference"] == pytest.approx(before[d]["map_reference"])
    assert "i2t mAP@20" in capsys.readouterr().out


def test_rerun_resumes_from_the_last_checkpoint(finished_run, capsys) -> None:
    _, out, common, _ = finished_run
    assert main(["train", *common]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["initial_epoch"] == 6 and summary["history"] == {}


def test_bad_dataset_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    code = main(["features", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "error" in err
