"""Callbacks that stop training with a signal at a given step, as a preemption would."""

import os
import signal

import lightning as L


class StopAtStep(L.Callback):
    """Send this process SIGTERM once ``step`` optimizer steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class InterruptAtStep(L.Callback):
    """Send this process SIGINT (Modal's preemption signal) once ``step`` steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)
