"""``tfduch export``: TF Serving layout, signatures, metadata, bit-exact parity, atomicity, TFLite.

One small model (trained one epoch on random 1280-d / 384-d features, so it fits the real encoders) is
exported once per module through the CLI; the tests inspect that export and compare its codes with the
in-memory Keras path the feature cache and ``model.encode`` use.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_export
from PIL import Image

from tfduch.export.layout import (
    TMP_PREFIX,
    ExportError,
    list_model_dirs,
    list_versions,
    models_config_text,
    next_version,
)

BITS = 32
TEXTS = [
    "many planes are parked next to a long terminal .",
    "a dense forest",
    "",
    "Café près du port — boats, piers & docks!!",
    "two tennis courts surrounded by green trees " * 12,
    "这是一个港口",
]


@pytest.fixture(scope="module")
def encoders():
    from tfduch.export import Encoders

    return Encoders.build("lite0")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, small_run, encoders):
    """(base dir, version dir, CLI stdout) of one ``tfduch export`` run, reusing the built encoders."""
    base = tmp_path_factory.mktemp("exports")
    code, out, _ = cli_export(small_run, base, encoders, "--name", "ucm")
    assert code == 0, out
    return base, base / "ucm" / "1", out


@pytest.fixture(scope="module")
def loaded(exported):
    from tfduch.export import load_exported

    return load_exported(exported[0])


@pytest.fixture(scope="module")
def trained(small_run):
    from tfduch.pipeline import load_trained

    return load_trained(small_run)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _png(path: Path, size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.uniform(0, 255, size=(6, 6, 4)).astype(np.uint8)
    image = Image.fromarray(coarse, "RGBA").resize((w, h), Image.BICUBIC).convert(mode)
    image.save(path, format="PNG")
    return path


# ------------------------------------------------------------------------------------------------
# layout, CLI, signatures, metadata
# ------------------------------------------------------------------------------------------------
def test_cli_prints_path_and_signatures(exported):
    base, version_dir, stdout = exported
    assert str(version_dir) in stdout
    for name in ("encode_text", "encode_image", "encode_image_features", "encode_text_features"):
        assert f"  {name}(" in stdout
    assert "serving_default = encode_text" in stdout
    assert f"codes: int8 [None, {BITS}]" in stdout and f"packed: uint8 [None, {BITS // 8}]" in stdout


def test_tf_serving_layout_and_models_config(exported):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from tfduch.encoders.minilm import minilm_model_dir

    base, version_dir, _ = exported
    assert list_versions(base / "ucm") == [1]
    assert not [p for p in (base / "ucm").iterdir() if p.name.startswith(TMP_PREFIX)]
    for rel in ("saved_model.pb", "variables/variables.index", "assets.extra/tfduch_metadata.json"):
        assert (version_dir / rel).is_file(), rel
    # The tokenizer's vocabulary ships as an asset, byte for byte the package's vocab.txt.
    assert (version_dir / "assets" / "vocab.txt").read_bytes() == (minilm_model_dir() / "vocab.txt").read_bytes()
    config = text_format.Parse((base / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    entries = config.model_config_list.config
    assert [(c.name, c.base_path, c.model_platform) for c in entries] == [
        ("ucm", str((base / "ucm").resolve()), "tensorflow")]


def test_signatures_names_dtypes_and_shapes(loaded):
    import tensorflow as tf

    sigs = loaded.signatures
    assert set(sigs) == {"serving_default", "encode_text", "encode_image", "encode_image_features",
                         "encode_text_features", "metadata"}
    expected_inputs = {"serving_default": ("text", tf.string, [None]), "encode_text": ("text", tf.string, [None]),
                       "encode_image": ("image_bytes", tf.string, [None]),
                       "encode_image_features": ("features", tf.float32, [None, 1280]),
                       "encode_text_features": ("features", tf.float32, [None, 384])}
    for name, (arg, dtype, shape) in expected_inputs.items():
        _, kwargs = sigs[name].structured_input_signature
        assert list(kwargs) == [arg], name
        assert kwargs[arg].dtype == dtype and kwargs[arg].shape.as_list() == shape, name
        outputs = sigs[name].structured_outputs
        assert set(outputs) == {"codes", "packed"}
        assert outputs["codes"].dtype == tf.int8 and outputs["codes"].shape.as_list() == [None, BITS]
        assert outputs["packed"].dtype == tf.uint8 and outputs["packed"].shape.as_list() == [None, BITS // 8]


@pytest.mark.slow
def test_saved_model_cli_show_lists_signatures(exported):
    tool = shutil.which("saved_model_cli")
    if tool is None:
        pytest.skip("saved_model_cli not on PATH")
    out = subprocess.run([tool, "show", "--dir", str(exported[1]), "--all"], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    for name in ("serving_default", "encode_text", "encode_image", "encode_image_features", "encode_text_features"):
        assert f"signature_def['{name}']" in out
    assert out.count("dtype: DT_INT8") == 5 and out.count("dtype: DT_UINT8") == 5
    assert f"shape: (-1, {BITS})" in out and "inputs['image_bytes']" in out and "shape: (-1, 1280)" in out


def test_metadata_describes_the_model(exported, loaded, trained, small_run):
    from tfduch.export.metadata import build_metadata, read_metadata

    cfg, model, run_meta = trained
    meta = read_metadata(exported[1])
    assert loaded.metadata == meta
    assert meta["code_length"] == BITS and meta["packed_bytes"] == BITS // 8 and meta["method"] == "duch"
    assert meta["encoders"] == run_meta["encoders"]
    assert meta["dataset_fingerprint"] == run_meta["dataset_fingerprint"]
    assert meta["trained_at"] == run_meta["trained_at"] and meta["exported_at"]
    assert meta["model_name"] == "ucm" and meta["version"] == 1
    assert meta["preprocessing"]["image_size"] == 224 and meta["preprocessing"]["source_size"] == 256
    assert str(small_run) not in json.dumps(meta)  # no machine paths
    # model_id: a digest of the heads' weights + what shapes the codes; same run -> same id.
    from tfduch.runs import compute_model_id, head_weights, model_identity

    weights, identity = head_weights(model), model_identity(run_meta, cfg.to_dict())
    again = build_metadata(run_meta={**run_meta, "model_id": compute_model_id(weights, identity)},
                           config=cfg.to_dict(), preprocessing=meta["preprocessing"], signatures=meta["signatures"],
                           model_name="other", version=7)
    assert again["model_id"] == meta["model_id"] == loaded.model_id
    weights[0] = (weights[0][0], weights[0][1] + 1e-6)
    changed = build_metadata(run_meta={**run_meta, "model_id": compute_model_id(weights, identity)},
                             config=cfg.to_dict(), preprocessing=meta["preprocessing"], signatures=meta["signatures"],
                             model_name="ucm", version=1)
    assert changed["model_id"] != meta["model_id"]


# ------------------------------------------------------------------------------------------------
# parity with the in-memory Keras model, bit for bit
# ------------------------------------------------------------------------------------------------
def test_text_codes_match_keras_bit_for_bit(loaded, trained, encoders):
    import tensorflow as tf

    from tfduch.encoders.minilm import text_encoder_function

    model = trained[1]
    features = text_encoder_function(encoders.text)(tf.constant(TEXTS)).numpy()
    expected = model.encode(features, "text")
    out = loaded.run_signature("encode_text", np.array(TEXTS, dtype=object), batch_size=len(TEXTS))
    np.testing.assert_array_equal(out["codes"], expected)
    np.testing.assert_array_equal(out["packed"], np.packbits(expected > 0, axis=1))
    np.testing.assert_array_equal(loaded.encode_texts(TEXTS, batch_size=len(TEXTS)), expected)
    serving_default = loaded.signatures["serving_default"](text=tf.constant(TEXTS))
    np.testing.assert_array_equal(serving_default["codes"].numpy(), expected)


def test_image_bytes_match_feature_cache_path_bit_for_bit(loaded, trained, encoders, tmp_path):
    from tfduch.augment.image import build_image_augmentation
    from tfduch.features.encode import _decode, encode_images

    paths = [_png(tmp_path / "square.png", (256, 256), seed=1),          # no source resize
             _png(tmp_path / "wide.png", (300, 200), seed=2),            # resized to 256 first
             _png(tmp_path / "gray.png", (64, 64), "L", seed=3),          # grayscale, upscaled
             _png(tmp_path / "alpha.png", (256, 256), "RGBA", seed=4)]   # alpha dropped
    clean_view = build_image_augmentation("none", 224, 0)
    # Preprocessing alone is identical, float for float, to the feature cache's clean view.
    reference_input = clean_view(np.stack([_decode(p) for p in paths]), training=True).numpy()
    np.testing.assert_array_equal(loaded.preprocess_images(paths), reference_input)
    features = encode_images(paths, encoders.image, clean_view, progress=False)
    expected = trained[1].encode(features, "image")
    np.testing.assert_array_equal(loaded.encode_images([p.read_bytes() for p in paths]), expected)
    packed = loaded.run_signature("encode_image", np.array([p.read_bytes() for p in paths], dtype=object), 8)
    np.testing.assert_array_equal(packed["packed"], np.packbits(expected > 0, axis=1))


@pytest.mark.realdata
def test_real_ucm_webp_images_match_feature_cache_path(loaded, trained, encoders, ucm_root):
    from tfduch.augment.image import build_image_augmentation
    from tfduch.features.encode import encode_images

    paths = sorted((ucm_root / "images").iterdir())[:4]
    features = encode_images(paths, encoders.image, build_image_augmentation("none", 224, 0), progress=False)
    np.testing.assert_array_equal(loaded.encode_images(paths), trained[1].encode(features, "image"))


def test_feature_signatures_match_heads(loaded, trained):
    rng = np.random.default_rng(5)
    for modality, dim in (("image", 1280), ("text", 384)):
        x = rng.normal(size=(50, dim)).astype(np.float32)
        np.testing.assert_array_equal(loaded.encode_features(x, modality, batch_size=20),
                                      trained[1].encode(x, modality))


def test_pack_codes_is_numpy_packbits():
    import tensorflow as tf

    from tfduch.export import binarize, pack_codes

    h = np.random.default_rng(0).normal(size=(7, 24)).astype(np.float32)
    h[0, :3] = 0.0  # sign(0) -> +1
    codes = binarize(tf.constant(h)).numpy()
    assert codes.dtype == np.int8 and set(np.unique(codes)) == {-1, 1} and (codes[0, :3] == 1).all()
    np.testing.assert_array_equal(pack_codes(tf.constant(codes)).numpy(), np.packbits(codes > 0, axis=1))


# ------------------------------------------------------------------------------------------------
# bad inputs and clear errors
# ------------------------------------------------------------------------------------------------
def test_encode_rejects_bad_inputs(loaded):
    from tfduch.errors import DataError

    with pytest.raises(TypeError, match="pass a list"):
        loaded.encode_texts("a single caption")
    with pytest.raises(TypeError, match="item 1"):
        loaded.encode_texts(["ok", 3])
    with pytest.raises(DataError, match="item 1 is not a decodable"):
        loaded.encode_images([_png_bytes(), b"GIF89a-not-really"])
    with pytest.raises(DataError, match=r"\[N, 384\]"):
        loaded.encode_features(np.zeros((2, 1280), np.float32), "text")
    with pytest.raises(ValueError, match="modality"):
        loaded.encode_features(np.zeros((2, 384), np.float32), "audio")
    assert loaded.encode_texts([]).shape == (0, BITS)


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_export_of_a_non_run_folder_is_a_clear_error(tmp_path, capsys):
    from tfduch import cli
    from tfduch.export import export_model

    with pytest.raises(ExportError, match="run folder not found"):
        export_model(tmp_path / "missing", tmp_path / "exports")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="missing config.yaml, model.json, model.weights.h5"):
        export_model(tmp_path / "empty", tmp_path / "exports")
    assert cli.main(["export", "--run", str(tmp_path / "empty"), "--base", str(tmp_path / "exports")]) == 2
    assert "not a finished run folder" in capsys.readouterr().err
    assert not (tmp_path / "exports" / "tfduch").exists()


def test_export_refuses_other_encoders_taken_versions_and_bad_names(tmp_path, small_run, exported, encoders):
    from tfduch.export import export_model

    other = shutil.copytree(small_run, tmp_path / "run")
    meta = json.loads((other / "model.json").read_text())
    meta["encoders"]["image"] = "efficientnet-lite0-000000000000-c1"
    (other / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="trained on image features of encoder"):
        export_model(other, tmp_path / "exports", encoders=encoders)
    with pytest.raises(ExportError, match="already exists"):
        export_model(small_run, exported[0], "ucm", version=1, encoders=encoders)
    with pytest.raises(ExportError, match="invalid model name"):
        export_model(small_run, tmp_path / "exports", "../escape", encoders=encoders)


def test_load_exported_errors_name_the_problem(tmp_path):
    from tfduch.export import load_exported

    with pytest.raises(ExportError, match="not found"):
        load_exported(tmp_path / "nothing")
    with pytest.raises(ExportError, match="holds no SavedModel"):
        load_exported(tmp_path)
    for name in ("a", "b"):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ExportError, match="several models"):
        load_exported(tmp_path)


# ------------------------------------------------------------------------------------------------
# versions and atomicity
# ------------------------------------------------------------------------------------------------
def test_version_helpers(tmp_path):
    model = tmp_path / "m"
    for name in ("1", "3", "7", "x", ".tmp-abc"):
        (model / name).mkdir(parents=True)
    for name in ("1", "3", ".tmp-abc"):
        (model / name / "saved_model.pb").write_bytes(b"")
    assert list_versions(model) == [1, 3]  # only complete integer versions are served
    assert next_version(model) == 8  # but no integer directory is ever reused
    assert next_version(tmp_path / "new") == 1
    assert list_model_dirs(tmp_path) == [model]
    text = models_config_text(tmp_path, serving_base_path="/models/")
    assert 'name: "m"' in text and 'base_path: "/models/m"' in text


def test_crash_mid_export_keeps_previous_versions(exported, small_run, encoders, monkeypatch):
    import tensorflow as tf

    from tfduch.export import export_model

    base = exported[0]
    before = _tree_digest(base)

    def crashing_save(obj, export_dir, *args, **kwargs):
        Path(export_dir, "variables").mkdir(parents=True)
        Path(export_dir, "saved_model.pb").write_bytes(b"half")
        raise RuntimeError("simulated crash while writing variables")

    monkeypatch.setattr(tf.saved_model, "save", crashing_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export_model(small_run, base, "ucm", encoders=encoders)
    assert _tree_digest(base) == before  # version 1 and models.config untouched, no temp dir left
    assert list_versions(base / "ucm") == [1] and next_version(base / "ucm") == 2


def test_killed_process_leaves_only_a_hidden_temp_dir(tmp_path):
    from tfduch.export.loaded import resolve_version_dir

    model = tmp_path / "m"
    (model / "1").mkdir(parents=True)
    (model / "1" / "saved_model.pb").write_bytes(b"v1")
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from tfduch.export.layout import write_version\n"
        "def build(tmp):\n"
        "    tmp.mkdir()\n"
        "    (tmp / 'saved_model.pb').write_bytes(b'partial')\n"
        "    os._exit(9)  # the process dies mid-export: no cleanup, no rename\n"
        "write_version(Path(sys.argv[1]), 2, build)\n")
    result = subprocess.run([sys.executable, "-c", script, str(model)], capture_output=True, timeout=120)
    assert result.returncode == 9, result.stderr.decode()
    leftovers = sorted(p.name for p in model.iterdir())  # "." sorts before digits
    assert len(leftovers) == 2 and leftovers[0].startswith(TMP_PREFIX) and leftovers[1] == "1"
    assert list_versions(model) == [1] and resolve_version_dir(model) == model / "1"
    assert next_version(model) == 2


# ------------------------------------------------------------------------------------------------
# TFLite
# ------------------------------------------------------------------------------------------------
def test_tflite_float_image_model_matches_savedmodel(trained, encoders, loaded, tmp_path):
    from tfduch.export import CodeExport
    from tfduch.export.tflite import TFLiteImageEncoder, convert_image_model

    model = trained[1]
    module = CodeExport(model.image_head, model.text_head, encoders)
    paths = [_png(tmp_path / f"{i}.png", (256, 256), seed=10 + i) for i in range(4)]
    tflite = TFLiteImageEncoder(convert_image_model(module, "float32"))
    assert tflite.image_size == 224
    codes = tflite.encode(loaded.preprocess_images(paths))
    expected = loaded.encode_images(paths)
    assert codes.dtype == np.int8 and codes.shape == expected.shape
    assert np.mean(codes == expected) >= 0.99  # float TFLite folds BatchNorm: rounding may flip a rare bit
    with pytest.raises(ValueError, match=r"\[N, 224, 224, 3\]"):
        tflite.encode(np.zeros((1, 256, 256, 3), np.float32))


@pytest.mark.slow
def test_tflite_dynamic_variant_converts_the_bias_corrected_encoder(trained, encoders):
    from tfduch.export import CodeExport
    from tfduch.export.tflite import convert_image_model

    model = trained[1]
    module = CodeExport(model.image_head, model.text_head, encoders)
    images = np.random.default_rng(0).uniform(0, 255, (4, 224, 224, 3)).astype(np.float32)

    def representative():
        for image in images:
            yield [image[None]]

    plain = convert_image_model(module, "dynamic")  # no images: nothing to correct with
    corrected = convert_image_model(module, "dynamic", representative, bias_correction_images=4)
    off = convert_image_model(module, "dynamic", representative, bias_correction_images=0)
    assert plain == off  # the images alone change nothing: dynamic calibrates no activation ranges
    assert corrected != plain  # the corrected kernels are what gets converted


def test_bias_corrected_encoder_rounds_kernels_and_keeps_channel_means():
    import keras

    from tfduch.export.tflite import bias_corrected_encoder

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="a_conv")(inputs)
    x = keras.layers.BatchNormalization(name="a_bn")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="b_conv")(x)
    outputs = keras.layers.BatchNormalization(name="b_bn")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.name.endswith("_conv"):
            layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype(np.float32))
    before = [w.copy() for w in model.get_weights()]
    images = rng.uniform(0, 255, (12, 8, 8, 3)).astype(np.float32)
    corrected = bias_corrected_encoder(model, images, batch_size=5)
    for original, now in zip(before, model.get_weights(), strict=True):  # the input model is untouched
        np.testing.assert_array_equal(original, now)
    for name, axis in (("a_conv", 3), ("b_conv", 2)):
        kernel = corrected.get_layer(name).kernel.numpy()
        scale = np.max(np.abs(kernel), axis=tuple(i for i in range(4) if i != axis), keepdims=True) / 127
        np.testing.assert_allclose(kernel / scale, np.round(kernel / scale), atol=1e-3)
    # The rounding's mean shift is absorbed: per-channel output means match the float model's.
    want = model(images, training=False).numpy().mean(axis=(0, 1, 2))
    got = corrected(images, training=False).numpy().mean(axis=(0, 1, 2))
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_bias_correction_runs_from_block_boundaries_only_where_the_graph_allows():
    """Measurements start from cached activations at single-tensor cuts; a residual branch is not cut."""
    import keras

    from tfduch.export.bias_correction import bias_corrected_encoder, cut_positions

    inputs = keras.Input((8, 8, 3), name="images")
    a = keras.layers.BatchNormalization(name="a_bn")(
        keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="a_conv")(inputs))
    b = keras.layers.BatchNormalization(name="b_bn")(
        keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="b_conv")(a))
    x = keras.layers.Add(name="add")([a, b])
    outputs = keras.layers.BatchNormalization(name="c_bn")(
        keras.layers.Conv2D(4, 1, use_bias=False, name="c_conv")(x))
    model = keras.Model(inputs, outputs)
    names = [layer.name for layer in model.layers]
    cuts = {names[i] for i in cut_positions(model)}
    assert {"images", "a_conv", "a_bn", "add", "c_conv", "c_bn"} <= cuts
    assert not {"b_conv", "b_bn"} & cuts  # the add still reads a_bn past them
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if layer.name.endswith("_conv"):
            layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype(np.float32))
    images = rng.uniform(0, 255, (10, 8, 8, 3)).astype(np.float32)
    corrected = bias_corrected_encoder(model, images, batch_size=4)
    want = model(images, training=False).numpy().mean(axis=(0, 1, 2))
    got = corrected(images, training=False).numpy().mean(axis=(0, 1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-5)  # means of order 1e4 here


def test_bias_correction_of_a_sequential_model_equals_the_functional_one():
    """Sequential models list no InputLayer: the correction must still start from the model's input."""
    import keras

    from tfduch.export.tflite import bias_corrected_encoder

    def layers() -> list:
        return [keras.layers.Conv2D(5, 3, padding="same", use_bias=False, name="a_conv"),
                keras.layers.BatchNormalization(name="a_bn"),
                keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="b_conv"),
                keras.layers.BatchNormalization(name="b_bn")]

    sequential = keras.Sequential([keras.Input((6, 6, 3)), *layers()])
    inputs = keras.Input((6, 6, 3))
    x = inputs
    for layer in layers():
        x = layer(x)
    functional = keras.Model(inputs, x)
    rng = np.random.default_rng(2)
    weights = [rng.normal(size=w.shape).astype(np.float32) for w in sequential.get_weights()]
    weights = [np.abs(w) + 0.5 if "variance" in v.path else w for w, v in zip(weights, sequential.weights,
                                                                              strict=True)]
    sequential.set_weights(weights)
    functional.set_weights(weights)
    images = rng.uniform(0, 255, (9, 6, 6, 3)).astype(np.float32)
    a = bias_corrected_encoder(sequential, images, batch_size=4).get_weights()
    b = bias_corrected_encoder(functional, images, batch_size=4).get_weights()
    assert any(not np.array_equal(x, w) for x, w in zip(a, weights, strict=True))  # it did correct something
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_cli_tflite_export_writes_models_and_agreement(tmp_path, small_run, encoders, exported):
    from tfduch.export.metadata import read_metadata
    from tfduch.export.tflite import TFLiteImageEncoder

    base = tmp_path / "exports"
    code, _, _ = cli_export(small_run, base, encoders, "--version", "5", "--tflite", "--tflite-variants",
                            "float32,dynamic,int8", "--calibration-images", "16", "--quiet")
    assert code == 0
    meta = read_metadata(base / "tfduch" / "5")
    assert set(meta["tflite"]) == {"float32", "dynamic", "int8"}
    # int8 weights are bias-corrected for both int8 variants; only full int8 calibrates activation ranges.
    assert meta["tflite"]["dynamic"]["bias_correction"] and meta["tflite"]["int8"]["bias_correction"]
    assert meta["tflite"]["dynamic"]["calibration"] is None and meta["tflite"]["int8"]["calibration"]
    assert meta["tflite"]["float32"]["bias_correction"] is None
    for variant, entry in meta["tflite"].items():
        path = base / "tfduch" / "5" / entry["file"]
        assert path.stat().st_size == entry["bytes"]
        assert TFLiteImageEncoder(path).encode(np.zeros((1, 224, 224, 3), np.float32)).shape == (1, BITS)
        assert entry["bit_agreement_vs_savedmodel"] >= (0.99 if variant == "float32" else 0.8), variant
    for variant in ("dynamic", "int8"):
        assert meta["tflite"][variant]["bytes"] < 0.5 * meta["tflite"]["float32"]["bytes"]
