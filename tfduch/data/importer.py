"""Build a tfduch dataset (Karpathy layout) from a user's own images and captions.

Accepted sources:
- a CSV (or TSV) with a header holding ``image`` and ``caption`` (and optionally ``class``) columns, one row
  per caption (an image with five captions has five rows);
- a JSONL file with one object per line: ``{"image": ..., "caption": ... | "captions": [...], "class": ...}``;
- a folder tree ``<root>/<class>/<name>.jpg`` with a ``<name>.txt`` beside each image (one caption per line);
  images directly in ``<root>`` have no class.

Image paths are relative to the CSV/JSONL file (or ``images_root``). Every bad row is named (line, image and
reason: missing file, undecodable image, empty caption); ``on_error="skip"`` drops them and reports them instead
of failing. Without any class, each image is its own class ("instance" relevance: a caption's relevant image
is the one it describes), and evaluation reports recall@K.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfduch.data.convert import IMAGE_SUFFIXES, write_karpathy
from tfduch.data.registry import MARKER
from tfduch.errors import DataError

__all__ = ["ImportReport", "import_dataset", "read_rows"]

ON_ERROR = ("fail", "skip")


@dataclass
class Row:
    where: str  # "captions.csv line 4"
    image: str  # as written in the source
    path: Path
    caption: str
    classname: str | None


@dataclass
class ImportReport:
    """What an import kept and what it skipped (each problem names its row and reason)."""

    source: str
    rows: int = 0
    images: int = 0
    captions: int = 0
    relevance: str = "class"
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "rows": self.rows, "images": self.images, "captions": self.captions,
                "relevance": self.relevance, "skipped": self.problems}


def _norm_class(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _csv_rows(path: Path, base: Path) -> list[Row]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        sample = f.read(4096)
        f.seek(0)
        delimiter = "\t" if path.suffix.lower() == ".tsv" or ("\t" in sample and "," not in sample) else ","
        reader = csv.DictReader(f, delimiter=delimiter)
        fields = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "image" not in fields or "caption" not in fields:
            raise DataError(f"{path}: the header must name the columns image,caption[,class]; got "
                            f"{','.join(reader.fieldnames or []) or 'no header'}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            rec = {str(k).strip().lower(): v for k, v in raw.items() if k is not None}
            image = (rec.get("image") or "").strip()
            rows.append(Row(f"{path.name} line {line}", image, base / image, (rec.get("caption") or "").strip(),
                            _norm_class(rec.get("class"))))
    return rows


def _jsonl_rows(path: Path, base: Path) -> list[Row]:
    rows = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        where = f"{path.name} line {line}"
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise DataError(f"{where}: invalid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected an object with 'image' and 'caption'")
        image = str(obj.get("image") or "").strip()
        caps = obj.get("captions", [obj.get("caption")])
        caps = caps if isinstance(caps, list) else [caps]
        for c in caps:
            rows.append(Row(where, image, base / image, str(c or "").strip(), _norm_class(obj.get("class"))))
    return rows


def _folder_rows(root: Path) -> list[Row]:
    rows = []
    for p in sorted(root.rglob("*")):
        if not (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            continue
        rel = p.relative_to(root).as_posix()
        classname = p.parent.name if p.parent != root else None
        sidecar = p.with_suffix(".txt")
        if not sidecar.is_file():
            rows.append(Row(f"{rel}", rel, p, "", classname))
            continue
        caps = [c.strip() for c in sidecar.read_text(encoding="utf-8").splitlines()]
        for c in caps or [""]:
            if c or len(caps) == 1:
                rows.append(Row(f"{sidecar.relative_to(root).as_posix()}", rel, p, c, classname))
    if not rows:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    return rows


def read_rows(source: str | os.PathLike[str], images_root: str | os.PathLike[str] | None = None) -> list[Row]:
    """The (image, caption, class) rows a CSV / JSONL / folder source describes, unvalidated."""
    src = Path(source)
    if src.is_dir():
        return _folder_rows(src)
    if not src.is_file():
        raise DataError(f"import source not found: {src}")
    base = Path(images_root) if images_root else src.parent
    suffix = src.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _csv_rows(src, base)
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_rows(src, base)
    raise DataError(f"{src}: unknown import format (expected .csv, .tsv, .jsonl or a folder)")


def _image_problem(path: Path, checked: dict[Path, str | None]) -> str | None:
    if path in checked:
        return checked[path]
    from tfduch.data.images import load_image

    problem = None
    if not path.is_file():
        problem = f"missing image file {path}"
    elif path.stat().st_size == 0:
        problem = f"empty (0-byte) image file {path}"
    else:
        try:
            load_image(path)
        except DataError as exc:
            problem = f"undecodable image: {exc}"
    checked[path] = problem
    return problem


def import_dataset(source: str | os.PathLike[str], out: str | os.PathLike[str], *, name: str | None = None,
                   images_root: str | os.PathLike[str] | None = None, on_error: str = "fail",
                   force: bool = False) -> ImportReport:
    """Validate every row of ``source`` and write a Karpathy dataset folder at ``out`` (atomically)."""
    if on_error not in ON_ERROR:
        raise DataError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise DataError(f"{out} already exists and is not empty (pass --force to replace it)")
    rows = read_rows(source, images_root)
    report = ImportReport(source=str(source), rows=len(rows))
    checked: dict[Path, str | None] = {}
    good: list[Row] = []
    for r in rows:
        if not r.image:
            problem = "no image given"
        else:
            problem = _image_problem(r.path, checked) or (None if r.caption else "empty caption")
        if problem:
            report.problems.append(f"{r.where} ({r.image or '-'}): {problem}")
        else:
            good.append(r)
    with_class = [r for r in good if r.classname]
    if with_class and len(with_class) != len(good):
        lacking = [f"{r.where} ({r.image})" for r in good if not r.classname]
        report.problems.extend(f"{w}: no class, while other rows have one" for w in lacking)
        good = with_class
    if report.problems and on_error == "fail":
        shown = "\n  ".join(report.problems[:50])
        more = f"\n  ... and {len(report.problems) - 50} more" if len(report.problems) > 50 else ""
        raise DataError(f"{source}: {len(report.problems)} bad rows (pass --on-error skip to leave them out):\n  "
                        f"{shown}{more}")
    records = _group(good)
    if not records:
        raise DataError(f"{source}: no usable rows left ({len(report.problems)} skipped)")
    report.relevance = "class" if with_class else "instance"
    report.images = len(records)
    report.captions = sum(len(r["captions"]) for r in records)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        ds = staging / "dataset"
        write_karpathy(ds, name or out.name, records, relevance=report.relevance, move=False)
        (ds / MARKER).write_text(json.dumps({"name": name or out.name, "imported_from": str(source),
                                             **report.to_dict()}, indent=2) + "\n")
        from tfduch.data.karpathy import load_dataset

        load_dataset(ds)  # the folder must load before it replaces anything
        if out.exists():
            os.replace(out, staging / "old")
        os.replace(ds, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _group(rows: list[Row]) -> list[dict[str, Any]]:
    """Rows → one record per image (captions in row order), with unique file names in ``images/``."""
    by_path: dict[Path, dict[str, Any]] = {}
    used: set[str] = set()
    for r in rows:
        rec = by_path.get(r.path)
        if rec is None:
            fname = r.path.name
            if fname in used:
                stem = Path(r.image).with_suffix("").as_posix().replace("/", "_")
                fname = f"{stem}{r.path.suffix}"
                k = 1
                while fname in used:
                    fname, k = f"{stem}_{k}{r.path.suffix}", k + 1
            used.add(fname)
            rec = by_path[r.path] = {"filename": fname, "path": r.path, "captions": [], "classname": r.classname,
                                     "source_file": r.image}
        rec["captions"].append(r.caption)
    return list(by_path.values())
