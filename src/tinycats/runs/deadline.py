"""AttemptDeadline: stop training at a step boundary once a wall-clock time has passed.

A Modal attempt has a timeout; training that is still running then is killed and loses the
steps since its last checkpoint. This callback ends ``fit`` cleanly a little earlier instead, so
the checkpoint callback writes ``last.ckpt`` at the step reached. Lightning's own ``max_time``
counts the whole run across resumes (its Timer is saved in checkpoints); this counts one process.
"""

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class AttemptDeadline(Callback):
    """Ask the trainer to stop after the first step that ends past ``stop_at`` (Unix seconds)."""

    def __init__(self, stop_at: float) -> None:
        self.stop_at = stop_at
        self.reached = False

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # Rank 0's clock decides for every rank, so all of them stop after the same step.
        past = trainer.strategy.broadcast(time.time() >= self.stop_at)
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
