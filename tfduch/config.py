"""Typed experiment configuration.

A run is fully described by one :class:`Config`: it is loaded from a YAML file in ``configs/`` and
can be overridden from the command line with ``--set section.field=value``. The resolved config is
saved next to every run so results can be traced back to the exact settings.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tfduch.errors import ConfigError

DATA_ENV = "TFDUCH_DATA"
CACHE_ENV = "TFDUCH_CACHE"
#: How the protocol split draws its images (tfduch.data.split): the DUCH reference code's draw, or tfduch 0.1's.
SPLIT_METHODS = ("reference", "numpy")
#: The tf.distribute strategies a run can ask for (train.strategy, --strategy); tfduch.training.distribute builds them.
STRATEGIES = ("default", "mirrored", "multiworker")
#: Top-level key of a config file naming the file(s) it builds on (paths relative to the file itself).
BASE_KEY = "base"
#: Config fields that name places on a machine or switch logging, not choices that change the trained model:
#: left out of a model's identity (tfduch.runs.model_id) and of a reproduce cell's settings.
NON_MODEL_FIELDS: tuple[tuple[str, ...], ...] = (
    ("output_dir",), ("data", "root"), ("data", "split_file"), ("features", "cache_dir"), ("train", "verbose"),
    ("train", "checkpoint"), ("train", "tensorboard"), ("eval", "plots"))


@dataclass
class DataConfig:
    """Where the dataset is and how the DUCH protocol splits it."""

    root: str | None = None  # Karpathy JSON + images folder; falls back to $TFDUCH_DATA
    split_seed: int = 42
    # reference: the DUCH reference code's draw (Python random), so seed 42 gives its query images;
    # numpy: tfduch 0.1's draw (see tfduch.data.split)
    split_method: str = "reference"
    train_fraction: float = 0.5
    query_fraction: float = 0.2
    split_file: str | None = None  # default: <output_dir>/split.json


@dataclass
class FeatureConfig:
    """Frozen encoders and the views that are encoded once and cached."""

    image_encoder: str = "lite0-ms"  # lite0-ms (lite0 + its pooled stage 4-6 outputs) | lite0 | lite2
    text_encoder: str = "minilm-l6"
    image_view: str = "none"  # preset for the clean image view (see tfduch.augment.image)
    image_aug_view: str = "duch"  # preset for the augmented image view
    image_aug_views: int = 1  # how many augmented image views to cache (one is drawn per epoch)
    # Second text view for the intra-text contrastive term: "other_caption" draws a different caption
    # of the same image each epoch; any tfduch.augment.text spec ("eda", "synonym", ...) augments the
    # chosen caption offline.
    text_aug_view: str = "other_caption"
    aug_seed: int = 0
    cache_dir: str | None = None  # default: $TFDUCH_CACHE or ~/.cache/tfduch
    batch_size: int = 32


@dataclass
class ModelConfig:
    """Hashing model architecture."""

    method: str = "duch"
    bits: int = 64
    hidden_dim: int = 4096
    # Method-specific hyper-parameters (free-form here; each method validates its own keys, see
    # tfduch.methods). Set one with --set model.params.KEY=VALUE.
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    """DUCH objective: NT-Xent (inter + intra) + alpha*adversarial + beta*quantization + gamma*bit balance."""

    temperature: float = 1.0
    contrastive_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # inter, intra-image, intra-text
    # α = 0: the adversarial term is off by default (the GAN step is then skipped). On UCM it cost I→T at every
    # code length together with the lr schedule (docs/duch.md); α = 0.01 is the paper's value
    # (configs/duch_paper.yaml).
    alpha: float = 0.0
    beta: float = 0.001
    gamma: float = 0.01
    gradient_penalty: float = 10.0
    # "sum" over the 2N anchors, as the reference implementations: α, β, γ and the weight decay were tuned
    # against it. "mean" makes the other terms 2N times stronger (UCM 64 bits: I→T .933 vs .942, T→I .971 vs .993).
    ntxent_reduction: str = "sum"
    # Switches that reproduce the reference code's behaviour (defaults follow the paper):
    text_aug: str = "augmented"  # "augmented" | "same" (reference: txt2 = txt1)
    adversarial_branch: str = "image"  # "image" | "text" (reference: generator term on text codes)
    bit_balance: str = "per_bit"  # "per_bit" | "per_code" (reference: sum over bits of each code)


@dataclass
class TrainConfig:
    """Optimisation schedule: the reference's, except a constant Adam 2e-4 (docs/duch.md, "the plain loop")."""

    epochs: int = 100
    batch_size: int = 256
    # Adam 2e-4, constant: the reference's 1e-4 decayed x0.8 after epoch 0 and every 50 epochs (still available:
    # configs/duch_paper.yaml) gave lower I→T at 16 and 64 bits on UCM, 3 seeds each.
    lr: float = 2e-4
    weight_decay: float = 5e-4  # coupled L2, as torch.optim.Adam(weight_decay=...)
    lr_decay_every: int = 0  # 0: no decay; N: multiply lr by lr_decay_factor after epoch 0, N, 2N, ...
    lr_decay_factor: float = 0.8
    min_lr: float = 1e-6
    disc_lr: float = 1e-4
    disc_beta_1: float = 0.5
    disc_beta_2: float = 0.9
    disc_weight_decay: float = 1e-4
    seed: int = 0
    eval_every: int = 0  # evaluate on query/database every N epochs (0: only at the end)
    checkpoint: bool = True
    # Checkpoint every N epochs (and always after the last). A checkpoint holds the heads and both optimizers'
    # state (~180 MB at 64 bits): one per epoch added 15-25 s to a 100-epoch 64-bit UCM run (docs/duch.md), so
    # the default writes one every 5 epochs (an interrupted run loses at most 4 epochs).
    checkpoint_every: int = 5
    # Copy the state into a shadow model and write it from a background thread while training goes on
    # (single-device runs; distributed runs always save synchronously). Off by default: on the 2-core machine
    # the write competes with training for the CPUs and was no faster than a synchronous save (docs/duch.md);
    # it pays where storage is slow and CPUs are spare.
    checkpoint_background: bool = False
    tensorboard: bool = True
    verbose: str = "auto"  # keras fit verbosity: auto | 0 | 1 | 2
    # tf.distribute strategy: default | mirrored (GPUs of one host) | multiworker (TF_CONFIG); docs/scale.md.
    # batch_size stays the global batch, split across replicas.
    strategy: str = "default"


