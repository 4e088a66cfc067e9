"""DUCH's image augmentation presets as Keras 3 layers.

All layers take float32 (or integer) ``[B, H, W, 3]`` batches in 0..255 and return float32 in
0..255; the encoder normalises. Random layers draw per image from a ``keras.random.SeedGenerator``
(seedable) when called with ``training=True`` (the default, as for Keras' own preprocessing layers)
and are the identity with ``training=False``; the centre crop and the final resize always apply.

Presets mirror the DUCH reference's image augmentation sets (``images_augment.py`` /
``config_img_aug.py`` of comrados/duch), each followed by a resize to ``S × S``:

- ``none``: resize only (reference ``no_aug``).
- ``center_crop``: 200 px centre crop (reference ``center_crop_only``; the reference's *clean*
  image features use this set in every training preset).
- ``duch``: 3×3 Gaussian blur σ ~ U[1.1, 1.3] → rotation by U[−10°, −5°] → 200 px centre crop
  (reference ``aug_center``: its augmented image view in the default preset; no colour jitter).
- ``duch_jitter``: ``duch`` then colour jitter of strength ``jitter_strength`` (not a reference set).
- ``random``: per image one of rotation / blur / jitter, then the 200 px centre crop (reference
  ``each_img_random`` = one of ``rotation_cc``, ``blur_cc``, ``jitter_cc``; jitter strength 0.5).

Rotation sign: angles follow torchvision/PIL, positive = counter-clockwise on the displayed image;
so −10°…−5° turns the scene 5–10° **clockwise**. ``keras.layers.RandomRotation`` uses the same
convention (checked: factor +0.25 moves a top-centre pixel to the left-centre, as PIL's
``rotate(90)``), with angles given as fractions of 360°. Like torchvision it is used with nearest
interpolation and zero fill; after a ≤10° turn of a 256 px image the 200 px centre crop contains
no fill.

Differences from torchvision (all small): bilinear resize is TF's antialiased bilinear (close to
PIL's), intermediate results are not re-quantised to uint8, and the crop offset of an odd margin is
floored (torchvision rounds half to even).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfduch.errors import ConfigError

__all__ = [
    "GaussianBlur3x3",
    "CenterCropResize",
    "ColorJitter",
    "RandomChoice",
    "random_rotation",
    "color_jitter",
    "build_image_augmentation",
    "IMAGE_AUGMENTATION_PRESETS",
]

IMAGE_AUGMENTATION_PRESETS: tuple[str, ...] = ("none", "center_crop", "duch", "duch_jitter", "random")

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma), used by its contrast and saturation.
_GRAY = (0.2989, 0.587, 0.114)


def _to_float(images: Any) -> Any:
    images = ops.convert_to_tensor(images)
    return images if images.dtype == "float32" else ops.cast(images, "float32")


def _grayscale(x: Any) -> Any:
    r, g, b = x[..., 0:1], x[..., 1:2], x[..., 2:3]
    return _GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b


def _per_image(values: Any) -> Any:
    return ops.reshape(values, (-1, 1, 1, 1))


@keras.saving.register_keras_serializable(package="tfduch")
class GaussianBlur3x3(keras.layers.Layer):
    """3×3 Gaussian blur with σ ~ U[sigma_range] per image and reflect padding.

    Equivalent to torchvision ``GaussianBlur((3, 3), sigma_range)``; ``keras.layers.RandomGaussianBlur``
    scales σ by an extra random factor and pads differently, hence an own layer. Separable: a 1-D
    kernel ``[w, 1, w] / (1 + 2w)`` with ``w = exp(-1 / (2σ²))`` along H then W.
    """

    def __init__(self, sigma_range: Sequence[float] = (1.1, 1.3), seed: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        lo, hi = (float(s) for s in sigma_range)
        if not 0.0 < lo <= hi:
            raise ConfigError(f"GaussianBlur3x3: sigma_range must satisfy 0 < low <= high, got {sigma_range}")
        self.sigma_range = (lo, hi)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images: Any, training: bool = True) -> Any:
        x = _to_float(images)
        if not training:
            return x
        batch = ops.shape(x)[0]
        lo, hi = self.sigma_range
        sigma = keras.random.uniform((batch,), minval=lo, maxval=hi, seed=self.seed_generator)
        w = ops.exp(-1.0 / (2.0 * sigma * sigma))
        side = _per_image(w / (1.0 + 2.0 * w))
        centre = _per_image(1.0 / (1.0 + 2.0 * w))
        # Reflect padding by one pixel (torchvision's mode), written as slices: MirrorPad rejects
        # empty batches, which RandomChoice produces.
        up = ops.concatenate([x[:, 1:2], x[:, :-1]], axis=1)
        down = ops.concatenate([x[:, 1:], x[:, -2:-1]], axis=1)
        x = side * (up + down) + centre * x
        left = ops.concatenate([x[:, :, 1:2], x[:, :, :-1]], axis=2)
        right = ops.concatenate([x[:, :, 1:], x[:, :, -2:-1]], axis=2)
        x = side * (left + right) + centre * x
        return ops.clip(x, 0.0, 255.0)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "sigma_range": list(self.sigma_range), "seed": self.seed}


@keras.saving.register_keras_serializable(package="tfduch")
class CenterCropResize(keras.layers.Layer):
    """Centre crop then resize to ``size × size`` (antialiased bilinear), clipped to [0, 255].

    ``crop``: ``None`` = no crop; an ``int`` = pixels (clamped to the image, so a 64 px synthetic
    image is taken whole where torchvision would zero-pad); a ``float`` in (0, 1] = fraction of each
    side. Deterministic: applies with ``training`` either way, like the reference's ``CenterCrop``.
    """

    def __init__(self, crop: int | float | None = 200, size: int = 224, **kwargs: Any):
        super().__init__(**kwargs)
        if crop is not None:
            if isinstance(crop, bool) or not isinstance(crop, int | float):
                raise ConfigError(f"CenterCropResize: crop must be an int, a float or None, got {crop!r}")
            if isinstance(crop, float) and not 0.0 < crop <= 1.0:
                raise ConfigError(f"CenterCropResize: a fractional crop must be in (0, 1], got {crop}")
            if isinstance(crop, int) and crop < 1:
                raise ConfigError(f"CenterCropResize: crop must be >= 1 pixel, got {crop}")
        if int(size) < 1:
            raise ConfigError(f"CenterCropResize: size must be >= 1, got {size}")
        self.crop = crop
        self.size = int(size)

    def _crop_len(self, n: Any) -> Any:
        if isinstance(self.crop, float):
            return ops.maximum(ops.cast(ops.round(ops.cast(n, "float32") * self.crop), "int32"), 1)
        return ops.minimum(ops.cast(n, "int32"), self.crop)

    def call(self, images: Any, training: bool = True) -> Any:
        x = _to_float(images)
        if self.crop is not None:
            shape = ops.shape(x)
            h, w = shape[1], shape[2]
            if isinstance(h, int) and isinstance(w, int):  # static shape: plain python slicing
                ch = min(h, self.crop) if isinstance(self.crop, int) else max(1, round(h * self.crop))
                cw = min(w, self.crop) if isinstance(self.crop, int) else max(1, round(w * self.crop))
                top, left = (h - ch) // 2, (w - cw) // 2
                x = x[:, top : top + ch, left : left + cw, :]
            else:
                ch, cw = self._crop_len(h), self._crop_len(w)
                top = (ops.cast(h, "int32") - ch) // 2
                left = (ops.cast(w, "int32") - cw) // 2
                x = ops.slice(x, [0, top, left, 0], [shape[0], ch, cw, shape[3]])
        x = ops.image.resize(x, (self.size, self.size), interpolation="bilinear", antialias=True)
        return ops.clip(x, 0.0, 255.0)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], self.size, self.size, input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "crop": self.crop, "size": self.size}


@keras.saving.register_keras_serializable(package="tfduch")
class ColorJitter(keras.layers.Layer):
    """Brightness / contrast / saturation / hue jitter with torchvision ``ColorJitter`` semantics.

    Per image: factors ``b, c, s ~ U[max(0, 1 − v), 1 + v]``, hue shift ``~ U[−hue, hue]`` (fraction
    of the colour circle), applied in a random order, clipping to [0, 255] after each. brightness
    multiplies; contrast blends with the image's mean gray level; saturation blends with the per-pixel
    gray image; hue rotates H in HSV. ``keras.layers.RandomColorJitter`` differs (additive
    brightness, per-channel contrast mean, saturation factor 0.5 = identity, fixed order), so it is
    not used.
    """

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        seed: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        for key, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if v < 0:
                raise ConfigError(f"ColorJitter: {key} must be >= 0, got {v}")
        if not 0.0 <= hue <= 0.5:
            raise ConfigError(f"ColorJitter: hue must be in [0, 0.5], got {hue}")
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.saturation = float(saturation)
        self.hue = float(hue)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _factor(self, batch: Any, v: float) -> Any:
        lo, hi = max(0.0, 1.0 - v), 1.0 + v
        return keras.random.uniform((batch,), minval=lo, maxval=hi, seed=self.seed_generator)

    @staticmethod
    def _brightness(x: Any, f: Any) -> Any:
        return ops.clip(x * _per_image(f), 0.0, 255.0)

    @staticmethod
    def _contrast(x: Any, f: Any) -> Any:
        f = _per_image(f)
        mean = ops.mean(_grayscale(x), axis=(1, 2, 3), keepdims=True)
        return ops.clip(f * x + (1.0 - f) * mean, 0.0, 255.0)

    @staticmethod
    def _saturation(x: Any, f: Any) -> Any:
        f = _per_image(f)
        return ops.clip(f * x + (1.0 - f) * _grayscale(x), 0.0, 255.0)

    @staticmethod
    def _hue(x: Any, shift: Any) -> Any:
        hsv = ops.image.rgb_to_hsv(x / 255.0)
        h = hsv[..., 0:1] + _per_image(shift)
        h = h - ops.floor(h)
        rgb = ops.image.hsv_to_rgb(ops.concatenate([h, hsv[..., 1:]], axis=-1))
        return ops.clip(rgb * 255.0, 0.0, 255.0)

    def call(self, images: Any, training: bool = True) -> Any:
        x = _to_float(images)
        if not training:
            return x
        batch = ops.shape(x)[0]
        steps: list[tuple[Any, Any]] = []  # (op, per-image parameter [B])
        if self.brightness > 0:
            steps.append((self._brightness, self._factor(batch, self.brightness)))
        if self.contrast > 0:
            steps.append((self._contrast, self._factor(batch, self.contrast)))
        if self.saturation > 0:
            steps.append((self._saturation, self._factor(batch, self.saturation)))
        if self.hue > 0:
            hue = self.hue
            shift = keras.random.uniform((batch,), minval=-hue, maxval=hue, seed=self.seed_generator)
            steps.append((self._hue, shift))
        n = len(steps)
        if n == 0:
            return x
        if n == 1:
            return steps[0][0](x, steps[0][1])
        # A random order per image: at slot t, image i gets op order[i, t]. Each slot partitions the
        # batch by op, applies every op once to its part and stitches the results back, so the
        # cost is ~n ops over the batch rather than n² with compute-all-and-select.
        order = ops.cast(ops.argsort(keras.random.uniform((batch, n), seed=self.seed_generator), axis=-1), "int32")
        positions = tf.range(batch)
        for t in range(n):
            which = order[:, t]
            parts = tf.dynamic_partition(x, which, n)
            idx = tf.dynamic_partition(positions, which, n)
            outs = [op(part, tf.gather(param, i)) for (op, param), part, i in zip(steps, parts, idx, strict=True)]
            x = tf.ensure_shape(tf.dynamic_stitch(idx, outs), x.shape)
        return x

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "brightness": self.brightness,
            "contrast": self.contrast,
            "saturation": self.saturation,
            "hue": self.hue,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="tfduch")
class RandomChoice(keras.layers.Layer):
    """Per image, one branch layer chosen uniformly (the reference's ``each_img_random``).

    The batch is partitioned by choice and each branch runs only on its images, so the cost is that
    of one branch over the batch. Branches must keep the image shape. ``training=False``: identity.
    """

    def __init__(self, branches: Sequence[keras.layers.Layer], seed: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if not branches:
            raise ConfigError("RandomChoice needs at least one branch")
        self.branches = list(branches)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images: Any, training: bool = True) -> Any:
        x = _to_float(images)
        if not training:
            return x
        n = len(self.branches)
        if n == 1:
            return self.branches[0](x, training=True)
        batch = ops.shape(x)[0]
        pick = ops.cast(keras.random.randint((batch,), 0, n, seed=self.seed_generator), "int32")
        parts = tf.dynamic_partition(x, pick, n)
        idx = tf.dynamic_partition(tf.range(batch), pick, n)
        outs = [b(part, training=True) for b, part in zip(self.branches, parts, strict=True)]
        return tf.ensure_shape(tf.dynamic_stitch(idx, outs), x.shape)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "branches": [keras.saving.serialize_keras_object(b) for b in self.branches],
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RandomChoice:
        config = dict(config)
        config["branches"] = [keras.saving.deserialize_keras_object(b) for b in config["branches"]]
        return cls(**config)


def random_rotation(degrees: Sequence[float] = (-10.0, -5.0), seed: int | None = None) -> keras.layers.Layer:
    """Rotation by U[degrees] per image (positive = counter-clockwise, as torchvision), nearest, zero fill."""
    lo, hi = (float(d) for d in degrees)
    if lo > hi or max(abs(lo), abs(hi)) > 180.0:
        raise ConfigError(f"rotation degrees must be an increasing pair within ±180, got {degrees}")
    return keras.layers.RandomRotation(
        factor=(lo / 360.0, hi / 360.0),
        fill_mode="constant",
        fill_value=0.0,
        interpolation="nearest",
        seed=seed,
    )


def color_jitter(strength: float = 0.5, seed: int | None = None) -> ColorJitter:
    """The reference's jitter: ``ColorJitter(0.8·s, 0.8·s, 0.8·s, 0.2·s)`` (reference default s = 0.5)."""
    s = float(strength)
    return ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, min(0.2 * s, 0.5), seed=seed)


