"""The one registry of methods: an explicit list, not registration as an import side effect.

A new method is a module in this package declaring ``METHOD`` (see :mod:`tfduch.methods.base`), a line
below and a ``configs/<name>.yaml``.
"""

from __future__ import annotations

from tfduch.errors import ConfigError
from tfduch.methods import cach, cca_itq, chnr, djsrh, duch, jdsh, ridge_pca_itq
from tfduch.methods.base import ClassicalMethod, LearnedMethod, Variant

__all__ = ["CLASSICAL", "LEARNED", "classical_method", "display_name", "learned_method", "variants"]

#: Methods trained by the one trainer, in table order.
LEARNED: dict[str, LearnedMethod] = {m.name: m for m in (duch.METHOD, chnr.METHOD, cach.METHOD, djsrh.METHOD,
                                                          jdsh.METHOD)}
#: Baselines fitted in closed form on the same features.
CLASSICAL: dict[str, ClassicalMethod] = {m.name: m for m in (cca_itq.METHOD, ridge_pca_itq.METHOD)}


def learned_method(name: str) -> LearnedMethod:
    """The learned method ``name`` (``model.method``), or a clear error naming the known ones."""
    method = LEARNED.get(name)
    if method is None:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(sorted(LEARNED))}")
    return method


def classical_method(name: str) -> ClassicalMethod:
    method = CLASSICAL.get(name)
    if method is None:
        raise ConfigError(f"unknown classical method {name!r}; known: {', '.join(sorted(CLASSICAL))}")
    return method


def variants() -> dict[str, tuple[str, Variant]]:
    """Every declared variant: name → (the method it trains, its overrides and display name)."""
    return {name: (m.name, v) for m in LEARNED.values() for name, v in m.variants.items()}


def display_name(name: str) -> str:
    """Table name of a method or variant (names that are neither come back unchanged)."""
    found = variants().get(name)
    if found is not None:
        method, variant = found
        return variant.display or f"{LEARNED[method].display} − {name.removeprefix(method + '-').replace('-', ' ')}"
    if name in LEARNED:
        return LEARNED[name].display
    if name in CLASSICAL:
        return CLASSICAL[name].display
    return name