@dataclass
class EvalConfig:
    k: int = 20
    ks: tuple[int, ...] = (1, 5, 10, 20, 50, 100)
    plots: bool = True


@dataclass
class CHNRConfig:
    """CHNR (Mikriukov, Ravanbakhsh, Demir, ICIP 2022): a noise detector learnt on the clean subset weights pairs."""

    # Phase 2 weight of each pair's inter-modal term from the detector's clean-probability w:
    # "w" | "w3" (w cubed; best in the reference runs) | "threshold" (1[w > midpoint of real/fake scores]) | "none"
    weighting: str = "w3"
    switch_epoch: int = 75  # phase 1 (detector + hashing on the clean subset) runs for epochs [0, switch_epoch)
    # "reference": inter-modal NT-Xent + beta*quantization (the CHNR paper); "duch": DUCH's full objective.
    # Either way the pair weights scale the inter-modal term and each item's quantization term.
    objective: str = "reference"
    detector_hidden_dim: int = 1280  # the reference's width; 0: image_dim + text_dim
    detector_layers: int = 3
    detector_dropout: float = 0.2
    detector_normalize: bool = True  # each modality at unit RMS per feature (see tfduch.models.noise_detector)
    detector_lr: float = 1e-4  # AdamW, as the reference
    detector_beta_1: float = 0.5
    detector_beta_2: float = 0.9
    detector_weight_decay: float = 1e-3
    gradient_penalty: float = 10.0


