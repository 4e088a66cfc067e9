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
int8 range. Measured on UCM (docs/export.md): ``dynamic`` 99.58 % and ``int8`` 99.21 % of the bits with the
default ``lite0-ms`` features; 99.34 % and ≈ 98.5 % with ``lite0``'s.

Each variant's bit agreement with the SavedModel's codes is measured at export time on held-out images
and stored in the export metadata, so an edge user knows what the quantization costs; a variant below its
floor (``TFLiteOptions.min_bit_agreement``, set by the edge config ``export/edge.yaml``) is refused before
its file is written. Next to each ``image_<variant>.tflite`` an ``image_<variant>.json`` carries what a
TensorFlow-free runtime (:mod:`tfduch.edge`) needs: the model id, code length and the preprocessing.

Module split (no cycles): :mod:`~tfduch.export.graph` (the serving graph) ← :mod:`~tfduch.export.calibration`
(images and reference codes), :mod:`~tfduch.export.bias_correction` ← this module ←
:mod:`~tfduch.export.savedmodel` (the writer).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfduch.export.bias_correction import bias_corrected_encoder
from tfduch.export.calibration import (
    bit_agreement,
    dataset_images,
    folder_images,
    preprocess_image_bytes,
    reference_codes,
    synthetic_images,
)
from tfduch.export.graph import CodeExport, binarize
from tfduch.export.layout import ExportError
from tfduch.io import atomic_write_bytes, atomic_write_json

