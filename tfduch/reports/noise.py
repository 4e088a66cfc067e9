"""How well a noise detector tells clean from corrupted training pairs, against the injected ground truth.

Written next to a CHNR run: ``noise_report.json`` (ROC-AUC of the detector's clean-probability w
against the known corrupted indices, overall and on the pairs outside the clean subset the detector
was trained on, plus mean weights) and ``noise_weights.png`` (histograms of w and of the applied pair
weight, clean vs noisy pairs). Pure numpy + matplotlib (Agg, object-oriented API).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from tfduch.data.noise import CaptionNoise
from tfduch.io import atomic_write_bytes, atomic_write_json


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half); NaN if a class is empty."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks handle ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def detector_quality(w: np.ndarray, noise: CaptionNoise, applied: np.ndarray | None = None,
                     threshold: float | None = None) -> dict[str, Any]:
    """ROC-AUC of w (clean = positive) and mean weights of clean vs noisy pairs."""
    w = np.asarray(w, np.float64)
    clean = ~noise.corrupted
    out: dict[str, Any] = {
        "p": noise.p, "num_pairs": len(w), "num_corrupted": int(noise.corrupted.sum()),
        "roc_auc": roc_auc(w, clean),
        "mean_w_clean": float(w[clean].mean()) if clean.any() else None,
        "mean_w_noisy": float(w[~clean].mean()) if (~clean).any() else None,
    }
    if noise.clean is not None:
        unseen = ~noise.clean
        out["roc_auc_outside_clean_subset"] = roc_auc(w[unseen], clean[unseen])
    if applied is not None:
        applied = np.asarray(applied, np.float64)
        out["mean_weight_clean"] = float(applied[clean].mean()) if clean.any() else None
        out["mean_weight_noisy"] = float(applied[~clean].mean()) if (~clean).any() else None
    if threshold is not None:
        out["threshold"] = float(threshold)
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in out.items()}


def plot_weight_histograms(w: np.ndarray, corrupted: np.ndarray, applied: np.ndarray | None = None,
                           title: str = "noise detector") -> bytes:
    """PNG bytes: histograms of w (and of the applied weight) for clean vs noisy pairs."""
    from matplotlib.figure import Figure

    panels = [("detector clean-probability w", np.asarray(w))]
    if applied is not None:
        panels.append(("applied pair weight", np.asarray(applied)))
    corrupted = np.asarray(corrupted, bool)
    fig = Figure(figsize=(5.5 * len(panels), 4.2))
    bins = np.linspace(0.0, 1.0, 41)
    for i, (name, values) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for mask, label, colour in ((~corrupted, "clean pairs", "tab:blue"), (corrupted, "noisy pairs", "tab:red")):
            if mask.any():
                ax.hist(values[mask], bins=bins, alpha=0.6, color=colour, label=f"{label} ({int(mask.sum())})")
        ax.set(xlabel=name, ylabel="pairs", title=f"{title}: {name}")
        ax.grid(alpha=0.3)
        ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def write_noise_report(model: Any, image: np.ndarray, text: np.ndarray, noise: CaptionNoise,
                       out_dir: str | os.PathLike[str], title: str = "CHNR") -> dict[str, Any]:
    """Score every training pair with ``model`` (a CHNR), write the JSON + PNG, return the JSON content."""
    w = model.score_pairs(image, text)
    applied = model.weights_for(w)
    threshold = float(np.asarray(model.threshold)) if hasattr(model, "threshold") else None
    quality = detector_quality(w, noise, applied, threshold)
    out = Path(out_dir)
    atomic_write_json(out / "noise_report.json", quality)
    atomic_write_bytes(out / "noise_weights.png", plot_weight_histograms(w, noise.corrupted, applied, title))
    return quality
