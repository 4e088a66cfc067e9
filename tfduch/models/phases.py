"""Multi-phase training: a callback that tells the model which phase each epoch belongs to.

The model keeps its phase in a variable its ``train_step`` reads (``tf.cond`` on it), so switching costs
no retracing; the callback only calls ``model.set_phase(phase)`` at the start of every epoch. Because
the phase follows from the epoch number alone, a run resumed from a checkpoint lands in the right
phase.
"""

from __future__ import annotations

import keras


class PhaseSwitch(keras.callbacks.Callback):
    """Phase ``first`` for epochs ``[0, switch_epoch)``, phase ``first + 1`` from ``switch_epoch`` on."""

    def __init__(self, switch_epoch: int, first: int = 1):
        super().__init__()
        if switch_epoch < 0:
            raise ValueError(f"switch_epoch must be >= 0, got {switch_epoch}")
        self.switch_epoch, self.first = int(switch_epoch), int(first)

    def phase_at(self, epoch: int) -> int:
        return self.first + int(epoch >= self.switch_epoch)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        set_phase = getattr(self.model, "set_phase", None)
        if set_phase is None:
            raise TypeError(f"{type(self.model).__name__} has no set_phase(phase): PhaseSwitch cannot drive it")
        set_phase(self.phase_at(epoch))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["phase"] = self.phase_at(epoch)
