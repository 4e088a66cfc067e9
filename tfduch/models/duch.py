"""DUCH: Deep Unsupervised Contrastive Hashing (Mikriukov, Ravanbakhsh, Demir 2022).

One training step updates two networks, as in a GAN:
1. the code discriminator learns to tell text codes (real) from image codes (fake), with a gradient penalty;
2. the hashing heads minimise
   NT-Xent(inter + intra) + α·adversarial + β·quantization + γ·bit balance.

Batches are dicts of frozen features: ``index`` (position in the training set), ``image`` (clean view),
``image_aug``, ``text`` (the protocol caption) and ``text_aug`` (a second text view).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from tfduch.config import LossConfig
from tfduch.losses import (
    bit_balance_loss,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    nt_xent,
    quantization_loss,
)
from tfduch.models.base import CrossModalHasher
from tfduch.models.heads import build_discriminator
from tfduch.models.replicas import apply_gradients, gather_replicas, step_logs
from tfduch.models.targets import CodeTargets

LOSS_NAMES = ("loss", "ntxent", "adversarial", "quantization", "bit_balance", "discriminator")


class DUCH(CrossModalHasher):
    """Hashing heads + code discriminator + binary targets, trained with a custom ``train_step``."""

    distributable = True  # train_step gathers codes across replicas (see tfduch.training.distribute)

    def __init__(self, image_dim: int, text_dim: int, bits: int, num_train: int, hidden_dim: int = 4096,
                 loss: dict[str, Any] | LossConfig | None = None, seed: int = 0, **kwargs: Any):
        super().__init__(image_dim, text_dim, bits, hidden_dim, **kwargs)
        self.loss_config = loss if isinstance(loss, LossConfig) else LossConfig(**(loss or {}))
        self.num_train = int(num_train)
        self.seed = int(seed)
        self.discriminator = build_discriminator(self.bits)
        self.code_targets = CodeTargets(self.num_train, self.bits, seed=seed, name="code_targets")
        self._noise = keras.random.SeedGenerator(seed + 1)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_NAMES}
        self.weight_decay = 0.0
        self.discriminator_weight_decay = 0.0
        self.discriminator_optimizer: keras.optimizers.Optimizer | None = None

    def compile(self, optimizer: keras.optimizers.Optimizer, discriminator_optimizer: keras.optimizers.Optimizer,
                weight_decay: float = 0.0, discriminator_weight_decay: float = 0.0, **kwargs: Any) -> None:
        """Two optimizers; weight decay is coupled L2 (added to the gradients), as in the reference."""
        super().compile(optimizer=optimizer, **kwargs)
        self.discriminator_optimizer = discriminator_optimizer
        self.weight_decay = float(weight_decay)
        self.discriminator_weight_decay = float(discriminator_weight_decay)

    # --- the two updates -------------------------------------------------------------------------

    def build_state(self) -> None:
        """The heads and the hashing optimizer (base), then the code discriminator and its optimizer."""
        self({"image": tf.zeros((2, self.image_dim)), "text": tf.zeros((2, self.text_dim))})
        self.discriminator(tf.zeros((2, self.bits)))
        self.optimizer.build(self.hashing_variables)
        if self.discriminator_optimizer is not None:
            self.discriminator_optimizer.build(self.discriminator.trainable_variables)

    def discriminator_step(self, image_codes: list[tf.Tensor], text_codes: list[tf.Tensor]) -> tf.Tensor:
        """One discriminator update on (text view i = real, image view i = fake) pairs of detached codes."""
        cfg = self.loss_config
        d_vars = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            total = 0.0
            for fake, real in zip(image_codes, text_codes, strict=True):
                fake, real = tf.stop_gradient(fake), tf.stop_gradient(real)
                d_real = self.discriminator(real, training=True)
                d_fake = self.discriminator(fake, training=True)
                eps = keras.random.uniform(tf.shape(real), seed=self._noise)
                total += discriminator_loss(d_real, d_fake)
                total += cfg.gradient_penalty * gradient_penalty(self.discriminator, real, fake, eps)
        apply_gradients(self.discriminator_optimizer, tape.gradient(total, d_vars), d_vars,
                        self.discriminator_weight_decay)
        return total

    def contrastive(self, a: tf.Tensor, b: tf.Tensor, pair_weights: tf.Tensor | None = None) -> tf.Tensor:
        """NT-Xent between paired rows of two code batches, with the configured temperature and reduction."""
        cfg = self.loss_config
        return nt_xent(a, b, cfg.temperature, pair_weights, reduction=cfg.ntxent_reduction)

    def hashing_losses(self, codes: dict[str, tf.Tensor], index: tf.Tensor,
                       pair_weights: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """Every term of the hashing objective, unweighted, plus the weighted total under ``loss``."""
        cfg = self.loss_config
        w_inter, w_img, w_txt = cfg.contrastive_weights
        h_i1, h_i2, h_t1, h_t2 = codes["image"], codes["image_aug"], codes["text"], codes["text_aug"]
        ntxent = (
            w_inter * self.contrastive(h_i1, h_t1, pair_weights)
            + w_img * self.contrastive(h_i1, h_i2)
            + w_txt * self.contrastive(h_t1, h_t2)
        )
        if cfg.alpha:
            fooling = [h_i1, h_i2] if cfg.adversarial_branch == "image" else [h_t1, h_t2]
            adversarial = generator_loss([self.discriminator(h, training=True) for h in fooling])
        else:  # α = 0: the discriminator cannot move the heads, so it is not run at all (no GAN cost)
            adversarial = tf.constant(0.0)
        quantization = quantization_loss(self.code_targets.lookup(index), [h_i1, h_i2, h_t1, h_t2])
        balance = bit_balance_loss([h_i1, h_i2, h_t1, h_t2], cfg.bit_balance)
        total = ntxent + cfg.alpha * adversarial + cfg.beta * quantization + cfg.gamma * balance
        return {"loss": total, "ntxent": ntxent, "adversarial": adversarial, "quantization": quantization,
                "bit_balance": balance}

    def pair_weights(self, batch: dict[str, tf.Tensor]) -> tf.Tensor | None:
        """Per-pair weights of the inter-modal term; DUCH trusts every pair. CHNR overrides this."""
        return None

    # --- hooks a method variant overrides (CHNR, CACH), so the update itself is written once -------

    @property
    def trains_discriminator(self) -> bool:
        """Whether each step also updates the code discriminator: only where its term is weighted (α > 0).

        Why: with α = 0 the discriminator has no path to the heads, and its step (two forward passes, a gradient
        penalty's double backward and an Adam update per view pair) was pure cost.
        """
        return bool(self.loss_config.alpha)

    def objective(self, codes: dict[str, tf.Tensor], batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The hashing heads' loss terms; ``loss`` is the one minimised, the others are logged."""
        return self.hashing_losses(codes, batch["index"], self.pair_weights(batch))

    def before_update(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Work done before the hashing update (e.g. CHNR's detector step); returns extra values to log."""
        return {}

    def after_update(self, batch: dict[str, tf.Tensor], logged: dict[str, tf.Tensor]) -> None:
        """Work done after the hashing update (e.g. extra metrics)."""

    # --- one step ------------------------------------------------------------------------------------

    def view_codes(self, batch: dict[str, tf.Tensor], training: bool = True) -> dict[str, tf.Tensor]:
        """Continuous codes of the four views: image, augmented image, caption, second text view."""
        return {
            "image": self.image_head(batch["image"], training=training),
            "image_aug": self.image_head(batch["image_aug"], training=training),
            "text": self.text_head(batch["text"], training=training),
            "text_aug": self.text_head(batch["text_aug"], training=training),
        }

    def train_step(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """One step on the global batch: under a ``tf.distribute`` strategy each replica encodes its share, and
        everything after the heads sees the gathered codes, so losses equal single-worker training's."""
        if self.loss_config.text_aug == "same":  # the reference's behaviour: the second text view is the caption
            batch = {**batch, "text_aug": batch["text"]}
        local, batch = batch, gather_replicas(batch)
        logged = self.before_update(batch)
        with tf.GradientTape() as tape:
            codes = gather_replicas(self.view_codes(local))
            d_loss = tf.constant(0.0)
            if self.trains_discriminator:
                with tape.stop_recording():
                    d_loss = self.discriminator_step([codes["image"], codes["image_aug"]],
                                                     [codes["text"], codes["text_aug"]])
            losses = self.objective(codes, batch)
        variables = self.hashing_variables
        apply_gradients(self.optimizer, tape.gradient(losses["loss"], variables), variables, self.weight_decay)
        self.code_targets.record(batch["index"], codes)
        logged = {**losses, "discriminator": d_loss, **logged}
        for name, value in logged.items():
            self.trackers[name].update_state(value)
        self.after_update(batch, logged)
        return step_logs({name: tracker.result() for name, tracker in self.trackers.items()})

    def get_config(self) -> dict[str, Any]:
        import dataclasses

        return {**super().get_config(), "num_train": self.num_train, "seed": self.seed,
                "loss": dataclasses.asdict(self.loss_config)}

