"""TFLite image models for edge ground stations: preprocessed image → binary code, offline.

TFLite has no image-decoding ops, so the model starts at the encoder input: float32 ``[1, S, S, 3]`` RGB
in 0..255 (decode + resize to the clean view first, e.g. with ``ExportedModel.preprocess_images`` or
:func:`preprocess_image_bytes`). Variants trade size for agreement with the SavedModel:

- ``float32``: the float graph (reference);
- ``float16``: float16 weights, float compute;
- ``dynamic``: int8 weights, activations quantized to int8 on the fly with per-inference scales (TFLite's
  dynamic-range quantization: hybrid int8 kernels, float I/O, no activation calibration);
- ``int8``: full integer post-training quantization calibrated on representative images (float I/O);
- ``int16x8``: int8 weights, int16 activations (calibrated too): int8's size, closer to float, slower kernels.

The int8-weight variants (``dynamic``, ``int8``, ``int16x8``) first apply **empirical bias correction** to a
copy of the image encoder
(:func:`bias_corrected_encoder`): every convolution kernel is rounded to the per-channel int8 grid TFLite
will use, layer by layer, and the mean shift each rounding causes in that layer's output (measured on the
representative images, with the earlier layers already rounded) is absorbed by the following BatchNorm.
Rounding every kernel to the nearest int8 step shifts the pre-sign outputs enough to flip ≈ 1.7 % of the
code bits by itself; with the correction the same int8 weights flip ≈ 0.6 %. ``dynamic``'s per-inference activation
scales add almost nothing on top, while full ``int8`` also rounds every layer's output to a fixed calibrated
int8 range. Measured on UCM (export/README.md): ``dynamic`` 99.58 % and ``int8`` 99.21 % of the bits with the
default ``lite0-ms`` features; 99.34 % and ≈ 98.5 % with ``lite0``'s.

Each variant's bit agreement with the SavedModel's codes is measured at export time on held-out images
and stored in the export metadata, so an edge user knows what the quantization costs.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfduch.export.layout import ExportError
from tfduch.export.savedmodel import CodeExport, binarize

__all__ = ["TFLITE_VARIANTS", "CALIBRATED_VARIANTS", "INT8_WEIGHT_VARIANTS", "TFLiteOptions",
           "TFLiteImageEncoder", "image_code_function", "convert_image_model",
           "bias_corrected_encoder", "representative_images", "write_tflite", "bit_agreement"]

TFLITE_VARIANTS = ("float32", "float16", "dynamic", "int8", "int16x8")
CALIBRATED_VARIANTS = ("int8", "int16x8")  # need representative images (activation ranges)
INT8_WEIGHT_VARIANTS = ("dynamic", "int8", "int16x8")  # bias-corrected when images are given


@dataclass
class TFLiteOptions:
    """Which variants to write and which images calibrate (``int8``) and check them."""

    variants: tuple[str, ...] = ("float32", "float16", "dynamic", "int8")
    data_root: str | Path | None = None  # real images (dataset folder); None: synthetic images
    calibration_images: int = 200
    bias_correction_images: int = 64  # of the calibration images; 0 turns bias correction off
    check_images: int = 50
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in TFLITE_VARIANTS]
        if unknown or not self.variants:
            raise ExportError(f"unknown TFLite variants {unknown}; choose from {', '.join(TFLITE_VARIANTS)}")


def image_code_function(module: CodeExport, encoder: Any = None) -> Any:
    """``float32 [1, S, S, 3]`` (0..255) → ``{"codes": int8 [1, K]}``: the encoder, image head and sign.

    ``encoder`` replaces ``module.image_encoder`` (e.g. a :func:`bias_corrected_encoder` copy).
    """
    s = module.image_size
    encoder = module.image_encoder if encoder is None else encoder

    @tf.function(input_signature=[tf.TensorSpec([1, s, s, 3], tf.float32, name="image")])
    def encode(image: tf.Tensor) -> dict[str, tf.Tensor]:
        h = module.image_head(encoder(image, training=False), training=False)
        return {"codes": binarize(h)}

    return encode


def _int8_grid(kernel: np.ndarray, channel_axis: int) -> np.ndarray:
    """``kernel`` rounded to TFLite's symmetric per-channel int8 grid (scale = max |w| / 127 per channel)."""
    axes = tuple(i for i in range(kernel.ndim) if i != channel_axis)
    scale = np.max(np.abs(kernel), axis=axes, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0)
    return (np.clip(np.round(kernel / scale), -127, 127) * scale).astype(kernel.dtype)


