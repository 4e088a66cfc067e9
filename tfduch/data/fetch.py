"""Download, verify, extract and convert a registered dataset, atomically.

Why each step looks the way it does:
- downloads go to ``<home>/.downloads/<name>/<file>.part`` and resume with an HTTP ``Range`` request, so an
  interrupted 400 MB download continues where it stopped; a file is renamed to its final name only after its
  size and checksum match, so a corrupt file never looks finished;
- extraction and conversion happen in a hidden staging folder beside the target, which is renamed into place
  only after the converted dataset loads; the ``.tfduch-dataset.json`` marker inside it is what makes a folder
  count as installed, so a crash at any point leaves nothing that later looks complete;
- zip and tar come from the standard library; RAR (RSICD, UCM/Sydney image archives) is read with
  libarchive-c (``pip install tfduch[datasets]``), a maintained binding of libarchive, instead of an
  ``unrar`` binary a user may lack.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tfduch.data.registry import MARKER, MIRROR_ENV, DatasetSpec, Resource, data_home, get_spec, installed_path
from tfduch.errors import DataError

__all__ = ["ARCHIVE_SUFFIXES", "download", "extract_archive", "fetch_dataset", "verify_file"]

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".rar")
_CHUNK = 1 << 16


class DownloadError(DataError):
    """A download failed; ``keep_partial`` says whether the ``.part`` file is a valid prefix to resume from."""


def _warn(message: str) -> None:
    print(f"tfduch: warning: {message}", file=sys.stderr)


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, res: Resource, where: str) -> None:
    """Raise naming ``where`` (the URL or mirror file) when size or checksum differ from the registry's."""
    size = path.stat().st_size
    if res.size is not None and size != res.size:
        raise DataError(f"{where}: size mismatch for {res.filename}: expected {res.size} bytes, got {size}")
    for algo in ("sha256", "md5"):
        expected = getattr(res, algo)
        if expected:
            got = _digest(path, algo)
            if got != expected.lower():
                raise DataError(f"{where}: {algo} mismatch for {res.filename}: expected {expected}, got {got} "
                                "(corrupt or changed file; it was deleted)")
            return


