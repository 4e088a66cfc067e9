"""Hashing methods: one module per method declaring everything about it, and one explicit registry.

``duch``, ``chnr``, ``cach``, ``djsrh``, ``jdsh`` (trained by :mod:`tfduch.training`) and the classical
baselines ``cca_itq``, ``ridge_pca_itq``; :mod:`tfduch.methods.registry` lists them.
"""

from tfduch.methods.base import ClassicalMethod, LearnedMethod, ModelShape, Variant, method_params
from tfduch.methods.registry import CLASSICAL, LEARNED, classical_method, display_name, learned_method, variants

__all__ = ["CLASSICAL", "LEARNED", "ClassicalMethod", "LearnedMethod", "ModelShape", "Variant", "classical_method",
           "display_name", "learned_method", "method_params", "variants"]
