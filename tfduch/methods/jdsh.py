"""JDSH (Liu et al., SIGIR 2020): DJSRH's heads and optimizer with the distribution-based similarity decision."""

from __future__ import annotations

from tfduch.methods.base import LearnedMethod, single_optimizer
from tfduch.methods.djsrh import similarity_factory
from tfduch.models.jdsh import JDSH, JDSHParams

METHOD = LearnedMethod(
    name="jdsh", display="JDSH", build=similarity_factory(JDSH, JDSHParams), optimizers=single_optimizer,
    # Published UCM mAP@20 (as reported in the DUCH paper).
    published={"i2t": {16: 0.462, 32: 0.751, 64: 0.820, 128: 0.829},
               "t2i": {16: 0.509, 32: 0.794, 64: 0.884, 128: 0.904}},
)
