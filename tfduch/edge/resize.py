"""Antialiased bilinear resize in numpy, computing what TensorFlow's ``tf.image.resize(antialias=True)`` does.

The export's image preprocessing resizes with TF's ``ScaleAndTranslate`` kernel (triangle filter widened
by the downscale factor). An edge station without TensorFlow must give the TFLite model the same input
floats, or codes near the sign boundary flip; Pillow's and OpenCV's antialiased resizes use other filter
supports and rounding. So the span/weight computation and the float32 accumulation order of TF's kernel
(``tensorflow/core/kernels/image/scale_and_translate_op.cc``: weights normalised per output pixel, rows
gathered first, then columns, each as a float32 running sum) are reproduced here step by step; the tests
compare with ``tf.image.resize`` for equality, not closeness (gathering columns first differs in 1 ulp).
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["resize_antialias"]

_F = np.float32


@functools.lru_cache(maxsize=64)
def _spans(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts ``[out]``, weights ``[out, span]``) of the triangle kernel, as TF computes them in float32.

    Cached: a station resizes every image between the same few sizes, and this loop is pure Python.
    """
    scale = _F(out_size) / _F(in_size)  # tf.image.resize: float32 size ratio
    inv_scale = _F(1.0 / float(scale))  # `const float inv_scale = 1.0 / scale;` (double division)
    kernel_scale = max(inv_scale, _F(1.0))  # antialias: widen the kernel when downsampling
    one_over_kernel_scale = _F(1.0) / kernel_scale
    radius = _F(1.0) * kernel_scale
    span_size = min(2 * math.ceil(float(radius)) + 1, in_size)
    starts = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, span_size), np.float32)
    for x in range(out_size):
        sample = (_F(x) + _F(0.5)) * inv_scale  # + inv_translate (= -0.0)
        if sample < 0 or sample > in_size:
            continue
        start = min(max(math.ceil(float(sample - radius - _F(0.5))), 0), in_size - 1)
        end = min(max(math.floor(float(sample + radius - _F(0.5))), 0), in_size - 1) + 1
        row = []
        total = _F(0.0)
        for source in range(start, end):
            position = abs((_F(source) + _F(0.5) - sample) * one_over_kernel_scale)
            weight = _F(1.0) - position if position < 1 else _F(0.0)
            total = _F(total + weight)
            row.append(weight)
        if abs(total) >= 1000.0 * np.finfo(np.float32).tiny:
            inverse = _F(1.0) / total
            weights[x, : len(row)] = [_F(w * inverse) for w in row]
        starts[x] = start
    starts.setflags(write=False)
    weights.setflags(write=False)
    return starts, weights


def _gather(image: np.ndarray, axis: int, starts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted sums along ``axis``: a float32 running sum over the span, in span order (as TF's loops)."""
    size = image.shape[axis]
    out = np.zeros(image.shape[:axis] + (len(starts),) + image.shape[axis + 1 :], np.float32)
    for i in range(weights.shape[1]):
        index = np.minimum(starts + i, size - 1)
        w = weights[:, i]
        taken = np.take(image, index, axis=axis)
        shape = [1] * image.ndim
        shape[axis] = len(w)
        out = out + (w.reshape(shape) * taken).astype(np.float32)  # zero weights past a span's end add 0
    return out


def resize_antialias(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[H, W, C]`` (any real dtype) → float32 ``[height, width, C]``, as ``tf.image.resize(..., antialias=True)``."""
    x = np.asarray(image).astype(np.float32)
    if x.ndim != 3:
        raise ValueError(f"resize_antialias takes an [H, W, C] image, got shape {x.shape}")
    col_starts, col_weights = _spans(int(x.shape[1]), int(width))
    row_starts, row_weights = _spans(int(x.shape[0]), int(height))
    return _gather(_gather(x, 0, row_starts, row_weights), 1, col_starts, col_weights)
