"""``tfduch reproduce``: resumable cells, well-formed tables, and the cosine-ranking evaluation it uses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tfduch.data.karpathy import load_dataset
from tfduch.data.split import make_split
from tfduch.data.synthetic import make_synthetic_dataset
from tfduch.errors import ConfigError
from tfduch.eval import evaluate_retrieval, map_at_k
from tfduch.eval.continuous import cosine_rank, evaluate_retrieval_cosine, map_at_k_cosine
from tfduch.features.build import FeatureSet
from tfduch.pipeline import Prepared
from tfduch.reproduce import Cell, ReproduceSpec, load_cell, reproduce, table_markdown
from tfduch.training import trainer

# ------------------------------------------------------------------------------------ cosine ranking


def test_cosine_map_equals_hamming_map_on_binary_codes() -> None:
    rng = np.random.default_rng(0)
    q = np.where(rng.normal(size=(40, 16)) > 0, 1, -1).astype(np.int8)
    db = np.where(rng.normal(size=(200, 16)) > 0, 1, -1).astype(np.int8)
    ql, dl = rng.integers(0, 4, 40), rng.integers(0, 4, 200)
    for definition in ("reference", "standard"):
        assert map_at_k_cosine(q, db, ql, dl, 20, definition) == pytest.approx(map_at_k(q, db, ql, dl, 20, definition))
    # with as many PR levels as bits, the cosine radii are the Hamming radii
    ham = evaluate_retrieval(q, q, db, db, ql, dl).directions["i2t"]
    cos = evaluate_retrieval_cosine(q, q, db, db, ql, dl, pr_levels=16).directions["i2t"]
    np.testing.assert_allclose(cos.p_at_k, ham.p_at_k)
    np.testing.assert_allclose(cos.pr.recall, ham.pr.recall)


def test_cosine_ranking_orders_by_similarity_and_breaks_ties_by_index() -> None:
    db = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    order = cosine_rank(np.array([[1.0, 0.0]]), db)
    assert order.tolist() == [[0, 2, 3, 1]]  # items 0 and 2 tie at cosine 1: lower index first
    labels = np.array([0, 1, 1, 0])
    # relevant items (0, 3) at positions 1 and 3 → reference AP = (1/1 + 2/3) / 2
    assert map_at_k_cosine(np.array([[1.0, 0.0]]), db, np.array([0]), labels, 4) == pytest.approx((1 + 2 / 3) / 2)


def test_cosine_evaluation_errors_and_unimodal_directions() -> None:
    rng = np.random.default_rng(1)
    img, txt, labels = rng.normal(size=(10, 6)), rng.normal(size=(10, 4)), np.arange(10) % 2
    with pytest.raises(ValueError, match="one space"):
        evaluate_retrieval_cosine(img, txt, img, txt, labels, labels)
    report = evaluate_retrieval_cosine(img, txt, img, txt, labels, labels, directions=("i2i", "t2t"), ks=(1, 5))
    assert set(report.directions) == {"i2i", "t2t"}
    assert report.directions["i2i"].p_at_k[0] == 1.0  # each query finds itself first
    with pytest.raises(ValueError, match="NaN"):
        map_at_k_cosine(np.full((1, 3), np.nan), img[:, :3], [0], labels)


# --------------------------------------------------------------------------------------- the harness
def synthetic_prepared(tmp_path, n_classes: int = 4, per_class: int = 16, seed: int = 0) -> Prepared:
    """A tiny dataset whose (fake) frozen features carry the class, without running the encoders."""
    root = make_synthetic_dataset(tmp_path / "data", n_classes=n_classes, per_class=per_class, image_size=8,
                                  captions_per_image=3, seed=seed)
    dataset = load_dataset(root)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, 8))
    z = centres[dataset.labels]
    n = len(dataset)
    image = np.abs(z @ rng.normal(size=(8, 24)) + 0.5 * rng.normal(size=(n, 24))).astype(np.float32)
    image_aug = (image + 0.1 * rng.normal(size=image.shape)).astype(np.float32)[None]
    captions = (z @ rng.normal(size=(8, 20)))[:, None] + 0.5 * rng.normal(size=(n, 3, 20))
    features = FeatureSet(image, image_aug, captions.astype(np.float32), np.full(n, 3), None,
                          {"image": "synthetic", "text": "synthetic"})
    return Prepared(dataset, make_split(dataset, seed=42), features)


SMALL = ("model.hidden_dim=32", "train.batch_size=16", "model.params.decoder_hidden=16")


def small_spec(tmp_path, methods=("duch", "cca-itq", "cosine"), epochs: int = 1, seeds: int = 2,
               overrides: tuple[str, ...] = (), **kwargs) -> ReproduceSpec:
    # model.params keys differ per method: only CACH knows decoder_hidden
    cach_only = tuple(o for o in SMALL if "params" not in o) if "cach" not in methods else SMALL
    return ReproduceSpec(out=tmp_path / "out", methods=tuple(methods), bits=(16,), seeds=seeds, epochs=epochs,
                         overrides=cach_only + overrides, progress=False, **kwargs)


@pytest.fixture
def count_trainings(monkeypatch):
    calls: list[str] = []
    real_train = trainer.train

    def counting(cfg, *args, **kwargs):
        calls.append(f"{cfg.model.method}-{cfg.model.bits}-s{cfg.train.seed}")
        return real_train(cfg, *args, **kwargs)

    monkeypatch.setattr(trainer, "train", counting)
    return calls


def test_reproduce_resumes_without_redoing_finished_cells(tmp_path, count_trainings) -> None:
    prepared = synthetic_prepared(tmp_path)
    spec = small_spec(tmp_path)
    first = reproduce(spec, prepared=prepared, log=lambda _: None)
    assert not first.failed
    assert sorted(count_trainings) == ["duch-16-s0", "duch-16-s1"]
    assert len(first.ran) == 2 + 2 + 1  # duch and cca-itq seeds + the cosine reference
    assert {p.name for p in (spec.out / "cells").iterdir()} == {f"{c.key}.json" for c in spec.cells()}

    second = reproduce(small_spec(tmp_path), prepared=prepared, log=lambda _: None)
    assert len(count_trainings) == 2 and second.ran == [] and len(second.reused) == 5

    # an interruption loses only the unfinished cell
    (spec.out / "cells" / "duch-16-s1.json").unlink()
    partial = reproduce(small_spec(tmp_path, table_only=True), prepared=prepared, log=lambda _: None)
    assert partial.ran == [] and len(count_trainings) == 2
    rows = json.loads((spec.out / "reproduce.json").read_text())["rows"]
    assert next(r for r in rows if r["method"] == "duch" and r["ranking"] == "hamming")["seeds"] == [0]
    assert " (1) |" in (spec.out / "reproduce.md").read_text()  # one of two seeds finished
    third = reproduce(small_spec(tmp_path), prepared=prepared, log=lambda _: None)
    assert count_trainings[2:] == ["duch-16-s1"] and third.ran == ["duch-16-s1"]

    # changed settings recompute only the cells they affect (the learned ones), a corrupt file is redone
    (spec.out / "cells" / "cca-itq-16-s0.json").write_text("{not json")
    fourth = reproduce(small_spec(tmp_path, epochs=2), prepared=prepared, log=lambda _: None)
    assert len(count_trainings) == 5
    assert sorted(fourth.ran) == ["cca-itq-16-s0", "duch-16-s0", "duch-16-s1"]
    assert load_cell(spec.out / "cells" / "duch-16-s0.json")["epochs"] == 2


def test_a_failing_cell_is_reported_and_the_others_are_kept(tmp_path, monkeypatch) -> None:
    prepared = synthetic_prepared(tmp_path)
    real_train = trainer.train

    def flaky(cfg, *args, **kwargs):
        if cfg.train.seed == 1:
            raise RuntimeError("boom")
        return real_train(cfg, *args, **kwargs)

    monkeypatch.setattr(trainer, "train", flaky)
    result = reproduce(small_spec(tmp_path, methods=("duch",)), prepared=prepared, log=lambda _: None)
    assert result.ran == ["duch-16-s0"] and "RuntimeError: boom" in result.failed["duch-16-s1"]
    assert not (tmp_path / "out" / "cells" / "duch-16-s1.json").exists()


def test_table_files_are_well_formed(tmp_path) -> None:
    prepared = synthetic_prepared(tmp_path)
    spec = small_spec(tmp_path, methods=("duch", "cach", "cca-itq", "ridge-itq", "cosine"))
    result = reproduce(spec, prepared=prepared, log=lambda _: None)
    assert not result.failed
    table = json.loads((spec.out / "reproduce.json").read_text())
    rows = {(r["method"], r["ranking"], r["bits"]): r for r in table["rows"]}
    assert set(rows) == {("duch", "hamming", 16), ("cach", "hamming", 16), ("cca-itq", "hamming", 16),
                         ("ridge-itq", "hamming", 16), ("duch", "cosine", 16), ("cach", "cosine", 16),
                         ("cosine", "cosine", None)}
    duch = rows[("duch", "hamming", 16)]
    assert duch["seeds"] == [0, 1] and duch["published"] == {"i2t": 0.760, "t2i": 0.799}
    for d in ("i2t", "t2i", "i2i", "t2t"):
        stats = duch["map"][d]
        assert stats["n"] == 2 and 0.0 <= stats["mean"] <= 1.0
        assert stats["mean"] == pytest.approx(np.mean(stats["values"]))
        assert stats["std"] == pytest.approx(np.std(stats["values"], ddof=1))
    assert set(rows[("cosine", "cosine", None)]["map"]) == {"i2i", "t2t"}
    # the harness's learned rows beat chance on data whose features carry the class
    assert rows[("cca-itq", "hamming", 16)]["map"]["i2t"]["mean"] > 0.5
    assert {(c["method"], c["versus"]) for c in table["comparisons"]} >= {("cach", "duch"), ("duch", "cca-itq")}

    md = (spec.out / "reproduce.md").read_text()
    assert md == table_markdown(table)
    assert "## Cross-modal: I→T" in md and "## Uni-modal: T→T" in md
    assert "| DUCH (published) | 0.760 |" in md and "| cosine · frozen features | n/a |" in md
    assert "CACH (tanh codes, cosine)" in md and "Training epochs: DUCH 1, CACH 1 (--epochs override)" in md
    for line in md.splitlines():
        if line.startswith("|"):
            assert line.endswith("|")
    png = (spec.out / "reproduce_pr_16bits.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_spec_validation_and_cell_plan(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown method"):
        ReproduceSpec(out=tmp_path, methods=("duhc",))
    with pytest.raises(ConfigError, match="multiples of 8"):
        ReproduceSpec(out=tmp_path, methods=("duch",), bits=(12,))
    spec = ReproduceSpec(out=tmp_path, methods=("cosine", "duch", "cca-itq", "cach-no-similarity"), bits=(16, 32),
                         seeds=2)
    cells = spec.cells()
    assert cells[0] == Cell("cosine", None, 0) and cells[0].key == "cosine"
    assert len(cells) == 1 + 4 + 8 and len({c.key for c in cells}) == len(cells)
    assert cells[-1].key == "cach-no-similarity-32-s1"


def test_variant_config_switches_one_piece_off(tmp_path) -> None:
    from tfduch.reproduce import cell_config

    spec = ReproduceSpec(out=tmp_path, methods=("cach-no-autoencoder",), bits=(64,), seeds=1)
    cfg = cell_config(spec, Cell("cach-no-autoencoder", 64, 0))
    assert cfg.model.method == "cach" and cfg.model.params["cross_autoencoder"] is False
    assert cfg.model.params["similarity"] is True  # the rest of configs/cach.yaml is kept


def test_chnr_duch_variant_is_configs_chnr_duch(tmp_path) -> None:
    """The table's CHNR (DUCH objective) row trains exactly what configs/chnr_duch.yaml says."""
    from tfduch.config import load_config
    from tfduch.reproduce import DEFAULT_CONFIG_DIR, cell_config, display_name

    spec = ReproduceSpec(out=tmp_path, methods=("chnr-duch",), bits=(32,), seeds=1)
    ours = cell_config(spec, Cell("chnr-duch", 32, 0)).to_dict()
    shipped = load_config(DEFAULT_CONFIG_DIR / "chnr_duch.yaml", ["model.bits=32", "train.seed=0"]).to_dict()
    for section in ("model", "loss", "noise", "features", "data"):
        assert ours[section] == shipped[section], section
    volatile = {"checkpoint", "tensorboard", "verbose"}
    assert {k: v for k, v in ours["train"].items() if k not in volatile} == \
        {k: v for k, v in shipped["train"].items() if k not in volatile}
    assert display_name("chnr-duch") == "CHNR (DUCH objective)"


