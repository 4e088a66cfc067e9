"""Training under tf.distribute: 2 workers on loopback (MultiWorkerMirroredStrategy) and MirroredStrategy.

Each run goes through ``tfduch.pipeline.train_and_evaluate`` — what ``tfduch train`` calls — on a synthetic
dataset whose features are clustered by class (no encoders, so a worker starts in seconds). The 2-worker run
must match single-worker training: every loss term sees the global batch (codes are gathered across replicas)
and gradients are scaled so their all-reduce sum is the single-worker gradient, but the arithmetic is not
bit-identical (the heads' BatchNorm statistics are summed across replicas as E[x²] − E[x]², and gradient sums
run in another order). Measured: per-epoch losses agree to ~1e-7 relative and the mAPs are equal; the test allows
``LOSS_RTOL`` on the losses and ``MAP_TOLERANCE`` on cross-modal mAP@20. One replica under MirroredStrategy runs
the same arithmetic as no strategy: equal to 1e-5.

Run one worker by hand: ``python tests/training/test_distributed.py --data DIR --output DIR --strategy multiworker``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
MAP_TOLERANCE = 0.05  # |ΔmAP@20| between 2-worker and single-worker training (measured: see docs/scale.md)
LOSS_RTOL = 1e-4  # per-epoch mean losses, 2 workers vs one (measured ~1e-7)
WORKER_TIMEOUT_S = 150
EPOCHS = 6


def small_config(output: Path, strategy: str, epochs: int = EPOCHS):
    """A tiny DUCH run: 16 bits, 64 hidden units, global batch 40 (20 per replica with 2 workers)."""
    sys.path.insert(0, str(HERE.parent))  # tests/: the shared conftest (a worker runs this file as a script)
    from conftest import tiny_duch_config

    cfg = tiny_duch_config(output, epochs=epochs, batch_size=40, checkpoint_every=3, strategy=strategy)
    cfg.eval.plots = False
    return cfg.validate()


def synthetic_prepared(data_root: Path):
    """The synthetic dataset, its protocol split, and class-clustered stand-ins for encoder features."""
    sys.path.insert(0, str(HERE.parent))  # tests/: the shared conftest
    from conftest import clustered_features

    from tfduch.data.karpathy import load_dataset
    from tfduch.data.split import make_split
    from tfduch.features.build import FeatureSet
    from tfduch.pipeline import Prepared

    dataset = load_dataset(data_root)
    feats, _ = clustered_features(n=len(dataset), classes=dataset.num_classes, captions=5, labels=dataset.labels)
    features = FeatureSet(feats.image, feats.image_aug, feats.captions, feats.caption_counts, None,
                          {"image": "synthetic-clusters", "text": "synthetic-clusters"})
    return Prepared(dataset, make_split(dataset), features)


def train_run(data_root: Path, output: Path, strategy: str, epochs: int = EPOCHS) -> dict[str, float]:
    """Train + evaluate like ``tfduch train``; returns the run's metric summary."""
    from tfduch.pipeline import train_and_evaluate
    from tfduch.training.distribute import make_strategy

    cfg = small_config(output, strategy, epochs)
    make_strategy(strategy)  # before any other TF op, as the CLI does
    _, report, _ = train_and_evaluate(cfg, synthetic_prepared(data_root), plots=False)
    return report.summary()


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _cross_modal(summary: dict[str, float]) -> tuple[float, float]:
    return summary["i2t/map@20"], summary["t2i/map@20"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tfduch.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("dist") / "data", n_classes=6, per_class=40,
                                  image_size=8)


@pytest.fixture(scope="module")
def single_worker(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    out = tmp_path_factory.mktemp("single")
    return out, train_run(data_root, out, "default")


def _history(run: Path) -> dict[str, list[float]]:
    return json.loads((run / "summary.json").read_text())["history"]


def test_two_workers_match_single_worker_training(data_root: Path, single_worker, tmp_path: Path) -> None:
    single_out, single = single_worker
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    outputs = [tmp_path / "chief", tmp_path / "worker1"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs: list[subprocess.Popen] = []
    logs = [open(tmp_path / f"worker{i}.log", "w+") for i in range(2)]  # noqa: SIM115 (closed in finally)
    start = time.perf_counter()
    try:
        for i, out in enumerate(outputs):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__)), "--data", str(data_root), "--output", str(out),
                 "--strategy", "multiworker"], env={**env, "TF_CONFIG": tf_config}, stdout=logs[i],
                stderr=subprocess.STDOUT, cwd=str(HERE.parents[1])))
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        for proc in procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        codes = [p.poll() for p in procs]
        if codes != [0, 0]:
            tails = []
            for i, log in enumerate(logs):
                log.seek(0)
                tails.append(f"--- worker {i} (exit {codes[i]}) ---\n" + log.read()[-4000:])
            pytest.fail("multi-worker training failed or timed out:\n" + "\n".join(tails))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    elapsed = time.perf_counter() - start

    chief, worker1 = outputs
    metrics = json.loads((chief / "summary.json").read_text())["metrics"]
    for name in ("config.yaml", "model.weights.h5", "model.json", "metrics.json"):
        assert (chief / name).is_file(), name
    assert any((chief / "checkpoints").iterdir()) and (chief / "tensorboard").is_dir()
    assert list(worker1.iterdir()) == [], "only the chief writes the run folder"

    single_h, multi_h = _history(single_out), _history(chief)
    np.testing.assert_allclose(multi_h["loss"], single_h["loss"], rtol=LOSS_RTOL)
    s_i2t, s_t2i = _cross_modal(single)
    m_i2t, m_t2i = _cross_modal(metrics)
    print(f"2 workers: I→T {m_i2t:.4f} T→I {m_t2i:.4f}; one worker: I→T {s_i2t:.4f} T→I {s_t2i:.4f}; "
          f"workers took {elapsed:.1f} s")
    assert s_i2t > 0.7 and s_t2i > 0.7, "the single-worker baseline must learn for the comparison to mean anything"
    assert abs(m_i2t - s_i2t) <= MAP_TOLERANCE and abs(m_t2i - s_t2i) <= MAP_TOLERANCE


def test_mirrored_one_replica_equals_no_strategy(data_root: Path, single_worker, tmp_path: Path) -> None:
    single_out, single = single_worker
    mirrored = train_run(data_root, tmp_path, "mirrored")
    single_h, mirrored_h = _history(single_out), _history(tmp_path)
    np.testing.assert_allclose(mirrored_h["loss"], single_h["loss"], rtol=1e-5)
    assert _cross_modal(mirrored) == pytest.approx(_cross_modal(single), abs=1e-6)


def test_multiworker_without_tf_config_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from tfduch.errors import ConfigError
    from tfduch.training.distribute import parse_tf_config

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="needs the TF_CONFIG"):
        parse_tf_config()
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_tf_config("{cluster")
    with pytest.raises(ConfigError, match="task.index"):
        parse_tf_config(json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}))
    with pytest.raises(ConfigError, match="host:port"):
        parse_tf_config(json.dumps({"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}))


def test_methods_not_checked_under_distribution_are_refused() -> None:
    from tfduch.models.chnr import CHNR
    from tfduch.models.djsrh import DJSRH
    from tfduch.models.duch import DUCH

    assert DUCH.distributable and not CHNR.distributable and not DJSRH.distributable


def _worker_main() -> int:
    parser = argparse.ArgumentParser(description="one worker of a distributed tfduch training run")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--strategy", default="multiworker")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args()
    summary = train_run(args.data, args.output, args.strategy, args.epochs)
    print(json.dumps({k: v for k, v in summary.items() if k.endswith("map@20")}))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
