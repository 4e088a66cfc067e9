"""JDSH: Joint-modal Distribution-based Similarity Hashing (Liu et al., SIGIR 2020), on frozen features.

Same heads, code scaling and optimiser as :class:`~tfduch.models.djsrh.DJSRH`; what changes is the
target and the loss, as in the remote-sensing adaptation (``comrados/jdsh``):

* target: joint-distribution similarity with a cross-modal second-order term, sharpened by the
  distribution-based similarity decision and weighting (DSD&W), see
  :func:`tfduch.losses.joint_semantics.jdsh_similarity`;
* loss: ``intra·(‖cos(B_I,B_I) − S‖² + ‖cos(B_T,B_T) − S‖²) + ‖cos(B_I,B_T) − S‖² + ‖cos(B_T,B_I) − S‖²
  − mean_i cos(b_I_i, b_T_i)`` (the last term pulls each pair's two codes together).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from tfduch.losses.joint_semantics import DistributionDecision, jdsh_similarity
from tfduch.losses.similarity import code_similarity_loss
from tfduch.models.djsrh import DJSRH, check_optimizer


@dataclass(frozen=True)
class JDSHParams:
    """JDSH hyper-parameters (``model.params``); defaults = the reference UCM config (``JDSH_UCM.json``)."""

    a: float = 0.4  # weight of the image similarity
    b: float = 0.3  # weight of the text similarity
    lamb: float = 0.3  # weight of the cross-modal second-order term
    mu: float = 1.5
    intra: float = 0.1  # weight of the image–image and text–text terms
    decision: DistributionDecision | None = field(default_factory=DistributionDecision)  # None: no DSD&W
    tanh_scaling: bool = True
    optimizer: str = "sgd"
    momentum: float = 0.9
    steps_per_epoch: int = 1

    def __post_init__(self) -> None:
        check_optimizer(self.optimizer)
        if isinstance(self.decision, dict):
            object.__setattr__(self, "decision", DistributionDecision(**self.decision))


class JDSH(DJSRH):
    """DJSRH's training loop with JDSH's similarity target and loss."""

    loss_names = ("loss", "image_image", "image_text", "text_image", "text_text", "pair")

    @classmethod
    def _params(cls, params: Any) -> JDSHParams:
        return params if isinstance(params, JDSHParams) else JDSHParams(**(params or {}))

    def similarity_target(self, image: tf.Tensor, text: tf.Tensor) -> tf.Tensor:
        p = self.params
        return jdsh_similarity(image, text, a=p.a, b=p.b, lamb=p.lamb, mu=p.mu, decision=p.decision)

    def similarity_losses(self, code_i: tf.Tensor, code_t: tf.Tensor, target: tf.Tensor) -> dict[str, tf.Tensor]:
        p = self.params
        pair = tf.reduce_mean(tf.reduce_sum(tf.math.l2_normalize(code_i, 1) * tf.math.l2_normalize(code_t, 1), 1))
        terms = {"image_image": code_similarity_loss(code_i, code_i, target),
                 "image_text": code_similarity_loss(code_i, code_t, target),
                 "text_image": code_similarity_loss(code_t, code_i, target),
                 "text_text": code_similarity_loss(code_t, code_t, target),
                 "pair": pair}
        terms["loss"] = (p.intra * (terms["image_image"] + terms["text_text"]) + terms["image_text"]
                         + terms["text_image"] - pair)
        return terms