def test_a_variant_naming_a_missing_config_says_so(tmp_path) -> None:
    from tfduch.reproduce import cell_config

    spec = ReproduceSpec(out=tmp_path, methods=("duch-paper",), bits=(64,), seeds=1, config_dir=tmp_path / "none")
    with pytest.raises(ConfigError, match=r"duch-paper: its config .*duch_paper.yaml is missing"):
        cell_config(spec, Cell("duch-paper", 64, 0))


def test_duch_paper_variant_is_configs_duch_paper(tmp_path) -> None:
    """The table's DUCH (paper objective) row trains exactly configs/duch_paper.yaml: adversarial term and lr decay
    on, everything else the defaults."""
    from tfduch.config import Config, load_config
    from tfduch.reproduce import DEFAULT_CONFIG_DIR, cell_config, display_name

    spec = ReproduceSpec(out=tmp_path, methods=("duch-paper",), bits=(64,), seeds=1)
    ours = cell_config(spec, Cell("duch-paper", 64, 0)).to_dict()
    shipped = load_config(DEFAULT_CONFIG_DIR / "duch_paper.yaml", ["train.seed=0"]).to_dict()
    for section in ("model", "loss", "features", "data"):
        assert ours[section] == shipped[section], section
    volatile = {"checkpoint", "tensorboard", "verbose"}
    assert {k: v for k, v in ours["train"].items() if k not in volatile} == \
        {k: v for k, v in shipped["train"].items() if k not in volatile}
    assert (ours["loss"]["alpha"], ours["train"]["lr_decay_factor"]) == (0.01, 0.8)
    defaults = Config()
    assert (defaults.loss.alpha, defaults.train.lr_decay_factor) != (0.01, 0.8)  # the default is the other setting
    assert display_name("duch-paper") == "DUCH (paper objective)"


