"""AttemptClock: times where an attempt's seconds go, keeps its ledger record, and estimates
the time (and on Modal the money) the run still needs.

Each moment between two hooks is put in one bucket: start-up before the first step, training
inside steps, validation, waiting for checkpoint saves (the checkpoint writer's own count), and
the rest between steps (sample grids, logging). On rank 0 a heartbeat thread rewrites the
attempt's record every ``ledger.HEARTBEAT_S`` seconds, through data preparation, validation and
saves too, so an attempt killed without a word has paid up to its last heartbeat
(plans/0018-ledger.md).
"""

import atexit
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tinycats.errors import TinyCatsError
from tinycats.runs import ledger
from tinycats.runs.deadline import AttemptDeadline
from tinycats.runs.run_dir import LEDGER

log = logging.getLogger("tinycats")

FIRST_ESTIMATE_AFTER_STEPS = 10


class AttemptClock(L.Callback):
    """Account for one attempt's wall time in the run's ledger, and log estimates of what is left."""

    def __init__(self, run_dir: Path, estimate_every_s: float = 300.0) -> None:
        price = os.environ.get(ledger.PRICE_ENV, "")
        self.run_dir = run_dir
        self.record = ledger.Attempt(
            started=float(os.environ.get(ledger.STARTED_ENV) or process_started()),
            updated=time.time(),
            gpu=os.environ.get(ledger.GPU_ENV, ""),
            usd_per_hour=float(price) if price else None,
        )
        self.estimate_every_s = estimate_every_s
        self._mark = self.record.started  # the moment up to which every second is accounted
        self._stall_seen = 0.0
        self._estimated = 0.0
        self._stepped = False
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        if rank_zero_only.rank == 0:  # set from the environment before any trainer exists
            threading.Thread(target=self._beat, name="ledger-heartbeat", daemon=True).start()
            # Registered before the loggers and loaders register theirs, so it runs after them.
            atexit.register(self._paid_until_exit)

    # ## The buckets

    def _spend(self, trainer: L.Trainer, bucket: str) -> None:
        with self._lock:
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
        with self._lock:
            self.record.resumed_from = self.record.reached = trainer.global_step
            total = trainer.estimated_stepping_batches  # safe now: the loader is set up, restored
            self.record.total_steps = int(total) if total != float("inf") else None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._spend(trainer, "between_steps_s")

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._spend(trainer, "training_s")
        self._stepped = True
        with self._lock:
            if trainer.global_step != self.record.reached:  # an optimizer step, not accumulation
                self.record.reached = trainer.global_step
                tracked = self.record.recent_training_s
                tracked.append(round(self.record.training_s, 3))
                del tracked[: -ledger.TRACKED_STEPS]
        self._maybe_estimate(trainer)

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
        self._stopped.set()
        with self._lock:
            self.record.ended, self.record.outcome = time.time(), outcome
        if rank_zero_only.rank == 0:
            self._write()

    def _beat(self) -> None:
        while True:
            try:
                self._write(now=True)
            except OSError as err:  # the folder is gone or full: the next beat tries again
                log.debug("Ledger heartbeat not written: %s", err)
            if self._stopped.wait(ledger.HEARTBEAT_S):
                return

    def _write(self, now: bool = False) -> None:
        with self._lock:
            if now and self.record.ended is None:
                self.record.updated = time.time()
            ledger.write_attempt(self.run_dir, self.record)

    def _paid_until_exit(self) -> None:
        """An attempt that ended is paid until its process exits (the summary, the loggers' and
        loaders' own exit work), not its last step; one that did not end was paid to its last beat."""
        # The ledger folder may be gone by then: a test's temporary run.
        if self.record.ended is not None and (self.run_dir / LEDGER).is_dir():
            with self._lock:
                self.record.ended = self.record.updated = time.time()
            self._write()

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


def process_started() -> float:
    """Unix time this process started (Linux ``/proc``; elsewhere: now), to 10 ms."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


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
