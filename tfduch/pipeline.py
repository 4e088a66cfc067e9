"""The DUCH protocol end to end: dataset → split → cached features → training → codes → evaluation.

Each stage is a small function so the CLI, the benchmarks and the tests compose the same pieces.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.config import Config
from tfduch.data.karpathy import CaptionDataset, load_dataset
from tfduch.data.noise import CaptionNoise, load_or_make_caption_noise
from tfduch.data.split import ProtocolSplit, load_or_make_split
from tfduch.eval import RetrievalReport, evaluate_retrieval, write_report
from tfduch.features.build import FeatureSet, build_features
from tfduch.io import atomic_path, atomic_write_json
from tfduch.models.base import CrossModalHasher
from tfduch.training.data import TrainingFeatures


@dataclass
class Prepared:
    """Everything a run needs before training: the dataset, its split and its features."""

    dataset: CaptionDataset
    split: ProtocolSplit
    features: FeatureSet


def split_path(cfg: Config) -> Path:
    if cfg.data.split_file:
        return Path(cfg.data.split_file)
    return Path(cfg.output_dir) / f"split-seed{cfg.data.split_seed}.json"


def prepare(cfg: Config, progress: bool = True) -> Prepared:
    """Load the dataset, draw (or reuse) the protocol split and get every feature from the cache."""
    dataset = load_dataset(cfg.data_root())
    split = load_or_make_split(dataset, split_path(cfg), seed=cfg.data.split_seed,
                               train_fraction=cfg.data.train_fraction, query_fraction=cfg.data.query_fraction,
                               method=cfg.data.split_method)
    return Prepared(dataset, split, build_features(cfg, dataset, progress=progress))


def training_features(prepared: Prepared, noise: CaptionNoise | None = None) -> TrainingFeatures:
    """The training rows of the feature set, with the protocol caption of each item.

    With ``noise``, each corrupted item carries its donor's captions, and the clean subset (with its class
    ids, -1 elsewhere) is attached for methods that learn from trusted pairs (CHNR).
    """
    fs, idx = prepared.features, prepared.split.train
    text_aug = None
    if fs.captions_aug is not None:
        text_aug = fs.captions_aug[idx, prepared.split.caption_choice[idx]]
    captions, counts, choice = fs.captions[idx], fs.caption_counts[idx], prepared.split.caption_choice[idx]
    clean_mask = labels = None
    if noise is not None:
        captions, counts, choice = noise.take(captions), noise.take(counts), noise.take(choice)
        text_aug = None if text_aug is None else noise.take(text_aug)
        if noise.clean is not None:
            clean_mask = noise.clean
            labels = np.where(noise.clean, prepared.dataset.labels[idx], -1)
    return TrainingFeatures(
        image=fs.image[idx],
        image_aug=fs.image_aug[:, idx],
        captions=captions,
        caption_counts=counts,
        caption_choice=choice,
        text_aug=text_aug,
        clean_mask=clean_mask,
        labels=labels,
    )


def noise_path(cfg: Config) -> Path:
    if cfg.noise.file:
        return Path(cfg.noise.file)
    return Path(cfg.output_dir) / f"noise-p{cfg.noise.p:g}-seed{cfg.noise.seed}.json"


def caption_noise(cfg: Config, prepared: Prepared) -> CaptionNoise | None:
    """The configured caption noise and clean subset (reused from / saved to ``noise_path``), or None if neither
    is needed (``noise.p`` = 0 and a method that does not learn from a clean subset)."""
    if cfg.noise.p <= 0 and cfg.model.method != "chnr":
        return None
    n = cfg.noise
    return load_or_make_caption_noise(noise_path(cfg), prepared.dataset.labels[prepared.split.train],
                                      prepared.split.train, prepared.split.digest(), n.p, n.seed,
                                      n.protected_fraction, n.clean_fraction)


def retrieval_features(prepared: Prepared, part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image features, protocol-caption features, labels) of the query or database images."""
    idx = {"query": prepared.split.query, "database": prepared.split.database}[part]
    if part == "database" and prepared.dataset.relevance == "instance":
        # No classes: a query's only relevant item is its own image / caption, so the query items join the
        # database (docs/datasets.md); the report is read as recall@K.
        idx = np.concatenate([prepared.split.query, prepared.split.database])
    fs = prepared.features
    text = fs.captions[idx, prepared.split.caption_choice[idx]]
    return fs.image[idx], text, prepared.dataset.labels[idx]


