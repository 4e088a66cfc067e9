"""One model, one id: an index built from a run answers queries through that run's SavedModel export and its
TFLite file, with no refusal (issue 14). Before, the run's id hashed file bytes and the export's hashed
weights, so the same trained model was refused as "another model"."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow_text")


@pytest.fixture(scope="module")
def run_index_export(tmp_path_factory):
    from tfduch.cli import main
    from tfduch.data.synthetic import make_synthetic_dataset
    from tfduch.export import TFLiteOptions, export_model

    root = tmp_path_factory.mktemp("identity")
    data = make_synthetic_dataset(root / "data", n_classes=2, per_class=8, image_size=32, image_format="png")
    run = root / "run"
    assert main(["train", "--data", str(data), "--output", str(run), "--cache-dir", str(root / "cache"),
                 "--bits", "16", "--epochs", "2", "--quiet", "--set", "model.hidden_dim=32",
                 "--set", "train.batch_size=4", "--set", "train.tensorboard=false", "--set", "eval.plots=false",
                 "--set", "train.checkpoint=false", "--set", "features.image_encoder=lite0"]) == 0
    index = root / "run.tfidx"
    assert main(["index", "build", "--run", str(run), "--images", str(data), "--out", str(index), "--quiet"]) == 0
    options = TFLiteOptions(variants=("float32",), calibration_images=2, check_images=2, bias_correction_images=0,
                            progress=False)
    version = export_model(run, root / "exports", tflite=options)
    return data, run, index, version


def test_run_export_tflite_and_index_share_one_model_id(run_index_export) -> None:
    from tfduch.export import load_exported
    from tfduch.index import load_index
    from tfduch.runs import load_run

    _, run, index, version = run_index_export
    run_id = load_run(run).model_id
    exported = load_exported(version)
    assert load_index(index).model_id == run_id
    assert exported.model_id == run_id
    assert exported.metadata["tflite"]["float32"]["model_id"] == run_id


def test_index_from_a_run_answers_its_export_and_its_tflite_file(run_index_export, capsys) -> None:
    import json

    import tensorflow as tf

    from tfduch.cli import main
    from tfduch.export import TFLiteImageEncoder
    from tfduch.index import load_index
    from tfduch.index.encoders import ExportEncoder, RunEncoder
    from tfduch.index.searcher import Searcher

    data, run, index_path, version = run_index_export
    index = load_index(index_path)
    images = sorted((data / "images").glob("*.png"))[:3]

    # SavedModel export: accepted as the index's model, and it finds the indexed images
    by_export = ExportEncoder(version)
    searcher = Searcher(index, by_export)  # would raise IncompatibleIndexError for another model id
    hits = searcher.by_image(images, k=1)
    assert all(h[0].distance <= 1 for h in hits)  # the same images (float rounding may flip a bit)
    capsys.readouterr()
    assert main(["search", "--image", str(images[0]), "--index", str(index_path), "--export", str(version),
                 "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["results"][0]["distance"] <= 1
    assert main(["search", "a scene", "--index", str(index_path), "--export", str(version), "-k", "2"]) == 0

    # its TFLite file: the metadata entry carries the same model id, so the index accepts its codes
    entry = by_export.exported.metadata["tflite"]["float32"]
    index.check_compatible({"bits": 16, "model_id": entry["model_id"]})
    preprocess = tf.saved_model.load(str(version)).preprocess_images
    pixels = preprocess(tf.constant([p.read_bytes() for p in images])).numpy()
    codes = TFLiteImageEncoder(version / entry["file"]).encode(pixels)
    assert np.mean(codes == RunEncoder(run).encode_images(images)) >= 0.95
    tflite_hits = Searcher(index).by_code(codes, k=1)
    assert all(h[0].distance <= 1 for h in tflite_hits)
