"""One harness for the whole comparison table: every method × code length × seed on the same features.

Why: users compare methods, and the papers compare DUCH with DJSRH and JDSH. Every cell here uses the
same cached frozen features (:func:`tfduch.pipeline.prepare`), the same protocol split and the same
evaluation, so differences come from the methods alone. A cell is one (method, bits, seed) training
and evaluation; its result is written atomically to ``OUT/cells/<cell>.json`` and skipped on a re-run
whose settings (resolved config, dataset and split) are unchanged, so an interrupted reproduction
resumes where it stopped. The table (``reproduce.md`` + ``reproduce.json``) and one PR-curve figure per
code length are rebuilt from the requested cells at the end of each run; runs with other method lists
(e.g. an ablation) can share the output folder, reusing its cells, under another table ``name``.

Rows:

* learned methods (``duch``, ``chnr`` when :mod:`tfduch.models.chnr` exists, ``cach``, ``djsrh``,
  ``jdsh``, and CACH ablation variants such as ``cach-no-similarity``) — trained with their
  ``configs/<method>.yaml``; each also yields a "tanh · cosine" row (its continuous codes ranked by
  cosine), which shows what binarisation costs;
* classical hashing on the same features: ``cca-itq``, ``ridge-itq``;
* ``cosine`` — cosine ranking of the frozen encoder features themselves, no training (uni-modal
  directions only: the image and text encoders do not share a space).
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.config import Config, load_config, model_fields
from tfduch.errors import ConfigError
from tfduch.eval import RetrievalReport, markdown_table
from tfduch.eval.metrics import PRCurve
from tfduch.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from tfduch.pipeline import Prepared

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CELL_VERSION = 1

#: Published UCM mAP@20 (DUCH paper, Mikriukov et al. 2022), by direction and code length.
PUBLISHED: dict[str, dict[str, dict[int, float]]] = {
    "duch": {"i2t": {16: 0.760, 32: 0.794, 64: 0.844, 128: 0.870},
             "t2i": {16: 0.799, 32: 0.851, 64: 0.916, 128: 0.927}},
    "djsrh": {"i2t": {16: 0.686, 32: 0.711, 64: 0.735, 128: 0.754},
              "t2i": {16: 0.738, 32: 0.755, 64: 0.776, 128: 0.800}},
    "jdsh": {"i2t": {16: 0.462, 32: 0.751, 64: 0.820, 128: 0.829},
             "t2i": {16: 0.509, 32: 0.794, 64: 0.884, 128: 0.904}},
}

LEARNED = ("duch", "chnr", "cach", "djsrh", "jdsh")
CLASSICAL = ("cca-itq", "ridge-itq")
REFERENCE = ("cosine",)
#: CACH ablation variants: the method they train and the config overrides that switch a piece off.
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cach-no-similarity": ("cach", ("model.params.similarity=false",)),
    "cach-no-contrastive": ("cach", ("model.params.contrastive=false",)),
    "cach-no-autoencoder": ("cach", ("model.params.cross_autoencoder=false",)),
    "cach-no-consistency": ("cach", ("model.params.consistency=false",)),
    "cach-pairwise-only": ("cach", ("model.params.scales={pairwise: 1.0, neighbourhood: 0.0, cluster: 0.0}",)),
    "cach-no-cluster": ("cach", ("model.params.scales.cluster=0.0",)),
    "cach-adversarial": ("cach", ("model.params.adversarial=true",)),
    # configs/chnr_duch.yaml as overrides of configs/chnr.yaml: CHNR's detector weights on DUCH's objective
    "chnr-duch": ("chnr", ("train.epochs=100", "noise.chnr.weighting=threshold", "noise.chnr.switch_epoch=50",
                           "noise.chnr.objective=duch")),
}
#: Display names of variants that are not CACH ablations.
VARIANT_NAMES = {"chnr-duch": "CHNR (DUCH objective)"}
DISPLAY = {"duch": "DUCH", "chnr": "CHNR", "cach": "CACH", "djsrh": "DJSRH", "jdsh": "JDSH", "cca-itq": "CCA+ITQ",
           "ridge-itq": "Ridge+PCA+ITQ", "cosine": "cosine · frozen features"}


def known_methods() -> tuple[str, ...]:
    return LEARNED + tuple(VARIANTS) + CLASSICAL + REFERENCE


def chnr_unavailable() -> str | None:
    """Why CHNR cannot run here (None when it can): the trainer's method registry must know it."""
    import tfduch.methods  # noqa: F401  (the registry as build_model sees it)
    from tfduch.training.trainer import METHODS

    return None if "chnr" in METHODS else "tfduch.models.chnr exists but registers no 'chnr' method with the trainer"