def encode_retrieval_sets(model: CrossModalHasher, prepared: Prepared) -> dict[str, np.ndarray]:
    """Binary codes of the query and database images and captions."""
    out: dict[str, np.ndarray] = {}
    for part in ("query", "database"):
        img, txt, labels = retrieval_features(prepared, part)
        out[f"{part}_image"] = model.encode(img, "image")
        out[f"{part}_text"] = model.encode(txt, "text")
        out[f"{part}_labels"] = labels
    return out


def evaluate_codes(codes: dict[str, np.ndarray], cfg: Config) -> RetrievalReport:
    return evaluate_retrieval(codes["query_image"], codes["query_text"], codes["database_image"],
                              codes["database_text"], codes["query_labels"], codes["database_labels"],
                              k=cfg.eval.k, ks=cfg.eval.ks)


def save_model(model: CrossModalHasher, cfg: Config, prepared: Prepared, out_dir: Path,
               summary: dict[str, Any]) -> Path:
    """Weights + the metadata a later ``evaluate`` / ``export`` needs, written atomically."""
    path = out_dir / "model.weights.h5"
    with atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    atomic_write_json(out_dir / "model.json", {
        "method": cfg.model.method,
        "bits": model.bits,
        "image_dim": model.image_dim,
        "text_dim": model.text_dim,
        "num_train": len(prepared.split.train),
        "encoders": prepared.features.encoder_ids,
        "dataset": prepared.dataset.name,
        "dataset_fingerprint": prepared.dataset.fingerprint(),
        "split_digest": prepared.split.digest(),
        "trained_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "train_seconds": summary.get("train_seconds"),
    })
    return path


def load_trained(run_dir: str | Path) -> tuple[Config, CrossModalHasher, dict[str, Any]]:
    """A finished run's resolved config, its model with trained weights, and its ``model.json`` metadata."""
    import json

    from tfduch.config import load_config
    from tfduch.errors import TfduchError
    from tfduch.training.trainer import ModelShape, build_model

    run = Path(run_dir)
    missing = [n for n in ("config.yaml", "model.json", "model.weights.h5") if not (run / n).is_file()]
    if missing:
        raise TfduchError(f"{run} is not a finished run folder: missing {', '.join(missing)}")
    # Inference needs no cluster: a run trained with train.strategy=multiworker is loaded on this device.
    cfg = load_config(run / "config.yaml", [f"output_dir={run}", "train.strategy=default"])
    meta = json.loads((run / "model.json").read_text())
    model = build_model(cfg, ModelShape(meta["image_dim"], meta["text_dim"], meta["num_train"]))
    model.load_weights(run / "model.weights.h5")
    return cfg, model, meta


def train_and_evaluate(cfg: Config, prepared: Prepared, out_dir: str | Path | None = None,
                       plots: bool | None = None) -> tuple[CrossModalHasher, RetrievalReport, dict[str, Any]]:
    """Train the configured method on the split's training items and evaluate on query/database.

    Under a multi-worker strategy every worker trains and evaluates (the same codes), but only the chief writes
    the run folder (config, weights, reports, summary).
    """
    from tfduch.training.distribute import is_chief, make_strategy
    from tfduch.training.trainer import train

    out = Path(out_dir or cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    chief = is_chief(make_strategy(cfg.train.strategy))
    if chief:
        cfg.save(out / "config.yaml")
    holder: dict[str, CrossModalHasher] = {}

    def periodic() -> dict[str, float]:
        return evaluate_codes(encode_retrieval_sets(holder["model"], prepared), cfg).summary()

    from tfduch.training.trainer import build_model

    noise = caption_noise(cfg, prepared)
    features = training_features(prepared, noise)
    holder["model"] = build_model(cfg, features)
    model, summary = train(cfg, features, out, evaluate=periodic, model=holder["model"])
    codes = encode_retrieval_sets(model, prepared)
    report = evaluate_codes(codes, cfg)
    if not chief:
        return model, report, summary
    save_model(model, cfg, prepared, out, summary)
    if noise is not None and hasattr(model, "score_pairs"):
        from tfduch.reports.noise import write_noise_report

        summary["noise"] = write_noise_report(model, features.image, features.text, noise, out,
                                              title=f"{cfg.model.method.upper()} p={cfg.noise.p:g}")
    write_report(report, out, title=f"{cfg.model.method.upper()} {cfg.model.bits} bits on {prepared.dataset.name}",
                 plots=cfg.eval.plots if plots is None else plots)
    atomic_write_json(out / "summary.json", {**summary, "metrics": report.summary()})
    return model, report, summary
