"""``tfduch index ...`` and ``tfduch search``: tables, JSON, errors, and a real model end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tfduch.cli import main
from tfduch.eval.ranking import pack_codes
from tfduch.index import ArchiveIndex, load_index

CLASSES = ["forest", "harbor", "runway"]


@pytest.fixture(autouse=True)
def single_thread_faiss():
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture
def code_index(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """30 images in 3 classes with planted codes, and 2 captions per image; no model needed to query it."""
    rng = np.random.default_rng(0)
    centres = (rng.integers(0, 2, (3, 32)) * 2 - 1).astype(np.int8)
    labels = np.repeat(np.arange(3), 10)
    codes = np.where(rng.random((30, 32)) < 0.06, -centres[labels], centres[labels])
    archive = ArchiveIndex.create(32, {"bits": 32, "model_id": "m-planted"})
    ids = archive.add("image", codes, [{"path": f"/archive/{CLASSES[c]}_{i}.tif", "class": CLASSES[c]}
                                       for i, c in enumerate(labels)])
    archive.add("text", np.repeat(codes, 2, axis=0),
                [{"caption": f"caption {j} of a {CLASSES[labels[i]]}", "image_id": int(ids[i]),
                  "class": CLASSES[labels[i]]} for i in range(30) for j in range(2)])
    return archive.save(tmp_path / "planted.tfidx"), centres


def hexcode(code: np.ndarray) -> str:
    return pack_codes(code[None])[0].tobytes().hex()


def test_search_by_code_prints_a_ranked_table(code_index, capsys) -> None:
    path, centres = code_index
    assert main(["search", "--code", hexcode(centres[1]), "--index", str(path), "-k", "5"]) == 0
    out = capsys.readouterr().out
    assert "rank" in out and "dist" in out and "class" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
    assert {r[3] for r in rows} == {"harbor"} and all(r[4].startswith("/archive/harbor_") for r in rows)


def test_search_json_and_text_target(code_index, capsys) -> None:
    path, centres = code_index
    assert main(["search", "--code", hexcode(centres[2]), "--code", hexcode(centres[0]), "--index", str(path),
                 "-k", "6", "--target", "text", "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [a["target"] for a in answers] == ["text", "text"]
    for answer, cls in zip(answers, ("runway", "forest"), strict=True):
        res = answer["results"]
        assert len(res) == 6 and {r["class"] for r in res} == {cls}
        keys = [(r["distance"], r["id"]) for r in res]
        assert keys == sorted(keys)  # ties ordered by id
        assert all(r["caption"].endswith(cls) for r in res)


@pytest.mark.parametrize("args, message", [
    (["-k", "31"], "k=31 is larger than the collection (30 items)"),
    (["-k", "0"], "k must be >= 1"),
    (["-k", "-2"], "k must be >= 1"),
])
def test_bad_k_is_a_clear_error(code_index, capsys, args, message) -> None:
    path, centres = code_index
    assert main(["search", "--code", hexcode(centres[0]), "--index", str(path), *args]) == 2
    assert message in capsys.readouterr().err


def test_bad_queries_and_files_are_clear_errors(code_index, tmp_path: Path, capsys) -> None:
    path, centres = code_index
    assert main(["search", "--index", str(path)]) == 2
    assert "give one kind of query" in capsys.readouterr().err
    assert main(["search", "--code", "abc", "--index", str(path)]) == 2
    assert "hexadecimal" in capsys.readouterr().err
    assert main(["search", "--code", "00ff", "--index", str(path)]) == 2
    assert "32-bit code is 8 hex digits" in capsys.readouterr().err
    assert main(["search", "planes at a terminal", "--index", str(path)]) == 2
    assert "which model encodes the queries" in capsys.readouterr().err
    assert main(["search", "--code", hexcode(centres[0]), "--index", str(tmp_path / "nope.tfidx")]) == 2
    assert "not found" in capsys.readouterr().err
    broken = tmp_path / "broken.tfidx"
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x55
    broken.write_bytes(bytes(data))
    assert main(["search", "--code", hexcode(centres[0]), "--index", str(broken)]) == 2
    assert "corrupt" in capsys.readouterr().err
    empty = ArchiveIndex.create(32, {"bits": 32, "model_id": "m"}).save(tmp_path / "empty.tfidx")
    assert main(["search", "--code", hexcode(centres[0]), "--index", str(empty)]) == 2
    assert "empty" in capsys.readouterr().err


def test_info_and_remove(code_index, capsys) -> None:
    path, centres = code_index
    assert main(["index", "info", "--index", str(path)]) == 0
    out = capsys.readouterr().out
    assert "32 bits, model m-planted" in out and "image      30 items" in out and "text       60 items" in out
    assert main(["index", "info", "--index", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 90 and info["collections"]["image"]["backend"]["name"] == "flat"

    before = path.read_bytes()
    assert main(["index", "remove", "--index", str(path), "--ids", "3", "999"]) == 2
    assert "999" in capsys.readouterr().err and path.read_bytes() == before  # all or nothing, file untouched
    assert main(["index", "remove", "--index", str(path), "--ids", "3", "4"]) == 0
    assert "removed 2 image items, 4 text items" in capsys.readouterr().out
    index = load_index(path)
    assert len(index.collection("image")) == 28 and len(index.collection("text")) == 56
    hits = index.search(centres[:1], 28, "image")[0]
    assert not {3, 4} & {h.id for h in hits}


def test_build_refuses_to_overwrite(code_index, capsys) -> None:
    path, _ = code_index
    before = path.read_bytes()
    assert main(["index", "build", "--run", "/no/run", "--images", "/no/images", "--out", str(path)]) == 2
    assert "--overwrite" in capsys.readouterr().err and path.read_bytes() == before


# ------------------------------------------------------------------------- a real model end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A 16-bit DUCH run on a 4-class synthetic dataset (real frozen encoders, 20 epochs: after 5, farmland and
    forest images still shared codes, and a tie put farmland first for a forest query)."""
    from tfduch.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("search_e2e")
    data = make_synthetic_dataset(root / "data", n_classes=4, per_class=8, image_size=64, image_format="tif")
    run = root / "run"
    code = main(["train", "--data", str(data), "--output", str(run), "--cache-dir", str(root / "cache"),
                 "--bits", "16", "--epochs", "20", "--quiet", "--set", "model.hidden_dim=128",
                 "--set", "train.batch_size=16", "--set", "train.lr=0.001", "--set", "train.tensorboard=false",
                 "--set", "eval.plots=false"])
    assert code == 0
    return root, data, run