def bias_corrected_encoder(encoder: Any, images: np.ndarray, batch_size: int = 16, progress: bool = False) -> Any:
    """A copy of a conv → BatchNorm image encoder with int8-grid kernels and bias-corrected BatchNorms.

    For each convolution in order (earlier ones already rounded and corrected): round its kernel to the
    per-channel int8 grid that TFLite's quantizer uses (BatchNorm folding scales each output channel, which
    leaves that grid unchanged, so TFLite then quantizes these kernels without further loss), measure the
    per-channel mean of its output on ``images`` before and after, and add the shift to the following
    BatchNorm's moving mean, so that the quantized network's activations keep the float network's means
    (empirical bias correction, Nagel et al. 2019, "Data-Free Quantization"). The encoder passed in is not
    modified. Convolutions without a bias-free ``<name>_conv`` → ``<name>_bn`` pairing (tfduch's encoders
    name their layers so) are left as they are.
    """
    import keras

    clone = keras.models.clone_model(encoder)
    clone.set_weights(encoder.get_weights())
    names = {layer.name for layer in clone.layers}
    pairs = []
    for layer in clone.layers:
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        if not isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D) or layer.use_bias:
            continue
        if depthwise and layer.kernel.shape[-1] != 1:
            continue  # depth multiplier > 1: TFLite's channel axis mixes two kernel axes
        bn_name = layer.name.replace("_conv", "_bn")
        if bn_name == layer.name or bn_name not in names:
            continue
        bn = clone.get_layer(bn_name)
        if isinstance(bn, keras.layers.BatchNormalization):
            pairs.append((layer, bn, 2 if depthwise else 3))
    if not pairs:
        return clone
    images = np.asarray(images, np.float32)

    def batches(source: Any, outputs: list[Any], inputs: np.ndarray) -> Iterator[list[Any]]:
        """``outputs`` batch by batch, running the graph from ``source`` on ``inputs``."""
        probe = keras.Model(source, outputs)
        for start in range(0, len(inputs), batch_size):
            values = probe(inputs[start : start + batch_size], training=False)
            yield list(values) if isinstance(values, list | tuple) else [values]

    def channel_means(source: Any, outputs: list[Any], inputs: np.ndarray) -> list[np.ndarray]:
        """Per-channel means of ``outputs`` over all images."""
        sums: list[np.ndarray] | None = None
        for values in batches(source, outputs, inputs):
            batch = [tf.reduce_sum(v, axis=[0, 1, 2]).numpy().astype(np.float64) for v in values]
            sums = batch if sums is None else [a + b for a, b in zip(sums, batch, strict=True)]
        assert sums is not None
        return [total / (len(inputs) * int(o.shape[1]) * int(o.shape[2])) for total, o in zip(sums, outputs,
                                                                                              strict=True)]

    def run(source: Any, target: Any, inputs: np.ndarray) -> np.ndarray:
        return np.concatenate([values[0].numpy() for values in batches(source, [target], inputs)])

    def source(cut: int) -> Any:  # the tensor a cut runs from; -1 = the model's input
        return clone.inputs[0] if cut < 0 else clone.layers[cut].output

    float_means = channel_means(source(-1), [conv.output for conv, _, _ in pairs], images)
    # Each measurement runs the graph from the latest single-tensor cut before its convolution (an MBConv
    # block boundary), whose activations are cached with every earlier kernel already rounded and corrected:
    # the same numbers as running from the input each time, at a cost linear instead of quadratic in depth.
    position = {layer.name: i for i, layer in enumerate(clone.layers)}
    cuts = _cut_positions(clone)
    cut, cached = -1, images
    for (conv, bn, axis), target in tqdm(list(zip(pairs, float_means, strict=True)), desc="bias correction",
                                         disable=not progress, leave=False):
        latest = max(c for c in cuts if c < position[conv.name])
        if latest > cut:
            cached = run(source(cut), clone.layers[latest].output, cached)
            cut = latest
        conv.kernel.assign(_int8_grid(conv.kernel.numpy(), axis))
        shift = channel_means(source(cut), [conv.output], cached)[0] - target
        bn.moving_mean.assign((bn.moving_mean.numpy() + shift).astype(np.float32))
    return clone


