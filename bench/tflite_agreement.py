"""TFLite image models vs the SavedModel on real UC Merced images: bit agreement, retrieval, size, speed.

    python bench/tflite_agreement.py --run runs/duch [--data ../shared/data/ucm_captions]
        [--export EXPORT_VERSION_DIR] [--variants float32,float16,dynamic,int8] [--calibration 300]
        [--bias-correction 64]     # int8-weight variants; a variant suffixed -nobc (int8-nobc) skips it

The reference is the exported SavedModel's ``encode_image`` signature on the query images' encoded bytes
(exported into a temporary folder unless ``--export`` names one). Every TFLite variant gets the same
images through the SavedModel's own preprocessing function; ``int8`` is calibrated on training-split
images (disjoint from the query images measured). Columns: size (and ratio to float32), % of code bits
equal to the SavedModel's (target >= 99 % for int8), % of codes identical, mean/max Hamming distance,
image→text mAP@20 with the variant's query codes against the SavedModel's database caption codes (and
its difference to the SavedModel's own mAP), and ms per image (ratio to float32) in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and "assets.extra" not in p.parts)


def _preprocess(loaded, blobs: list[bytes], batch: int = 32) -> np.ndarray:
    return np.concatenate([loaded.preprocess_images(blobs[i : i + batch])
                           for i in tqdm(range(0, len(blobs), batch), desc="preprocess", leave=False)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path, help="trained run folder (tfduch train on UC Merced)")
    p.add_argument("--data", type=Path, help="dataset folder (default: the run's data.root)")
    p.add_argument("--export", type=Path, help="export version dir of this run (default: export to a temp dir)")
    p.add_argument("--variants", default="float32,float16,dynamic,int8")
    p.add_argument("--calibration", type=int, default=300, help="training-split images calibrating int8")
    p.add_argument("--bias-correction", type=int, default=64,
                   help="calibration images for the bias correction of dynamic/int8/int16x8 (0: off; "
                   "variant-nobc: off for it)")
    p.add_argument("--eval", type=int, default=0, help="query images measured (0: the whole query split)")
    p.add_argument("--threads", type=int, default=2, help="TFLite interpreter threads")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    args = p.parse_args(argv)

    from tfduch.data.karpathy import load_dataset
    from tfduch.data.split import ProtocolSplit
    from tfduch.eval import map_at_k, markdown_table
    from tfduch.export import CodeExport, Encoders, export_model, load_exported
    from tfduch.export.tflite import (
        CALIBRATED_VARIANTS,
        INT8_WEIGHT_VARIANTS,
        TFLiteImageEncoder,
        bias_corrected_encoder,
        bit_agreement,
        convert_image_model,
    )
    from tfduch.pipeline import load_trained, prepare, split_path

    cfg, model, _ = load_trained(args.run)
    dataset = load_dataset(args.data or cfg.data_root())
    split = ProtocolSplit.load(split_path(cfg))
    encoders = Encoders.build(cfg.features.image_encoder, cfg.cache_root())
    with tempfile.TemporaryDirectory(prefix="tfduch-bench-") as tmp:
        version_dir = args.export or export_model(args.run, tmp, "bench", encoders=encoders)
        loaded = load_exported(version_dir)
        module = CodeExport(model.image_head, model.text_head, encoders, cfg.features.image_view)

        rng = np.random.default_rng(0)
        queries = split.query if args.eval <= 0 else rng.permutation(split.query)[: args.eval]
        calibration = rng.permutation(split.train)[: args.calibration]
        query_bytes = [dataset.samples[i].path.read_bytes() for i in queries]
        start = time.perf_counter()
        reference = loaded.encode_images(query_bytes, batch_size=16)
        savedmodel_ms = 1e3 * (time.perf_counter() - start) / len(queries)
        inputs = _preprocess(loaded, query_bytes)
        cal_inputs = _preprocess(loaded, [dataset.samples[i].path.read_bytes() for i in calibration])
        db = split.database
        captions = [dataset.samples[i].captions[split.caption_choice[i]] for i in db]
        db_text = loaded.encode_texts(captions)
        q_labels, db_labels = dataset.labels[queries], dataset.labels[db]
        map_ref = map_at_k(reference, db_text, q_labels, db_labels, k=20)
        # Served codes vs the codes the run's own feature cache gives (what an index built offline holds).
        if args.data:
            cfg.data.root = str(args.data)
        features = prepare(cfg, progress=False).features
        cache_image = model.encode(features.image[queries], "image")
        cache_text = model.encode(features.captions[db, split.caption_choice[db]], "text")

        rows = [{"variant": "SavedModel (reference)", "MB": _dir_bytes(Path(version_dir)) / 1e6, "bits equal %": 100.0,
                 "codes equal %": 100.0, "mean Hamming": 0.0, "max Hamming": 0, "i2t mAP@20": map_ref,
                 "ΔmAP": 0.0, "ms/image": savedmodel_ms}]

        def representative():
            for image in cal_inputs:
                yield [image[None]]

        corrected = None
        for label in [v.strip() for v in args.variants.split(",") if v.strip()]:
            variant = label.removesuffix("-nobc")
            calibrated = variant in CALIBRATED_VARIANTS
            correct = variant in INT8_WEIGHT_VARIANTS and args.bias_correction > 0 and not label.endswith("-nobc")
            start = time.perf_counter()
            if correct and corrected is None:
                corrected = bias_corrected_encoder(module.image_encoder, cal_inputs[: args.bias_correction],
                                                   progress=True)
                print(f"bias correction: {time.perf_counter() - start:.0f} s", file=sys.stderr)
                start = time.perf_counter()
            blob = convert_image_model(module, variant, representative if calibrated else None,
                                       bias_correction_images=0, encoder=corrected if correct else None)
            convert_s = time.perf_counter() - start
            runner = TFLiteImageEncoder(blob, num_threads=args.threads)
            runner.encode(inputs[:2])  # warm-up
            start = time.perf_counter()
            codes = runner.encode(inputs)
            ms = 1e3 * (time.perf_counter() - start) / len(inputs)
            hamming = np.sum(codes != reference, axis=1)
            m = map_at_k(codes, db_text, q_labels, db_labels, k=20)
            name = f"{variant} (no bias correction)" if variant in INT8_WEIGHT_VARIANTS and not correct else variant
            rows.append({"variant": f"TFLite {name}", "MB": len(blob) / 1e6,
                         "bits equal %": 100 * bit_agreement(codes, reference),
                         "codes equal %": 100 * float(np.mean(hamming == 0)), "mean Hamming": float(hamming.mean()),
                         "max Hamming": int(hamming.max()), "i2t mAP@20": m, "ΔmAP": m - map_ref, "ms/image": ms,
                         "convert s": convert_s})
            print(f"{name}: {rows[-1]['bits equal %']:.3f} % bits equal, {len(blob) / 1e6:.1f} MB", file=sys.stderr)

    base = next((r for r in rows if r["variant"] == "TFLite float32"), None)
    for r in rows:
        if base is not None:
            r["size ÷ float32"] = r["MB"] / base["MB"]
            r["time ÷ float32"] = r["ms/image"] / base["ms/image"]
        r["≥ 99 %"] = "yes" if r["bits equal %"] >= 99.0 else "no"
    print(f"\n{len(queries)} UC Merced query images ({model.bits} bits), {len(db)} database captions, "
          f"{len(cal_inputs)} calibration images, {args.threads} TFLite threads; reference = SavedModel encode_image\n")
    columns = ["variant", "MB", "size ÷ float32", "bits equal %", "codes equal %", "mean Hamming", "max Hamming",
               "i2t mAP@20", "ΔmAP", "ms/image", "time ÷ float32", "≥ 99 %"]
    print(markdown_table(rows, columns, floatfmt=".3f"))
    consistency = {"image bits equal %": 100 * bit_agreement(reference, cache_image),
                   "image codes equal %": 100 * float(np.mean(np.all(reference == cache_image, axis=1))),
                   "text bits equal %": 100 * bit_agreement(db_text, cache_text),
                   "text codes equal %": 100 * float(np.mean(np.all(db_text == cache_text, axis=1)))}
    print("\nSavedModel (image bytes / raw captions) vs model.encode on the run's feature cache: "
          + ", ".join(f"{k} {v:.3f}" for k, v in consistency.items()))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "savedmodel_vs_feature_cache": consistency}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
