"""Karpathy-format caption datasets (UCM-captions, RSICD, Sydney-captions, RSITMD).

The JSON is ``{"images": [{"filename", "sentences": [{"raw": ...}, ...], optional "classcode",
"classname", "filepath", "imgid", "split", ...}, ...], "dataset": ...}``. Loading validates the JSON
and that every image file exists (cheap) but does not decode images (slow); decoding errors come
from :mod:`tfduch.data.images` and name the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfduch.errors import DataError

__all__ = [
    "Sample",
    "CaptionDataset",
    "load_karpathy",
    "load_dataset",
    "class_from_filename",
    "IMAGE_DIR_NAMES",
]

#: Folder names searched (in order) under a dataset root for the images.
IMAGE_DIR_NAMES: tuple[str, ...] = ("images", "imgs")
_FINGERPRINT_VERSION = "tfduch-dataset-v1"
_MAX_LISTED = 5
_TRAILING_INDEX = re.compile(r"[\s_\-.]*\d+$")


@dataclass(frozen=True)
class Sample:
    """One image with its captions; ``index`` is its stable position in the dataset."""

    index: int
    filename: str
    path: Path
    label: int
    classname: str
    captions: tuple[str, ...]


@dataclass
class CaptionDataset:
    """An ordered list of :class:`Sample` (JSON order) plus the class names indexed by label."""

    name: str
    root: Path
    samples: list[Sample]
    classnames: list[str]
    json_path: Path | None = None
    #: "class": relevant = same scene class; "instance": no classes, relevant = the same image (its own
    #: captions), so evaluation reports recall@K (see docs/datasets.md)
    relevance: str = "class"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    @property
    def labels(self) -> np.ndarray:
        """Class ids, ``int64 [N]``."""
        return np.fromiter((s.label for s in self.samples), dtype=np.int64, count=len(self.samples))

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self.samples]

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def captions_per_image(self) -> np.ndarray:
        """Number of captions of each image, ``int64 [N]``."""
        return np.fromiter((len(s.captions) for s in self.samples), dtype=np.int64, count=len(self.samples))

    def captions_of(self, indices: Iterable[int], caption_choice: Sequence[int] | np.ndarray) -> list[str]:
        """The chosen caption of each image in ``indices`` (``caption_choice`` is indexed by image)."""
        out = []
        for i in indices:
            i = int(i)
            c = int(caption_choice[i])
            caps = self.samples[i].captions
            if not 0 <= c < len(caps):
                raise DataError(
                    f"caption choice {c} out of range for image {i} ({self.samples[i].filename}), "
                    f"which has {len(caps)} captions"
                )
            out.append(caps[c])
        return out

    def fingerprint(self) -> str:
        """sha256 over what defines the data: per sample filename, label, class, captions, file size.

        Cheap (one ``stat`` per image) and changes whenever a caption, label, image set or image file
        size changes; used to invalidate persisted splits and cached features.
        """
        h = hashlib.sha256(_FINGERPRINT_VERSION.encode())
        for s in self.samples:
            try:
                size = s.path.stat().st_size
            except OSError:
                size = -1
            record = [s.filename, s.label, s.classname, list(s.captions), size]
            h.update(json.dumps(record, ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()


def class_from_filename(filename: str) -> str:
    """Class name from a file name prefix: `airport_12.jpg` → `airport`, `airplane00.tif` → `airplane`.

    Strips the extension, then trailing digits and separators (``_``, ``-``, ``.``, space), lowercased.
    Returns ``""`` when nothing is left (purely numeric names such as ``17.tif``).
    """
    stem = Path(filename).name
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    prev = None
    while prev != stem:
        prev = stem
        stem = _TRAILING_INDEX.sub("", stem)
    return stem.strip(" _-.").lower()


def load_karpathy(
    json_path: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    name: str | None = None,
) -> CaptionDataset:
    """Load a Karpathy-format caption JSON whose images live in ``images_dir``.

    Image files are looked up as ``images_dir/filename`` then ``images_dir/filepath/filename``.
    Class labels come from ``classcode``/``classname`` when present, else from the file name prefix
    (see :func:`class_from_filename`); without codes, ids follow sorted class names.
    """
    json_path = Path(json_path)
    images_dir = Path(images_dir)
    data = _read_json(json_path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        got = "an object without a list 'images'" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise DataError(
            f"{json_path}: not a Karpathy caption file: expected a JSON object with a list 'images', got {got}"
        )
    entries: list[Any] = data["images"]
    if not entries:
        raise DataError(f"{json_path}: 'images' is empty")
    if not images_dir.is_dir():
        raise DataError(f"image folder not found: {images_dir} (for {json_path})")

    relevance = data.get("relevance", "class")
    if relevance not in ("class", "instance"):
        raise DataError(f"{json_path}: 'relevance' must be 'class' or 'instance', got {relevance!r}")
    parsed = [_parse_entry(json_path, i, e, instance=relevance == "instance") for i, e in enumerate(entries)]
    _check_duplicates(json_path, [p["filename"] for p in parsed])
    labels, classnames = _assign_labels(json_path, parsed)

    samples: list[Sample] = []
    missing: list[str] = []
    for i, p in enumerate(parsed):
        path = _resolve_image(images_dir, p["filename"], p["filepath"])
        if path is None:
            missing.append(p["filename"])
            path = images_dir / p["filename"]
        samples.append(
            Sample(
                index=i,
                filename=p["filename"],
                path=path.resolve(),
                label=labels[i],
                classname=classnames[labels[i]],
                captions=p["captions"],
            )
        )
    if missing:
        shown = ", ".join(missing[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise DataError(
            f"{json_path}: {len(missing)} of {len(parsed)} image files missing in {images_dir}: {shown}{more}"
        )
    ds_name = name or (data.get("dataset") if isinstance(data.get("dataset"), str) else None)
    ds_name = ds_name or json_path.parent.name or json_path.stem
    return CaptionDataset(
        name=str(ds_name),
        root=json_path.parent.resolve(),
        samples=samples,
        classnames=classnames,
        json_path=json_path.resolve(),
        relevance=relevance,
    )


def load_dataset(root: str | os.PathLike[str], name: str | None = None) -> CaptionDataset:
    """Load a dataset folder holding ``captions.json`` (or one ``dataset_*.json``) and ``images/``.

    ``imgs/`` is accepted too; without either folder, images are looked up relative to ``root``
    (which covers JSONs whose entries carry a ``filepath``). ``root`` may also be the JSON file. Registered
    names (``--data ucm``) are resolved by :func:`tfduch.data.resolve.open_dataset`.
    """
    root = Path(root)
    if root.is_file():
        json_path = root
        root = root.parent
    elif root.is_dir():
        json_path = _find_json(root)
    else:
        raise DataError(f"dataset folder not found: {root}")
    images_dir = next((root / d for d in IMAGE_DIR_NAMES if (root / d).is_dir()), root)
    return load_karpathy(json_path, images_dir, name=name)


# --------------------------------------------------------------------------------------------- helpers


def _find_json(root: Path) -> Path:
    if (root / "captions.json").is_file():
        return root / "captions.json"
    candidates = sorted(root.glob("dataset_*.json"))
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise DataError(f"{root}: several caption files ({names}); pass the one to use with load_karpathy")
    raise DataError(f"{root}: no caption file (expected captions.json or dataset_*.json)")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"caption file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read caption file: {exc}") from exc


def _parse_entry(json_path: Path, i: int, entry: Any, instance: bool = False) -> dict[str, Any]:
    where = f"{json_path}: images[{i}]"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
    filename = entry.get("filename")
    if not isinstance(filename, str) or not filename.strip():
        raise DataError(f"{where}: missing or empty 'filename'")
    where = f"{where} ({filename!r})"
    sentences = entry.get("sentences")
    if not isinstance(sentences, list):
        raise DataError(f"{where}: missing 'sentences' list")
    captions = []
    for s in sentences:
        text: Any
        if isinstance(s, dict):
            text = s.get("raw")
            if text is None and isinstance(s.get("tokens"), list):
                text = " ".join(str(t) for t in s["tokens"])
        else:
            text = s
        if isinstance(text, str) and text.strip():
            captions.append(text.strip())
    if not captions:
        what = "no captions" if not sentences else f"only empty captions ({len(sentences)} given)"
        raise DataError(f"{where}: {what}")
    code = entry.get("classcode")
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
        if isinstance(code, str) and code.strip().lstrip("-").isdigit():
            code = int(code)
        else:
            raise DataError(f"{where}: 'classcode' must be an integer, got {code!r}")
    classname = filename if instance else entry.get("classname")
    if instance:
        code = None
    if classname is not None and (not isinstance(classname, str) or not classname.strip()):
        raise DataError(f"{where}: 'classname' must be a non-empty string, got {classname!r}")
    if classname is None:
        for key in ("source_file", "filename"):
            if isinstance(entry.get(key), str):
                classname = class_from_filename(entry[key]) or None
                if classname:
                    break
    if classname is None and code is not None:
        classname = f"class_{code}"
    if classname is None:
        raise DataError(
            f"{where}: cannot derive a class: no 'classname'/'classcode' and the file name has no "
            "class prefix (expected e.g. 'airport_12.jpg')"
        )
    filepath = entry.get("filepath")
    return {
        "filename": filename,
        "filepath": filepath if isinstance(filepath, str) and filepath else None,
        "captions": tuple(captions),
        "classname": classname.strip(),
        "classcode": code,
    }


def _check_duplicates(json_path: Path, filenames: list[str]) -> None:
    seen: dict[str, int] = {}
    dups: list[str] = []
    for i, f in enumerate(filenames):
        if f in seen:
            dups.append(f"{f!r} (images[{seen[f]}] and images[{i}])")
        else:
            seen[f] = i
    if dups:
        shown = ", ".join(dups[:_MAX_LISTED])
        more = f" and {len(dups) - _MAX_LISTED} more" if len(dups) > _MAX_LISTED else ""
        raise DataError(f"{json_path}: duplicate filenames: {shown}{more}")


def _assign_labels(json_path: Path, parsed: list[dict[str, Any]]) -> tuple[list[int], list[str]]:
    names = [p["classname"] for p in parsed]
    codes = [p["classcode"] for p in parsed]
    if all(c is not None for c in codes):
        code_to_name: dict[int, str] = {}
        name_to_code: dict[str, int] = {}
        for i, (c, n) in enumerate(zip(codes, names, strict=True)):
            if code_to_name.setdefault(c, n) != n or name_to_code.setdefault(n, c) != c:
                raise DataError(
                    f"{json_path}: images[{i}] ({parsed[i]['filename']!r}): classcode {c} / classname "
                    f"{n!r} conflict with an earlier entry ({c} ↔ {code_to_name[c]!r}, "
                    f"{n!r} ↔ {name_to_code.get(n)})"
                )
        order = sorted(code_to_name)  # codes are usually 0..C-1; remap anything else densely
        rank = {c: r for r, c in enumerate(order)}
        return [rank[c] for c in codes], [code_to_name[c] for c in order]
    classnames = sorted(set(names))
    rank = {n: r for r, n in enumerate(classnames)}
    return [rank[n] for n in names], classnames


def _resolve_image(images_dir: Path, filename: str, filepath: str | None) -> Path | None:
    candidates = [images_dir / filename]
    if filepath:
        candidates.append(images_dir / filepath / filename)
    for c in candidates:
        if c.is_file():
            return c
    return None
