"""Ridge + PCA + ITQ: text features regressed onto the image space (:class:`tfduch.baselines.RidgePCAITQ`)."""

from __future__ import annotations

from typing import Any

from tfduch.baselines import RidgePCAITQ
from tfduch.methods.base import ClassicalMethod


def fit(bits: int, seed: int, image: Any, text: Any) -> RidgePCAITQ:
    return RidgePCAITQ(bits, seed=seed).fit(image, text)


METHOD = ClassicalMethod(name="ridge-itq", display="Ridge+PCA+ITQ", fit=fit)
