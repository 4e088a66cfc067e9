"""Each DUCH/CHNR/CACH loss term in its own named function."""

from tfduch.losses.adversarial import discriminator_loss, generator_loss, gradient_penalty
from tfduch.losses.bit_balance import bit_balance_loss
from tfduch.losses.contrastive import nt_xent
from tfduch.losses.quantization import binary_targets, quantization_loss

__all__ = [
    "binary_targets",
    "bit_balance_loss",
    "discriminator_loss",
    "generator_loss",
    "gradient_penalty",
    "nt_xent",
    "quantization_loss",
]