def _cut_positions(model: Any) -> list[int]:
    """Positions (in ``model.layers``) of layers whose one output is all that later layers read.

    Position -1 stands for the model's input (always a cut). A layer qualifies when no later layer takes an
    input from before it, so the graph after it can run from its output alone (in an EfficientNet: the
    boundaries between blocks).
    """
    layers = model.layers
    position = {layer.name: i for i, layer in enumerate(layers)}
    earliest = [min((position.get(t._keras_history.operation.name, -1) for node in layer._inbound_nodes
                     for t in node.input_tensors), default=i) for i, layer in enumerate(layers)]
    cuts, reach = [], len(layers)
    for i in range(len(layers) - 1, -1, -1):  # reach = earliest input of any layer after i
        if reach >= i and len(layers[i]._inbound_nodes) <= 1:
            cuts.append(i)
        reach = min(reach, earliest[i])
    return sorted(set(cuts) | {-1})


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """Hide the converter's known-harmless warnings (deprecated path notice, unrelated graph collections)."""
    loggers = [logging.getLogger(name) for name in ("absl", "tensorflow")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(Statistics for quantized inputs|Interpreter is deprecated)")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def convert_image_model(module: CodeExport, variant: str,
                        representative: Callable[[], Iterator[list[np.ndarray]]] | None = None,
                        bias_correction_images: int = 64, encoder: Any = None) -> bytes:
    """Convert the image path to a TFLite flatbuffer; ``int8`` and ``int16x8`` need ``representative`` batches.

    The int8-weight variants (``dynamic`` too, when ``representative`` is given) convert a
    :func:`bias_corrected_encoder` built on the first ``bias_correction_images`` representative images
    (0: the encoder as it is); pass ``encoder`` to reuse one across variants. ``dynamic`` uses the images
    for nothing else: its activation scales are computed per inference.
    """
    if variant not in TFLITE_VARIANTS:
        raise ValueError(f"unknown TFLite variant {variant!r}; choose from {', '.join(TFLITE_VARIANTS)}")
    if variant in CALIBRATED_VARIANTS and representative is None:
        raise ValueError(f"{variant} quantization needs representative images")
    if (variant in INT8_WEIGHT_VARIANTS and encoder is None and bias_correction_images > 0
            and representative is not None):
        encoder = bias_corrected_encoder(module.image_encoder,
                                         _first_images(representative, bias_correction_images))
    with _quiet_converter():
        # No trackable object on purpose: without one the converter freezes the variables into constants
        # (and folds BatchNorm); with one, TF 2.21 keeps them as resource variables, which blocks int8
        # calibration ("READ_VARIABLE failed to invoke") and most kernel fusions.
        concrete = image_code_function(module, encoder if variant in INT8_WEIGHT_VARIANTS else None
                                       ).get_concrete_function()
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
        if variant != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if variant == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if variant in CALIBRATED_VARIANTS:
            converter.representative_dataset = representative
            # 16x8 has no GREATER_EQUAL / SELECT kernels: the final sign stays in float there.
            converter.target_spec.supported_ops = (
                [tf.lite.OpsSet.TFLITE_BUILTINS_INT8] if variant == "int8"
                else [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                      tf.lite.OpsSet.TFLITE_BUILTINS])
        return converter.convert()


def _first_images(representative: Callable[[], Iterator[list[np.ndarray]]], n: int) -> np.ndarray:
    """Up to ``n`` images from a representative dataset (batches of ``[1, S, S, 3]``)."""
    images: list[np.ndarray] = []
    for batch in representative():
        images.extend(np.asarray(batch[0], np.float32))
        if len(images) >= n:
            break
    return np.stack(images[:n])


