"""tfduch.runs: a run folder is written and read in one place, and its model_id is computed once."""

import json
from pathlib import Path

import numpy as np
import pytest

from tfduch import runs
from tfduch.config import load_config
from tfduch.errors import TfduchError


def _trained(out: Path, seed: int = 0):
    from tfduch.training.data import TrainingFeatures
    from tfduch.training.trainer import train

    rng = np.random.default_rng(seed)
    n = 32
    image = rng.normal(size=(n, 24)).astype(np.float32)
    captions = rng.normal(size=(n, 2, 12)).astype(np.float32)
    features = TrainingFeatures(image, image[None] + 0.1, captions, np.full(n, 2), rng.integers(0, 2, n))
    cfg = load_config(None, ["model.bits=16", "model.hidden_dim=32", "train.epochs=1", "train.batch_size=16",
                             "train.checkpoint=false", "train.tensorboard=false", "train.verbose=0",
                             f"train.seed={seed}", f"output_dir={out}"])
    model, _ = train(cfg, features, out)
    runs.save_config(cfg, out)
    meta = runs.save_model(model, cfg, out, num_train=n, encoders={"image": "img-x", "text": "txt-y"},
                           dataset="random", dataset_fingerprint="f" * 64, split_digest="d" * 16)
    return cfg, model, meta


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, *_trained(out)


def test_save_then_load_keeps_one_model_id(saved) -> None:
    out, cfg, model, meta = saved
    assert len(meta["model_id"]) == 16
    assert json.loads((out / runs.META_FILE).read_text())["model_id"] == meta["model_id"]
    loaded = runs.load_run(out)
    assert loaded.model_id == meta["model_id"]
    # the loaded weights give the same id again, and the same codes
    assert runs.model_id_of(loaded.model, loaded.meta, cfg) == meta["model_id"]
    x = np.random.default_rng(3).normal(size=(5, 24)).astype(np.float32)
    np.testing.assert_array_equal(loaded.model.encode(x, "image"), model.encode(x, "image"))
    config, hasher, run_meta = loaded  # unpacks like (config, model, meta)
    assert hasher is loaded.model and run_meta["bits"] == 16 and config.model.bits == 16


def test_a_run_saved_without_model_id_gets_the_same_id_on_load(saved, tmp_path) -> None:
    out, _, _, meta = saved
    old = tmp_path / "old"
    old.mkdir()
    for name in runs.RUN_FILES:
        (old / name).write_bytes((out / name).read_bytes())
    legacy = {k: v for k, v in meta.items() if k != "model_id"}
    (old / runs.META_FILE).write_text(json.dumps(legacy))
    assert runs.load_run(old).model_id == meta["model_id"]


def test_other_weights_or_identity_change_the_id(saved) -> None:
    _, cfg, model, meta = saved
    weights = runs.head_weights(model)
    identity = runs.model_identity(meta, cfg.to_dict())
    assert runs.compute_model_id(weights, identity) == meta["model_id"]
    weights[0] = (weights[0][0], weights[0][1] + 1e-6)
    assert runs.compute_model_id(weights, identity) != meta["model_id"]
    assert runs.compute_model_id(runs.head_weights(model), {**identity, "bits": 32}) != meta["model_id"]
    # paths and logging switches are not part of the identity
    moved = load_config(None, [f"output_dir={cfg.output_dir}-elsewhere", "train.verbose=2", "model.bits=16",
                               "model.hidden_dim=32", "train.epochs=1", "train.batch_size=16",
                               "train.checkpoint=false", "train.tensorboard=false", "train.seed=0"])
    assert runs.model_id_of(model, meta, moved) == meta["model_id"]


def test_not_a_run_folder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(TfduchError, match="missing config.yaml, model.json, model.weights.h5"):
        runs.load_run(tmp_path)
    for name in runs.RUN_FILES:
        (tmp_path / name).write_text("{}")
    with pytest.raises(TfduchError, match="not a tfduch model description"):
        runs.read_run_meta(tmp_path)