@dataclass
class NoiseConfig:
    """Noisy captions: injected noise for experiments, the trusted (clean) subset, and CHNR's settings."""

    p: float = 0.0  # probability that a training pair's captions are replaced by those of another class
    protected_fraction: float = 0.2  # share of the training set that is never corrupted
    seed: int = 0
    file: str | None = None  # default: <output_dir>/noise-p<p>-seed<seed>.json (the corrupted indices)
    clean_fraction: float = 0.3  # trusted subset (reference: 0.3 for UCM, 0.2 for RSICD)
    chnr: CHNRConfig = field(default_factory=CHNRConfig)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    output_dir: str = "runs/duch"

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def save(self, path: str | os.PathLike[str]) -> None:
        from tfduch.io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def validate(self) -> Config:
        """Reject settings that would fail late (mid-training) with a message naming the field."""
        checks = [
            (self.model.bits > 0 and self.model.bits % 8 == 0, "model.bits must be a positive multiple of 8"),
            (self.model.hidden_dim > 0, "model.hidden_dim must be positive"),
            (self.loss.temperature > 0, "loss.temperature must be positive"),
            (self.loss.text_aug in ("augmented", "same"), "loss.text_aug must be 'augmented' or 'same'"),
            (self.loss.adversarial_branch in ("image", "text"), "loss.adversarial_branch must be image|text"),
            (self.loss.bit_balance in ("per_bit", "per_code"), "loss.bit_balance must be per_bit|per_code"),
            (len(self.loss.contrastive_weights) == 3, "loss.contrastive_weights needs 3 values"),
            (self.train.epochs > 0, "train.epochs must be positive"),
            (self.train.batch_size > 1, "train.batch_size must be > 1 (contrastive loss needs negatives)"),
            (self.train.lr > 0, "train.lr must be positive"),
            (self.train.strategy in STRATEGIES, f"train.strategy must be {'|'.join(STRATEGIES)}"),
            (self.data.split_method in SPLIT_METHODS, f"data.split_method must be {'|'.join(SPLIT_METHODS)}"),
            (0 < self.data.train_fraction < 1, "data.train_fraction must be in (0, 1)"),
            (0 < self.data.query_fraction < 1, "data.query_fraction must be in (0, 1)"),
            (self.features.image_aug_views >= 1, "features.image_aug_views must be >= 1"),
            (self.eval.k > 0, "eval.k must be positive"),
            (0 <= self.noise.p < 1, "noise.p must be in [0, 1)"),
            (0 <= self.noise.protected_fraction < 1, "noise.protected_fraction must be in [0, 1)"),
            (0 < self.noise.clean_fraction < 1, "noise.clean_fraction must be in (0, 1)"),
            (self.noise.chnr.weighting in ("w", "w3", "threshold", "none"),
             "noise.chnr.weighting must be w|w3|threshold|none"),
            (self.noise.chnr.objective in ("reference", "duch"), "noise.chnr.objective must be reference|duch"),
            (0 <= self.noise.chnr.switch_epoch, "noise.chnr.switch_epoch must be >= 0"),
            (0 <= self.noise.chnr.detector_dropout < 1, "noise.chnr.detector_dropout must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def data_root(self) -> Path:
        root = self.data.root or os.environ.get(DATA_ENV)
        if not root:
            raise ConfigError(
                f"no dataset given: pass --data DIR (or set data.root, or the {DATA_ENV} environment variable) "
                "pointing at a folder with a Karpathy-format captions JSON and its images"
            )
        return Path(root).expanduser()

    def cache_root(self) -> Path:
        return default_cache_dir(self.features.cache_dir)


def model_fields(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config dict (``Config.to_dict()``) without :data:`NON_MODEL_FIELDS` (a copy)."""
    out = yaml.safe_load(yaml.safe_dump(config))
    for keys in NON_MODEL_FIELDS:
        section = out
        for key in keys[:-1]:
            section = section.get(key, {}) if isinstance(section, dict) else {}
        if isinstance(section, dict):
            section.pop(keys[-1], None)
    return out


def default_cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Cache for converted weights and features: explicit > $TFDUCH_CACHE > ~/.cache/tfduch."""
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "tfduch")).expanduser()


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _coerce(section: Any, name: str, raw: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the type of the dataclass field it sets."""
    current = getattr(section, name)
    try:
        if isinstance(current, bool):
            if isinstance(raw, str):
                if raw.lower() in ("1", "true", "yes", "on"):
                    return True
                if raw.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(raw)
            return bool(raw)
        if isinstance(current, int) and not isinstance(raw, bool):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, tuple):
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            kind = type(current[0]) if current else float
            return tuple(kind(x) for x in items)
        if current is None or isinstance(current, str):
            return None if raw is None or (current is None and raw in ("", "none", "null")) else str(raw)
        return raw
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot use {raw!r} for a field of type {type(current).__name__}") from exc


def _apply(cfg: Config, dotted: str, raw: Any, where: str) -> None:
    parts = dotted.split(".")
    target: Any = cfg
    for i, part in enumerate(parts[:-1]):
        if isinstance(target, dict):  # a free-form mapping field (model.params): set the key as given
            _set_nested(target, parts[i:], raw)
            return
        if not dataclasses.is_dataclass(target) or not hasattr(target, part):
            raise ConfigError(f"{where}: unknown config section {part!r} in {dotted!r}")
        target = getattr(target, part)
    name = parts[-1]
    if isinstance(target, dict):
        target[name] = raw
        return
    if not dataclasses.is_dataclass(target) or name not in {f.name for f in dataclasses.fields(target)}:
        known = ", ".join(f.name for f in dataclasses.fields(target)) if dataclasses.is_dataclass(target) else ""
        raise ConfigError(f"{where}: unknown config field {dotted!r} (known here: {known})")
    if dataclasses.is_dataclass(getattr(target, name)):
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: {dotted!r} is a section, expected a mapping")
        for key, value in raw.items():
            _apply(cfg, f"{dotted}.{key}", value, where)
        return
    setattr(target, name, _coerce(target, name, raw, where))


def _apply_file(cfg: Config, path: Path, chain: tuple[Path, ...]) -> None:
    """Apply one config file (its ``base`` files first) onto ``cfg``; ``chain`` = the files that led here."""
    if not path.is_file():
        via = f" (the base of {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{via}")
    if path.resolve() in {p.resolve() for p in chain}:
        raise ConfigError("config files name each other as base: " + " -> ".join(str(p) for p in (*chain, path)))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    bases = raw.pop(BASE_KEY, None)
    if bases is not None:
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
            raise ConfigError(f"{path}: '{BASE_KEY}' must be a file name or a list of file names, got {bases!r}")
        for base in bases:
            _apply_file(cfg, path.parent / base, (*chain, path))
    for key, value in raw.items():
        _apply(cfg, key, value, str(path))


def _set_nested(mapping: dict[str, Any], keys: list[str], raw: Any) -> None:
    for key in keys[:-1]:
        mapping = mapping.setdefault(key, {})
    mapping[keys[-1]] = raw


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the built-in defaults) and apply ``key=value`` overrides.

    A file may start from others with ``base: other.yaml`` (or a list, applied in order), resolved against
    the file's own folder: the bases are applied first, then the file's keys on top. Sections merge field
    by field; a free-form mapping such as ``model.params`` given in the file replaces the base's. So a
    setting shared by several configs (the paper's DUCH schedule) is written once.
    """
    cfg = Config()
    if path is not None:
        _apply_file(cfg, Path(path), ())
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, value = item.split("=", 1)
        _apply(cfg, key.strip(), yaml.safe_load(value) if value.strip() else value, f"--set {item}")
    return cfg.validate()
