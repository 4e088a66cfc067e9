"""Classical unsupervised cross-modal hashing baselines (CCA+ITQ, ridge+PCA+ITQ) on frozen features."""

from tfduch.baselines.classical import (
    CCAITQ,
    LinearHasher,
    RidgePCAITQ,
    itq,
    quantization_error,
    sign_codes,
)

__all__ = ["CCAITQ", "LinearHasher", "RidgePCAITQ", "itq", "quantization_error", "sign_codes"]