class TFLiteImageEncoder:
    """Runs a TFLite image model: float32 ``[N, S, S, 3]`` preprocessed images → int8 codes ``[N, K]``."""

    def __init__(self, model: str | Path | bytes, num_threads: int | None = None) -> None:
        content = model if isinstance(model, bytes) else Path(model).read_bytes()
        try:  # LiteRT is the maintained interpreter; tf.lite's still works in TF 2.21 (deprecated)
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            Interpreter = tf.lite.Interpreter  # noqa: N806
        with _quiet_converter():
            self.interpreter = Interpreter(model_content=content, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self.image_size = int(self._input["shape"][1])

    def encode(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, dtype=np.float32)
        s = self.image_size
        if x.ndim != 4 or x.shape[1:] != (s, s, 3):
            raise ValueError(f"TFLite image model takes [N, {s}, {s}, 3] float32 images, got {list(x.shape)}")
        out = []
        for image in x:
            self.interpreter.set_tensor(self._input["index"], image[None])
            self.interpreter.invoke()
            out.append(self.interpreter.get_tensor(self._output["index"])[0].copy())
        return np.stack(out).astype(np.int8) if out else np.zeros((0, self._output["shape"][-1]), np.int8)


def preprocess_image_bytes(module: CodeExport, blobs: Sequence[bytes], batch_size: int = 32) -> np.ndarray:
    """Encoded images → the float32 encoder input, with the SavedModel's own decode + clean view."""
    chunks = [module.preprocess_images(tf.constant(list(blobs[i : i + batch_size]), tf.string)).numpy()
              for i in range(0, len(blobs), batch_size)]
    s = module.image_size
    return np.concatenate(chunks) if chunks else np.zeros((0, s, s, 3), np.float32)


def _synthetic_images(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth random colour fields with texture: natural-ish statistics when no real images exist."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(n, 8, 8, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse, (size, size), method="bicubic").numpy()
    return np.clip(smooth + rng.normal(0, 12, size=smooth.shape), 0, 255).astype(np.float32)


def representative_images(module: CodeExport, options: TFLiteOptions) -> tuple[np.ndarray, np.ndarray, str]:
    """(calibration images, disjoint check images, description): real dataset images when given."""
    n_cal, n_check = options.calibration_images, options.check_images
    if options.data_root is None:
        images = _synthetic_images(n_cal + n_check, module.image_size, options.seed)
        return images[:n_cal], images[n_cal:], f"{n_cal} synthetic images"
    from tfduch.data.karpathy import load_dataset

    dataset = load_dataset(options.data_root)
    order = np.random.default_rng(options.seed).permutation(len(dataset.samples))[: n_cal + n_check]
    paths = [dataset.samples[i].path for i in order]
    blobs = [p.read_bytes() for p in tqdm(paths, desc="read calibration images", disable=not options.progress)]
    images = preprocess_image_bytes(module, blobs)
    return images[:n_cal], images[n_cal:], f"{min(n_cal, len(images))} {dataset.name} images"


def bit_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of code bits that are equal."""
    return float(np.mean(np.asarray(a) == np.asarray(b))) if np.size(a) else float("nan")


def reference_codes(module: CodeExport, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """The SavedModel graph's codes for preprocessed images (the image signature minus decoding)."""
    chunks = [binarize(module.image_head(module.image_encoder(images[i : i + batch_size], training=False),
                                         training=False)).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, module.bits), np.int8)


def write_tflite(module: CodeExport, out_dir: str | Path, options: TFLiteOptions) -> dict[str, Any]:
    """Write ``image_<variant>.tflite`` files into ``out_dir``; returns their metadata entries."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    calibration, check, source = representative_images(module, options)
    expected = reference_codes(module, check)

    def representative() -> Iterator[list[np.ndarray]]:
        for image in calibration:
            yield [image[None]]

    corrected = None
    if options.bias_correction_images > 0 and any(v in INT8_WEIGHT_VARIANTS for v in options.variants):
        corrected = bias_corrected_encoder(module.image_encoder, calibration[: options.bias_correction_images],
                                           progress=options.progress)
    entries: dict[str, Any] = {}
    for variant in tqdm(options.variants, desc="TFLite variants", disable=not options.progress):
        calibrated = variant in CALIBRATED_VARIANTS
        corrects = variant in INT8_WEIGHT_VARIANTS and corrected is not None
        blob = convert_image_model(module, variant, representative if calibrated else None,
                                   bias_correction_images=0, encoder=corrected if corrects else None)
        path = out / f"image_{variant}.tflite"
        path.write_bytes(blob)
        codes = TFLiteImageEncoder(blob).encode(check)
        entries[variant] = {
            "file": f"assets.extra/tflite/{path.name}", "bytes": len(blob),
            "input": f"image: float32 [1, {module.image_size}, {module.image_size}, 3] RGB 0..255, preprocessed",
            "output": f"codes: int8 [1, {module.bits}]",
            "bit_agreement_vs_savedmodel": bit_agreement(codes, expected),
            "checked_on": f"{len(check)} held-out images ({'synthetic' if options.data_root is None else 'real'})",
            "calibration": source if calibrated else None,
            "bias_correction": (f"{min(options.bias_correction_images, len(calibration))} calibration images"
                                if corrects else None),
        }
    return entries
