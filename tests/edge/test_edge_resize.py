"""tfduch.edge.resize reproduces tf.image.resize(antialias=True) exactly (equality, not closeness)."""

from __future__ import annotations

import numpy as np
import pytest

from tfduch.edge.resize import resize_antialias


@pytest.mark.parametrize("seed", range(4))
def test_resize_equals_tensorflow_bit_for_bit(seed):
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(seed)
    for _ in range(5):
        h, w = (int(v) for v in rng.integers(3, 700, 2))
        oh, ow = (int(v) for v in rng.integers(3, 300, 2))
        image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        want = tf.image.resize(image, (oh, ow), antialias=True).numpy()
        got = resize_antialias(image, oh, ow)
        assert got.dtype == np.float32 and got.shape == (oh, ow, 3)
        np.testing.assert_array_equal(got, want, err_msg=f"{(h, w)} -> {(oh, ow)}")
        floats = want * np.float32(0.7)  # float input too (the second resize of the clean view)
        np.testing.assert_array_equal(resize_antialias(floats, 224, 224),
                                      tf.image.resize(floats, (224, 224), antialias=True).numpy())


def test_resize_rejects_non_images():
    with pytest.raises(ValueError, match=r"\[H, W, C\]"):
        resize_antialias(np.zeros((4, 4)), 2, 2)
