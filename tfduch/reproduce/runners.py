"""Running cells: a learned method through the pipeline's one training path, a classical baseline, or the
cosine reference; and the driver that runs every missing cell and rewrites the table."""

from __future__ import annotations

import datetime as _dt
import shutil
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfduch import runs
from tfduch.config import Config
from tfduch.io import atomic_write_json
from tfduch.pipeline import Prepared, evaluate_encoders, fit_classical, fit_method, save_model
from tfduch.reproduce.cells import cell_path, load_cell, same_settings, settings_of
from tfduch.reproduce.grid import CLASSICAL, REFERENCE, Cell, ReproduceSpec, base_config, cell_config
from tfduch.reproduce.reporting import build_table, write_table


def _tanh_codes(model: Any, modality: str) -> Callable[[np.ndarray], np.ndarray]:
    head = model.image_head if modality == "image" else model.text_head

    def encode(x: np.ndarray) -> np.ndarray:
        chunks = [np.asarray(head(x[i:i + 1024], training=False)) for i in range(0, len(x), 1024)]
        return np.concatenate(chunks) if chunks else np.zeros((0, model.bits), np.float32)

    return encode


def _run_learned(spec: ReproduceSpec, cell: Cell, prepared: Prepared) -> dict[str, Any]:
    cfg = cell_config(spec, cell)
    run_dir = Path(cfg.output_dir)
    model, summary, _, _ = fit_method(cfg, prepared, run_dir)
    k, ks = cfg.eval.k, cfg.eval.ks
    hamming = evaluate_encoders(prepared, lambda x: model.encode(x, "image"), lambda x: model.encode(x, "text"), k, ks)
    continuous = evaluate_encoders(prepared, _tanh_codes(model, "image"), _tanh_codes(model, "text"), k, ks,
                                   cosine=True)
    if spec.keep_models:
        runs.save_config(cfg, run_dir)
        save_model(model, cfg, prepared, run_dir, summary)
    elif (run_dir / "checkpoints").is_dir():
        shutil.rmtree(run_dir / "checkpoints")  # the cell record is the result; checkpoints are large
    return {"metrics": hamming.to_dict(), "continuous": continuous.to_dict(), "epochs": cfg.train.epochs,
            "train_seconds": summary.get("train_seconds"),
            "final_losses": {name: values[-1] for name, values in summary.get("history", {}).items() if values}}


def _run_classical(cell: Cell, prepared: Prepared, k: int, ks: Sequence[int]) -> dict[str, Any]:
    model, seconds = fit_classical(cell.method, prepared, cell.bits, seed=cell.seed)
    report = evaluate_encoders(prepared, model.encode_image, model.encode_text, k, ks)
    return {"metrics": report.to_dict(), "train_seconds": seconds}


def _run_cosine(prepared: Prepared, k: int, ks: Sequence[int]) -> dict[str, Any]:
    report = evaluate_encoders(prepared, lambda x: x, lambda x: x, k, ks, cosine=True, directions=("i2i", "t2t"))
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
        settings = settings_of(spec, cell, prepared)
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

