"""Re-export of :class:`tfduch.models.phases.PhaseSwitch` (it lives with the phased models that need it)."""

from tfduch.models.phases import PhaseSwitch

__all__ = ["PhaseSwitch"]