@pytest.mark.slow
def test_build_search_and_add_with_a_trained_run(trained, capsys) -> None:
    root, data, run = trained
    out = root / "synthetic.tfidx"
    assert main(["index", "build", "--run", str(run), "--images", str(data), "--out", str(out), "--quiet"]) == 0
    assert "indexed 32 image items, 160 text items" in capsys.readouterr().out
    index = load_index(out)
    assert index.metadata["model"]["source"] == {"kind": "run", "path": str(run.resolve())}

    # an image finds itself at distance 0 (the index codes are the run's own codes of the clean view); a trained
    # 16-bit model gives a whole class one code and ties go to the lower id, so search the whole index for it
    probe = data / "images" / "forest_3.tif"
    assert main(["search", "--image", str(probe), "--index", str(out), "-k", "32", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)[0]["results"]
    assert results[0]["distance"] == 0
    assert [r["distance"] for r in results if r["path"] == str(probe.resolve())] == [0]
    from tfduch.pipeline import load_trained, prepare

    cfg, model, _ = load_trained(run)
    prep = prepare(cfg, progress=False)
    pipeline_codes = model.encode(prep.features.image, "image")
    stored = np.unpackbits(np.asarray(index.collection("image").codes), axis=1)
    assert np.mean(stored == (pipeline_codes > 0)) >= 0.99

    # text → image: a caption of a class retrieves mostly that class (the model recorded in the index encodes it)
    assert main(["search", "a forest with dense trees", "--index", str(out), "-k", "8", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)[0]["results"]
    assert sum(r["class"] == "forest" for r in results) >= 5

    # add: same model appends; another model is refused and the file is left as it was
    extra = root / "extra"
    extra.mkdir()
    shutil.copy(probe, extra / "again.tif")
    assert main(["index", "add", "--index", str(out), "--images", str(extra), "--quiet"]) == 0
    assert "added 1 image items (ids 32..32)" in capsys.readouterr().out
    other = root / "other_run"
    shutil.copytree(run, other)
    meta = json.loads((other / "model.json").read_text())
    (other / "model.json").write_text(json.dumps({**meta, "model_id": "0" * 16}))  # a different model id
    before = out.read_bytes()
    assert main(["index", "add", "--index", str(out), "--run", str(other), "--images", str(extra), "--quiet"]) == 2
    assert "codes of different models are not comparable" in capsys.readouterr().err
    assert out.read_bytes() == before


@pytest.mark.slow
def test_export_encoder_builds_and_queries_like_the_run(trained, capsys) -> None:
    """ExportEncoder (SavedModel) gives the run's codes, TIFF queries included, and drives build + search."""
    export = pytest.importorskip("tfduch.export", reason="the export module (tfduch.export) is not available")
    from tfduch.index.encoders import ExportEncoder, RunEncoder

    root, data, run = trained
    base = root / "exports"
    export.export_model(run, base)
    by_export, by_run = ExportEncoder(base), RunEncoder(run)
    assert by_export.metadata["bits"] == 16 and by_export.metadata["model_id"]
    texts = ["a forest with dense trees", "boats in a harbor", "ünïcode 飛行機"]
    assert np.mean(by_export.encode_texts(texts) == by_run.encode_texts(texts)) >= 0.95
    images = sorted((data / "images").glob("*.tif"))[:6]  # TIFF: converted to PNG before the SavedModel
    assert np.mean(by_export.encode_images(images) == by_run.encode_images(images)) >= 0.95

    out = root / "by_export.tfidx"
    assert main(["index", "build", "--export", str(base), "--images", str(data), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert load_index(out).model_id == by_export.metadata["model_id"]
    assert main(["search", "--image", str(images[0]), "--index", str(out), "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["results"][0]["distance"] == 0
    # the run and its export are one model (one model_id, issue 14): the run's codes query the export's index
    assert RunEncoder(run).metadata["model_id"] == by_export.metadata["model_id"]
    assert main(["search", "forest", "--index", str(out), "--run", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["results"]
