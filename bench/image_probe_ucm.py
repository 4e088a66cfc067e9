"""How separable are the frozen image features? A *supervised* ridge probe on UC Merced's protocol split.

    python bench/image_probe_ucm.py --data ../shared/data/ucm_captions [--run runs/duch]

DUCH never sees labels, yet its I→T ranking is only as good as the image codes' grouping by class. This
probe fits a ridge classifier (one-vs-rest, standardised features, several regularisation strengths) on
the 1050 training images *with their true classes* and reports its accuracy on the 210 query images: a
rough ceiling for what any hashing head on these features can give an image query at rank 1. Beside it,
the same probe's 5-fold cross-validated accuracy on the training images alone, the number to compare
feature choices by (``--set features.image_encoder=lite0`` vs the default ``lite0-ms``). With
``--run`` it prints the run's I→T P@1 (from ``metrics.json``) beside it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from tfduch.config import load_config
from tfduch.pipeline import prepare, retrieval_features, training_features


def ridge_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, lam: float) -> np.ndarray:
    """Class predictions of a ridge regression onto one-hot targets (closed form)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    targets = np.eye(int(y_train.max()) + 1)[y_train]
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ targets)
    return np.argmax(b @ w, axis=1)


def cross_validated(x: np.ndarray, y: np.ndarray, lam: float, folds: int = 5, seed: int = 0) -> float:
    """Mean accuracy of the probe over ``folds`` folds of the training images alone.

    Why: choosing features by the query accuracy would tune on the test set; this never looks at it.
    """
    fold = np.random.default_rng(seed).permutation(len(y)) % folds
    return float(np.mean([np.mean(ridge_probe(x[fold != f], y[fold != f], x[fold == f], lam) == y[fold == f])
                          for f in range(folds)]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("TFDUCH_DATA", "../shared/data/ucm_captions"))
    ap.add_argument("--run", type=Path, help="a trained run folder whose I→T P@1 to print beside the probe")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    cfg = load_config(None, [f"data.root={args.data}", *args.overrides])
    prep = prepare(cfg, progress=True)
    train = training_features(prep)
    q_img, _, q_lab = retrieval_features(prep, "query")
    y_train = prep.dataset.labels[prep.split.train]
    print(f"image encoder {cfg.features.image_encoder}: {len(y_train)} training / {len(q_lab)} query images")
    for norm in ("raw", "l2"):
        xt, xq = train.image, q_img
        if norm == "l2":
            xt = xt / np.linalg.norm(xt, axis=1, keepdims=True)
            xq = xq / np.linalg.norm(xq, axis=1, keepdims=True)
        for lam in (10.0, 100.0, 1000.0, 3000.0):
            acc = float(np.mean(ridge_probe(xt, y_train, xq, lam) == q_lab))
            cv = cross_validated(xt, y_train, lam)
            print(f"supervised ridge probe ({norm} features, lambda {lam:g}): query accuracy {acc:.3f}, "
                  f"5-fold CV on the training images {cv:.3f}")
    if args.run is not None:
        metrics = json.loads((args.run / "metrics.json").read_text())
        i2t = metrics["directions"]["i2t"]
        p_at_1 = i2t["p_at_k"][metrics["ks"].index(1)] if 1 in metrics["ks"] else None
        print(f"{args.run} (unsupervised): I→T P@1 {p_at_1}, I→T mAP@{metrics['k']} {i2t['map_reference']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
