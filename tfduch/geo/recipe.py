"""The band recipe: which bands of a scene, how they are scaled to 8 bits, and what counts as no data.

Encoders expect 8-bit RGB (the UC Merced training imagery: aerial RGB orthophotos at 0.3 m/px, 256 px
tiles). A recipe turns any scene (12/16-bit, multispectral, float reflectance) into that, and it is stored
in the archive manifest, so later additions and queries see the same pixels. Scaling choices:

* ``fixed:LO,HI`` — ``(x - LO) / (HI - LO)`` clipped to [0, 1], e.g. ``fixed:0,10000`` for Sentinel-2 L2A
  reflectance (digital number / 10000) or ``fixed:0,3000`` for a brighter rendering;
* ``percentile:P1,P2`` — LO/HI are the P1/P2 percentiles of each band over the scene's valid pixels
  (estimated from a decimated read, see :func:`tfduch.geo.scenes.scene_stats`), stored per scene;
* ``none`` — 8-bit data as is (other integer types are scaled by their dtype's range).

then ``v ** (1 / gamma)`` and ``round(255 v)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tfduch.errors import DataError

__all__ = ["BandRecipe", "parse_bands", "parse_scale"]

SCALES = ("none", "fixed", "percentile")


def parse_bands(text: str | None) -> tuple[str | int, ...] | None:
    """``"B04,B03,B02"`` → names, ``"3,2,1"`` → 1-based band indexes, ``None``/empty → the first 3 bands."""
    if not text:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    if any(not p for p in parts):
        raise DataError(f"--bands {text!r}: empty band name (write e.g. B04,B03,B02 or 3,2,1)")
    if len(parts) not in (1, 3):
        raise DataError(f"--bands {text!r}: give 3 bands (R,G,B) or 1 (grey), got {len(parts)}")
    out: list[str | int] = []
    for p in parts:
        if p.isdigit():
            if int(p) < 1:
                raise DataError(f"--bands {text!r}: band indexes start at 1")
            out.append(int(p))
        else:
            out.append(p)
    return tuple(out)


def parse_scale(text: str) -> tuple[str, tuple[float, float] | None]:
    """``"fixed:0,10000"`` / ``"percentile:2,98"`` / ``"none"`` → (kind, (lo, hi) or None)."""
    kind, _, args = str(text).partition(":")
    kind = kind.strip().lower()
    if kind not in SCALES:
        raise DataError(f"--scale {text!r}: use none, fixed:LO,HI or percentile:P1,P2")
    if kind == "none":
        return kind, None
    try:
        lo, hi = (float(v) for v in args.split(","))
    except ValueError:
        raise DataError(f"--scale {text!r}: {kind} wants two numbers, e.g. {kind}:"
                        f"{'0,10000' if kind == 'fixed' else '2,98'}") from None
    if not hi > lo or (kind == "percentile" and not 0 <= lo < hi <= 100):
        raise DataError(f"--scale {text!r}: need LO < HI" + (" within 0..100" if kind == "percentile" else ""))
    return kind, (lo, hi)


@dataclass
class BandRecipe:
    """How scene pixels become 8-bit RGB; JSON-serialisable with :meth:`to_dict` / :meth:`from_dict`."""

    bands: tuple[str | int, ...] | None = None
    scale: str = "none"
    scale_args: tuple[float, float] | None = None
    gamma: float = 1.0
    max_nodata: float = 0.5          # skip tiles with a larger share of nodata / masked / padded pixels
    resampling: str = "bilinear"     # used when a target GSD differs from the scene's
    stats: dict[str, list[list[float]]] = field(default_factory=dict)  # scene id → per band [lo, hi]

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise DataError(f"unknown scale {self.scale!r}; use one of {', '.join(SCALES)}")
        if self.scale != "none" and self.scale_args is None:
            raise DataError(f"scale {self.scale!r} needs two numbers")
        if not self.gamma > 0:
            raise DataError(f"gamma must be > 0, got {self.gamma}")
        if not 0 <= self.max_nodata <= 1:
            raise DataError(f"max nodata share must be within 0..1, got {self.max_nodata}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bands"] = list(self.bands) if self.bands is not None else None
        d["scale_args"] = list(self.scale_args) if self.scale_args is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BandRecipe:
        d = dict(d)
        d["bands"] = tuple(d["bands"]) if d.get("bands") is not None else None
        d["scale_args"] = tuple(d["scale_args"]) if d.get("scale_args") is not None else None
        return cls(**d)

    def describe(self) -> dict[str, Any]:
        """The recipe without per-scene statistics (what must match between two runs on one archive)."""
        d = self.to_dict()
        d.pop("stats")
        return d

    def limits(self, scene_id: str, dtype: np.dtype, nbands: int) -> np.ndarray:
        """``float64 [nbands, 2]`` (lo, hi) per band for this scene."""
        if self.scale == "fixed":
            assert self.scale_args is not None
            return np.tile(np.asarray(self.scale_args, np.float64), (nbands, 1))
        if self.scale == "percentile":
            if scene_id not in self.stats:
                raise DataError(f"no percentile statistics for scene {scene_id!r} in the recipe")
            return np.asarray(self.stats[scene_id], np.float64).reshape(nbands, 2)
        dtype = np.dtype(dtype)
        if dtype == np.uint8:
            return np.tile([0.0, 255.0], (nbands, 1))
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return np.tile([float(info.min), float(info.max)], (nbands, 1))
        return np.tile([0.0, 1.0], (nbands, 1))  # float data: taken as reflectance in 0..1

    def apply(self, data: np.ndarray, valid: np.ndarray, limits: np.ndarray) -> np.ndarray:
        """``[C, H, W]`` band data + ``bool [H, W]`` valid mask → ``uint8 [H, W, 3]`` (invalid pixels black)."""
        if data.ndim != 3 or data.shape[0] not in (1, 3):
            raise DataError(f"a recipe needs 1 or 3 bands, got data of shape {data.shape}")
        lo = limits[:, 0].reshape(-1, 1, 1)
        span = np.maximum(limits[:, 1] - limits[:, 0], 1e-12).reshape(-1, 1, 1)
        if self.scale == "none" and data.dtype == np.uint8:
            out = data
        else:
            v = np.clip((data.astype(np.float32) - lo) / span, 0.0, 1.0)
            if self.gamma != 1.0:
                v = v ** np.float32(1.0 / self.gamma)
            out = np.rint(v * 255.0).astype(np.uint8)
        out = np.where(valid[None], out, 0).astype(np.uint8)
        if out.shape[0] == 1:
            out = np.repeat(out, 3, axis=0)
        return np.ascontiguousarray(np.transpose(out, (1, 2, 0)))


def percentile_limits(data: np.ndarray, valid: np.ndarray, p: Sequence[float]) -> list[list[float]]:
    """Per band the P1/P2 percentiles over valid pixels (``[C, H, W]``, ``bool [H, W]``)."""
    out = []
    for band in data:
        values = band[valid]
        if values.size == 0:
            raise DataError("the scene has no valid pixels to compute a percentile stretch from")
        lo, hi = np.percentile(values.astype(np.float64), [p[0], p[1]])
        out.append([float(lo), float(hi) if hi > lo else float(lo) + 1.0])
    return out