def test_settings_comparison_tolerates_new_default_fields_only() -> None:
    from tfduch.config import Config
    from tfduch.reproduce import same_settings

    current = {"cell": "duch-16-s0", "split": "abc", "config": Config().to_dict()}
    stored = json.loads(json.dumps(current))
    assert same_settings(stored, current)
    del stored["config"]["train"]["min_lr"]  # a field added to the schema after the cell was stored …
    assert same_settings(stored, current)  # … at its default: the cell stays valid
    current["config"]["train"]["min_lr"] = 1e-3  # … set to something else: recompute
    assert not same_settings(stored, current)
    changed = json.loads(json.dumps(current))
    changed["config"]["train"]["min_lr"] = 1e-6
    changed["config"]["model"]["bits"] = 32
    assert not same_settings(stored, changed)
    assert not same_settings({**stored, "split": "other"}, {**stored})


def test_set_overrides_reach_the_features_every_cell_uses(tmp_path) -> None:
    from tfduch.reproduce import base_config

    spec = ReproduceSpec(out=tmp_path, methods=("duch", "cca-itq"), overrides=("features.image_encoder=lite0",))
    assert base_config(spec).features.image_encoder == "lite0"
    assert base_config(ReproduceSpec(out=tmp_path, methods=("duch",))).features.image_encoder == "lite0-ms"
