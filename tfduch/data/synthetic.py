"""A tiny deterministic Karpathy-format dataset for tests and smoke runs.

Every class has its own colour, texture (stripes, checkerboard, disc, ...) and caption vocabulary,
so both modalities carry the class and an end-to-end run on it must reach high mAP quickly.
"""

from __future__ import annotations

import colorsys
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_synthetic_dataset", "SYNTHETIC_CLASSES"]

# (class name, caption nouns, caption objects) — land-use flavoured, no trailing digits in names
SYNTHETIC_CLASSES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("farmland", ("farmland", "cropland", "field"), ("crops", "furrows", "rows of plants")),
    ("forest", ("forest", "woodland", "grove"), ("dense trees", "green canopy", "tall trees")),
    ("harbor", ("harbor", "port", "marina"), ("boats", "piers", "docks")),
    ("beach", ("beach", "shore", "coast"), ("sand", "waves", "umbrellas")),
    ("runway", ("runway", "airstrip", "airfield"), ("markings", "taxiways", "airplanes")),
    ("desert", ("desert", "dune field", "wasteland"), ("dunes", "dry sand", "bare rock")),
    ("river", ("river", "stream", "waterway"), ("bridges", "banks", "flowing water")),
    ("parking", ("parking lot", "car park", "parking area"), ("cars", "parking spaces", "vehicles")),
    ("stadium", ("stadium", "sports field", "arena"), ("stands", "a pitch", "seats")),
    ("residential", ("residential area", "neighbourhood", "housing area"), ("houses", "roofs", "gardens")),
)
_ADJECTIVES = ("large", "small", "wide", "long", "bright", "dark", "quiet", "busy", "green", "grey")
_PLACES = ("in the middle", "on the left", "on the right", "near the top", "at the bottom", "in the scene")
_TEMPLATES = (
    "there is a {adj} {noun} with {obj} {place} .",
    "a {noun} with many {obj} .",
    "this image shows a {adj} {noun} .",
    "{obj} can be seen {place} of the {noun} .",
    "it is a {adj} {noun} surrounded by {obj} .",
    "an aerial view of a {noun} with {obj} {place} .",
    "many {obj} are in a {adj} {noun} .",
)
_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF", "tiff": "TIFF", "webp": "WEBP"}
_N_PATTERNS = 6


def _class_name(k: int) -> str:
    base = SYNTHETIC_CLASSES[k % len(SYNTHETIC_CLASSES)][0]
    rep = k // len(SYNTHETIC_CLASSES)
    return base if rep == 0 else f"{base}{chr(ord('a') + rep % 26)}"  # never ends in a digit


def _class_colour(k: int, n_classes: int) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb((k / max(n_classes, 1)) % 1.0, 0.75, 0.9)
    return np.array([r, g, b]) * 255.0


def _pattern(k: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Class-specific texture in [0, 1] with a random phase/position, so images differ within a class."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    period = 4.0 + (k // _N_PATTERNS) % 3 * 2.0
    phase = rng.uniform(0, 2 * np.pi)
    kind = k % _N_PATTERNS
    if kind == 0:  # horizontal stripes
        p = 0.5 + 0.5 * np.sin(2 * np.pi * period * y + phase)
    elif kind == 1:  # vertical stripes
        p = 0.5 + 0.5 * np.sin(2 * np.pi * period * x + phase)
    elif kind == 2:  # checkerboard
        p = ((np.floor(period * x + phase) + np.floor(period * y + phase)) % 2).astype(np.float64)
    elif kind == 3:  # disc
        cy, cx = rng.uniform(0.35, 0.65, size=2)
        p = (((y - cy) ** 2 + (x - cx) ** 2) < 0.08).astype(np.float64)
    elif kind == 4:  # diagonal stripes
        p = 0.5 + 0.5 * np.sin(2 * np.pi * period * (x + y) / 1.4 + phase)
    else:  # concentric rings
        cy, cx = rng.uniform(0.4, 0.6, size=2)
        p = 0.5 + 0.5 * np.sin(2 * np.pi * period * np.hypot(y - cy, x - cx) + phase)
    return p


def _image(k: int, n_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    colour = _class_colour(k, n_classes)
    p = _pattern(k, size, rng)[..., None]
    img = colour * (0.35 + 0.65 * p) + rng.normal(0.0, 12.0, size=(size, size, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _captions(k: int, n: int, rng: np.random.Generator) -> list[str]:
    _, nouns, objs = SYNTHETIC_CLASSES[k % len(SYNTHETIC_CLASSES)]
    templates = rng.permutation(len(_TEMPLATES))
    out = []
    for j in range(n):
        t = _TEMPLATES[templates[j % len(_TEMPLATES)]]
        out.append(
            t.format(
                adj=_ADJECTIVES[rng.integers(len(_ADJECTIVES))],
                noun=nouns[rng.integers(len(nouns))],
                obj=objs[rng.integers(len(objs))],
                place=_PLACES[rng.integers(len(_PLACES))],
            )
        )
    return out


def make_synthetic_dataset(
    root: str | os.PathLike[str],
    n_classes: int = 4,
    per_class: int = 12,
    image_size: int = 64,
    captions_per_image: int = 5,
    seed: int = 0,
    image_format: str = "png",
    with_class_fields: bool = True,
) -> Path:
    """Write ``root/captions.json`` + ``root/images/<class>_<j>.<ext>`` and return ``root``.

    Deterministic for a given seed (byte-identical for lossless formats). With
    ``with_class_fields=False`` entries have no ``classcode``/``classname``, exercising the
    class-from-filename rule. Images are ordered class by class.
    """
    ext = image_format.lower().lstrip(".")
    if ext not in _FORMATS:
        raise ValueError(f"image_format must be one of {sorted(_FORMATS)}, got {image_format!r}")
    if n_classes < 1 or per_class < 1 or captions_per_image < 1 or image_size < 8:
        raise ValueError("n_classes, per_class, captions_per_image must be >= 1 and image_size >= 8")
    root = Path(root)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = []
    sentid = 0
    for k in range(n_classes):
        name = _class_name(k)
        for j in range(per_class):
            imgid = len(entries)
            filename = f"{name}_{j}.{ext}"
            save_kwargs = {"lossless": True} if ext == "webp" else {}
            if ext in ("jpg", "jpeg"):
                save_kwargs = {"quality": 95}
            Image.fromarray(_image(k, n_classes, image_size, rng)).save(
                images_dir / filename, format=_FORMATS[ext], **save_kwargs
            )
            sentences = []
            for cap in _captions(k, captions_per_image, rng):
                sentences.append({"raw": cap, "tokens": cap.split(), "imgid": imgid, "sentid": sentid})
                sentid += 1
            entry: dict[str, object] = {
                "filename": filename,
                "imgid": imgid,
                "split": "train",
                "sentences": sentences,
                "sentids": [s["sentid"] for s in sentences],
            }
            if with_class_fields:
                entry["classcode"] = k
                entry["classname"] = name
            entries.append(entry)
    with open(root / "captions.json", "w", encoding="utf-8") as f:
        json.dump({"images": entries, "dataset": "synthetic"}, f, indent=1)
    return root
