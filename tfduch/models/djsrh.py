"""DJSRH: Deep Joint-Semantics Reconstructing Hashing (Su, Zhong, Zhang, ICCV 2019), on frozen features.

The remote-sensing adaptation (``comrados/jdsh``) hashes frozen features with one MLP head per
modality (d → 512 → BN → ReLU → K) and trains both heads so that the cosine matrices of the codes
(image–image, image–text, text–text) reconstruct the joint-semantics matrix of the batch's features
(:func:`tfduch.losses.joint_semantics.djsrh_similarity`). Codes are ``tanh(α·logits)`` with
``α = sqrt(epoch + 1)``, which sharpens them towards ±1 as training goes on; retrieval takes the sign,
which α does not change. Optimiser: SGD with momentum 0.9 (the reference's), coupled L2 weight decay.

:class:`DJSRH` is also the base of :class:`tfduch.models.jdsh.JDSH`, which changes only the
similarity target and the loss.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from tfduch.losses.joint_semantics import djsrh_similarity
from tfduch.losses.similarity import code_similarity_loss
from tfduch.models.base import CrossModalHasher
from tfduch.models.replicas import apply_gradients


@dataclass(frozen=True)
class DJSRHParams:
    """DJSRH hyper-parameters (``model.params`` in the config); defaults = the reference UCM config."""

    beta: float = 0.6  # weight of the image similarity in the joint matrix
    eta: float = 0.4  # weight of the neighbourhood (second-order) term
    mu: float = 1.5  # scale of the target
    lambda_image: float = 0.1  # weight of the image–image term (the image–text term has weight 1)
    lambda_text: float = 0.1  # weight of the text–text term
    tanh_scaling: bool = True  # codes = tanh(sqrt(epoch + 1) · logits) while training
    optimizer: str = "sgd"  # "sgd" (reference, momentum below) or "adam" (the trainer's default)
    momentum: float = 0.9
    steps_per_epoch: int = 1  # set by the factory from the training-set and batch sizes

    def __post_init__(self) -> None:
        check_optimizer(self.optimizer)


def check_optimizer(name: str) -> None:
    if name not in ("sgd", "adam"):
        raise ValueError(f"params.optimizer must be 'sgd' or 'adam', got {name!r}")


def head_logits(head: keras.Model, x: tf.Tensor, training: bool) -> tf.Tensor:
    """A hashing head's output before its final tanh (the ``codes`` activation layer)."""
    for layer in head.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if layer.name == "codes":
            return x
        x = layer(x, training=training)
    raise ValueError(f"head {head.name!r} has no final 'codes' activation layer")


class DJSRH(CrossModalHasher):
    """Two hashing heads trained to reconstruct a joint-modal similarity matrix; one optimizer."""

    loss_names: tuple[str, ...] = ("loss", "image_image", "image_text", "text_text")

    def __init__(self, image_dim: int, text_dim: int, bits: int, hidden_dim: int = 512,
                 params: DJSRHParams | dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(image_dim, text_dim, bits, hidden_dim, **kwargs)
        self.params = self._params(params)
        self.weight_decay = 0.0
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.loss_names}

    @classmethod
    def _params(cls, params: Any) -> Any:
        return params if isinstance(params, DJSRHParams) else DJSRHParams(**(params or {}))

    def compile(self, optimizer: keras.optimizers.Optimizer, weight_decay: float = 0.0, **kwargs: Any) -> None:
        """One optimizer (the method declares which: the reference SGD with momentum, or Adam); coupled L2."""
        super().compile(optimizer=optimizer, **kwargs)
        self.weight_decay = float(weight_decay)

    def code_scale(self) -> tf.Tensor:
        """α = sqrt(epoch + 1), the epoch read from the optimizer's step counter (so it resumes)."""
        if not self.params.tanh_scaling:
            return tf.constant(1.0)
        steps = max(1, int(self.params.steps_per_epoch))
        epoch = tf.cast(self.optimizer.iterations // steps, tf.float32)
        return tf.sqrt(epoch + 1.0)

    def similarity_target(self, image: tf.Tensor, text: tf.Tensor) -> tf.Tensor:
        p = self.params
        return djsrh_similarity(image, text, beta=p.beta, eta=p.eta, mu=p.mu)

    def similarity_losses(self, code_i: tf.Tensor, code_t: tf.Tensor, target: tf.Tensor) -> dict[str, tf.Tensor]:
        p = self.params
        terms = {"image_image": code_similarity_loss(code_i, code_i, target),
                 "image_text": code_similarity_loss(code_i, code_t, target),
                 "text_text": code_similarity_loss(code_t, code_t, target)}
        terms["loss"] = p.lambda_image * terms["image_image"] + terms["image_text"] + p.lambda_text * terms["text_text"]
        return terms

    def train_step(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        alpha = self.code_scale()
        target = self.similarity_target(batch["image"], batch["text"])
        with tf.GradientTape() as tape:
            code_i = tf.tanh(alpha * head_logits(self.image_head, batch["image"], training=True))
            code_t = tf.tanh(alpha * head_logits(self.text_head, batch["text"], training=True))
            losses = self.similarity_losses(code_i, code_t, target)
        variables = self.hashing_variables
        apply_gradients(self.optimizer, tape.gradient(losses["loss"], variables), variables, self.weight_decay)
        for name, value in losses.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "params": dataclasses.asdict(self.params)}
