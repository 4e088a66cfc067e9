"""The reproduction grid: which methods, code lengths and seeds, and each learned cell's resolved config.

Method names, display names, ablation variants and published rows come from the method declarations
(:mod:`tfduch.methods.registry`); ``cosine`` (frozen features ranked by cosine) is the one row that is no method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfduch.config import Config, load_config
from tfduch.errors import ConfigError
from tfduch.methods import registry
from tfduch.methods.base import Variant

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

LEARNED = tuple(registry.LEARNED)
CLASSICAL = tuple(registry.CLASSICAL)
REFERENCE = ("cosine",)
#: Ablation / alternative variants: the method they train and the variant (config file and overrides).
VARIANTS: dict[str, tuple[str, Variant]] = dict(registry.variants())
#: Published UCM mAP@20 rows, by method, direction and code length (declared by each method).
PUBLISHED: dict[str, dict[str, dict[int, float]]] = {
    m.name: {d: dict(v) for d, v in m.published.items()}
    for m in (*registry.LEARNED.values(), *registry.CLASSICAL.values()) if m.published}


def known_methods() -> tuple[str, ...]:
    return LEARNED + tuple(VARIANTS) + CLASSICAL + REFERENCE


def chnr_unavailable() -> str | None:
    """Why CHNR cannot run here (None when it can): the method registry must list it."""
    return None if "chnr" in registry.LEARNED else "tfduch.methods.registry lists no 'chnr' method"


def display_name(method: str) -> str:
    if method in REFERENCE:
        return "cosine · frozen features"
    return registry.display_name(method)


@dataclass(frozen=True)
class Cell:
    """One training + evaluation: a method at one code length with one training seed."""

    method: str
    bits: int | None  # None: the bit-free cosine reference
    seed: int

    @property
    def key(self) -> str:
        return self.method if self.bits is None else f"{self.method}-{self.bits}-s{self.seed}"


@dataclass
class ReproduceSpec:
    """What to reproduce and where; ``epochs=None`` keeps each method's configured epochs."""

    out: Path
    methods: tuple[str, ...] = ("duch", "chnr", "cach", "djsrh", "jdsh", "cca-itq", "ridge-itq", "cosine")
    bits: tuple[int, ...] = (16, 32, 64, 128)
    seeds: int = 3
    dataset: str | None = None
    epochs: int | None = None
    config_dir: Path = DEFAULT_CONFIG_DIR
    overrides: tuple[str, ...] = ()  # applied to every learned method's config
    checkpoint: bool = False  # checkpoints inside a cell (train.checkpoint_every; resume mid-training)
    keep_models: bool = False
    progress: bool = True
    name: str = "reproduce"  # table files: OUT/<name>.md, OUT/<name>.json, OUT/<name>_pr_<bits>bits.png
    table_only: bool = False  # rebuild the table from the finished cells, run nothing
    skipped: dict[str, str] = field(default_factory=dict)  # method → why it is not run

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.config_dir = Path(self.config_dir)
        unknown = [m for m in self.methods if m not in known_methods()]
        if unknown:
            raise ConfigError(f"unknown method(s) {unknown}; known: {', '.join(known_methods())}")
        if any(b <= 0 or b % 8 for b in self.bits):
            raise ConfigError(f"code lengths must be positive multiples of 8, got {self.bits}")
        if self.seeds < 1:
            raise ConfigError("seeds must be >= 1")
        if not self.name or any(c in self.name for c in "/\\"):
            raise ConfigError(f"table name must be a plain file name, got {self.name!r}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError("epochs must be >= 1")
        why = chnr_unavailable() if "chnr" in self.methods else None
        if why is not None:
            self.skipped["chnr"] = why

    def cells(self) -> list[Cell]:
        """Every cell to run, cheapest kinds first so partial tables fill early."""
        active = [m for m in self.methods if m not in self.skipped]
        out = [Cell(m, None, 0) for m in active if m in REFERENCE]
        out += [Cell(m, b, s) for m in active if m in CLASSICAL for b in self.bits for s in range(self.seeds)]
        out += [Cell(m, b, s) for s in range(self.seeds) for b in self.bits for m in active
                if m not in CLASSICAL and m not in REFERENCE]
        return out



# --------------------------------------------------------------------------------------------- configs
def base_config(spec: ReproduceSpec) -> Config:
    """The config used to prepare data: built-in defaults, ``--set`` overrides, the dataset and the output folder.

    The overrides apply here too, so that e.g. ``--set features.image_encoder=lite0`` changes the features every
    cell is computed on, not only the learned methods' configs.
    """
    overrides = [*spec.overrides, f"output_dir={spec.out}"]
    if spec.dataset is not None:
        overrides.append(f"data.root={spec.dataset}")
    return load_config(None, overrides)


def cell_config(spec: ReproduceSpec, cell: Cell) -> Config:
    """The resolved config of a learned cell: ``configs/<method>.yaml`` (or the variant's file) + variant overrides
    + bits/seed/epochs."""
    method, variant = VARIANTS.get(cell.method, (cell.method, Variant()))
    path = spec.config_dir / f"{variant.config or method}.yaml"
    if variant.config and not path.is_file():
        raise ConfigError(f"{cell.method}: its config {path} is missing (--config-dir {spec.config_dir})")
    overrides = [f"model.method={method}", *variant.overrides, *spec.overrides, f"model.bits={cell.bits}",
                 f"train.seed={cell.seed}", f"output_dir={spec.out / 'runs' / cell.key}",
                 f"train.checkpoint={str(spec.checkpoint).lower()}", "train.tensorboard=false", "eval.plots=false",
                 f"train.verbose={'2' if spec.progress else '0'}"]
    if spec.dataset is not None:
        overrides.append(f"data.root={spec.dataset}")
    if spec.epochs is not None:
        overrides.append(f"train.epochs={spec.epochs}")
    return load_config(path if path.is_file() else None, overrides)



def parse_list(text: str, kind: Callable[[str], Any] = str, name: str = "list") -> tuple[Any, ...]:
    """Comma-separated values, with an error naming the option when one does not parse."""
    try:
        items = tuple(kind(x.strip()) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise ConfigError(f"{name}: cannot parse {text!r}: {exc}") from exc
    if not items:
        raise ConfigError(f"{name}: empty list")
    return items

