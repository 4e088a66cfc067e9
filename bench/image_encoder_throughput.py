"""Images/s of the Keras EfficientNet-Lite encoder vs the PyTorch reference, in the same run.

Both pipelines decode the same real files with Pillow, resize to the encoder's input size and
encode in batches of ``--batch``; only the resize + model differ, so the ratio compares the
encoders rather than the decoders. Keras runs through a ``tf.function`` with a fixed input
signature (no per-call ``model.predict`` overhead, no XLA: ``jit_compile`` is far slower on CPU).
PyTorch uses its default thread count. The two pipelines alternate batch by batch, so they share
the machine's background load; the ratio is taken per round and its median reported.

    python bench/image_encoder_throughput.py --n 256 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))  # run from a checkout without installing

_DEFAULT_DATA = _HERE.parent.parent / "shared" / "data" / "ucm_captions" / "images"
_EXTENSIONS = {".webp", ".tif", ".tiff", ".jpg", ".jpeg", ".png"}


def _image_files(root: Path, n: int) -> list[Path]:
    """``n`` image files in natural order (1, 2, ..., 10), cycling when the folder has fewer."""
    files = [p for p in root.iterdir() if p.suffix.lower() in _EXTENSIONS]
    if not files:
        raise SystemExit(f"no images under {root}; pass --data or set TFDUCH_DATA")
    files.sort(key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])
    return [files[i % len(files)] for i in range(n)]


def _decode(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _batches(files: list[Path], batch: int) -> list[list[Path]]:
    return [files[i : i + batch] for i in range(0, len(files), batch)]


def keras_pipeline(variant: str, cache_dir: str | None) -> tuple[Callable[[list[Path]], np.ndarray], int]:
    """Decode -> ``preprocess_for_encoder`` -> encoder in a traced ``tf.function``."""
    import tensorflow as tf

    from tfduch.encoders.efficientnet_lite import IMAGE_ENCODERS, build_image_encoder, preprocess_for_encoder

    size = IMAGE_ENCODERS[variant].image_size
    model = build_image_encoder(variant, cache_dir=cache_dir)
    infer = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)],
        jit_compile=False,
    )

    def run(paths: list[Path]) -> np.ndarray:
        x = np.stack([preprocess_for_encoder(np.asarray(_decode(p)), size) for p in paths])
        return infer(x).numpy()

    return run, size


def torch_pipeline(variant: str) -> Callable[[list[Path]], np.ndarray] | None:
    """The reference: Pillow bilinear resize, (x - 127) / 128, efficientnet_lite_pytorch features."""
    try:
        import torch
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return None
    from tfduch.encoders.efficientnet_lite import IMAGE_ENCODERS, weights_path

    size = IMAGE_ENCODERS[variant].image_size
    model = EfficientNet.from_name(f"efficientnet-{variant}")
    model.load_state_dict(torch.load(weights_path(variant), map_location="cpu", weights_only=True))
    model.eval()

    def run(paths: list[Path]) -> np.ndarray:
        arr = np.stack([
            np.asarray(_decode(p).resize((size, size), Image.BILINEAR), dtype=np.float32) for p in paths
        ])
        x = torch.from_numpy((arr - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()
        with torch.inference_mode():
            return model.extract_features(x).mean(dim=(2, 3)).numpy()

    return run


def _interleaved(
    runs: dict[str, Callable[[list[Path]], np.ndarray]], batches: list[list[Path]], rounds: int
) -> dict[str, list[float]]:
    """Images/s per round for each pipeline, alternating pipelines batch by batch.

    Alternating per batch means both pipelines see the same background load, so their ratio
    stays meaningful on a busy shared machine even when the absolute numbers do not.
    """
    n = sum(map(len, batches))
    out: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        spent = dict.fromkeys(runs, 0.0)
        for b in batches:
            for name, run in runs.items():
                start = time.perf_counter()
                run(b)
                spent[name] += time.perf_counter() - start
        for name in runs:
            out[name].append(n / spent[name])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("TFDUCH_DATA", _DEFAULT_DATA)),
                    help="image folder (default: $TFDUCH_DATA or ../shared/data/ucm_captions/images)")
    ap.add_argument("--n", type=int, default=256, help="images per round")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="passes over the images")
    ap.add_argument("--variant", default="lite0", choices=["lite0", "lite0-ms", "lite2"])
    ap.add_argument("--cache-dir", default=None, help="converted-weights cache (default: TFDUCH_CACHE)")
    args = ap.parse_args(argv)

    data = args.data
    if data.is_dir() and (data / "images").is_dir():
        data = data / "images"  # accept the dataset root as well as its images folder
    batches = _batches(_image_files(data, args.n), args.batch)

    keras_run, _ = keras_pipeline(args.variant, args.cache_dir)
    torch_run = torch_pipeline(args.variant)
    keras_run(batches[0])  # trace + warm up
    if torch_run is not None:
        torch_run(batches[0])

    runs = {"keras": keras_run} | ({"torch": torch_run} if torch_run is not None else {})
    ips = _interleaved(runs, batches, args.rounds)
    keras_ips = ips["keras"]

    import tensorflow as tf

    print(f"EfficientNet-{args.variant}, {args.n} images from {data}, batch {args.batch}, "
          f"{args.rounds} rounds, {os.cpu_count()} CPUs, TF {tf.__version__}")
    print(f"keras (tf.function)  : {max(keras_ips):8.1f} images/s  (rounds: "
          f"{', '.join(f'{v:.1f}' for v in keras_ips)})")
    if torch_run is None:
        print("pytorch reference    : not measured (torch / efficientnet_lite_pytorch not installed)")
        return 0
    import torch

    torch_ips = ips["torch"]
    ratios = sorted(k / t for k, t in zip(keras_ips, torch_ips, strict=True))
    print(f"pytorch reference    : {max(torch_ips):8.1f} images/s  (rounds: "
          f"{', '.join(f'{v:.1f}' for v in torch_ips)}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    print(f"ratio keras / pytorch: {ratios[len(ratios) // 2]:8.2f}x  (median over rounds; per round: "
          f"{', '.join(f'{r:.2f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
