"""The edge export config (``export/edge.yaml``): which TFLite variants to write, on which images, and
the least bit agreement with the float SavedModel each must keep to be written at all.

Why a file: the floors are a deployment decision (what a ground station may accept), reviewed with the
rest of the deployment files, not a CLI habit. Read with PyYAML; every key is checked, so a typo is an
error naming it rather than a silently ignored floor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tfduch.export.layout import ExportError

__all__ = ["EDGE_CONFIG", "load_edge_config", "edge_options"]

# The shipped config, relative to the repository root.
EDGE_CONFIG = Path("export/edge.yaml")
_TOP = {"variants", "on_below_floor", "calibration", "bias_correction", "check", "seed"}
_SECTIONS = {"calibration": {"images", "folder"}, "bias_correction": {"images"}, "check": {"images", "folder"}}


def _section(raw: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise ExportError(f"{path}: {name} must be a mapping, got {value!r}")
    unknown = set(value) - _SECTIONS[name]
    if unknown:
        raise ExportError(f"{path}: unknown key(s) {sorted(unknown)} in {name}; allowed: {sorted(_SECTIONS[name])}")
    return value


def _folder(value: Any, base: Path) -> Path | None:
    if value in (None, ""):
        return None
    folder = Path(str(value)).expanduser()
    return folder if folder.is_absolute() else base / folder


def load_edge_config(path: str | Path) -> dict[str, Any]:
    """The config as :class:`~tfduch.export.tflite.TFLiteOptions` keyword arguments (checked)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExportError(f"cannot read the edge config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ExportError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ExportError(f"{path}: expected a mapping with 'variants', got {type(raw).__name__}")
    unknown = set(raw) - _TOP
    if unknown:
        raise ExportError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP)}")
    variants = raw.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ExportError(f"{path}: 'variants' must map each TFLite variant to {{min_bit_agreement: F}}")
    floors: dict[str, float] = {}
    for name, spec in variants.items():
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - {"min_bit_agreement"}:
            raise ExportError(f"{path}: variant {name!r} takes only min_bit_agreement, got {spec!r}")
        if "min_bit_agreement" not in spec:
            raise ExportError(f"{path}: variant {name!r} has no min_bit_agreement (the floor is what this file is for)")
        floors[str(name)] = spec["min_bit_agreement"]
    base = path.parent
    calibration, bias, check = (_section(raw, n, path) for n in ("calibration", "bias_correction", "check"))
    options: dict[str, Any] = {
        "variants": tuple(floors), "min_bit_agreement": floors,
        "on_below_floor": raw.get("on_below_floor", "error"),
        "calibration_images": calibration.get("images", 200),
        "calibration_folder": _folder(calibration.get("folder"), base),
        "bias_correction_images": bias.get("images", 64),
        "check_images": check.get("images", 50),
        "check_folder": _folder(check.get("folder"), base),
        "seed": raw.get("seed", 0),
    }
    for key in ("calibration_images", "bias_correction_images", "check_images", "seed"):
        if isinstance(options[key], bool) or not isinstance(options[key], int):
            raise ExportError(f"{path}: {key.replace('_images', '.images')} must be a whole number, "
                              f"got {options[key]!r}")
    return options


def edge_options(path: str | Path, **overrides: Any) -> Any:
    """:class:`~tfduch.export.tflite.TFLiteOptions` from the config file, ``overrides`` applied on top."""
    from tfduch.export.tflite import TFLiteOptions

    return TFLiteOptions(**{**load_edge_config(path), **overrides})
