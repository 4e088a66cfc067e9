"""`tfduch index build`: an unreadable image is named by its path; --on-error skip records and leaves it out."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfduch.data.images import load_image
from tfduch.errors import DataError
from tfduch.index.build import SourceItem, add_items
from tfduch.index.store import ArchiveIndex, load_index

MODEL = {"bits": 16, "model_id": "model-a", "source": {"kind": "run", "path": "/runs/a"}}


class DecodingEncoder:
    """A stub model that decodes every image as the real one does (tfduch.data.images), then hashes its mean."""

    metadata = MODEL

    def __init__(self) -> None:
        self.calls = 0

    def encode_images(self, paths: list) -> np.ndarray:
        self.calls += 1
        means = [load_image(p).mean() for p in paths]
        return np.array([[1 if (m * (j + 1)) % 2 > 1 else -1 for j in range(16)] for m in means], np.int8)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 16), np.int8)


@pytest.fixture
def items(tmp_path: Path) -> list[SourceItem]:
    out = []
    for i in range(6):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(p)
        out.append(SourceItem(p, "c", (f"caption {i}",)))
    (tmp_path / "img3.png").write_bytes(b"")  # zero bytes
    (tmp_path / "img4.png").write_bytes(b"garbage, not a png")
    return out


def test_a_bad_image_is_named_by_its_path(items: list[SourceItem]) -> None:
    index = ArchiveIndex.create(16, MODEL)
    with pytest.raises(DataError, match=r"cannot index image .*img3\.png: empty \(0-byte\) file.*--on-error skip"):
        add_items(index, DecodingEncoder(), items, batch_size=4, progress=False)
    assert "image" not in index.collections or len(index.collection("image").ids) == 0


def test_skip_records_the_files_in_the_metadata(items: list[SourceItem], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    index = ArchiveIndex.create(16, MODEL)
    enc = DecodingEncoder()
    ids = add_items(index, enc, items, batch_size=4, progress=False, on_error="skip")
    assert len(ids["image"]) == 4 and len(ids["text"]) == 4
    skipped = index.metadata["skipped"]
    assert [Path(s["path"]).name for s in skipped] == ["img3.png", "img4.png"]
    assert skipped[0]["reason"] == "empty (0-byte) file" and "item" not in skipped[1]["reason"]
    old = os.umask(0o022)
    try:
        index.save(tmp_path / "a.tfidx")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.tfidx").stat().st_mode) == 0o644  # honours the umask, not mkstemp's 0600
    reloaded = load_index(tmp_path / "a.tfidx")
    assert [Path(s["path"]).name for s in reloaded.metadata["skipped"]] == ["img3.png", "img4.png"]
    payload_paths = {Path(p["path"]).name for p in reloaded.collection("image").payloads}
    assert payload_paths == {"img0.png", "img1.png", "img2.png", "img5.png"}
    from tfduch.cli import main

    assert main(["index", "info", "--index", str(tmp_path / "a.tfidx")]) == 0
    assert f"skipped    {tmp_path / 'img3.png'}: empty (0-byte) file" in capsys.readouterr().out