def build_image_augmentation(
    preset: str,
    image_size: int,
    seed: int = 0,
    *,
    crop: int | float = 200,
    rotation_degrees: Sequence[float] = (-10.0, -5.0),
    blur_sigma: Sequence[float] = (1.1, 1.3),
    jitter_strength: float = 0.5,
) -> keras.Sequential:
    """The augmentation pipeline for ``preset`` (see module docstring), output ``[B, S, S, 3]`` 0..255.

    ``seed`` makes it reproducible: two pipelines built with the same arguments give the same
    outputs for the same sequence of calls. Call with ``training=True`` (default) to augment.
    Inputs must share one size within a batch (resize off-size images first, e.g.
    ``load_image(path, size=256)``).
    """
    if preset not in IMAGE_AUGMENTATION_PRESETS:
        known = ", ".join(IMAGE_AUGMENTATION_PRESETS)
        raise ConfigError(f"unknown image augmentation preset {preset!r}; choose one of: {known}")
    size = int(image_size)
    # Independent, well-spread seeds for each random layer.
    seeds = [int(s) & 0x7FFFFFFF for s in np.random.SeedSequence(int(seed)).generate_state(8)]

    def final() -> CenterCropResize:
        return CenterCropResize(crop=crop, size=size)

    layers: list[keras.layers.Layer]
    if preset == "none":
        layers = [CenterCropResize(crop=None, size=size)]
    elif preset == "center_crop":
        layers = [final()]
    elif preset in ("duch", "duch_jitter"):
        layers = [
            GaussianBlur3x3(blur_sigma, seed=seeds[0]),
            random_rotation(rotation_degrees, seed=seeds[1]),
        ]
        if preset == "duch_jitter":
            layers.append(color_jitter(jitter_strength, seed=seeds[2]))
        layers.append(final())
    else:  # "random"
        # Every reference branch ends in the same deterministic crop + resize, so choose among the
        # random parts and crop once afterwards (identical result, a third of the resizing).
        branches = [
            random_rotation(rotation_degrees, seed=seeds[3]),
            GaussianBlur3x3(blur_sigma, seed=seeds[4]),
            color_jitter(jitter_strength, seed=seeds[5]),
        ]
        layers = [RandomChoice(branches, seed=seeds[6]), final()]
    return keras.Sequential(layers, name=f"image_augmentation_{preset}")
