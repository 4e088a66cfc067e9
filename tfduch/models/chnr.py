"""CHNR: cross-modal hashing that stays accurate when many captions are wrong (Mikriukov et al., ICIP 2022).

DUCH's hashing heads and losses plus a noise detector (:mod:`tfduch.models.noise_detector`) that
learns what a correctly matched image–caption pair looks like. Training has two phases, switched by
:class:`tfduch.models.phases.PhaseSwitch` through the ``phase`` variable (no retracing):

1. *meta-learning* (epochs ``[0, switch_epoch)``): on the trusted clean subset, the detector learns
   real = matched pairs vs fake = the image with a caption of another class from the batch (BCE +
   gradient penalty, AdamW); the hashing heads train on the clean pairs with unit weights.
2. *weighted*: the detector is frozen; every pair's inter-modal contrastive term (and its quantization
   term, see :meth:`CHNR.weighted_quantization`) is weighted by a function of the detector's
   clean-probability w (:data:`WEIGHTINGS`).

Batches need ``clean`` (bool) and ``label`` (class id of clean pairs) besides DUCH's keys: build the
training features with ``clean_mask`` and ``labels`` (``tfduch.pipeline.training_features``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfduch.config import CHNRConfig, LossConfig
from tfduch.losses import discriminator_loss, gradient_penalty, quantization_loss
from tfduch.models.duch import DUCH
from tfduch.models.noise_detector import build_noise_detector, pair_features

META_PHASE, WEIGHTED_PHASE = 1, 2
CHNR_METRICS = ("detector", "real_score", "fake_score", "pair_weight")


# --- weighting schemes: detector clean-probability w (and the phase-1 threshold) → pair weight -------------

def weight_w(w: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    """The probability itself (reference "normal")."""
    return w


def weight_w3(w: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    """w³ (reference "exp"): pushes doubtful pairs further down; the best scheme in the reference runs."""
    return w**3


def weight_threshold(w: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    """1[w > threshold] (reference "dis"), threshold = midpoint of mean real and fake scores after phase 1."""
    return tf.cast(w > threshold, w.dtype)


def weight_none(w: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    """1 for every pair: the clean-subset pre-training alone, the ablation baseline."""
    return tf.ones_like(w)


WEIGHTINGS: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {
    "w": weight_w, "w3": weight_w3, "threshold": weight_threshold, "none": weight_none}


def fake_partners(labels: tf.Tensor, seed: keras.random.SeedGenerator) -> tuple[tf.Tensor, tf.Tensor]:
    """For each row, a random other row of a different class; returns (partner index, whether one exists)."""
    other_class = tf.not_equal(labels[:, None], labels[None, :])
    u = keras.random.uniform(tf.shape(other_class), seed=seed)
    partner = tf.argmax(tf.where(other_class, u, -1.0), axis=1, output_type=tf.int32)
    return partner, tf.reduce_any(other_class, axis=1)


class CHNR(DUCH):
    """DUCH + a noise detector whose scores weight each pair's inter-modal term after the meta-learning phase."""

    distributable = False  # the detector step and its score sums are per-replica: not checked under tf.distribute

    def __init__(self, image_dim: int, text_dim: int, bits: int, num_train: int, hidden_dim: int = 4096,
                 loss: dict[str, Any] | LossConfig | None = None, chnr: dict[str, Any] | CHNRConfig | None = None,
                 seed: int = 0, **kwargs: Any):
        super().__init__(image_dim, text_dim, bits, num_train, hidden_dim, loss=loss, seed=seed, **kwargs)
        self.chnr_config = chnr if isinstance(chnr, CHNRConfig) else CHNRConfig(**(chnr or {}))
        c = self.chnr_config
        if c.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown CHNR weighting {c.weighting!r}; known: {', '.join(WEIGHTINGS)}")
        if c.objective not in ("reference", "duch"):
            raise ValueError(f"unknown CHNR objective {c.objective!r}: use 'reference' or 'duch'")
        self.weighting = WEIGHTINGS[c.weighting]
        self.detector = build_noise_detector(self.image_dim + self.text_dim, c.detector_hidden_dim, c.detector_layers,
                                             c.detector_dropout)
        # State the train_step reads and the phase callback writes; weights, so checkpoints carry them.
        self.phase = self.add_weight(shape=(), dtype="int32", initializer=keras.initializers.Constant(META_PHASE),
                                     trainable=False, name="phase")
        self.threshold = self.add_weight(shape=(), initializer=keras.initializers.Constant(0.5), trainable=False,
                                         name="threshold")
        # Σ real score, #real, Σ fake score, #fake over the current phase-1 epoch.
        self.score_sums = self.add_weight(shape=(4,), initializer="zeros", trainable=False, name="score_sums")
        self._pair_noise = keras.random.SeedGenerator(seed + 2)
        self.trackers.update({name: keras.metrics.Mean(name=name) for name in CHNR_METRICS})
        self.detector_optimizer: keras.optimizers.Optimizer | None = None

    def compile(self, optimizer: keras.optimizers.Optimizer, discriminator_optimizer: keras.optimizers.Optimizer,
                weight_decay: float = 0.0, discriminator_weight_decay: float = 0.0, **kwargs: Any) -> None:
        """DUCH's two optimizers plus the detector's AdamW (decoupled decay, as the reference)."""
        super().compile(optimizer, discriminator_optimizer, weight_decay, discriminator_weight_decay, **kwargs)
        c = self.chnr_config
        self.detector_optimizer = keras.optimizers.AdamW(learning_rate=c.detector_lr, beta_1=c.detector_beta_1,
                                                         beta_2=c.detector_beta_2, weight_decay=c.detector_weight_decay)
        self.detector_optimizer.build(self.detector.trainable_variables)

    def fit(self, *args: Any, callbacks: list[keras.callbacks.Callback] | None = None, **kwargs: Any) -> Any:
        """``keras.Model.fit`` with the phase switch always attached: without it CHNR would never leave phase 1."""
        from tfduch.models.phases import PhaseSwitch

        callbacks = list(callbacks or [])
        if not any(isinstance(cb, PhaseSwitch) for cb in callbacks):
            callbacks.append(PhaseSwitch(self.chnr_config.switch_epoch))
        return super().fit(*args, callbacks=callbacks, **kwargs)

    # --- the two phases ---------------------------------------------------------------------------

    def set_phase(self, phase: int) -> None:
        """Enter ``phase`` for the next epoch (called by PhaseSwitch at every epoch start; idempotent).

        Each phase-1 epoch measures the detector's mean real/fake scores afresh; in phase 2 the threshold is the
        midpoint of the last phase-1 epoch's means (restored from a checkpoint on resume, so it is the same).
        """
        if phase == META_PHASE:
            self.score_sums.assign(tf.zeros(4))
        elif phase == WEIGHTED_PHASE:
            s = self.score_sums.numpy()
            self.threshold.assign(0.5 * (s[0] / s[1] + s[2] / s[3]) if s[1] > 0 and s[3] > 0 else 0.5)
        else:
            raise ValueError(f"CHNR has phases {META_PHASE} and {WEIGHTED_PHASE}, not {phase}")
        self.phase.assign(phase)

    def clean_probability(self, image: tf.Tensor, text: tf.Tensor) -> tf.Tensor:
        """w: the detector's probability that each (image, text) row is a correctly matched pair."""
        return tf.sigmoid(self.detector(self.pair_input(image, text), training=False))

    def pair_input(self, image: tf.Tensor, text: tf.Tensor) -> tf.Tensor:
        """The detector's (and its gradient penalty's) input space: see :func:`pair_features`."""
        return pair_features(image, text, self.chnr_config.detector_normalize)

    def pair_weights(self, batch: dict[str, tf.Tensor]) -> tf.Tensor:
        """Phase 1: 1 on clean pairs, 0 elsewhere. Phase 2: the weighting scheme applied to the frozen detector's w."""
        return tf.cond(
            tf.equal(self.phase, META_PHASE),
            lambda: tf.cast(batch["clean"], tf.float32),
            lambda: self.weighting(self.clean_probability(batch["image"], batch["text"]), self.threshold))

    def detector_step(self, batch: dict[str, tf.Tensor], text_aug: tf.Tensor) -> tf.Tensor:
        """One adversarial detector update on the batch's clean pairs (every image view × text view combination)."""
        clean = batch["clean"]
        images = [tf.boolean_mask(batch["image"], clean), tf.boolean_mask(batch["image_aug"], clean)]
        texts = [tf.boolean_mask(batch["text"], clean), tf.boolean_mask(text_aug, clean)]
        partner, usable = fake_partners(tf.boolean_mask(batch["label"], clean), self._pair_noise)
        real = tf.concat([tf.boolean_mask(self.pair_input(i, t), usable) for i in images for t in texts], axis=0)
        fake = tf.concat([tf.boolean_mask(self.pair_input(i, tf.gather(t, partner)), usable)
                          for i in images for t in texts], axis=0)
        n = tf.shape(real)[0]
        variables = self.detector.trainable_variables
        with tf.GradientTape() as tape:
            d_real = self.detector(real, training=True)
            d_fake = self.detector(fake, training=True)
            eps = keras.random.uniform(tf.shape(real), seed=self._pair_noise)
            total = discriminator_loss(d_real, d_fake)
            total += self.chnr_config.gradient_penalty * gradient_penalty(self.detector, real, fake, eps)
            total = tf.where(n > 0, total, 0.0)  # a batch without two classes of clean pairs teaches nothing
        grads = tape.gradient(total, variables)

        def update() -> tf.Tensor:
            self.detector_optimizer.apply(grads, variables)
            first = n // (len(images) * len(texts))  # the (clean image, protocol caption) combination
            p_real = tf.sigmoid(self.detector(real[:first], training=False))
            p_fake = tf.sigmoid(self.detector(fake[:first], training=False))
            count = tf.cast(first, tf.float32)
            self.score_sums.assign_add(tf.stack([tf.reduce_sum(p_real), count, tf.reduce_sum(p_fake), count]))
            return tf.constant(0)

        tf.cond(n > 0, update, lambda: tf.constant(0))
        return total

    # --- objective ----------------------------------------------------------------------------------

    def weighted_quantization(self, codes: dict[str, tf.Tensor], index: tf.Tensor,
                              pair_weights: tf.Tensor) -> tf.Tensor:
        """Σ_i w_i Σ_views ‖B_i − h_i‖²: the quantization term, with each item weighted like its pair.

        Why: B_i = sign of the mean of the item's image *and* text codes, so pulling both towards it aligns the
        pair just as the contrastive term does; unweighted, it would re-align the pairs the detector distrusts.
        (The reference left it unweighted: its NT-Xent was a sum over the batch, ~500× the quantization term,
        so the unweighted pull hardly mattered there. With ``loss.ntxent_reduction: mean`` β·quantization is of
        the same size as NT-Xent and, unweighted, undid the weighting — on UCM at p = 0.5 it cut mAP@20 below
        unweighted DUCH. Weighting it is right under either reduction.) In phase 1 the weights are the
        clean-subset mask, so quantization then also sees only the trusted pairs.
        """
        mask = tf.sqrt(pair_weights)[:, None]  # quantization_loss squares the difference
        return quantization_loss(self.code_targets.lookup(index) * mask, [h * mask for h in codes.values()])

    def reference_losses(self, codes: dict[str, tf.Tensor], index: tf.Tensor,
                         pair_weights: tf.Tensor) -> dict[str, tf.Tensor]:
        """CHNR's objective: weighted inter-modal NT-Xent + β·(weighted) quantization."""
        cfg = self.loss_config
        ntxent = self.contrastive(codes["image"], codes["text"], pair_weights)
        quantization = self.weighted_quantization(codes, index, pair_weights)
        zero = tf.zeros_like(ntxent)
        return {"loss": ntxent + cfg.beta * quantization, "ntxent": ntxent, "adversarial": zero,
                "quantization": quantization, "bit_balance": zero}

    def duch_losses(self, codes: dict[str, tf.Tensor], index: tf.Tensor,
                    pair_weights: tf.Tensor) -> dict[str, tf.Tensor]:
        """DUCH's full objective with the pair weights on the inter-modal term and on quantization."""
        losses = self.hashing_losses(codes, index, pair_weights)
        quantization = self.weighted_quantization(codes, index, pair_weights)
        losses["loss"] += self.loss_config.beta * (quantization - losses["quantization"])
        losses["quantization"] = quantization
        return losses

    @property
    def trains_discriminator(self) -> bool:
        return self.chnr_config.objective == "duch" and super().trains_discriminator

    def before_update(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """In the meta-learning phase, one detector update on the batch's clean pairs."""
        missing = [k for k in ("clean", "label") if k not in batch]
        if missing:
            raise ValueError(f"CHNR batches need {missing}: build TrainingFeatures with clean_mask and labels "
                             "(tfduch.pipeline.training_features does when noise is configured)")
        in_meta = tf.equal(self.phase, META_PHASE)
        return {"detector": tf.cond(in_meta, lambda: self.detector_step(batch, batch["text_aug"]),
                                    lambda: tf.constant(0.0))}

    def objective(self, codes: dict[str, tf.Tensor], batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        weights = tf.stop_gradient(self.pair_weights(batch))
        if self.chnr_config.objective == "duch":
            losses = self.duch_losses(codes, batch["index"], weights)
        else:
            losses = self.reference_losses(codes, batch["index"], weights)
        return {**losses, "pair_weight": tf.reduce_mean(weights)}

    def after_update(self, batch: dict[str, tf.Tensor], logged: dict[str, tf.Tensor]) -> None:
        s = self.score_sums
        self.trackers["real_score"].update_state(s[0] / tf.maximum(s[1], 1.0))
        self.trackers["fake_score"].update_state(s[2] / tf.maximum(s[3], 1.0))

    # --- inspection ---------------------------------------------------------------------------------

    def score_pairs(self, image: np.ndarray, text: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """w for aligned rows of image and text features (``[N]`` float32), e.g. to audit a training set."""
        image, text = np.asarray(image, np.float32), np.asarray(text, np.float32)
        out = [np.asarray(self._score(tf.constant(image[i : i + batch_size]), tf.constant(text[i : i + batch_size])))
               for i in range(0, len(image), batch_size)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    @tf.function(reduce_retracing=True)
    def _score(self, image: tf.Tensor, text: tf.Tensor) -> tf.Tensor:
        return self.clean_probability(image, text)

    def weights_for(self, w: np.ndarray) -> np.ndarray:
        """The phase-2 pair weights the configured scheme gives to detector probabilities ``w``."""
        return np.asarray(self.weighting(tf.constant(w, tf.float32), self.threshold))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "chnr": dataclasses.asdict(self.chnr_config)}
