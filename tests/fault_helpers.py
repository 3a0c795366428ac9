"""Faults injected into real training processes by the fault tests (tests/test_faults.py)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

from pytorch_lightning.callbacks import Callback


class SignalAtEpoch(Callback):
    """Send `signal` (INT: Ctrl-C, TERM: kill, KILL: kill -9) to this very process at the end of
    epoch `epoch` (from 1), once: the marker file says it was sent, so the resumed run goes on."""

    def __init__(self, epoch: int, marker: str, signal: str = "INT"):
        self.epoch, self.marker, self.signal = epoch, Path(marker), signal

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 == self.epoch and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), getattr(signal, f"SIG{self.signal}"))
