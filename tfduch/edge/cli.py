"""``tfduch-edge`` / ``python -m tfduch.edge``: encode images with an export's TFLite model, without TensorFlow.

One line per image: ``<hex packed code>\\t<path>`` (``--format json`` for one JSON object per line with the
model id). Kept apart from ``tfduch``'s CLI on purpose: that one registers commands whose modules import
TensorFlow; this one must start on a station that has only LiteRT, numpy and Pillow.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tfduch.errors import TfduchError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfduch-edge", description="Encode images into packed binary codes "
                                     "with an export's TFLite model, without TensorFlow (LiteRT, Pillow, numpy).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example:\n  tfduch-edge encode --model image_int8.tflite scene1.png "
                                     "scene2.webp")
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="image files -> packed binary codes")
    enc.add_argument("--model", required=True, type=Path, help="image_<variant>.tflite from an export")
    enc.add_argument("--metadata", type=Path, help="its metadata JSON (default: <model>.json beside it, else the "
                     "export version's assets.extra/tfduch_metadata.json)")
    enc.add_argument("--threads", type=int, default=None, help="interpreter threads (default: LiteRT's)")
    enc.add_argument("--format", choices=("hex", "json"), default="hex", help="output lines (default hex)")
    enc.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, WebP, BMP, GIF, TIFF)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tfduch.edge.runtime import EdgeEncoder

    try:
        encoder = EdgeEncoder(args.model, args.metadata, args.threads)
        for path in args.images:
            packed = encoder.encode_files([path])[0]
            if args.format == "hex":
                print(f"{packed.tobytes().hex()}\t{path}")
            else:
                print(json.dumps({"image": str(path), "packed_hex": packed.tobytes().hex(),
                                  "bits": encoder.info.code_length, "model_id": encoder.info.model_id}))
    except TfduchError as exc:
        print(f"tfduch-edge: error: {exc}", file=sys.stderr)
        return 2
    return 0