__all__ = ["TFLITE_VARIANTS", "CALIBRATED_VARIANTS", "INT8_WEIGHT_VARIANTS", "EDGE_FORMAT", "TFLiteOptions",
           "TFLiteImageEncoder", "VariantRefused", "image_code_function", "convert_image_model",
           "bias_corrected_encoder", "representative_images", "write_tflite", "bit_agreement",
           "preprocess_image_bytes", "reference_codes"]

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
    # variant -> the least fraction of code bits equal to the float SavedModel's on the check images; a
    # variant below it is not written (export/edge.yaml sets these; empty: measured and stored only).
    min_bit_agreement: dict[str, float] = field(default_factory=dict)
    on_below_floor: str = "error"  # "error": the export fails, nothing is written; "skip": leave it out
    calibration_folder: str | Path | None = None  # image files calibrating instead of the dataset's
    check_folder: str | Path | None = None  # image files checking instead of held-out dataset images

    def __post_init__(self) -> None:
        self.variants = tuple(self.variants)
        unknown = [v for v in self.variants if v not in TFLITE_VARIANTS]
        if unknown or not self.variants:
            raise ExportError(f"unknown TFLite variants {unknown}; choose from {', '.join(TFLITE_VARIANTS)}")
        for variant, floor in self.min_bit_agreement.items():
            if variant not in self.variants:
                raise ExportError(f"a bit-agreement floor is set for {variant!r}, which is not among the "
                                  f"variants to write ({', '.join(self.variants)})")
            if isinstance(floor, bool) or not isinstance(floor, int | float) or not 0.0 <= floor <= 1.0:
                raise ExportError(f"min_bit_agreement of {variant!r} must be a fraction in [0, 1], got {floor!r}")
        if self.on_below_floor not in ("error", "skip"):
            raise ExportError(f"on_below_floor must be 'error' or 'skip', got {self.on_below_floor!r}")
        for name in ("calibration_images", "check_images", "bias_correction_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ExportError(f"{name} must be a whole number >= 0, got {value!r}")
        if self.check_images < 1 and self.check_folder is None:
            raise ExportError("check_images must be >= 1: every variant's agreement is measured")


class VariantRefused(ExportError):
    """A TFLite variant's measured bit agreement is below its floor; nothing was written for it."""


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


def representative_images(module: CodeExport, options: TFLiteOptions) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(calibration images, check images, what calibrates, what checks).

    Folders of image files win; else a seeded permutation of the dataset gives calibration images first
    and disjoint check images after them; else synthetic images (the export still works without data).
    """
    n_cal, n_check = options.calibration_images, options.check_images
    if options.calibration_folder is not None:
        calibration, cal_source = folder_images(module, options.calibration_folder, n_cal, options.progress)
    elif options.data_root is not None:
        calibration, cal_source = dataset_images(module, options.data_root, n_cal, options.seed, 0, options.progress)
    else:
        calibration, cal_source = synthetic_images(n_cal, module.image_size, options.seed), f"{n_cal} synthetic images"
    if options.check_folder is not None:
        check, check_source = folder_images(module, options.check_folder, n_check or None, options.progress)
    elif options.data_root is not None:
        check, check_source = dataset_images(module, options.data_root, n_check, options.seed, n_cal,
                                             options.progress)
        check_source = check_source.replace("images", "held-out images (real)", 1)
    else:
        check = synthetic_images(n_cal + n_check, module.image_size, options.seed)[n_cal:]
        check_source = f"{n_check} held-out images (synthetic)"
    return calibration, check, cal_source, check_source


EDGE_FORMAT = "tfduch-edge"


def write_tflite(module: CodeExport, out_dir: str | Path, options: TFLiteOptions,
                 model_id: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write ``image_<variant>.tflite`` (+ ``.json`` sidecar) files into ``out_dir``.

    Returns (metadata entries of the written variants, refused variants with their measured agreement).

    Every variant is converted and measured in memory first; one below its floor raises
    :class:`VariantRefused` before anything of it is written (``on_below_floor="error"``, which fails the
    whole export: its version folder never appears), or is left out and returned as refused (``"skip"``).
    """
    out = Path(out_dir)
    calibration, check, source, checked_on = representative_images(module, options)
    if not len(check):
        raise ExportError("no check images: every TFLite variant's bit agreement must be measured")
    if any(v in CALIBRATED_VARIANTS for v in options.variants) and not len(calibration):
        raise ExportError(f"{', '.join(v for v in options.variants if v in CALIBRATED_VARIANTS)} need "
                          "calibration images; calibration_images is 0")
    expected = reference_codes(module, check)

    def representative() -> Iterator[list[np.ndarray]]:
        for image in calibration:
            yield [image[None]]

    corrected = None
    n_bias = min(options.bias_correction_images, len(calibration))
    if n_bias > 0 and any(v in INT8_WEIGHT_VARIANTS for v in options.variants):
        corrected = bias_corrected_encoder(module.image_encoder, calibration[:n_bias], progress=options.progress)
    entries: dict[str, Any] = {}
    refused: dict[str, Any] = {}
    for variant in tqdm(options.variants, desc="TFLite variants", disable=not options.progress):
        calibrated = variant in CALIBRATED_VARIANTS
        corrects = variant in INT8_WEIGHT_VARIANTS and corrected is not None
        blob = convert_image_model(module, variant, representative if calibrated else None,
                                   bias_correction_images=0, encoder=corrected if corrects else None)
        agreement = bit_agreement(TFLiteImageEncoder(blob).encode(check), expected)
        floor = options.min_bit_agreement.get(variant)
        if floor is not None and not agreement >= floor:
            message = (f"TFLite variant {variant!r} keeps {100 * agreement:.3f} % of the code bits of the float "
                       f"SavedModel on {checked_on}, below its floor of {100 * floor:.3f} %: refused, not written")
            if options.on_below_floor == "error":
                raise VariantRefused(message)
            refused[variant] = {"bit_agreement_vs_savedmodel": agreement, "min_bit_agreement": floor,
                                "reason": message}
            continue
        name = f"image_{variant}"
        entry = {
            "file": f"assets.extra/tflite/{name}.tflite", "bytes": len(blob),
            "input": f"image: float32 [1, {module.image_size}, {module.image_size}, 3] RGB 0..255, preprocessed",
            "output": f"codes: int8 [1, {module.bits}]",
            "bit_agreement_vs_savedmodel": agreement,
            "min_bit_agreement": floor,
            "checked_on": checked_on,
            "calibration": source if calibrated else None,
            "bias_correction": f"{n_bias} calibration images" if corrects else None,
        }
        sidecar = {"format": EDGE_FORMAT, "format_version": 1, "model_id": model_id, "variant": variant,
                   "code_length": module.bits, "packed_bytes": module.bits // 8,
                   "packing": "numpy.packbits(codes > 0, axis=1): bit j = 1 where code j is +1, big-endian",
                   "preprocessing": module.edge_preprocessing(),
                   **{k: entry[k] for k in ("input", "output", "bit_agreement_vs_savedmodel", "min_bit_agreement",
                                            "checked_on")}}
        atomic_write_bytes(out / f"{name}.tflite", blob)
        atomic_write_json(out / f"{name}.json", sidecar)
        entries[variant] = entry
    return entries, refused
