"""The TensorFlow-free edge runtime (tfduch.edge) on an export's TFLite files: same codes as TFLite through
TensorFlow, bit for bit, from image files, without TensorFlow ever being imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
REPO = Path(__file__).resolve().parents[2]

EDGE_SCRIPT = """
import json, runpy, sys
import numpy as np
from tfduch.edge import EdgeEncoder, load_image, preprocess
out_dir, images = sys.argv[1], sys.argv[2:]
result = {}
for variant in ("float32", "int8"):
    model = f"{out_dir}/model/image_{variant}.tflite"
    encoder = EdgeEncoder(model)
    np.save(f"{out_dir}/pre_{variant}.npy", np.stack([preprocess(load_image(p), encoder.info) for p in images]))
    result[variant] = {"packed": [row.tobytes().hex() for row in encoder.encode_files(images)],
                       "model_id": encoder.info.model_id}
sys.argv = ["tfduch-edge", "encode", "--model", f"{out_dir}/model/image_float32.tflite", *images]
try:
    runpy.run_module("tfduch.edge", run_name="__main__")
except SystemExit as exc:
    result["cli_exit"] = exc.code
result["heavy_modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras",
                                                                                 "tensorflow_text", "jax", "torch"))
print("RESULT " + json.dumps(result))
"""


def png(path: Path, size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Path:
    """A smooth random PNG of ``size`` (w, h) in ``mode``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(6, 6, 4)).astype(np.uint8)
    Image.fromarray(coarse, "RGBA").resize(size, Image.BICUBIC).convert(mode).save(path, format="PNG")
    return path


def _tf_lite_codes(model: Path, images: np.ndarray) -> np.ndarray:
    """Codes from TensorFlow's own TFLite interpreter (``tf.lite.Interpreter``), one image at a time."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    codes = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None].astype(np.float32))
        interpreter.invoke()
        codes.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.stack(codes)


def test_edge_runtime_equals_tflite_through_tf_without_tensorflow(edge_export, tmp_path):
    import shutil

    from tfduch.export import load_exported, read_metadata

    _, version_dir = edge_export
    meta = read_metadata(version_dir)
    # The station gets only the TFLite files and their JSON sidecars, copied away from the export.
    shutil.copytree(version_dir / "assets.extra" / "tflite", tmp_path / "model")
    images = [png(tmp_path / "same.png", (256, 256), seed=1),  # already the source size: no first resize
              png(tmp_path / "wide.png", (300, 200), "RGBA", seed=2),  # alpha dropped
              png(tmp_path / "grey.png", (120, 90), "L", seed=3),  # upscaled, grey expanded
              png(tmp_path / "big.png", (640, 480), "P", seed=4)]  # palette
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", EDGE_SCRIPT, str(tmp_path), *map(str, images)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["heavy_modules"] == []  # neither TensorFlow nor Keras was imported, even indirectly
    assert result["cli_exit"] == 0
    cli_lines = [line for line in proc.stdout.splitlines() if "\t" in line]
    assert [line.split("\t") for line in cli_lines] == [[h, str(p)] for h, p in zip(result["float32"]["packed"],
                                                                                      images, strict=True)]
    loaded = load_exported(version_dir)
    reference_input = loaded.preprocess_images(images)  # the SavedModel's own decode + resize + clean view
    for variant in ("float32", "int8"):
        assert result[variant]["model_id"] == meta["model_id"]
        edge_input = np.load(tmp_path / f"pre_{variant}.npy")
        np.testing.assert_array_equal(edge_input, reference_input)  # the exact same floats, not just close
        expected = _tf_lite_codes(tmp_path / "model" / f"image_{variant}.tflite", reference_input)
        packed = [row.tobytes().hex() for row in np.packbits(expected > 0, axis=1)]
        assert result[variant]["packed"] == packed, variant
    assert len(set(result["float32"]["packed"])) > 1  # the images get different codes: a real comparison


def test_edge_model_info_falls_back_to_the_export_metadata(edge_export, tmp_path):
    from tfduch.edge import EdgeEncoder, EdgeModelInfo
    from tfduch.errors import TfduchError
    from tfduch.export import read_metadata

    _, version_dir = edge_export
    meta = read_metadata(version_dir)
    model = version_dir / "assets.extra" / "tflite" / "image_float32.tflite"
    sidecar = EdgeModelInfo.for_model(model)
    fallback = EdgeModelInfo.from_json(meta, "float32")  # an export written before the sidecars existed
    assert sidecar == fallback
    assert (sidecar.source_size, sidecar.image_size, sidecar.center_crop) == (256, 224, None)
    alone = tmp_path / "image_float32.tflite"
    alone.write_bytes(model.read_bytes())
    with pytest.raises(TfduchError, match="no metadata for"):
        EdgeEncoder(alone)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**json.loads(model.with_suffix(".json").read_text()), "code_length": 8}))
    with pytest.raises(TfduchError, match="another model"):
        EdgeEncoder(alone, metadata=wrong)
