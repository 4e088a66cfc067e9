"""The DUCH protocol end to end: dataset → split → cached features → training → codes → evaluation.

Each stage is a small function so the CLI, the benchmarks and the tests compose the same pieces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfduch import runs
from tfduch.config import Config
from tfduch.data.karpathy import CaptionDataset
from tfduch.data.noise import CaptionNoise, load_or_make_caption_noise
from tfduch.data.resolve import open_dataset
from tfduch.data.split import ProtocolSplit, load_or_make_split
from tfduch.eval import RetrievalReport, evaluate_retrieval, write_report
from tfduch.features.build import FeatureSet, build_features
from tfduch.methods import learned_method
from tfduch.models.base import CrossModalHasher
from tfduch.runs import noise_path, split_path
from tfduch.training.data import TrainingFeatures


@dataclass
class Prepared:
    """Everything a run needs before training: the dataset, its split and its features."""

    dataset: CaptionDataset
    split: ProtocolSplit
    features: FeatureSet


def prepare(cfg: Config, progress: bool = True) -> Prepared:
    """Load the dataset, draw (or reuse) the protocol split and get every feature from the cache."""
    dataset = open_dataset(cfg.data_root())
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


def caption_noise(cfg: Config, prepared: Prepared) -> CaptionNoise | None:
    """The configured caption noise and clean subset (reused from / saved to ``noise_path``), or None if neither
    is needed (``noise.p`` = 0 and a method that does not learn from a clean subset)."""
    if cfg.noise.p <= 0 and not learned_method(cfg.model.method).needs_clean_subset:
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
               summary: dict[str, Any]) -> dict[str, Any]:
    """Weights + ``model.json`` (with the model's one ``model_id``) through :func:`tfduch.runs.save_model`."""
    return runs.save_model(model, cfg, out_dir, num_train=len(prepared.split.train),
                           encoders=prepared.features.encoder_ids, dataset=prepared.dataset.name,
                           dataset_fingerprint=prepared.dataset.fingerprint(), split_digest=prepared.split.digest(),
                           train_seconds=summary.get("train_seconds"))


def load_trained(run_dir: str | Path) -> tuple[Config, CrossModalHasher, dict[str, Any]]:
    """A finished run's resolved config, its model with trained weights, and its ``model.json`` metadata."""
    run = runs.load_run(run_dir)
    return run.config, run.model, run.meta


def evaluate_encoders(prepared: Prepared, encode_image: Callable[[np.ndarray], np.ndarray],
                      encode_text: Callable[[np.ndarray], np.ndarray], k: int, ks: Sequence[int],
                      cosine: bool = False, directions: Sequence[str] | None = None) -> RetrievalReport:
    """Evaluate any pair of encoders (a model's heads, a classical baseline, the identity) on query/database.

    ``cosine`` ranks continuous outputs by cosine similarity instead of binary codes by Hamming distance.
    """
    from tfduch.eval.continuous import evaluate_retrieval_cosine

    q_img, q_txt, q_lab = retrieval_features(prepared, "query")
    d_img, d_txt, d_lab = retrieval_features(prepared, "database")
    args = (encode_image(q_img), encode_text(q_txt), encode_image(d_img), encode_text(d_txt), q_lab, d_lab)
    if cosine:
        return evaluate_retrieval_cosine(*args, k=k, ks=ks, directions=directions)
    return evaluate_retrieval(*args, k=k, ks=ks)


def fit_classical(name: str, prepared: Prepared, bits: int, seed: int = 0) -> tuple[Any, float]:
    """Fit the classical baseline ``name`` (``tfduch.methods.CLASSICAL``) on the training rows; (hasher, seconds)."""
    import time

    from tfduch.methods import classical_method

    method = classical_method(name)
    train = training_features(prepared)
    start = time.perf_counter()
    hasher = method.fit(bits, seed, train.image, train.text)
    return hasher, time.perf_counter() - start


def fit_method(cfg: Config, prepared: Prepared, out_dir: str | Path,
               evaluate: Callable[[CrossModalHasher], dict[str, float]] | None = None
               ) -> tuple[CrossModalHasher, dict[str, Any], TrainingFeatures, CaptionNoise | None]:
    """Train the configured learned method: the one training path of ``run``, ``train`` and ``reproduce``.

    Draws the caption noise / clean subset the config or the method asks for, builds the training rows and the
    model, and trains it (``evaluate(model)`` every ``train.eval_every`` epochs). Returns the model, the training
    summary, the training features and the noise.
    """
    from tfduch.training.trainer import build_model, train

    noise = caption_noise(cfg, prepared)
    features = training_features(prepared, noise)
    model = build_model(cfg, features)
    periodic = None if evaluate is None else (lambda: evaluate(model))
    model, summary = train(cfg, features, out_dir, evaluate=periodic, model=model)
    return model, summary, features, noise


def train_and_evaluate(cfg: Config, prepared: Prepared, out_dir: str | Path | None = None,
                       plots: bool | None = None) -> tuple[CrossModalHasher, RetrievalReport, dict[str, Any]]:
    """Train the configured method on the split's training items and evaluate on query/database.

    Under a multi-worker strategy every worker trains and evaluates (the same codes), but only the chief writes
    the run folder (config, weights, reports, summary).
    """
    from tfduch.training.distribute import is_chief, make_strategy

    out = Path(out_dir or cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    chief = is_chief(make_strategy(cfg.train.strategy))
    if chief:
        runs.save_config(cfg, out)
    model, summary, features, noise = fit_method(
        cfg, prepared, out, evaluate=lambda m: evaluate_codes(encode_retrieval_sets(m, prepared), cfg).summary())
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
    runs.save_summary(out, {**summary, "metrics": report.summary()})
    return model, report, summary
