"""Image augmentation layers and presets: shapes, ranges, determinism, semantics."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from tfduch.augment.image import (
    IMAGE_AUGMENTATION_PRESETS,
    CenterCropResize,
    ColorJitter,
    GaussianBlur3x3,
    build_image_augmentation,
    random_rotation,
)
from tfduch.errors import ConfigError


def _batch(b: int = 3, size: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus noise: structured enough for rotation, noisy enough for blur."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([255 * x, 255 * y, 255 * (1 - x) * y], axis=-1)
    return np.clip(base[None] + rng.normal(0, 30, (b, size, size, 3)), 0, 255).astype(np.float32)


@pytest.mark.parametrize("preset", IMAGE_AUGMENTATION_PRESETS)
def test_presets_shape_range_determinism(preset: str) -> None:
    x = _batch()
    aug = build_image_augmentation(preset, 32, seed=3, crop=40)
    y = np.asarray(aug(x, training=True))
    assert y.shape == (3, 32, 32, 3) and y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 255.0
    y_same = np.asarray(build_image_augmentation(preset, 32, seed=3, crop=40)(x, training=True))
    np.testing.assert_allclose(y, y_same, atol=1e-4)
    # uint8 input works too
    assert np.asarray(aug(x.astype(np.uint8))).shape == (3, 32, 32, 3)


@pytest.mark.parametrize("preset", ["duch", "duch_jitter", "random"])
def test_random_presets_depend_on_seed_and_training(preset: str) -> None:
    x = _batch()
    a = np.asarray(build_image_augmentation(preset, 32, seed=1, crop=40)(x, training=True))
    b = np.asarray(build_image_augmentation(preset, 32, seed=2, crop=40)(x, training=True))
    assert np.abs(a - b).mean() > 0.1
    # training=False: only the deterministic centre crop + resize remains
    clean = np.asarray(build_image_augmentation(preset, 32, seed=1, crop=40)(x, training=False))
    ref = np.asarray(build_image_augmentation("center_crop", 32, crop=40)(x))
    np.testing.assert_allclose(clean, ref, atol=1e-4)


def test_default_duch_on_ucm_sized_images() -> None:
    x = _batch(2, 256)
    y = np.asarray(build_image_augmentation("duch", 224, seed=0)(x, training=True))
    assert y.shape == (2, 224, 224, 3)
    # a ≤10° turn of a 256 px image leaves no zero fill inside the 200 px centre crop
    assert (y.sum(-1) > 0).all()


def test_center_crop_resize() -> None:
    x = np.zeros((1, 10, 12, 3), np.float32)
    x[:, 3:7, 4:8] = 200.0
    y = np.asarray(CenterCropResize(crop=4, size=4)(x))
    np.testing.assert_allclose(y, 200.0)  # exactly the centre 4×4 block
    assert np.asarray(CenterCropResize(crop=500, size=5)(x)).shape == (1, 5, 5, 3)  # clamped crop
    assert np.asarray(CenterCropResize(crop=0.5, size=6)(x)).shape == (1, 6, 6, 3)
    with pytest.raises(ConfigError):
        CenterCropResize(crop=1.5)


def test_blur_matches_reflect_gaussian_and_reduces_variance() -> None:
    x = _batch(2, 24)
    y = np.asarray(GaussianBlur3x3((1.2, 1.2), seed=0)(x, training=True))
    k1 = np.exp(-(np.arange(-1, 2) ** 2) / (2 * 1.2**2))
    k1 /= k1.sum()
    ref = ndimage.correlate(x, np.einsum("i,j->ij", k1, k1)[None, :, :, None], mode="mirror")
    np.testing.assert_allclose(y, ref, atol=1e-3)
    noise = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    blurred = np.asarray(GaussianBlur3x3(seed=0)(noise, training=True))
    assert blurred.var() < 0.5 * noise.var()
    np.testing.assert_array_equal(np.asarray(GaussianBlur3x3(seed=0)(noise, training=False)), noise)


def test_rotation_sign_follows_torchvision() -> None:
    x = np.zeros((1, 21, 21, 3), np.float32)
    x[0, 1, 10] = 255.0  # top centre
    cw = np.asarray(random_rotation((-90, -90), seed=0)(x, training=True))
    ccw = np.asarray(random_rotation((90, 90), seed=0)(x, training=True))
    assert tuple(np.argwhere(cw[0, ..., 0] > 0)[0]) == (10, 19)  # negative angle: clockwise → right
    assert tuple(np.argwhere(ccw[0, ..., 0] > 0)[0]) == (10, 1)  # positive: counter-clockwise → left


def test_color_jitter_semantics() -> None:
    x = _batch(4) * 0.5 + 40.0  # keep away from the clip limits
    y = np.asarray(ColorJitter(brightness=0.4, seed=0)(x, training=True))
    ratio = y / x
    for i in range(4):  # brightness multiplies by one factor per image, in [0.6, 1.4]
        assert ratio[i].std() < 1e-4 and 0.6 <= ratio[i].mean() <= 1.4
    gray = np.repeat(x[..., :1], 3, axis=-1)  # hue and saturation leave gray images unchanged
    out = np.asarray(ColorJitter(saturation=0.8, hue=0.1, seed=0)(gray, training=True))
    np.testing.assert_allclose(out, gray, atol=0.5)
    lum = np.array([0.2989, 0.587, 0.114])
    out = np.asarray(ColorJitter(contrast=0.5, seed=0)(x, training=True))  # contrast keeps mean gray
    np.testing.assert_allclose((out @ lum).mean((1, 2)), (x @ lum).mean((1, 2)), rtol=1e-3)
    with pytest.raises(ConfigError, match="hue"):
        ColorJitter(hue=0.7)


def test_unknown_preset_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown image augmentation preset 'aug_center'.*duch.*random"):
        build_image_augmentation("aug_center", 224, seed=0)
    assert issubclass(ConfigError, ValueError)


def test_in_tf_function_with_unknown_shapes_and_serialisable() -> None:
    aug = build_image_augmentation("random", 24, seed=0, crop=0.75)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def run(x: tf.Tensor) -> tf.Tensor:
        return aug(x, training=True)

    assert run(tf.constant(_batch(2, 40))).shape == (2, 24, 24, 3)
    assert run(tf.constant(_batch(3, 36))).shape == (3, 24, 24, 3)
    for preset in ("duch_jitter", "random"):
        seq = build_image_augmentation(preset, 16, seed=5, crop=40)
        clone = keras.Sequential.from_config(seq.get_config())
        assert [type(layer) for layer in clone.layers] == [type(layer) for layer in seq.layers]
