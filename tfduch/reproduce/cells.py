"""The cell cache: one finished cell's record per file, reused while the settings that decide it are unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tfduch.config import Config, model_fields
from tfduch.pipeline import Prepared
from tfduch.reproduce.grid import CLASSICAL, REFERENCE, Cell, ReproduceSpec, cell_config

CELL_VERSION = 1


def settings_of(spec: ReproduceSpec, cell: Cell, prepared: Prepared) -> dict[str, Any]:
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



def cell_path(spec: ReproduceSpec, cell: Cell) -> Path:
    return spec.out / "cells" / f"{cell.key}.json"


def load_cell(path: Path) -> dict[str, Any] | None:
    """A finished cell's record, or None when the file is missing or unreadable (then it is rerun)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "metrics" in record and "settings" in record else None
