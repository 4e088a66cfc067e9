"""Empirical bias correction: int8-grid kernels whose rounding shift is absorbed by the next BatchNorm.

Rounding every EfficientNet kernel to TFLite's per-channel int8 grid shifts the pre-sign outputs enough to
flip ≈ 1.7 % of the code bits by itself; with this correction the same int8 weights flip ≈ 0.6 % (measured
on UCM, ``docs/export.md``). :mod:`tfduch.export.tflite` converts the corrected copy for the int8-weight
variants. Keras only: no TFLite here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

__all__ = ["bias_corrected_encoder", "int8_grid", "cut_positions"]


def int8_grid(kernel: np.ndarray, channel_axis: int) -> np.ndarray:
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
    cuts = cut_positions(clone)
    cut, cached = -1, images
    for (conv, bn, axis), target in tqdm(list(zip(pairs, float_means, strict=True)), desc="bias correction",
                                         disable=not progress, leave=False):
        latest = max(c for c in cuts if c < position[conv.name])
        if latest > cut:
            cached = run(source(cut), clone.layers[latest].output, cached)
            cut = latest
        conv.kernel.assign(int8_grid(conv.kernel.numpy(), axis))
        shift = channel_means(source(cut), [conv.output], cached)[0] - target
        bn.moving_mean.assign((bn.moving_mean.numpy() + shift).astype(np.float32))
    return clone


def cut_positions(model: Any) -> list[int]:
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
