"""`tfduch datasets import`: own CSV / JSONL / folder data, every bad row named, skip with a report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfduch.cli import main
from tfduch.data import load_dataset
from tfduch.data.importer import import_dataset
from tfduch.data.registry import MARKER
from tfduch.errors import DataError


def _img(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def own(tmp_path: Path) -> Path:
    src = tmp_path / "own"
    for i in range(4):
        _img(src / "pics" / f"p{i}.png", i)
    (src / "pics" / "broken.jpg").write_bytes(b"this is not an image")
    (src / "pics" / "zero.jpg").write_bytes(b"")
    return src


def _csv(src: Path, rows: list[str], header: str = "image,caption,class") -> Path:
    path = src / "captions.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


BAD_ROWS = ["pics/missing.png,a lost picture,field",      # line 5
            "pics/broken.jpg,a broken picture,field",     # line 6
            "pics/zero.jpg,an empty file,field",          # line 7
            "pics/p3.png,,field"]                         # line 8


def _good_rows() -> list[str]:
    return ["pics/p0.png,a green field,field", "pics/p0.png,grass everywhere,field", "pics/p1.png,a harbour,water"]


def test_every_bad_row_is_named_and_nothing_is_written(own: Path, tmp_path: Path) -> None:
    csv = _csv(own, _good_rows() + BAD_ROWS)
    out = tmp_path / "ds"
    with pytest.raises(DataError) as err:
        import_dataset(csv, out)
    msg = str(err.value)
    assert "4 bad rows" in msg
    assert "captions.csv line 5 (pics/missing.png): missing image file" in msg
    assert "captions.csv line 6 (pics/broken.jpg): undecodable image" in msg
    assert "captions.csv line 7 (pics/zero.jpg): empty (0-byte) image file" in msg
    assert "captions.csv line 8 (pics/p3.png): empty caption" in msg
    assert not out.exists() and not list(tmp_path.glob(".ds.import-*"))


def test_skip_leaves_bad_rows_out_with_a_report(own: Path, tmp_path: Path) -> None:
    csv = _csv(own, _good_rows() + BAD_ROWS)
    out = tmp_path / "ds"
    report = import_dataset(csv, out, on_error="skip")
    assert (report.rows, report.images, report.captions, len(report.problems)) == (7, 2, 3, 4)
    ds = load_dataset(out)
    assert [s.filename for s in ds.samples] == ["p0.png", "p1.png"]
    assert ds.samples[0].captions == ("a green field", "grass everywhere")
    assert ds.classnames == ["field", "water"] and ds.relevance == "class"
    marker = json.loads((out / MARKER).read_text())
    assert len(marker["skipped"]) == 4 and marker["skipped"][0].startswith("captions.csv line 5")


def test_no_classes_means_instance_relevance(own: Path, tmp_path: Path) -> None:
    csv = _csv(own, ["pics/p0.png,a green field", "pics/p1.png,a harbour", "pics/p2.png,a road"],
               header="image,caption")
    import_dataset(csv, tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert ds.relevance == "instance" and ds.num_classes == 3 and len(set(ds.labels.tolist())) == 3


def test_mixed_class_rows_are_named(own: Path, tmp_path: Path) -> None:
    csv = _csv(own, ["pics/p0.png,a green field,field", "pics/p1.png,a harbour,"])
    with pytest.raises(DataError, match=r"line 3 \(pics/p1.png\): no class, while other rows have one"):
        import_dataset(csv, tmp_path / "ds")


def test_jsonl_and_folder_sources(own: Path, tmp_path: Path) -> None:
    jl = own / "caps.jsonl"
    jl.write_text(json.dumps({"image": "pics/p0.png", "captions": ["one", "two"], "class": "a"}) + "\n\n" +
                  json.dumps({"image": "pics/p1.png", "caption": "three", "class": "b"}) + "\n")
    import_dataset(jl, tmp_path / "j")
    ds = load_dataset(tmp_path / "j")
    assert ds.samples[0].captions == ("one", "two") and ds.num_classes == 2

    tree = tmp_path / "tree"
    for cls, seed in (("forest", 1), ("forest", 2), ("river", 3)):
        _img(tree / cls / f"{cls}{seed}.jpg", seed)
        (tree / cls / f"{cls}{seed}.txt").write_text(f"a {cls}\nanother {cls} {seed}\n")
    _img(tree / "river" / "nocaption.jpg", 9)
    with pytest.raises(DataError, match=r"river/nocaption.jpg \(river/nocaption.jpg\): empty caption"):
        import_dataset(tree, tmp_path / "t")
    report = import_dataset(tree, tmp_path / "t", on_error="skip")
    ds = load_dataset(tmp_path / "t")
    assert report.images == 3 and ds.classnames == ["forest", "river"] and len(ds.samples[0].captions) == 2


def test_import_refuses_to_overwrite_and_cli_prints_the_report(own: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    csv = _csv(own, _good_rows() + BAD_ROWS)
    out = tmp_path / "ds"
    assert main(["datasets", "import", str(csv), str(out), "--on-error", "skip"]) == 0
    printed = capsys.readouterr().out
    assert "imported 2 images, 3 captions from 7 rows" in printed and "captions.csv line 8" in printed
    assert main(["datasets", "import", str(csv), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["datasets", "info", str(out)]) == 0
    assert "2 images, 3 captions" in capsys.readouterr().out


def test_recall_at_k_for_instance_relevance() -> None:
    from tfduch.eval import evaluate_retrieval

    rng = np.random.default_rng(0)
    n, bits = 30, 16
    img = np.where(rng.random((n, bits)) > 0.5, 1, -1).astype(np.int8)
    txt = img.copy()
    flip = rng.random((n, bits)) < 0.3
    txt[flip] *= -1
    labels = np.arange(n)  # each item its own class
    report = evaluate_retrieval(img, txt, img, txt, labels, labels, k=20, ks=(1, 5, 10))
    rec = report.recall_at_k()
    # by hand: rank of each query's own item (ties by index) < k
    dist = (bits - img.astype(int) @ txt.T.astype(int)) // 2
    for k in (1, 5, 10):
        hits = [i in np.argsort(dist[i], kind="stable")[:k] for i in range(n)]
        assert rec[f"i2t/recall@{k}"] == pytest.approx(np.mean(hits))
    assert rec["i2t/recall@1"] <= rec["i2t/recall@5"] <= rec["i2t/recall@10"] < 1.0 + 1e-9
