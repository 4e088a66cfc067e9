"""Turn a source's extracted files into the Karpathy layout tfduch loads (``captions.json`` + ``images/``).

Each benchmark ships its captions as a Karpathy-style JSON (``{"images": [{"filename", "sentences"}]}``) except
NWPU-Captions (``{class: [{"filename", "raw", "raw_1", ...}]}``); what differs is where the class of an image
comes from, so one converter per class rule is enough.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tfduch.data.karpathy import class_from_filename
from tfduch.data.registry import UCM_CLASSES, DatasetSpec
from tfduch.errors import DataError
from tfduch.io import atomic_write_text

__all__ = ["CONVERTERS", "IMAGE_SUFFIXES", "convert", "write_karpathy"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png", ".webp", ".bmp")
UNLABELLED = "unlabelled"


def _find_json(raw: Path, names: tuple[str, ...]) -> Path:
    found = sorted(p for p in raw.rglob("*.json") if p.name.lower() in names or
                   (not names and p.name.lower().startswith("dataset")))
    if not found:
        raise DataError(f"no caption file ({', '.join(names) or 'dataset*.json'}) in the extracted files under {raw}")
    return found[0]


def _image_index(raw: Path) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for p in raw.rglob("*"):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            index.setdefault(p.name, []).append(p)
    return index


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the caption file: {exc}") from exc


def _captions(entry: dict[str, Any]) -> list[str]:
    out = []
    for s in entry.get("sentences", []):
        text = s.get("raw") if isinstance(s, dict) else s
        if isinstance(s, dict) and text is None and isinstance(s.get("tokens"), list):
            text = " ".join(map(str, s["tokens"]))
        if isinstance(text, str) and text.strip():
            out.append(text.strip())
    return out


def write_karpathy(out: Path, dataset: str, records: list[dict[str, Any]], relevance: str = "class",
                   move: bool = True) -> None:
    """Write ``out/captions.json`` + ``out/images/`` from records ``{filename, path, captions, classname?,
    split?}``; images are moved (staging copies) or copied."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, r in enumerate(records):
        (shutil.move if move else shutil.copyfile)(str(r["path"]), str(images / r["filename"]))
        entry: dict[str, Any] = {"filename": r["filename"], "imgid": i,
                                 "sentences": [{"raw": c, "imgid": i} for c in r["captions"]]}
        if r.get("classname"):
            entry["classname"] = r["classname"]
        if r.get("split"):
            entry["split"] = r["split"]
        if r.get("source_file"):
            entry["source_file"] = r["source_file"]
        entries.append(entry)
    doc: dict[str, Any] = {"dataset": dataset, "images": entries}
    if relevance != "class":
        doc["relevance"] = relevance
    atomic_write_text(out / "captions.json", json.dumps(doc, ensure_ascii=False, indent=1) + "\n")


def _karpathy_records(raw: Path, json_names: tuple[str, ...], classify: Callable[[str], str | None]
                      ) -> tuple[list[dict[str, Any]], list[str]]:
    path = _find_json(raw, json_names)
    data = _read(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a Karpathy caption file (no list 'images')")
    index = _image_index(raw)
    records, missing = [], []
    for e in data["images"]:
        name = e.get("filename") if isinstance(e, dict) else None
        if not isinstance(name, str) or name not in index:
            missing.append(str(name))
            continue
        records.append({"filename": name, "path": index[name][0], "captions": _captions(e),
                        "classname": classify(name), "split": e.get("split")})
    return records, missing


def _check(spec: DatasetSpec, records: list[dict[str, Any]], missing: list[str]) -> None:
    if not records:
        raise DataError(f"{spec.name}: none of the caption file's images was found in the extracted archives")
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{spec.name}: {len(missing)} images named in the caption file are not in the archives: "
                        f"{shown}")


def _ucm_class(name: str) -> str:
    stem = Path(name).stem
    if not stem.isdigit() or not 1 <= int(stem) <= 100 * len(UCM_CLASSES):
        raise DataError(f"ucm: image {name!r} is not named 1..2100, so its class cannot be derived from its index")
    return UCM_CLASSES[(int(stem) - 1) // 100]


def _convert_ucm(spec: DatasetSpec, raw: Path, out: Path) -> dict[str, Any]:
    records, missing = _karpathy_records(raw, ("dataset.json", "dataset_ucm.json"), _ucm_class)
    _check(spec, records, missing)
    write_karpathy(out, "UCM", records)
    return {"relevance": "class"}


def _convert_prefix(spec: DatasetSpec, raw: Path, out: Path) -> dict[str, Any]:
    names = (f"dataset_{spec.name}.json", "dataset.json")
    records, missing = _karpathy_records(raw, names, lambda n: class_from_filename(n) or UNLABELLED)
    _check(spec, records, missing)
    write_karpathy(out, spec.name.upper(), records)
    return {"relevance": "class", "unlabelled": sum(r["classname"] == UNLABELLED for r in records)}


def _convert_sydney(spec: DatasetSpec, raw: Path, out: Path) -> dict[str, Any]:
    records, missing = _karpathy_records(raw, ("dataset.json", "dataset_sydney.json"), lambda n: None)
    _check(spec, records, missing)
    write_karpathy(out, "Sydney", records, relevance="instance")
    return {"relevance": "instance"}


def _convert_nwpu(spec: DatasetSpec, raw: Path, out: Path) -> dict[str, Any]:
    path = _find_json(raw, ("dataset_nwpu.json",))
    data = _read(path)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise DataError(f"{path}: expected an object mapping each class to a list of images")
    index = _image_index(raw)
    records, missing = [], []
    for classname, entries in data.items():
        for e in entries:
            name = e.get("filename")
            paths = [p for p in index.get(name, []) if p.parent.name == classname] or index.get(name, [])
            if not paths:
                missing.append(f"{classname}/{name}")
                continue
            caps = [str(e[k]).strip() for k in sorted(e) if k.startswith("raw") and str(e[k]).strip()]
            # NWPU file names repeat across class folders only in theory; prefix keeps them unique anyway.
            fname = name if name.startswith(classname) else f"{classname}_{name}"
            records.append({"filename": fname, "path": paths[0], "captions": caps, "classname": classname,
                            "split": e.get("split"), "source_file": f"{classname}/{name}"})
    _check(spec, records, missing)
    write_karpathy(out, "NWPU", records)
    return {"relevance": "class"}


CONVERTERS: dict[str, Callable[[DatasetSpec, Path, Path], dict[str, Any]]] = {
    "ucm": _convert_ucm,
    "prefix": _convert_prefix,
    "sydney": _convert_sydney,
    "nwpu": _convert_nwpu,
}


def convert(spec: DatasetSpec, raw: Path, out: Path) -> dict[str, Any]:
    """Convert ``raw`` (the extracted files) into ``out``; returns facts for the dataset's marker file."""
    return CONVERTERS[spec.converter](spec, raw, out)
