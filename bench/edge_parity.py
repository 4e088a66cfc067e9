"""The TF-free edge runtime vs TFLite through TensorFlow on real images: bit-for-bit parity and time.

    python bench/edge_parity.py --export EXPORT_VERSION_DIR [--images DIR] [--n 100] [--variants float32,int8]

For each TFLite file of the export: the reference codes come from TensorFlow (the SavedModel's own
``preprocess_images`` on the encoded bytes, then ``tf.lite.Interpreter``); the edge codes from
``tfduch.edge.EdgeEncoder`` (Pillow decode, numpy resize, LiteRT). Columns: images whose preprocessed input
is identical (float for float), max |difference| of the inputs, codes identical %, bits equal %, and ms per
image of each path (decode + preprocess + one interpreter call, batch 1), with their ratio measured in
the same run. The edge runtime runs in this process here (the no-TensorFlow property is a test:
tests/export/test_export_edge_runtime.py).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, type=Path, help="an export version folder with TFLite files")
    parser.add_argument("--images", type=Path, default=Path("../shared/data/ucm_captions/images"))
    parser.add_argument("--n", type=int, default=100, help="images (the first N by name)")
    parser.add_argument("--variants", default="", help="comma list (default: every TFLite file of the export)")
    args = parser.parse_args()

    import tensorflow as tf

    from tfduch.edge import EdgeEncoder, load_image, preprocess
    from tfduch.export import load_exported

    suffixes = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in suffixes)[: args.n]
    loaded = load_exported(args.export)
    tflite_dir = args.export / "assets.extra" / "tflite"
    variants = [v for v in args.variants.split(",") if v] or sorted(
        p.stem.removeprefix("image_") for p in tflite_dir.glob("image_*.tflite"))
    print(f"{len(paths)} images of {args.images}, export {args.export}")
    print("| variant | identical inputs | max input diff | codes identical % | bits equal % | edge ms/image "
          "| TF ms/image | edge ÷ TF |")
    print("| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for variant in variants:
        model = tflite_dir / f"image_{variant}.tflite"
        edge = EdgeEncoder(model, num_threads=2)
        interpreter = tf.lite.Interpreter(model_path=str(model), num_threads=2)
        interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        edge_codes, tf_codes, same_inputs, max_diff = [], [], 0, 0.0
        edge_s = tf_s = 0.0
        for path in paths:
            t0 = time.perf_counter()
            x_edge = preprocess(load_image(path), edge.info)
            edge_codes.append(edge.codes_from_preprocessed(x_edge[None])[0])
            t1 = time.perf_counter()
            x_tf = loaded.preprocess_images([path.read_bytes()])
            interpreter.set_tensor(inp["index"], x_tf.astype(np.float32))
            interpreter.invoke()
            tf_codes.append(interpreter.get_tensor(out["index"])[0].copy())
            t2 = time.perf_counter()
            edge_s, tf_s = edge_s + (t1 - t0), tf_s + (t2 - t1)
            same_inputs += int(np.array_equal(x_edge, x_tf[0]))
            max_diff = max(max_diff, float(np.max(np.abs(x_edge - x_tf[0]))))
        a, b = np.stack(edge_codes), np.stack(tf_codes)
        n = len(paths)
        print(f"| {variant} | {same_inputs}/{n} | {max_diff:.3g} | {100 * np.mean(np.all(a == b, axis=1)):.1f} "
              f"| {100 * np.mean(a == b):.3f} | {1000 * edge_s / n:.1f} | {1000 * tf_s / n:.1f} "
              f"| {edge_s / tf_s:.2f} |")


if __name__ == "__main__":
    main()
