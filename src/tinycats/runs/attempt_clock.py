"""AttemptClock: times where an attempt's seconds go, keeps its ledger record, and estimates
the time (and on Modal the money) the run still needs.

Each moment between two hooks is put in one bucket: start-up before the first step, training
inside steps, validation, waiting for checkpoint saves (the checkpoint writer's own count), and
the rest between steps (sample grids, logging). On rank 0 the record is kept on disk by a
``RecordKeeper``, which beats through data preparation, validation and saves too, so an attempt
killed without a word has paid up to its last heartbeat (plans/0018-ledger.md).
"""

import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tinycats.errors import TinyCatsError
from tinycats.runs import ledger, ledger_keeper
from tinycats.runs.deadline import AttemptDeadline

log = logging.getLogger("tinycats")

FIRST_ESTIMATE_AFTER_STEPS = 10


class AttemptClock(L.Callback):
    """Account for one attempt's wall time in the run's ledger, and log estimates of what is left."""

    def __init__(self, run_dir: Path, estimate_every_s: float = 300.0) -> None:
        price = os.environ.get(ledger.PRICE_ENV, "")
        started, gpu = ledger_keeper.attempt_started(), os.environ.get(ledger.GPU_ENV, "")
        usd_per_hour = float(price) if price else None
        if rank_zero_only.rank == 0:  # set from the environment before any trainer exists
            self.keeper = ledger_keeper.open_in_run(run_dir, started, gpu, usd_per_hour)
        else:
            record = ledger.Attempt(started, time.time(), gpu=gpu, usd_per_hour=usd_per_hour)
            self.keeper = ledger_keeper.RecordKeeper(record, None)
        self.run_dir = run_dir
        self.estimate_every_s = estimate_every_s
        self._mark = started  # the moment up to which every second is accounted
        self._stall_seen = 0.0
        self._estimated = 0.0
        self._stepped = self._in_step = False

    @property
    def record(self) -> ledger.Attempt:
        return self.keeper.record

    # ## The buckets

    def _spend(self, trainer: L.Trainer, bucket: str) -> None:
        with self.keeper.lock:
            now = time.time()
            elapsed, self._mark = now - self._mark, now
            stall = _stall_s(trainer) - self._stall_seen
            self._stall_seen += stall
            self.record.checkpoint_stall_s += stall
            if bucket != "training_s":
                elapsed -= stall  # the saves happened in this gap, not in a step
            if not self._stepped and bucket != "training_s":
                bucket = "startup_s"  # everything before the first step
            setattr(self.record, bucket, getattr(self.record, bucket) + max(0.0, elapsed))
            self.record.updated = now

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with self.keeper.lock:
            self.record.resumed_from = self.record.reached = trainer.global_step
            total = trainer.estimated_stepping_batches  # safe now: the loader is set up, restored
            self.record.total_steps = int(total) if total != float("inf") else None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._spend(trainer, "between_steps_s")
        self._in_step = True

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._step_ended(trainer)
        self._maybe_estimate(trainer)

    def _step_ended(self, trainer: L.Trainer) -> None:
        if self._in_step:
            self._spend(trainer, "training_s")
            self._in_step, self._stepped = False, True
            with self.keeper.lock:
                self.record.reached = trainer.global_step

    def on_save_checkpoint(self, trainer: L.Trainer, *args: Any) -> None:
        # A later attempt resumes from one of these: the training after it is what it redoes.
        self._step_ended(trainer)  # a save at a step's end may come before this callback's turn
        with self.keeper.lock:
            saves = self.record.saves
            if not saves or saves[-1][0] != trainer.global_step:
                saves.append([trainer.global_step, round(self.record.training_s, 3)])
            del saves[: -ledger.TRACKED_SAVES]
        self.keeper.write()  # on disk before the checkpoint file can be: a kill may come next

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._spend(trainer, "between_steps_s")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._spend(trainer, "validation_s")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stopped_early = any(
            isinstance(callback, AttemptDeadline) and callback.reached
            for callback in trainer.callbacks
        )
        self._end(trainer, "continue" if stopped_early else "finished")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._end(trainer, _outcome_of(exception))

    # ## The record

    def _end(self, trainer: L.Trainer, outcome: str) -> None:
        if self.record.ended is None:
            self._spend(trainer, "between_steps_s")
            self.close(outcome)
            if rank_zero_only.rank == 0:
                figures = ledger.read_ledger(self.run_dir).summary()
                _log_scalars(trainer, figures)
                log.info("This run so far: %s.", ledger.describe(figures))

    def close(self, outcome: str) -> None:
        """End the record with ``outcome``; the attempt stays paid until its process exits."""
        self.keeper.close(outcome)

    # ## The estimate

    def _maybe_estimate(self, trainer: L.Trainer) -> None:
        steps, total = self.record.steps, self.record.total_steps
        due = time.time() - self._estimated >= self.estimate_every_s
        if not (trainer.is_global_zero and total and steps >= FIRST_ESTIMATE_AFTER_STEPS and due):
            return
        self._estimated = time.time()
        # Wall time per step since the first, with validation, grids and saves: what is left costs that.
        per_step = (self.record.paid_s - self.record.startup_s) / steps
        left_s = max(0, total - self.record.reached) * per_step
        message = (
            f"Step {self.record.reached} of {total}: {steps / self.record.training_s:.2f} steps/s "
            f"in steps, {1 / per_step:.2f} overall; about {ledger.format_duration(left_s)} left"
        )
        if self.record.usd_per_hour is not None:
            earlier = ledger.read_ledger(self.run_dir).attempts
            paid_s = self.record.paid_s + left_s
            paid_s += sum(a.paid_s for a in earlier if a.started != self.record.started)
            message += f"; the whole run ≈ ${paid_s / 3600 * self.record.usd_per_hour:.2f}"
        log.info("%s.", message)


def _outcome_of(exception: BaseException) -> str:
    if isinstance(exception, SIGTERMException | KeyboardInterrupt):
        return "interrupted"
    return "refused" if isinstance(exception, TinyCatsError) else "failed"


def _stall_s(trainer: L.Trainer) -> float:
    """Seconds the training thread has waited for checkpoint saves, as the writer counts them."""
    return float(getattr(trainer.strategy.checkpoint_io, "stall_seconds", 0.0))


def _log_scalars(trainer: L.Trainer, figures: dict[str, Any]) -> None:
    """The run's ledger figures in TensorBoard, at the step this attempt ended."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            for key in ("goodput", "lost_steps", "paid_s", "cost_usd"):
                if figures[key] is not None:
                    logger.experiment.add_scalar(f"ledger/{key}", figures[key], trainer.global_step)
            logger.experiment.flush()
