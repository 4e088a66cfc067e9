"""CCA + ITQ: the classical unsupervised cross-modal hashing baseline (:class:`tfduch.baselines.CCAITQ`)."""

from __future__ import annotations

from typing import Any

from tfduch.baselines import CCAITQ
from tfduch.methods.base import ClassicalMethod


def fit(bits: int, seed: int, image: Any, text: Any) -> CCAITQ:
    return CCAITQ(bits, seed=seed).fit(image, text)


METHOD = ClassicalMethod(name="cca-itq", display="CCA+ITQ", fit=fit)