def download(url: str, dest: Path, res: Resource, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify it, then rename it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    if res.size is not None and start > res.size:
        part.unlink()
        start = 0
    headers = {"User-Agent": "tfduch-datasets"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (URLs come from the registry)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start and (res.size is None or start == res.size):
            response = None  # the partial file is already whole
        else:
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{url}: cannot connect ({reason})") from exc
    if response is not None:
        with response:
            status = getattr(response, "status", 200)
            if start and status != 206:
                start = 0  # the server ignored Range: start over
            ctype = response.headers.get("Content-Type", "")
            if ctype.startswith("text/html") and not res.filename.endswith((".html", ".htm")):
                raise DownloadError(f"{url}: got an HTML page instead of {res.filename} (a login, quota or "
                                    "'confirm download' page)")
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else res.size
            _stream(response, part, start, total, progress, res.filename)
            got = part.stat().st_size
            if length is not None and got < start + int(length):
                raise DownloadError(f"{url}: connection closed after {got} of {start + int(length)} bytes "
                                    f"(kept {part.name}; rerun to resume)")
    if res.size is not None and part.stat().st_size < res.size:
        raise DownloadError(f"{url}: truncated download: {part.stat().st_size} of {res.size} bytes "
                            f"(kept {part.name}; rerun to resume)")
    try:
        verify_file(part, res, url)
    except DataError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


def _stream(response: object, part: Path, start: int, total: int | None, progress: bool, desc: str) -> None:
    from tqdm.auto import tqdm

    mode = "ab" if start else "wb"
    with open(part, mode) as f, tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                                    desc=desc, disable=not progress, leave=False) as bar:
        while True:
            try:
                chunk = response.read(_CHUNK)  # type: ignore[attr-defined]
            except (OSError, ValueError):  # connection dropped mid-body (http.client.IncompleteRead is OSError)
                break
            if not chunk:
                break
            f.write(chunk)
            bar.update(len(chunk))
        f.flush()
        os.fsync(f.fileno())


def _safe_target(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    if not target.is_relative_to(root.resolve()):
        raise DataError(f"archive entry {name!r} points outside the extraction folder; refusing to extract")
    return target


def extract_archive(archive: Path, out: Path) -> None:
    """Extract a zip / tar(.gz/.bz2/.xz) / rar archive into ``out``, refusing entries that escape it."""
    out.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    _safe_target(out, info.filename)
                z.extractall(out)
        elif name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
            with tarfile.open(archive) as t:
                t.extractall(out, filter="data")
        elif name.endswith(".rar"):
            _extract_rar(archive, out)
        else:
            raise DataError(f"{archive}: unknown archive type (expected {', '.join(ARCHIVE_SUFFIXES)})")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DataError(f"{archive}: corrupt archive: {exc}") from exc


def _extract_rar(archive: Path, out: Path) -> None:
    try:
        import libarchive
    except (ImportError, OSError) as exc:  # the Python package, or the system libarchive it binds, is missing
        raise DataError(f"{archive}: RAR archives need libarchive-c: pip install 'tfduch[datasets]' "
                        f"(and the libarchive library, e.g. apt-get install libarchive13) ({exc})") from exc
    try:
        with libarchive.file_reader(str(archive)) as entries:
            for entry in entries:
                target = _safe_target(out, entry.pathname)
                if entry.isdir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not entry.isfile:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as f:
                    for block in entry.get_blocks():
                        f.write(block)
    except libarchive.ArchiveError as exc:
        raise DataError(f"{archive}: corrupt RAR archive: {exc}") from exc


def _extract_nested(root: Path) -> None:
    """Archives inside the extracted tree (UCM_captions.zip holds imgs.rar) are extracted where they lie."""
    for _ in range(3):
        inner = [p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(ARCHIVE_SUFFIXES)]
        if not inner:
            return
        for p in inner:
            extract_archive(p, p.parent)
            p.unlink()


def _mirror_source(mirror: str, spec: DatasetSpec, res: Resource) -> tuple[str | None, Path | None]:
    """(url, local file) a mirror offers for ``res``: ``<mirror>/<file>`` or ``<mirror>/<name>/<file>``."""
    if mirror.startswith(("http://", "https://", "file://")):
        return f"{mirror.rstrip('/')}/{spec.name}/{res.filename}", None
    base = Path(mirror).expanduser()
    for candidate in (base / spec.name / res.filename, base / res.filename):
        if candidate.is_file():
            return None, candidate
    return None, None


def _obtain(spec: DatasetSpec, res: Resource, downloads: Path, mirror: str | None, progress: bool) -> Path:
    dest = downloads / res.filename
    if dest.is_file():
        try:
            verify_file(dest, res, str(dest))
            return dest
        except DataError as exc:
            _warn(f"{exc}; downloading it again")
            dest.unlink()
    if res.verified in ("size only", "unverified"):
        _warn(f"{spec.name}/{res.filename}: no published checksum; verified by "
              f"{'size only' if res.size else 'nothing (no size or checksum is published)'}")
    url = res.url
    if mirror:
        url, local = _mirror_source(mirror, spec, res)
        if local is not None:
            try:
                verify_file(local, res, str(local))
            except DataError as exc:
                raise DataError(f"mirror file {exc}") from exc
            downloads.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            shutil.copyfile(local, tmp)
            os.replace(tmp, dest)
            return dest
        if url is None:
            raise DataError(f"{spec.name}: the mirror {mirror} holds neither {Path(mirror) / spec.name / res.filename}"
                            f" nor {Path(mirror) / res.filename}")
    if url is None:
        raise DataError(f"{spec.name}: {res.filename} has no public direct download. Manual step: get {res.manual} "
                        f"and place it at {dest} (or in a --mirror folder), then rerun `tfduch datasets fetch "
                        f"{spec.name}`")
    try:
        return download(url, dest, res, progress=progress)
    except DataError as exc:
        raise DataError(f"download failed: {exc}. Manual step: get {res.manual} and place it at {dest} "
                        f"(or in a folder passed as --mirror / ${MIRROR_ENV}), then rerun `tfduch datasets fetch "
                        f"{spec.name}`") from exc


def fetch_dataset(name: str, home: str | os.PathLike[str] | None = None, mirror: str | None = None,
                  progress: bool = True, force: bool = False) -> Path:
    """Make ``<home>/<name>`` a finished Karpathy dataset folder (download, verify, extract, convert)."""
    from tfduch.data.convert import convert
    from tfduch.data.karpathy import load_dataset

    spec = get_spec(name)
    root = data_home(home)
    target = root / spec.name
    if not force and installed_path(spec.name, root) is not None:
        return target
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    downloads = root / ".downloads" / spec.name
    files = [_obtain(spec, res, downloads, mirror, progress) for res in spec.resources]
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}.staging-", dir=root))
    try:
        raw = staging / "raw"
        raw.mkdir()
        for f in files:
            if f.name.lower().endswith(ARCHIVE_SUFFIXES):
                extract_archive(f, raw)
            else:
                shutil.copyfile(f, raw / f.name)
        _extract_nested(raw)
        out = staging / "dataset"
        report = convert(spec, raw, out)
        dataset = load_dataset(out)
        if spec.num_images is not None and len(dataset) != spec.num_images:
            _warn(f"{spec.name}: {len(dataset)} images converted, the source describes {spec.num_images}")
        marker = {"name": spec.name, "title": spec.title, "citation": spec.citation, "licence": spec.licence,
                  "classes": spec.classes, "num_images": len(dataset), "num_classes": dataset.num_classes,
                  "files": {res.filename: {"url": res.url, "verified": res.verified} for res in spec.resources},
                  **report}
        (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if target.exists():
            old = staging / "old"
            os.replace(target, old)
        os.replace(out, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
