"""Datasets, class rule, validation errors, protocol split, image decoding, synthetic data."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfduch.data import (
    CaptionDataset,
    ProtocolSplit,
    Sample,
    class_from_filename,
    load_dataset,
    load_image,
    load_image_bytes,
    load_karpathy,
    load_or_make_split,
    make_split,
    make_synthetic_dataset,
    split_sizes,
)
from tfduch.errors import DataError

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "ds", n_classes=4, per_class=6)


@pytest.fixture
def synth_copy(synth_root: Path, tmp_path: Path) -> Path:
    """A private, editable copy of the synthetic dataset."""
    dst = tmp_path / "ds"
    shutil.copytree(synth_root, dst)
    return dst


def _read(root: Path) -> dict:
    return json.loads((root / "captions.json").read_text())


def _write(root: Path, data: object) -> None:
    (root / "captions.json").write_text(json.dumps(data))


def _fake_dataset(n: int, captions_per_image: int = 5) -> CaptionDataset:
    """An in-memory dataset (no files) — enough for split logic at UCM scale."""
    samples = [
        Sample(
            i,
            f"{i}.tif",
            Path(f"/nonexistent/{i}.tif"),
            i % 21,
            f"c{i % 21}",
            tuple(f"caption {j} of {i}" for j in range(captions_per_image)),
        )
        for i in range(n)
    ]
    return CaptionDataset("fake", Path("/nonexistent"), samples, [f"c{k}" for k in range(21)])


# ------------------------------------------------------------------------------- synthetic + loading


def test_synthetic_round_trip(synth_root: Path) -> None:
    ds = load_dataset(synth_root)
    assert len(ds) == 24 and ds.num_classes == 4 and ds.name == "synthetic"
    assert ds.classnames == ["farmland", "forest", "harbor", "beach"]  # by classcode, not sorted name
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.labels, np.repeat(np.arange(4), 6))
    for i, s in enumerate(ds.samples):
        assert s.index == i and s.path.is_file() and s.path.is_absolute()
        assert len(s.captions) == 5 and all(c.strip() for c in s.captions)
        assert s.classname == class_from_filename(s.filename) == ds.classnames[s.label]
    img = load_image(ds[0].path)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert ds.captions_of([0, 7], np.zeros(len(ds), int)) == [ds[0].captions[0], ds[7].captions[0]]
    with pytest.raises(DataError, match="out of range"):
        ds.captions_of([0], np.full(len(ds), 9))


def test_synthetic_is_deterministic_and_class_coherent(tmp_path: Path) -> None:
    a = make_synthetic_dataset(tmp_path / "a", n_classes=3, per_class=3, seed=5)
    b = make_synthetic_dataset(tmp_path / "b", n_classes=3, per_class=3, seed=5)
    c = make_synthetic_dataset(tmp_path / "c", n_classes=3, per_class=3, seed=6)
    assert (a / "captions.json").read_bytes() == (b / "captions.json").read_bytes()
    assert (a / "captions.json").read_bytes() != (c / "captions.json").read_bytes()
    for f in sorted((a / "images").iterdir()):
        assert f.read_bytes() == (b / "images" / f.name).read_bytes()
    ds = load_dataset(a)
    # images of a class are closer to their class mean colour than to other classes' means
    means = np.stack([load_image(s.path).reshape(-1, 3).mean(0) for s in ds.samples])
    centres = np.stack([means[ds.labels == k].mean(0) for k in range(3)])
    nearest = np.argmin(((means[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest, ds.labels)
    # captions carry the class: the class noun set differs between classes
    words = [{w for s in ds.samples if s.label == k for c in s.captions for w in c.split()} for k in range(3)]
    assert "farmland" in words[0] | {"cropland", "field"} and "forest" not in words[0]


@pytest.mark.parametrize("fmt", ["png", "jpg", "tif", "webp"])
def test_synthetic_formats_decode(tmp_path: Path, fmt: str) -> None:
    ds = load_dataset(make_synthetic_dataset(tmp_path, n_classes=2, per_class=1, image_format=fmt))
    assert all(s.filename.endswith(fmt) for s in ds.samples)
    assert load_image(ds[1].path).shape == (64, 64, 3)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("airport_12.jpg", "airport"),
        ("denseresidential_3.jpg", "denseresidential"),
        ("airplane00.tif", "airplane"),
        ("baseballdiamond99.tif", "baseballdiamond"),
        ("storage-tank-7.png", "storage-tank"),
        ("sub/dir/river_1_2.webp", "river"),
        ("Beach 4.TIF", "beach"),
        ("17.tif", ""),
    ],
)
def test_class_from_filename(filename: str, expected: str) -> None:
    assert class_from_filename(filename) == expected


def test_labels_from_filenames_when_no_class_fields(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path, n_classes=3, per_class=2, with_class_fields=False)
    ds = load_dataset(root)
    assert ds.classnames == ["farmland", "forest", "harbor"]  # sorted names
    assert [s.classname for s in ds.samples] == ["farmland"] * 2 + ["forest"] * 2 + ["harbor"] * 2
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1, 2, 2])


def test_classcode_remapped_and_names_sorted_without_codes(synth_copy: Path) -> None:
    data = _read(synth_copy)
    for e in data["images"]:
        e["classcode"] = 10 + 5 * e["classcode"]  # non-contiguous codes → dense ids in code order
    _write(synth_copy, data)
    ds = load_dataset(synth_copy)
    assert ds.classnames == ["farmland", "forest", "harbor", "beach"]
    assert set(ds.labels.tolist()) == {0, 1, 2, 3}


def test_dataset_json_and_imgs_folder(synth_copy: Path) -> None:
    (synth_copy / "captions.json").rename(synth_copy / "dataset_rs.json")
    (synth_copy / "images").rename(synth_copy / "imgs")
    ds = load_dataset(synth_copy)
    assert len(ds) == 24 and ds[0].path.parent.name == "imgs"
    assert load_dataset(synth_copy / "dataset_rs.json").fingerprint() == ds.fingerprint()


def test_filepath_field(synth_copy: Path) -> None:
    data = _read(synth_copy)
    for e in data["images"]:
        e["filepath"] = "images"
    _write(synth_copy, data)
    ds = load_karpathy(synth_copy / "captions.json", synth_copy, name="x")
    assert ds.name == "x" and all(s.path.is_file() for s in ds.samples)


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda d: [d], "expected a JSON object with a list 'images', got a list"),
        (lambda d: {"annotations": d["images"]}, "without a list 'images'"),
        (lambda d: {"images": []}, "'images' is empty"),
        (
            lambda d: {"images": d["images"][:2] + [{"sentences": [{"raw": "x"}]}]},
            r"images\[2\]: missing or empty 'filename'",
        ),
        (
            lambda d: {"images": d["images"][:3] + [{"filename": "forest_0.png"}]},
            r"images\[3\] \('forest_0.png'\): missing 'sentences'",
        ),
    ],
)
def test_wrong_json_shape(synth_copy: Path, mutate, pattern: str) -> None:
    _write(synth_copy, mutate(_read(synth_copy)))
    with pytest.raises(DataError, match=pattern) as err:
        load_dataset(synth_copy)
    assert "captions.json" in str(err.value)


@pytest.mark.parametrize(
    ("sentences", "pattern"),
    [([], "no captions"), ([{"raw": ""}, {"raw": "   "}, {"tokens": []}], "only empty captions")],
)
def test_entry_without_captions(synth_copy: Path, sentences: list, pattern: str) -> None:
    data = _read(synth_copy)
    data["images"][5]["sentences"] = sentences
    _write(synth_copy, data)
    with pytest.raises(DataError, match=rf"images\[5\] \('farmland_5.png'\): {pattern}"):
        load_dataset(synth_copy)


def test_invalid_json_and_no_caption_file(synth_copy: Path) -> None:
    (synth_copy / "captions.json").write_text("{not json")
    with pytest.raises(DataError, match=r"captions.json: invalid JSON"):
        load_dataset(synth_copy)
    (synth_copy / "captions.json").unlink()
    with pytest.raises(DataError, match="no caption file"):
        load_dataset(synth_copy)
    with pytest.raises(DataError, match="dataset folder not found"):
        load_dataset(synth_copy / "nope")


def test_missing_images_listed(synth_copy: Path) -> None:
    for name in ("forest_1.png", "harbor_2.png"):
        (synth_copy / "images" / name).unlink()
    with pytest.raises(DataError, match=r"2 of 24 image files missing .*forest_1.png, harbor_2.png"):
        load_dataset(synth_copy)


def test_many_missing_images_truncated(synth_copy: Path) -> None:
    shutil.rmtree(synth_copy / "images")
    (synth_copy / "images").mkdir()
    with pytest.raises(DataError, match=r"24 of 24 image files missing.* and 19 more"):
        load_dataset(synth_copy)


def test_duplicate_filenames(synth_copy: Path) -> None:
    data = _read(synth_copy)
    data["images"][4]["filename"] = data["images"][1]["filename"]
    _write(synth_copy, data)
    pattern = r"duplicate filenames: 'farmland_1.png' \(images\[1\] and images\[4\]\)"
    with pytest.raises(DataError, match=pattern):
        load_dataset(synth_copy)


def test_underivable_class(synth_copy: Path) -> None:
    data = _read(synth_copy)
    for i, e in enumerate(data["images"]):
        del e["classcode"], e["classname"]
        os.rename(synth_copy / "images" / e["filename"], synth_copy / "images" / f"{i}.png")
        e["filename"] = f"{i}.png"
    _write(synth_copy, data)
    with pytest.raises(DataError, match=r"images\[0\] \('0.png'\): cannot derive a class"):
        load_dataset(synth_copy)


def test_conflicting_class_codes(synth_copy: Path) -> None:
    data = _read(synth_copy)
    data["images"][7]["classcode"] = 0  # forest entry with farmland's code
    _write(synth_copy, data)
    with pytest.raises(DataError, match=r"images\[7\].*conflict"):
        load_dataset(synth_copy)


# -------------------------------------------------------------------------------------- fingerprint


def test_fingerprint_tracks_inputs(synth_copy: Path) -> None:
    fp = load_dataset(synth_copy).fingerprint()
    assert fp == load_dataset(synth_copy).fingerprint() and len(fp) == 64
    data = _read(synth_copy)
    data["images"][3]["sentences"][2]["raw"] = "an entirely different caption ."
    _write(synth_copy, data)
    fp2 = load_dataset(synth_copy).fingerprint()
    assert fp2 != fp
    img = synth_copy / "images" / "beach_0.png"
    img.write_bytes(img.read_bytes() + b"\0")  # file size changes
    assert load_dataset(synth_copy).fingerprint() != fp2


# -------------------------------------------------------------------------------------------- split


def test_split_sizes_ucm() -> None:
    for method in ("reference", "numpy"):
        assert split_sizes(2100, method=method) == (1050, 210, 840)
        assert split_sizes(24, method=method) == (12, 2, 10)
    assert split_sizes(5, method="numpy") == (3, 0, 2)  # half-up rounding: 2.5 → 3, 0.4 → 0
    assert split_sizes(5) == (2, 0, 3)  # the reference truncates: int(2.5) = 2, int(0.6) = 0


def test_reference_split_is_the_duch_reference_draw() -> None:
    """Default method: the image sets the DUCH reference code draws (random.seed; two sorted samples)."""
    import random

    ds = _fake_dataset(2100)
    s = make_split(ds, seed=42)
    assert s.method == "reference"
    state = random.getstate()
    random.seed(42)  # written out as in the reference's get_split_idxs / split_indexes
    idx_all = list(range(2100))
    idx_train = sorted(random.sample(idx_all, int(2100 * 0.5)))
    idx_eval = sorted(set(idx_all).difference(idx_train))
    idx_query = sorted(random.sample(idx_eval, int(len(idx_eval) * 0.2)))
    idx_db = sorted(set(idx_eval).difference(idx_query))
    random.setstate(state)
    np.testing.assert_array_equal(s.train, idx_train)
    np.testing.assert_array_equal(s.query, idx_query)
    np.testing.assert_array_equal(s.database, idx_db)
    # drawing leaves Python's global generator alone
    random.seed(1)
    before = random.random()
    random.seed(1)
    make_split(ds, seed=42)
    assert random.random() == before
    # the caption draw is the same for both methods
    np.testing.assert_array_equal(s.caption_choice, make_split(ds, seed=42, method="numpy").caption_choice)
    with pytest.raises(ValueError, match="split method"):
        make_split(ds, method="sklearn")


def test_split_file_of_another_method_is_refused(tmp_path: Path, synth_root: Path) -> None:
    ds = load_dataset(synth_root)
    path = tmp_path / "split.json"
    old = load_or_make_split(ds, path, seed=42, method="numpy")
    assert "method" not in json.loads(path.read_text())  # numpy files keep the pre-method format and digest
    assert ProtocolSplit.load(path).method == "numpy" and ProtocolSplit.load(path).digest() == old.digest()
    with pytest.raises(DataError, match="split method 'numpy'.*data.split_method"):
        load_or_make_split(ds, path, seed=42)
    path.unlink()
    new = load_or_make_split(ds, path, seed=42)
    assert ProtocolSplit.load(path).method == "reference" and new.digest() != old.digest()


def test_split_ucm_scale_disjoint_covering_deterministic() -> None:
    ds = _fake_dataset(2100)
    s = make_split(ds, seed=42, method="numpy")
    assert (len(s.train), len(s.query), len(s.database)) == (1050, 210, 840)
    allidx = np.concatenate([s.train, s.query, s.database])
    np.testing.assert_array_equal(np.sort(allidx), np.arange(2100))
    for part in (s.train, s.query, s.database):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)  # sorted, unique
    assert s.caption_choice.shape == (2100,) and s.caption_choice.min() >= 0 and s.caption_choice.max() <= 4
    assert len(set(s.caption_choice.tolist())) == 5
    # the protocol: permutation of default_rng(seed), first half train, then 20 % of the rest query
    perm = np.random.default_rng(42).permutation(2100)
    np.testing.assert_array_equal(s.train, np.sort(perm[:1050]))
    np.testing.assert_array_equal(s.query, np.sort(perm[1050:1260]))
    again = make_split(ds, seed=42, method="numpy")
    assert again.digest() == s.digest()
    np.testing.assert_array_equal(again.caption_choice, s.caption_choice)
    other = make_split(ds, seed=7, method="numpy")
    assert other.digest() != s.digest() and not np.array_equal(other.train, s.train)
    assert not np.array_equal(other.caption_choice, s.caption_choice)


def test_split_respects_caption_counts_and_validates_args() -> None:
    ds = _fake_dataset(50, captions_per_image=2)
    assert make_split(ds).caption_choice.max() <= 1
    with pytest.raises(ValueError, match="train_fraction"):
        make_split(ds, train_fraction=1.0)
    with pytest.raises(DataError, match="too few"):
        make_split(_fake_dataset(3))


def test_split_save_load_and_reuse(tmp_path: Path, synth_root: Path) -> None:
    ds = load_dataset(synth_root)
    path = tmp_path / "runs" / "split.json"
    s = load_or_make_split(ds, path, seed=42)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    loaded = ProtocolSplit.load(path)
    assert loaded.digest() == s.digest() and loaded.dataset_fingerprint == ds.fingerprint()
    for a, b in ((loaded.train, s.train), (loaded.query, s.query), (loaded.caption_choice, s.caption_choice)):
        np.testing.assert_array_equal(a, b)
    mtime = path.stat().st_mtime_ns
    assert load_or_make_split(ds, path, seed=42).digest() == s.digest()
    assert path.stat().st_mtime_ns == mtime  # reused, not rewritten
    with pytest.raises(DataError, match=r"seed 42 ≠ 7.*Delete the file.*another split path"):
        load_or_make_split(ds, path, seed=7)
    with pytest.raises(DataError, match=r"query_fraction 0.2 ≠ 0.3"):
        load_or_make_split(ds, path, seed=42, query_fraction=0.3)
    assert ProtocolSplit.load(path).digest() == s.digest()  # not overwritten


def test_split_mismatch_on_changed_dataset(tmp_path: Path, synth_copy: Path) -> None:
    path = tmp_path / "split.json"
    load_or_make_split(load_dataset(synth_copy), path)
    data = _read(synth_copy)
    data["images"][0]["sentences"][0]["raw"] = "changed ."
    _write(synth_copy, data)
    with pytest.raises(DataError, match=r"dataset fingerprint .* changed"):
        load_or_make_split(load_dataset(synth_copy), path)


def test_split_load_rejects_bad_files(tmp_path: Path) -> None:
    s = make_split(_fake_dataset(40))
    path = s.save(tmp_path / "s.json")
    record = json.loads(path.read_text())
    record["train"] = record["train"][:-1]
    path.write_text(json.dumps(record))
    with pytest.raises(DataError, match="not a disjoint cover"):
        ProtocolSplit.load(path)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DataError, match="not a tfduch split file"):
        ProtocolSplit.load(path)
    path.write_text("[")
    with pytest.raises(DataError, match="cannot read split file"):
        ProtocolSplit.load(path)
    with pytest.raises(DataError, match="split file not found"):
        ProtocolSplit.load(tmp_path / "none.json")


# ------------------------------------------------------------------------------------------- images


def _rgb(h: int = 6, w: int = 5) -> np.ndarray:
    return (np.arange(h * w * 3).reshape(h, w, 3) * 7 % 256).astype(np.uint8)


@pytest.mark.parametrize(
    ("ext", "fmt", "kwargs", "lossless"),
    [
        ("png", "PNG", {}, True),
        ("tif", "TIFF", {}, True),
        ("tiff", "TIFF", {"compression": "tiff_lzw"}, True),
        ("webp", "WEBP", {"lossless": True}, True),
        ("jpg", "JPEG", {"quality": 95}, False),
        ("bmp", "BMP", {}, True),
    ],
)
def test_decode_formats(tmp_path: Path, ext: str, fmt: str, kwargs: dict, lossless: bool) -> None:
    arr = _rgb()
    path = tmp_path / f"x.{ext}"
    Image.fromarray(arr).save(path, format=fmt, **kwargs)
    out = load_image(path)
    assert out.shape == (6, 5, 3) and out.dtype == np.uint8
    if lossless:
        np.testing.assert_array_equal(out, arr)
    np.testing.assert_array_equal(load_image_bytes(path.read_bytes()), out)


def test_decode_mode_conversions(tmp_path: Path) -> None:
    gray = np.arange(30, dtype=np.uint8).reshape(6, 5) * 8
    Image.fromarray(gray, mode="L").save(tmp_path / "l.png")
    out = load_image(tmp_path / "l.png")
    assert out.shape == (6, 5, 3) and np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 2], gray)

    rgba = np.dstack([_rgb(), np.full((6, 5), 128, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), _rgb())  # alpha dropped

    Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (6, 5, 3)

    g16 = (np.arange(30, dtype=np.uint16).reshape(6, 5) * 2000).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out16 = load_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out16[..., 1], np.round(g16 * 255.0 / 65535.0).astype(np.uint8))

    Image.fromarray(_rgb()).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert load_image(tmp_path / "c.jpg").shape == (6, 5, 3)


def test_decode_tiff_pillow_cannot_read(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    planar = (np.arange(6 * 4 * 5).reshape(6, 4, 5) * 1000).astype(np.uint16)  # 6 bands, planar
    tifffile.imwrite(tmp_path / "ms.tif", planar, planarconfig="separate")
    out = load_image(tmp_path / "ms.tif")
    assert out.shape == (4, 5, 3)
    np.testing.assert_array_equal(out[..., 1], np.round(planar[1] * 255.0 / 65535.0).astype(np.uint8))


def test_decode_resize(tmp_path: Path) -> None:
    Image.fromarray(_rgb(10, 8)).save(tmp_path / "x.png")
    assert load_image(tmp_path / "x.png", size=4).shape == (4, 4, 3)
    assert load_image(tmp_path / "x.png", size=(3, 7)).shape == (3, 7, 3)


def test_decode_errors_name_the_file(tmp_path: Path) -> None:
    big = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    for ext, fmt in (("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"), ("tif", "TIFF")):
        good = tmp_path / f"good.{ext}"
        Image.fromarray(big).save(good, format=fmt)
        bad = tmp_path / f"truncated.{ext}"
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        with pytest.raises(DataError, match=rf"truncated\.{ext}"):
            load_image(bad)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty \(0 bytes\): .*empty\.png"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image at all")
    with pytest.raises(DataError, match=r"not a readable image.*junk\.jpg"):
        load_image(tmp_path / "junk.jpg")
    with pytest.raises(DataError, match=r"not found: .*missing\.tif"):
        load_image(tmp_path / "missing.tif")
    with pytest.raises(DataError, match="<upload>"):
        load_image_bytes(b"\x89PNG\r\n\x1a\n garbage", name="<upload>")


# ----------------------------------------------------------------------------------------- real data


def _real_root() -> Path:
    return Path(os.environ.get("TFDUCH_DATA") or REPO.parent / "shared" / "data" / "ucm_captions")


@pytest.mark.realdata
def test_real_ucm_captions() -> None:
    root = _real_root()
    if not (root / "captions.json").is_file():
        pytest.skip(f"UCM-captions not found at {root} (set TFDUCH_DATA to the dataset folder)")
    ds = load_dataset(root)
    assert len(ds) == 2100 and ds.num_classes == 21
    assert np.bincount(ds.labels).tolist() == [100] * 21
    assert all(len(s.captions) == 5 for s in ds.samples)
    entries = json.loads((root / "captions.json").read_text())["images"]
    for s, e in zip(ds.samples, entries, strict=True):
        assert s.filename == e["filename"]
        assert class_from_filename(e["source_file"]) == s.classname
    s = make_split(ds, seed=42)
    assert (len(s.train), len(s.query), len(s.database)) == (1050, 210, 840)
    img = load_image(ds[0].path)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
