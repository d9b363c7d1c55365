"""Callbacks that stop training with a signal at a given step, as a preemption would."""

import os
import signal

import lightning as L


class SignalAtStep(L.Callback):
    """Send this process ``signum`` once ``step`` optimizer steps are done."""

    signum = signal.SIGTERM

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class StopAtStep(SignalAtStep):
    """SIGTERM once ``step`` optimizer steps are done."""


class InterruptAtStep(SignalAtStep):
    """SIGINT (Modal's preemption signal) once ``step`` optimizer steps are done."""

    signum = signal.SIGINT
