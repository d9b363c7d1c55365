"""PhaseTrace: a stateless callback the kill harness adds to a run to see where a kill lands.

It appends one line per phase change (``<phase> <global_step>``) to the file named by
``$TINYCATS_PHASE_TRACE`` (rank 0 only). The harness reads the last line at the moment it
sends a signal; together with the files it sees (a ``*.partial`` checkpoint, a missing sample
grid) that tells, approximately, what the process was doing. It holds no state, so the
checkpoints of a traced run are those of an untraced one.
"""

import os

import lightning as L

TRACE_ENV = "TINYCATS_PHASE_TRACE"


class PhaseTrace(L.Callback):
    """Record the training phase (restore, step, validation, step end, checkpoint, finish)."""

    def _mark(self, trainer: L.Trainer, phase: str) -> None:
        path = os.environ.get(TRACE_ENV)
        if path and trainer.is_global_zero:
            with open(path, "a") as trace:
                trace.write(f"{phase} {trainer.global_step}\n")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(trainer, "restore")

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        self._mark(trainer, "step")

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self._mark(trainer, "step-end")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(trainer, "validation")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(trainer, "step-end")

    def on_save_checkpoint(self, trainer: L.Trainer, *args) -> None:
        self._mark(trainer, "checkpoint")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(trainer, "finish")