def display_name(method: str) -> str:
    if method in VARIANT_NAMES:
        return VARIANT_NAMES[method]
    if method in VARIANTS:
        return f"CACH − {method.removeprefix('cach-').replace('-', ' ')}"
    return DISPLAY.get(method, method)


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
    """The resolved config of a learned cell: ``configs/<method>.yaml`` + variant + bits/seed/epochs."""
    method, variant_overrides = VARIANTS.get(cell.method, (cell.method, ()))
    path = spec.config_dir / f"{method}.yaml"
    overrides = [f"model.method={method}", *variant_overrides, *spec.overrides, f"model.bits={cell.bits}",
                 f"train.seed={cell.seed}", f"output_dir={spec.out / 'runs' / cell.key}",
                 f"train.checkpoint={str(spec.checkpoint).lower()}", "train.tensorboard=false", "eval.plots=false",
                 f"train.verbose={'2' if spec.progress else '0'}"]
    if spec.dataset is not None:
        overrides.append(f"data.root={spec.dataset}")
    if spec.epochs is not None:
        overrides.append(f"train.epochs={spec.epochs}")
    return load_config(path if path.is_file() else None, overrides)


def _settings(spec: ReproduceSpec, cell: Cell, prepared: Prepared) -> dict[str, Any]:
    """What determines a cell's result; a stored cell with different settings is recomputed."""
    settings: dict[str, Any] = {"version": CELL_VERSION, "cell": cell.key,
                                "dataset_fingerprint": prepared.dataset.fingerprint(),
                                "split": prepared.split.digest(), "encoders": prepared.features.encoder_ids}
    if cell.method in CLASSICAL or cell.method in REFERENCE:
        return settings
    settings["config"] = model_fields(cell_config(spec, cell).to_dict())
    return settings


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def same_settings(stored: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether a stored cell is still valid for the current settings.

    Everything but the config must be equal. Config fields compare one by one; a field the stored
    cell does not know (added to the config schema since) counts as equal when it has its built-in
    default, so growing the schema does not invalidate finished cells but setting the new field does.
    """
    if {k: v for k, v in stored.items() if k != "config"} != {k: v for k, v in current.items() if k != "config"}:
        return False
    if ("config" in stored) != ("config" in current):
        return False
    if "config" not in current:
        return True
    old, new = _flatten(json.loads(json.dumps(stored["config"]))), _flatten(json.loads(json.dumps(current["config"])))
    defaults = _flatten(json.loads(json.dumps(Config().to_dict())))
    for key, value in new.items():
        if key in old:
            if old[key] != value:
                return False
        elif key not in defaults or defaults[key] != value:
            return False
    return True


# ----------------------------------------------------------------------------------------------- cells
def cell_path(spec: ReproduceSpec, cell: Cell) -> Path:
    return spec.out / "cells" / f"{cell.key}.json"


def load_cell(path: Path) -> dict[str, Any] | None:
    """A finished cell's record, or None when the file is missing or unreadable (then it is rerun)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "metrics" in record and "settings" in record else None


def _evaluate_codes(prepared: Prepared, encode_image: Callable[[np.ndarray], np.ndarray],
                    encode_text: Callable[[np.ndarray], np.ndarray], k: int, ks: Sequence[int],
                    cosine: bool = False, directions: Sequence[str] | None = None) -> RetrievalReport:
    from tfduch.eval import evaluate_retrieval
    from tfduch.eval.continuous import evaluate_retrieval_cosine
    from tfduch.pipeline import retrieval_features

    q_img, q_txt, q_lab = retrieval_features(prepared, "query")
    d_img, d_txt, d_lab = retrieval_features(prepared, "database")
    args = (encode_image(q_img), encode_text(q_txt), encode_image(d_img), encode_text(d_txt), q_lab, d_lab)
    if cosine:
        return evaluate_retrieval_cosine(*args, k=k, ks=ks, directions=directions)
    return evaluate_retrieval(*args, k=k, ks=ks)


def _tanh_codes(model: Any, modality: str) -> Callable[[np.ndarray], np.ndarray]:
    head = model.image_head if modality == "image" else model.text_head

    def encode(x: np.ndarray) -> np.ndarray:
        chunks = [np.asarray(head(x[i:i + 1024], training=False)) for i in range(0, len(x), 1024)]
        return np.concatenate(chunks) if chunks else np.zeros((0, model.bits), np.float32)

    return encode


def _training_features(cfg: Config, prepared: Prepared) -> Any:
    """The training rows exactly as ``tfduch train`` builds them (with caption noise / a clean subset
    where the config or the method asks for one, e.g. CHNR)."""
    from tfduch.pipeline import caption_noise, training_features

    return training_features(prepared, caption_noise(cfg, prepared))


def _run_learned(spec: ReproduceSpec, cell: Cell, prepared: Prepared) -> dict[str, Any]:
    from tfduch.pipeline import save_model
    from tfduch.training import trainer

    cfg = cell_config(spec, cell)
    run_dir = Path(cfg.output_dir)
    features = _training_features(cfg, prepared)
    model = trainer.build_model(cfg, features)
    model, summary = trainer.train(cfg, features, run_dir, model=model)
    k, ks = cfg.eval.k, cfg.eval.ks
    hamming = _evaluate_codes(prepared, lambda x: model.encode(x, "image"), lambda x: model.encode(x, "text"), k, ks)
    continuous = _evaluate_codes(prepared, _tanh_codes(model, "image"), _tanh_codes(model, "text"), k, ks,
                                 cosine=True)
    if spec.keep_models:
        cfg.save(run_dir / "config.yaml")
        save_model(model, cfg, prepared, run_dir, summary)
    elif (run_dir / "checkpoints").is_dir():
        shutil.rmtree(run_dir / "checkpoints")  # the cell record is the result; checkpoints are large
    return {"metrics": hamming.to_dict(), "continuous": continuous.to_dict(), "epochs": cfg.train.epochs,
            "train_seconds": summary.get("train_seconds"),
            "final_losses": {name: values[-1] for name, values in summary.get("history", {}).items() if values}}


def _run_classical(cell: Cell, prepared: Prepared, k: int, ks: Sequence[int]) -> dict[str, Any]:
    from tfduch.baselines import CCAITQ, RidgePCAITQ
    from tfduch.pipeline import training_features

    cls = {"cca-itq": CCAITQ, "ridge-itq": RidgePCAITQ}[cell.method]
    train = training_features(prepared)
    start = time.perf_counter()
    model = cls(cell.bits, seed=cell.seed).fit(train.image, train.text)
    seconds = time.perf_counter() - start
    report = _evaluate_codes(prepared, model.encode_image, model.encode_text, k, ks)
    return {"metrics": report.to_dict(), "train_seconds": seconds}


def _run_cosine(prepared: Prepared, k: int, ks: Sequence[int]) -> dict[str, Any]:
    report = _evaluate_codes(prepared, lambda x: x, lambda x: x, k, ks, cosine=True, directions=("i2i", "t2t"))
    return {"metrics": report.to_dict(), "train_seconds": 0.0}


def run_cell(spec: ReproduceSpec, cell: Cell, prepared: Prepared) -> dict[str, Any]:
    """Train/fit and evaluate one cell; returns its record (not yet written)."""
    eval_cfg = Config().eval
    if cell.method in REFERENCE:
        result = _run_cosine(prepared, eval_cfg.k, eval_cfg.ks)
    elif cell.method in CLASSICAL:
        result = _run_classical(cell, prepared, eval_cfg.k, eval_cfg.ks)
    else:
        result = _run_learned(spec, cell, prepared)
    return {"cell": cell.key, "method": cell.method, "bits": cell.bits, "seed": cell.seed, **result,
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


# -------------------------------------------------------------------------------------------- driver
@dataclass
class ReproduceResult:
    ran: list[str]
    reused: list[str]
    failed: dict[str, str]
    paths: dict[str, Path]


def reproduce(spec: ReproduceSpec, prepared: Prepared | None = None, log: Callable[[str], None] | None = None
              ) -> ReproduceResult:
    """Run every missing cell, then (re)write the table; ``prepared`` lets tests inject features."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if prepared is None:
        from tfduch.pipeline import prepare

        prepared = prepare(base_config(spec), progress=spec.progress)
    for method, why in spec.skipped.items():
        log(f"skipping {method}: {why}")
    ran, reused, failed = [], [], {}
    cells = spec.cells()
    todo: list[tuple[Cell, dict[str, Any]]] = []
    for cell in cells:
        settings = _settings(spec, cell, prepared)
        record = load_cell(cell_path(spec, cell))
        if record is not None and same_settings(record["settings"], settings):
            reused.append(cell.key)
        else:
            if record is not None:
                log(f"{cell.key}: settings changed since it was stored, recomputing")
            todo.append((cell, settings))
    if spec.table_only:
        log(f"{len(cells)} cells: {len(reused)} finished, {len(todo)} missing or stale (not run: table only)")
        todo = []
    else:
        log(f"{len(cells)} cells: {len(reused)} already finished, {len(todo)} to run → {spec.out}")
    bar = _progress(todo, spec.progress)
    for cell, settings in bar:
        if hasattr(bar, "set_description"):
            bar.set_description(cell.key)
        record = load_cell(cell_path(spec, cell))
        if record is not None and same_settings(record["settings"], settings):
            reused.append(cell.key)  # finished meanwhile by another reproduce sharing OUT
            continue
        try:
            record = run_cell(spec, cell, prepared)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one broken cell must not lose the others; reported at the end
            failed[cell.key] = f"{type(exc).__name__}: {exc}"
            log(f"{cell.key} failed: {failed[cell.key]}\n{traceback.format_exc()}")
            continue
        record["settings"] = settings
        atomic_write_json(cell_path(spec, cell), record)
        ran.append(cell.key)
        m = record["metrics"]["directions"]
        log(f"{cell.key}: " + ", ".join(f"{d} {m[d]['map_reference']:.4f}" for d in m)
            + f" ({record.get('train_seconds') or 0:.0f} s)")
    finished = set(reused) | set(ran)
    records = [r for r in (load_cell(cell_path(spec, c)) for c in cells if c.key in finished) if r is not None]
    table = build_table(spec, records, prepared.dataset.name)
    paths = write_table(table, spec.out, records, spec.name)
    return ReproduceResult(ran, reused, failed, paths)


def _progress(items: list[Any], enabled: bool) -> Iterable[Any]:
    if not enabled or not items:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, unit="cell", desc="reproduce")


# --------------------------------------------------------------------------------------------- table
def _stats(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": len(arr), "values": [float(v) for v in arr]}


def build_table(spec: ReproduceSpec, records: list[dict[str, Any]], dataset: str) -> dict[str, Any]:
    """Aggregate finished cells into rows of mean ± std over seeds (JSON-ready)."""
    by_row: dict[tuple[str, str, int | None], dict[str, list[float]]] = {}
    seeds: dict[tuple[str, str, int | None], list[int]] = {}
    epochs: dict[str, int] = {}
    for r in records:
        for ranking, key in (("hamming", "metrics"), ("cosine", "continuous")):
            report = r.get(key)
            if not report:
                continue
            if r["method"] in REFERENCE:
                ranking = "cosine"
            row = (r["method"], ranking, r["bits"])
            seeds.setdefault(row, []).append(r["seed"])
            for d, res in report["directions"].items():
                if res["map_reference"] is not None:
                    by_row.setdefault(row, {}).setdefault(d, []).append(res["map_reference"])
        if "epochs" in r:
            epochs[r["method"]] = r["epochs"]
    order = {m: i for i, m in enumerate(spec.methods)}
    rows = []
    for (method, ranking, bits), values in sorted(by_row.items(), key=lambda kv: (
            kv[0][1] != "hamming", order.get(kv[0][0], 99), kv[0][2] or 0)):
        published = PUBLISHED.get(method, {})
        rows.append({"method": method, "name": display_name(method), "ranking": ranking, "bits": bits,
                     "seeds": sorted(seeds[(method, ranking, bits)]),
                     "map": {d: _stats(v) for d, v in values.items()},
                     "published": {d: published[d][bits] for d in published if bits in published[d]}
                     if ranking == "hamming" else {}})
    return {"dataset": dataset, "k": 20, "map_definition": "reference (DUCH calc_map_k)",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "methods": list(spec.methods), "bits": list(spec.bits), "seeds_requested": spec.seeds,
            "epochs": epochs, "epochs_override": spec.epochs, "skipped": dict(spec.skipped), "rows": rows,
            "published": {m: {d: {str(b): v for b, v in per.items()} for d, per in dirs.items()}
                          for m, dirs in PUBLISHED.items()},
            "comparisons": _comparisons(rows, spec)}


def _row_mean(rows: list[dict[str, Any]], method: str, bits: int) -> float | None:
    for row in rows:
        if row["method"] == method and row["bits"] == bits and row["ranking"] == "hamming":
            if all(d in row["map"] for d in ("i2t", "t2i")):
                return (row["map"]["i2t"]["mean"] + row["map"]["t2i"]["mean"]) / 2.0
    return None


def _comparisons(rows: list[dict[str, Any]], spec: ReproduceSpec) -> list[dict[str, Any]]:
    """The issue's bars, checked: CACH vs DUCH, and each learned method vs CCA+ITQ (mean of I→T, T→I)."""
    out = []
    for bits in spec.bits:
        pairs = [("cach", "duch")] + [(m, "cca-itq") for m in spec.methods
                                      if m not in CLASSICAL and m not in REFERENCE]
        for a, b in pairs:
            ma, mb = _row_mean(rows, a, bits), _row_mean(rows, b, bits)
            if ma is not None and mb is not None:
                out.append({"bits": bits, "method": a, "versus": b, "mean_map": ma, "versus_mean_map": mb,
                            "difference": ma - mb, "at_or_above": ma >= mb})
    return out


def _fmt(stats: dict[str, Any] | None, seeds_requested: int) -> str:
    if stats is None:
        return ""
    text = f"{stats['mean']:.3f}"
    if stats["n"] > 1:
        text += f" ± {stats['std']:.3f}"
    if stats["n"] != seeds_requested:
        text += f" ({stats['n']})"
    return text


def table_markdown(table: dict[str, Any]) -> str:
    """The human-readable table: one block per direction, published rows beside ours."""
    bits, n_seeds = table["bits"], table["seeds_requested"]
    lines = [f"# Reproduction on {table['dataset']}: mAP@{table['k']}", "",
             f"mAP@{table['k']} with the {table['map_definition']} definition; ranking by Hamming distance "
             "(ties by database index) unless marked cosine. Cells: mean ± sample std over training seeds "
             f"({n_seeds} requested; a number in brackets = seeds actually finished). Same frozen features, "
             "split and evaluation for every row. Published rows: DUCH paper (Mikriukov et al. 2022), UCM.", ""]
    if table["epochs"]:
        lines.append("Training epochs: " + ", ".join(f"{display_name(m)} {e}" for m, e in table["epochs"].items())
                     + (" (--epochs override)" if table["epochs_override"] else "") + ".")
        lines.append("")
    if any(row["method"] in REFERENCE for row in table["rows"]):
        lines += ["*cosine · frozen features* ranks by cosine on the frozen encoder outputs, without training and "
                  "without codes (the same value in every column); cross-modal it is n/a, since the image and text "
                  "encoders do not share a space. *tanh codes, cosine* rows rank a learned method's continuous "
                  "codes by cosine: the gap to its Hamming row is what binarisation costs.", ""]
    for method, why in table["skipped"].items():
        lines += [f"*{display_name(method)} not run: {why}.*", ""]
    rows = table["rows"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["ranking"]), []).append(row)
    for directions, title in ((("i2t", "t2i"), "Cross-modal"), (("i2i", "t2t"), "Uni-modal")):
        for d in directions:
            body = []
            for (method, ranking), per_bits in groups.items():
                cells = {r["bits"]: r for r in per_bits}
                if all(d not in r["map"] for r in per_bits):
                    if method in REFERENCE and title == "Cross-modal":
                        body.append({"method": display_name(method), **{f"b{b}": "n/a" for b in bits}})
                    continue
                name = display_name(method) + (" (tanh codes, cosine)" if ranking == "cosine"
                                               and method not in REFERENCE else "")
                if None in cells:  # bit-free reference: same value in every column
                    value = _fmt(cells[None]["map"].get(d), 1)
                    body.append({"method": name, **{f"b{b}": value for b in bits}})
                    continue
                body.append({"method": name, **{f"b{b}": _fmt(cells[b]["map"].get(d), n_seeds)
                                                 if b in cells else "" for b in bits}})
                published = PUBLISHED.get(method, {}).get(d)
                if ranking == "hamming" and published:
                    body.append({"method": f"{display_name(method)} (published)",
                                 **{f"b{b}": f"{published[b]:.3f}" if b in published else "" for b in bits}})
            if body:
                arrow = {"i2t": "I→T", "t2i": "T→I", "i2i": "I→I", "t2t": "T→T"}[d]
                lines += [f"## {title}: {arrow}", "",
                          markdown_table(body, [("method", "method")] + [(f"b{b}", f"{b} bits") for b in bits])]
    comparisons = table.get("comparisons") or []
    if comparisons:
        lines += ["## Checks (mean of I→T and T→I)", "",
                  markdown_table([{"bits": c["bits"], "method": display_name(c["method"]),
                                   "versus": display_name(c["versus"]), "ours": c["mean_map"],
                                   "theirs": c["versus_mean_map"], "difference": c["difference"],
                                   "at or above": "yes" if c["at_or_above"] else "NO"} for c in comparisons],
                                 ["bits", "method", "versus", "ours", "theirs", "difference", "at or above"],
                                 floatfmt=".4f")]
    return "\n".join(lines)


def _mean_curve(curves: list[PRCurve]) -> PRCurve:
    precision = np.nanmean(np.stack([c.precision for c in curves]), axis=0)
    recall = np.nanmean(np.stack([c.recall for c in curves]), axis=0)
    return PRCurve(curves[0].radius, precision, recall)


def pr_figure(records: list[dict[str, Any]], bits: int, title: str) -> bytes | None:
    """PNG of the Hamming-radius PR curves (I→T and T→I) of every method at one code length, seed-averaged."""
    import io
    import warnings

    from matplotlib.figure import Figure

    curves: dict[str, dict[str, list[PRCurve]]] = {}
    for r in records:
        if r["bits"] != bits:
            continue
        for d in ("i2t", "t2i"):
            res = r["metrics"]["directions"].get(d)
            if res is not None:
                curves.setdefault(r["method"], {}).setdefault(d, []).append(PRCurve.from_dict(res["pr"]))
    if not curves:
        return None
    fig = Figure(figsize=(11, 4.5))
    for i, d in enumerate(("i2t", "t2i")):
        ax = fig.add_subplot(1, 2, i + 1)
        for method, per_dir in curves.items():
            if d not in per_dir:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN radii of some seeds
                curve = _mean_curve(per_dir[d])
            ok = ~np.isnan(curve.precision) & ~np.isnan(curve.recall)
            ax.plot(curve.recall[ok], curve.precision[ok], marker=".", markersize=3, label=display_name(method))
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
               title=f"{title}: {'I→T' if d == 'i2t' else 'T→I'}, {bits} bits")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def write_table(table: dict[str, Any], out: Path, records: list[dict[str, Any]], name: str = "reproduce"
                ) -> dict[str, Path]:
    """``<name>.json``, ``<name>.md`` and ``<name>_pr_<bits>bits.png`` for every code length with results."""
    paths = {"json": atomic_write_text(out / f"{name}.json", json.dumps(table, indent=2, allow_nan=False) + "\n"),
             "markdown": atomic_write_text(out / f"{name}.md", table_markdown(table))}
    for bits in table["bits"]:
        png = pr_figure(records, bits, table["dataset"])
        if png is not None:
            paths[f"pr_{bits}"] = atomic_write_bytes(out / f"{name}_pr_{bits}bits.png", png)
    return paths


def parse_list(text: str, kind: Callable[[str], Any] = str, name: str = "list") -> tuple[Any, ...]:
    """Comma-separated values, with an error naming the option when one does not parse."""
    try:
        items = tuple(kind(x.strip()) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise ConfigError(f"{name}: cannot parse {text!r}: {exc}") from exc
    if not items:
        raise ConfigError(f"{name}: empty list")
    return items


__all__ = ["CLASSICAL", "Cell", "LEARNED", "PUBLISHED", "REFERENCE", "ReproduceResult", "ReproduceSpec", "VARIANTS",
           "build_table", "cell_config", "chnr_unavailable", "known_methods", "load_cell", "parse_list", "pr_figure",
           "reproduce", "run_cell", "same_settings", "table_markdown", "write_table"]
