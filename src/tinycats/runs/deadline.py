"""AttemptDeadline: end training at a step boundary early enough for an attempt to end in time.

A Modal attempt has a timeout; training still running then is killed and loses the steps since
its last checkpoint. This callback ends ``fit`` cleanly before, so the checkpoint callback writes
``last.ckpt`` at the step reached. What follows the last step (a validation, a sample grid, the
checkpoint write and commit) takes time that depends on the model, the data and the GPU, so it is
measured: the longest stretch between two step ends seen so far holds all of these (the first
stretch after the start is left out: it holds the start-up). Training stops after the first step
from which twice that stretch, and the time the newest checkpoint took to write and commit in the
background, would pass the end. Lightning's own ``max_time`` counts the whole
run across resumes (its Timer is saved in checkpoints); this counts one process.
"""

import time
from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

RESERVE_STRETCHES = 2  # what may follow the last step, in units of the longest stretch seen


class AttemptDeadline(Callback):
    """Ask the trainer to stop once what may follow a step would not end before ``end_at``."""

    def __init__(self, end_at: float, clock: Callable[[], float] = time.time) -> None:
        self.end_at, self.clock = end_at, clock
        self.reached = False
        self.longest_stretch = 0.0
        self._last_step_end: float | None = None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        now = self.clock()
        if self._last_step_end is not None:
            self.longest_stretch = max(self.longest_stretch, now - self._last_step_end)
        self._last_step_end = now
        # The stop's own last.ckpt is written and committed after the stretch: the writer
        # measured how long its newest save took.
        write = float(getattr(trainer.strategy.checkpoint_io, "write_seconds", 0.0))
        reserve = RESERVE_STRETCHES * self.longest_stretch + write
        # Rank 0's clock decides for every rank, so all of them stop after the same step.
        past = trainer.strategy.broadcast(now + reserve >= self.end_at)
        if past and not _last_step(trainer, batch_idx):
            self.reached = True
            trainer.should_stop = True


def _last_step(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether training ends after this step anyway (max_steps, or the last batch of max_epochs)."""
    loop = trainer.fit_loop
    if loop.max_steps != -1 and trainer.global_step >= loop.max_steps:
        return True
    last_epoch = loop.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= loop.max_epochs
    return last_epoch and batch_idx + 1 >= trainer.num_training_batches
