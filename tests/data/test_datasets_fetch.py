"""`tfduch datasets fetch` against a loopback HTTP server serving small archives shaped like each real source.

Each source's archive is generated here with the structure its publishers use (UCM/Sydney: a zip holding
dataset.json + imgs.rar; RSICD: RSICD_images.rar + dataset_rsicd.json; RSITMD: a zip with images/ +
dataset_RSITMD.json; NWPU: NWPU_images.tar.gz with class folders + dataset_nwpu.json). RAR archives are written
by a minimal RAR 4 "stored" writer, so extraction goes through the real libarchive reader.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import struct
import tarfile
import threading
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfduch.data import load_dataset
from tfduch.data import registry as reg
from tfduch.data.fetch import fetch_dataset
from tfduch.data.registry import MARKER, installed_path
from tfduch.data.resolve import open_dataset
from tfduch.errors import DataError

pytest.importorskip("libarchive", reason="RAR extraction needs libarchive-c (pip install 'tfduch[datasets]')")


# ------------------------------------------------------------------------------------------ archive builders
def _image(seed: int, fmt: str) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def rar4_stored(files: dict[str, bytes]) -> bytes:
    """A RAR 1.5-4.x archive with 'stored' (uncompressed) entries: marker, main header, file headers, end."""
    def block(head_type: int, flags: int, body: bytes) -> bytes:
        header = struct.pack("<BHH", head_type, flags, 7 + len(body)) + body
        return struct.pack("<H", zlib.crc32(header) & 0xFFFF) + header

    out = b"Rar!\x1a\x07\x00" + block(0x73, 0, b"\x00" * 6)
    for name, data in files.items():
        raw = name.encode()
        body = struct.pack("<IIBIIBBHI", len(data), len(data), 3, zlib.crc32(data) & 0xFFFFFFFF, 0x5A210000, 20,
                           0x30, len(raw), 0o100644) + raw
        out += block(0x74, 0x8000, body) + data
    return out + block(0x7B, 0x4000, b"")


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _targz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _karpathy(names: list[str]) -> bytes:
    images = [{"filename": n, "imgid": i, "split": "train",
               "sentences": [{"raw": f"caption {j} of {n}", "imgid": i} for j in range(5)]}
              for i, n in enumerate(names)]
    return json.dumps({"images": images, "dataset": "test"}).encode()


UCM_NAMES = ["1.tif", "2.tif", "101.tif", "102.tif", "2100.tif"]
RSICD_NAMES = ["airport_1.jpg", "airport_2.jpg", "beach_7.jpg", "00017.jpg"]
RSITMD_NAMES = ["baseballfield_452.tif", "baseballfield_9.tif", "church_3.tif"]
NWPU = {"airplane": ["airplane_001.jpg", "airplane_002.jpg"], "beach": ["beach_001.jpg"]}


def source_files() -> dict[str, dict[str, bytes]]:
    """Per dataset name: the files its source publishes (names as in the registry)."""
    ucm_imgs = rar4_stored({f"imgs/{n}": _image(i, "TIFF") for i, n in enumerate(UCM_NAMES)})
    syd_names = [f"{i}.tif" for i in range(1, 5)]
    syd_imgs = rar4_stored({f"imgs/{n}": _image(10 + i, "TIFF") for i, n in enumerate(syd_names)})
    nwpu_json = {c: [{"filename": n, "split": "train", "raw": f"a {c}", "raw_1": f"another {c} {n}",
                      "raw_2": "", "imgid": i} for i, n in enumerate(names)] for c, names in NWPU.items()}
    return {
        "ucm": {"UCM_captions.zip": _zip({"UCM_captions/dataset.json": _karpathy(UCM_NAMES),
                                          "UCM_captions/imgs.rar": ucm_imgs})},
        "sydney": {"Sydney_captions.zip": _zip({"Sydney_captions/dataset.json": _karpathy(syd_names),
                                                "Sydney_captions/imgs.rar": syd_imgs})},
        "rsicd": {"RSICD_images.rar": rar4_stored({f"RSICD_images/{n}": _image(20 + i, "JPEG")
                                                   for i, n in enumerate(RSICD_NAMES)}),
                  "dataset_rsicd.json": _karpathy(RSICD_NAMES)},
        "rsitmd": {"RSITMD.zip": _zip({**{f"RSITMD/images/{n}": _image(30 + i, "TIFF")
                                          for i, n in enumerate(RSITMD_NAMES)},
                                       "RSITMD/dataset_RSITMD.json": _karpathy(RSITMD_NAMES)})},
        "nwpu": {"NWPU_images.tar.gz": _targz({f"NWPU_images/{c}/{n}": _image(40 + i, "JPEG")
                                               for c, names in NWPU.items() for i, n in enumerate(names)}),
                 "dataset_nwpu.json": json.dumps(nwpu_json).encode()},
    }


EXPECTED = {  # images, classes, relevance
    "ucm": (5, {"agricultural", "airplane", "tenniscourt"}, "class"),
    "sydney": (4, None, "instance"),
    "rsicd": (4, {"airport", "beach", "unlabelled"}, "class"),
    "rsitmd": (3, {"baseballfield", "church"}, "class"),
    "nwpu": (3, {"airplane", "beach"}, "class"),
}


# ------------------------------------------------------------------------------------------ loopback server
class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))  # type: ignore[attr-defined]
        data = srv.files.get(self.path)  # type: ignore[attr-defined]
        mode = srv.modes.pop(self.path, None)  # type: ignore[attr-defined]  (one-shot faults)
        if data is None or mode == "error":
            self.send_error(404 if data is None else 500)
            return
        if mode == "html":
            body = b"<html>confirm download</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncate":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.modes, httpd.requests = {}, {}, []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv(reg.DATA_HOME_ENV, str(h))
    monkeypatch.delenv(reg.MIRROR_ENV, raising=False)
    return h


def serve(server, monkeypatch: pytest.MonkeyPatch, name: str, checksums: bool = True,
          override: dict[str, dict] | None = None) -> dict[str, bytes]:
    """Serve ``name``'s generated source files and point its registry entry at them (same file names)."""
    files = source_files()[name]
    spec = reg.REGISTRY[name]
    resources = []
    for res in spec.resources:
        data = files[res.filename]
        path = f"/{name}/{res.filename}"
        server.files[path] = data
        fields = {"url": server.base + path, "size": len(data) if checksums else None,
                  "sha256": hashlib.sha256(data).hexdigest() if checksums else None, "md5": None}
        fields.update((override or {}).get(res.filename, {}))
        resources.append(dataclasses.replace(res, **fields))
    monkeypatch.setitem(reg.REGISTRY, name, dataclasses.replace(spec, resources=tuple(resources)))
    return files


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("name", sorted(reg.REGISTRY))
def test_fetch_verify_convert_load_each_dataset(name: str, server, home: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    serve(server, monkeypatch, name)
    path = fetch_dataset(name, progress=False)
    assert path == home / name and installed_path(name) == path
    ds = load_dataset(path)
    n, classes, relevance = EXPECTED[name]
    assert len(ds) == n and ds.relevance == relevance
    if classes is None:
        assert ds.num_classes == n  # each image its own class
    else:
        assert set(ds.classnames) == classes
    assert all(s.path.is_file() and s.path.parent == path / "images" for s in ds.samples)
    assert all(len(s.captions) >= 1 for s in ds.samples)
    marker = json.loads((path / MARKER).read_text())
    assert marker["num_images"] == n and marker["citation"]
    assert not [p for p in home.iterdir() if p.name.startswith(f".{name}.staging")]  # staging removed
    requests = len(server.requests)
    assert fetch_dataset(name, progress=False) == path and len(server.requests) == requests  # installed: no I/O


def test_ucm_classes_follow_the_image_index(server, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve(server, monkeypatch, "ucm")
    ds = load_dataset(fetch_dataset("ucm", progress=False))
    by_name = {s.filename: s.classname for s in ds.samples}
    assert by_name == {"1.tif": "agricultural", "2.tif": "agricultural", "101.tif": "airplane",
                       "102.tif": "airplane", "2100.tif": "tenniscourt"}


def test_data_name_resolves_and_fetches_where_a_folder_would(server, home: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    serve(server, monkeypatch, "rsitmd")
    ds = open_dataset("rsitmd")  # what --data rsitmd does
    assert len(ds) == 3 and ds.root == (home / "rsitmd").resolve()
    with pytest.raises(DataError, match="not a registered dataset name"):
        open_dataset("no_such_dataset_here")


def test_truncated_download_is_kept_and_resumed_with_range(server, home: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    files = serve(server, monkeypatch, "ucm")
    server.modes["/ucm/UCM_captions.zip"] = "truncate"
    with pytest.raises(DataError, match="rerun to resume") as err:
        fetch_dataset("ucm", progress=False)
    assert "Manual step" in str(err.value) and str(home / ".downloads" / "ucm" / "UCM_captions.zip") in str(err.value)
    part = home / ".downloads" / "ucm" / "UCM_captions.zip.part"
    size = len(files["UCM_captions.zip"])
    assert 0 < part.stat().st_size < size
    assert installed_path("ucm") is None and not (home / "ucm").exists()
    kept = part.stat().st_size
    path = fetch_dataset("ucm", progress=False)  # the server now sends the rest
    assert server.requests[-1] == ("/ucm/UCM_captions.zip", f"bytes={kept}-")
    assert len(load_dataset(path)) == 5 and not part.exists()


def test_checksum_mismatch_deletes_the_file_and_installs_nothing(server, home: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    serve(server, monkeypatch, "rsicd", override={"dataset_rsicd.json": {"sha256": "0" * 64}})
    with pytest.raises(DataError, match="sha256 mismatch for dataset_rsicd.json") as err:
        fetch_dataset("rsicd", progress=False)
    assert server.base in str(err.value)
    downloads = home / ".downloads" / "rsicd"
    assert not (downloads / "dataset_rsicd.json").exists() and not (downloads / "dataset_rsicd.json.part").exists()
    assert installed_path("rsicd") is None and not (home / "rsicd").exists()


def test_server_error_names_the_url_and_the_manual_step(server, home: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    serve(server, monkeypatch, "sydney")
    server.modes["/sydney/Sydney_captions.zip"] = "error"
    with pytest.raises(DataError) as err:
        fetch_dataset("sydney", progress=False)
    msg = str(err.value)
    assert f"{server.base}/sydney/Sydney_captions.zip: HTTP 500" in msg
    assert "Manual step" in msg and str(home / ".downloads" / "sydney" / "Sydney_captions.zip") in msg
    assert installed_path("sydney") is None


def test_offline_error_and_html_page_are_named(home: Path, server, monkeypatch: pytest.MonkeyPatch) -> None:
    serve(server, monkeypatch, "rsitmd")
    server.modes["/rsitmd/RSITMD.zip"] = "html"
    with pytest.raises(DataError, match="HTML page instead of RSITMD.zip"):
        fetch_dataset("rsitmd", progress=False)
    dead = "http://127.0.0.1:9/rsitmd/RSITMD.zip"  # discard port: connection refused
    spec = reg.REGISTRY["rsitmd"]
    monkeypatch.setitem(reg.REGISTRY, "rsitmd", dataclasses.replace(
        spec, resources=(dataclasses.replace(spec.resources[0], url=dead),)))
    with pytest.raises(DataError, match="cannot connect") as err:
        fetch_dataset("rsitmd", progress=False)
    assert dead in str(err.value) and "Manual step" in str(err.value)


def test_mirror_folder_and_url(tmp_path: Path, server, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = serve(server, monkeypatch, "nwpu")
    mirror = tmp_path / "mirror"
    (mirror / "nwpu").mkdir(parents=True)
    for fname, data in files.items():
        (mirror / "nwpu" / fname).write_bytes(data)
    server.files.clear()  # nothing reachable: the folder must do
    assert len(load_dataset(fetch_dataset("nwpu", mirror=str(mirror), progress=False))) == 3
    # an http(s) mirror serves <mirror>/<name>/<file>, including files without a public URL (dataset_nwpu.json)
    for fname, data in files.items():
        server.files[f"/m/nwpu/{fname}"] = data
    monkeypatch.setenv(reg.MIRROR_ENV, server.base + "/m")
    path = fetch_dataset("nwpu", home=tmp_path / "home2", progress=False)
    assert len(load_dataset(path)) == 3
    assert {p for p, _ in server.requests} == {"/m/nwpu/NWPU_images.tar.gz", "/m/nwpu/dataset_nwpu.json"}


def test_file_without_a_public_url_asks_for_the_manual_step(home: Path, server,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    serve(server, monkeypatch, "nwpu", override={"dataset_nwpu.json": {"url": None}})
    with pytest.raises(DataError, match="no public direct download") as err:
        fetch_dataset("nwpu", progress=False)
    assert str(home / ".downloads" / "nwpu" / "dataset_nwpu.json") in str(err.value)


def test_corrupt_unverified_archive_leaves_no_dataset(server, home: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    serve(server, monkeypatch, "ucm", checksums=False)
    server.files["/ucm/UCM_captions.zip"] = server.files["/ucm/UCM_captions.zip"][:200]  # a cut zip, no size known
    with pytest.raises(DataError, match="corrupt archive"):
        fetch_dataset("ucm", progress=False)
    assert "no published checksum" in capsys.readouterr().err
    assert installed_path("ucm") is None and not (home / "ucm").exists()
    assert not [p for p in home.iterdir() if p.name.startswith(".ucm.staging")]


def test_unsafe_archive_entries_are_refused(tmp_path: Path) -> None:
    from tfduch.data.fetch import extract_archive

    bad = tmp_path / "bad.rar"
    bad.write_bytes(rar4_stored({"../escape.txt": b"x"}))
    with pytest.raises(DataError, match="outside the extraction folder"):
        extract_archive(bad, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_cli_fetch_list_info_and_error(server, home: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from tfduch.cli import main

    serve(server, monkeypatch, "rsitmd")
    assert main(["datasets", "fetch", "rsitmd", "--quiet"]) == 0
    assert f"ready at {home / 'rsitmd'}" in capsys.readouterr().out
    assert main(["datasets", "list"]) == 0
    listing = capsys.readouterr().out
    assert "rsitmd" in listing and "[installed]" in listing and "check: sha256" in listing
    assert main(["datasets", "info", "rsitmd"]) == 0
    assert "3 images, 15 captions" in capsys.readouterr().out
    serve(server, monkeypatch, "sydney")
    server.modes["/sydney/Sydney_captions.zip"] = "error"
    assert main(["datasets", "fetch", "sydney", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfduch: error: download failed:") and "Manual step" in err
