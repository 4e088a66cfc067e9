"""``tfduch export``: write a trained run as a TF Serving SavedModel (and optional TFLite image models)."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
examples:
  tfduch export --run runs/duch --base exports/                 # -> exports/tfduch/<next version>/
  tfduch export --run runs/duch --base exports/ --name ucm64 --version 3
  tfduch export --run runs/duch --base exports/ --tflite        # + TFLite float32, float16, dynamic, int8
  tfduch export --run runs/duch --base exports/ --edge-config export/edge.yaml   # TFLite with enforced floors
  tfduch export --run runs/duch --base exports/ --serving-base-path /models   # models.config for a container

The version folder appears atomically (a crash leaves no half-written version) and <base>/models.config
is rewritten for `tensorflow_model_server --model_config_file`. Loading the SavedModel needs
`import tensorflow_text` (the text signature tokenizes in the graph). An --edge-config variant whose bit
agreement with the SavedModel is below its floor fails the export (exit 2, nothing written). See docs/export.md.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a trained run as a SavedModel emitting binary codes (TF Serving layout)",
        description="Write RUN as <BASE>/<NAME>/<VERSION>/: a SavedModel with the signatures encode_text "
        "(= serving_default; raw captions), encode_image (JPEG/PNG/GIF/BMP/WebP bytes), encode_image_features "
        "and encode_text_features, each returning int8 ±1 'codes' and uint8 'packed' codes, a 'metadata' "
        "signature (no inputs -> 'json', the export's metadata JSON, also in assets.extra/tfduch_metadata.json) "
        "and TF Serving warm-up records in assets.extra/tf_serving_warmup_requests.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path, help="run folder written by `tfduch train` / `tfduch run`")
    p.add_argument("--base", required=True, type=Path, help="export base folder (TF Serving model base)")
    p.add_argument("--name", default="tfduch", help="model name: the folder under BASE and the served name")
    p.add_argument("--version", type=int, help="integer version (default: largest existing + 1)")
    p.add_argument("--serving-base-path", metavar="PATH",
                   help="base_path prefix written to models.config, e.g. /models when BASE is mounted there "
                   "(default: BASE's absolute path)")
    p.add_argument("--tflite", action="store_true",
                   help="also write TFLite image models (preprocessed image -> codes) into assets.extra/tflite/")
    p.add_argument("--tflite-variants", default="float32,float16,dynamic,int8", metavar="LIST",
                   help="comma list of float32, float16 (fp16 weights), dynamic (int8 weights and int8 compute "
                   "with per-inference activation scales; >= 99%% of bits kept), int8 (full integer, fixed "
                   "calibrated activation ranges, for integer-only hardware), int16x8 (int8 weights, int16 "
                   "activations, slow kernels); int8-weight variants are bias-corrected on the calibration "
                   "images; default: float32,float16,dynamic,int8")
    p.add_argument("--edge-config", type=Path, metavar="YAML",
                   help="edge export config (e.g. export/edge.yaml): TFLite variants, calibration / "
                   "bias-correction / check images and each variant's minimum bit agreement, which is enforced "
                   "(implies --tflite; replaces --tflite-variants and --calibration-images)")
    p.add_argument("--calibration-data", metavar="DIR",
                   help="dataset folder whose images calibrate the int8-weight variants and measure agreement "
                   "(default: the run's dataset if present, else synthetic images)")
    p.add_argument("--calibration-images", type=int, default=200,
                   help="images calibrating int8 / int16x8 (default 200)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_export)


def _calibration_root(args: argparse.Namespace) -> str | None:
    if args.calibration_data:
        return args.calibration_data
    from tfduch.config import load_config

    try:
        from tfduch.data.resolve import resolve_data

        root = resolve_data(load_config(args.run / "config.yaml").data_root(), fetch=False)
    except Exception:  # no dataset recorded or available: synthetic calibration
        return None
    return str(root) if (root / "images").is_dir() else None


def _check_paths(args: argparse.Namespace) -> None:
    """Fail in milliseconds, before TensorFlow loads, on paths that cannot work (a file as --base, ...)."""
    from tfduch.errors import TfduchError

    if args.base.exists() and not args.base.is_dir():
        raise TfduchError(f"--base {args.base} is a file: pass a folder (the TF Serving model base; it is created "
                          "if missing)")
    if (args.base / args.name).exists() and not (args.base / args.name).is_dir():
        raise TfduchError(f"{args.base / args.name} is a file: --name must name a model folder under --base")
    if not args.run.is_dir():
        raise TfduchError(f"--run {args.run} is not a folder (expected a run written by `tfduch run` / `train`)")


def cmd_export(args: argparse.Namespace) -> int:
    _check_paths(args)
    from tfduch.export.savedmodel import export_model

    tflite = None
    if args.edge_config is not None:
        from tfduch.export.edge_config import edge_options

        tflite = edge_options(args.edge_config, data_root=_calibration_root(args), progress=not args.quiet)
    elif args.tflite:
        from tfduch.export.tflite import TFLiteOptions

        variants = tuple(v.strip() for v in args.tflite_variants.split(",") if v.strip())
        tflite = TFLiteOptions(variants=variants, data_root=_calibration_root(args),
                               calibration_images=args.calibration_images, progress=not args.quiet)
    path = export_model(args.run, args.base, args.name, args.version, tflite=tflite,
                        serving_base_path=args.serving_base_path)
    from tfduch.export.metadata import read_metadata

    meta = read_metadata(path)
    print(f"exported {meta['method']} {meta['code_length']}-bit model {meta['model_id']} to {path}")
    print("signatures:")
    for name, spec in meta["signatures"].items():
        if isinstance(spec, str):
            print(f"  {name} = {spec}")
            continue
        ins = ", ".join(f"{k}: {v}" for k, v in spec["inputs"].items())
        outs = ", ".join(f"{k}: {v}" for k, v in spec["outputs"].items())
        print(f"  {name}({ins}) -> {outs}")
    for variant, entry in (meta.get("tflite") or {}).items():
        floor = entry.get("min_bit_agreement")
        print(f"tflite {variant}: {path / entry['file']} ({entry['bytes'] / 1e6:.1f} MB, "
              f"{100 * entry['bit_agreement_vs_savedmodel']:.2f} % bits equal to the SavedModel on "
              f"{entry['checked_on']}" + (f"; floor {100 * floor:.2f} %)" if floor is not None else ")"))
    for variant, entry in (meta.get("tflite_refused") or {}).items():
        print(f"tflite {variant}: REFUSED, not written ({entry['reason']})")
    print(f"TF Serving config: {Path(args.base) / 'models.config'}")
    return 0
