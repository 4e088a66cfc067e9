"""From an archive on disk to index items: find the images (and captions), encode them, add them.

Sources: a Karpathy dataset folder (``captions.json`` + ``images/``: images *and* their captions are
indexed, so text→image and image→text both work), a caption JSON given beside an image folder, or a
bare image folder (images only; the class is the sub-folder name when images sit in sub-folders, as in
the original UC Merced layout). A protocol split file restricts a dataset to its train / query /
database images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tfduch.errors import DataError
from tfduch.index.encoders import QueryEncoder
from tfduch.index.store import ArchiveIndex

__all__ = ["IMAGE_SUFFIXES", "SPLIT_PARTS", "SourceItem", "add_encoded", "add_items", "collect_items",
           "encode_captions"]

IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})
SPLIT_PARTS = ("all", "train", "query", "database")


@dataclass(frozen=True)
class SourceItem:
    """One image to index, with its class (if known) and captions (possibly none)."""

    path: Path | str  # str: a location that is not a local file path (e.g. gs://...), kept as given
    classname: str | None = None
    captions: tuple[str, ...] = ()
    extra: dict[str, Any] | None = field(default=None, hash=False, compare=False)  # e.g. geo tile fields


def _scan_folder(folder: Path) -> list[SourceItem]:
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {folder}")
    return [SourceItem(p.resolve(), p.parent.name if p.parent != folder else None) for p in paths]


def collect_items(images: str | Path, captions: str | Path | None = None, split: str = "all",
                  split_file: str | Path | None = None) -> list[SourceItem]:
    """The images (with classes and captions where known) that ``images`` / ``captions`` designate."""
    from tfduch.data.karpathy import load_karpathy
    from tfduch.data.resolve import open_dataset

    root = Path(images)
    if not root.exists():
        raise DataError(f"image folder or dataset not found: {root}")
    if split not in SPLIT_PARTS:
        raise DataError(f"split must be one of {', '.join(SPLIT_PARTS)}, got {split!r}")
    dataset = None
    if captions is not None:
        dataset = load_karpathy(captions, root)
    elif root.is_file() or (root / "captions.json").is_file() or any(root.glob("dataset_*.json")):
        dataset = open_dataset(root)
    if dataset is None:
        if split != "all":
            raise DataError(f"--split {split} needs a caption dataset (captions.json), but {root} is a bare folder")
        return _scan_folder(root)
    indices = np.arange(len(dataset))
    if split != "all":
        from tfduch.data.split import ProtocolSplit

        if split_file is None:
            raise DataError(f"--split {split} needs the protocol split file (a run's split-seed42.json)")
        protocol = ProtocolSplit.load(split_file)
        if protocol.dataset_fingerprint != dataset.fingerprint():
            raise DataError(f"split file {split_file} was drawn for another dataset than {dataset.root}")
        indices = getattr(protocol, split)
    return [SourceItem(dataset.samples[i].path, dataset.samples[i].classname, tuple(dataset.samples[i].captions))
            for i in indices]


def _encode_in_batches(encode: Any, values: Sequence[Any], batch: int, desc: str, progress: bool, unit: str
                       ) -> list[np.ndarray]:
    out = []
    with tqdm(total=len(values), desc=desc, unit=unit, disable=not progress) as bar:
        for start in range(0, len(values), batch):
            chunk = list(values[start : start + batch])
            out.append(np.asarray(encode(chunk)))
            bar.update(len(chunk))
    return out


def add_items(index: ArchiveIndex, encoder: QueryEncoder, items: Sequence[SourceItem], *, batch_size: int = 64,
              progress: bool = True, on_error: str = "fail") -> dict[str, np.ndarray]:
    """Encode ``items`` and add them: images to ``image``, their captions to ``text``; returns new ids.

    Everything is encoded before anything is added, so a bad image leaves the index unchanged. An image that
    cannot be read or decoded is named by its path; with ``on_error="skip"`` it is left out instead and listed
    in the index metadata under ``skipped`` (path and reason).
    """
    if on_error not in ("fail", "skip"):
        raise DataError(f"on_error must be fail or skip, got {on_error!r}")
    codes: list[np.ndarray] = []
    kept: list[SourceItem] = []
    skipped: list[dict[str, str]] = []
    with tqdm(total=len(items), desc="Encoding images", unit="img", disable=not progress) as bar:
        for start in range(0, len(items), batch_size):
            chunk = list(items[start : start + batch_size])
            try:
                codes.append(np.asarray(encoder.encode_images([it.path for it in chunk])))
                kept.extend(chunk)
            except (DataError, OSError, ValueError):
                for it in chunk:  # only on the failure path: find which files are bad, one by one
                    try:
                        codes.append(np.asarray(encoder.encode_images([it.path])))
                        kept.append(it)
                    except (DataError, OSError, ValueError) as exc:
                        reason = _reason(it.path, exc)
                        if on_error == "fail":
                            raise DataError(f"cannot index image {it.path}: {reason} (pass --on-error skip to "
                                            "leave unreadable images out)") from exc
                        skipped.append({"path": str(it.path), "reason": reason})
            bar.update(len(chunk))
    image_codes = np.concatenate(codes) if codes else np.zeros((0, index.bits), np.int8)
    if skipped:
        index.metadata["skipped"] = list(index.metadata.get("skipped") or []) + skipped
    return add_encoded(index, kept, image_codes, encode_captions(encoder, kept, 4 * batch_size, progress))


def _reason(path: Path | str, exc: BaseException) -> str:
    """Why an image failed, without a batch position (``item 3`` means nothing to a user)."""
    try:
        if isinstance(path, Path) and path.is_file() and path.stat().st_size == 0:
            return "empty (0-byte) file"
    except OSError:
        pass
    import re

    text = re.sub(r"\bitem \d+ is\b", "it is", str(exc)).replace(str(path), "").strip(" :")
    return text or type(exc).__name__


def encode_captions(encoder: QueryEncoder, items: Sequence[SourceItem], batch_size: int, progress: bool
                    ) -> np.ndarray | None:
    """Codes of every caption of ``items``, in item order (None when there are none)."""
    captions = [c for it in items for c in it.captions]
    if not captions:
        return None
    return np.concatenate(_encode_in_batches(encoder.encode_texts, captions, batch_size, "Encoding captions",
                                             progress, "cap"))


def add_encoded(index: ArchiveIndex, items: Sequence[SourceItem], image_codes: np.ndarray,
                caption_codes: np.ndarray | None) -> dict[str, np.ndarray]:
    """Add already encoded items (image codes, and the codes of all their captions in order, or None).

    The one place that decides what an image or caption payload holds, whether the codes were just
    encoded (``add_items``) or come from an ``encode-archive`` output (:mod:`tfduch.index.from_shards`).
    """
    image_ids = index.add("image", image_codes, [_image_payload(it) for it in items])
    out = {"image": image_ids}
    if caption_codes is not None:
        text_payloads = [{"caption": c, "image_id": int(image_ids[i]), "path": str(it.path), "class": it.classname}
                         for i, it in enumerate(items) for c in it.captions]
        out["text"] = index.add("text", caption_codes, text_payloads)
    return out


def _image_payload(item: SourceItem) -> dict[str, Any]:
    payload: dict[str, Any] = {"path": str(item.path), "class": item.classname}
    if item.captions:
        payload["caption"] = item.captions[0]
    if item.extra:
        payload.update({k: v for k, v in item.extra.items() if k not in payload})
    return payload
