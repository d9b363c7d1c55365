"""VolumeCheckpoint: Lightning's ModelCheckpoint, made safe for a network volume and preemption.

- Files are written by ``VolumeCheckpointIO`` (runs/checkpoint_io.py), the strategy's
  ``CheckpointIO``: in the background, renamed into place whole, checksummed, then committed
  (the Modal volume's commit, a no-op locally); prunes follow the commit.
- ``last.ckpt`` is the state an attempt stopped at: written at a signal stop, the attempt
  deadline and the end of training, never beside each step checkpoint (that was a second full
  write of every checkpoint). Where a step file of that step exists, last.ckpt is a hard link
  to it (a copy where links fail). Once this attempt writes a step file, an older last.ckpt is
  removed: between stops the newest step file is the newest state.
- SIGINT, Modal's preemption signal, is handled like SIGTERM: Lightning stops at the next batch
  boundary and this callback writes ``last.ckpt`` there, so the resumed run is exact. A stop
  and the end of training wait for the save in flight.
- The cadence is every N steps, every M minutes, or chosen from the measured save stall and
  the expected time between preemptions (``runs/cadence.py``).
"""

import datetime as dt
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tinycats.atomic import no_commit
from tinycats.errors import TinyCatsError
from tinycats.runs.cadence import young_daly_seconds
from tinycats.runs.checkpoint_io import VolumeCheckpointIO
from tinycats.runs.run_dir import BEST, LAST, STEP_FILENAME

log = logging.getLogger(__name__)

# Set in a checkpoint saved before or during a validation that is due: it is run on resume.
VALIDATION_PENDING = "tinycats_validation_pending"


class VolumeCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint with background writes, a commit hook and a clean stop on SIGINT/SIGTERM.

    ``save_last`` means last.ckpt at each stop (see above); ``mean_minutes_between_preemptions``
    (0: off) switches, after the first save, to the Young–Daly interval from its measured stall.
    """

    def __init__(
        self,
        *args: Any,
        commit: Callable[[], None] = no_commit,
        save_last: bool = False,
        mean_minutes_between_preemptions: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, enable_version_counter=False, save_last=False, **kwargs)
        self.commit = commit
        self.keeps_last = save_last
        self.mean_minutes_between_preemptions = mean_minutes_between_preemptions
        self._previous_sigint: Any = None
        self._stale_last = False  # a last.ckpt older than the step files this attempt writes
        self._last_saved_step = -1  # the step of the last.ckpt this process wrote

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if not isinstance(trainer.strategy.checkpoint_io, VolumeCheckpointIO):
            trainer.strategy.checkpoint_io = VolumeCheckpointIO(self.commit)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._stale_last = self.keeps_last and (Path(self.dirpath or ".") / LAST).exists()
        if self.keeps_last and _in_main_thread():
            # Forward SIGINT to SIGTERM, which Lightning turns into a stop at a batch boundary.
            self._previous_sigint = signal.signal(
                signal.SIGINT, lambda *_: os.kill(os.getpid(), signal.SIGTERM)
            )

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[VALIDATION_PENDING] = _validation_pending(trainer)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        resume_where_the_run_stopped(checkpoint)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # Lightning saves by global step, which stays put between the batches of an accumulated
        # step; right after a resume it would save that step again mid-accumulation, without the
        # gradients summed so far.
        if _between_accumulated_batches(trainer):
            return
        newest, stall = self.best_model_path, _writer(trainer).stall_seconds
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.best_model_path == newest:
            return  # nothing saved at this step
        if self._stale_last:
            trainer.strategy.remove_checkpoint(Path(self.dirpath or ".") / LAST)
            self._stale_last = False
        if self.mean_minutes_between_preemptions:
            self._choose_interval(_writer(trainer).stall_seconds - stall)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Only a signal stops at a known batch boundary; after any other error the state may be
        # half-updated, and the last periodic checkpoint is the safer place to resume from.
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            _finish_saves_after(exception, _writer(trainer))
            return
        if _between_accumulated_batches(trainer):
            # The gradients summed so far are in no checkpoint: resuming here would step with
            # part of them. The newest checkpoint on disk is an exact place to continue from.
            log.warning(
                "Stopped between the batches of one accumulated step: not saving; the "
                "run continues from its newest checkpoint."
            )
        else:
            self._save_last_if_unsaved(trainer)
        _writer(trainer).wait()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Steps that are not a multiple of every_n_train_steps would otherwise never be saved.
        self._save_last_if_unsaved(trainer)
        _writer(trainer).wait()

    def _save_last_if_unsaved(self, trainer: L.Trainer) -> None:
        """Make last.ckpt hold this step: a link to its step file, else a save (every rank alike)."""
        if not self.keeps_last or not self.dirpath or trainer.global_step == self._last_saved_step:
            return
        self.last_model_path = str(Path(self.dirpath) / LAST)
        # The step files are the top-k by ``step`` (build_checkpoints), so their scores are steps.
        same_step = [p for p, step in self.best_k_models.items() if step == trainer.global_step]
        if not same_step:
            trainer.save_checkpoint(self.last_model_path, self.save_weights_only)
        elif trainer.is_global_zero:
            _writer(trainer).keep_as(Path(same_step[0]), Path(self.last_model_path))
        self._last_saved_step = trainer.global_step

    def _choose_interval(self, save_seconds: float) -> None:
        """Checkpoint every Young–Daly interval for this save's measured stall from now on."""
        interval = young_daly_seconds(save_seconds, self.mean_minutes_between_preemptions * 60)
        log.info(
            "A checkpoint stalled training %.2f s: saving every %.0f s from now on (Young–Daly, "
            "a preemption every %g min expected).",
            save_seconds,
            interval,
            self.mean_minutes_between_preemptions,
        )
        # Lightning's own triggers: saves by time from here on, at a step boundary.
        self._every_n_train_steps = 0
        self._train_time_interval = dt.timedelta(seconds=interval)
        self._last_time_checked = time.monotonic()


def _writer(trainer: L.Trainer) -> VolumeCheckpointIO:
    return trainer.strategy.checkpoint_io


def _finish_saves_after(exception: BaseException, writer: VolumeCheckpointIO) -> None:
    """Let the save in flight finish after a crash; its own failure only adds a warning."""
    try:
        writer.wait()
    except Exception as err:
        log.warning("A checkpoint save failed too, after %r: %s", exception, err)


def resume_where_the_run_stopped(checkpoint: dict[str, Any]) -> None:
    """Fix the loop progress of a checkpoint saved between two epochs, in the loaded dict.

    Lightning raises a signal stop at an epoch's end only after counting the epoch completed,
    and saves the last.ckpt of a run that reached ``max_steps`` there too; it then restores
    such a checkpoint with the finished epoch's batch counters, so the next epoch ends at once
    without a batch (plans/0011-exact-resume.md). An epoch that ran to its last batch is
    therefore followed by the next one's first batch (its counters reset as Lightning does when
    it starts an epoch); one cut short by ``max_steps`` is reopened at its next batch, so a run
    extended to more steps continues exactly where it stopped.
    """
    fit = checkpoint.get("loops", {}).get("fit_loop")
    if not fit:
        return
    if checkpoint.pop(VALIDATION_PENDING, False):
        _run_the_pending_validation(fit)
        return
    epochs = fit["epoch_progress"]
    batches = fit["epoch_loop.batch_progress"]
    counted = {epochs["current"][k] for k in ("ready", "started", "processed", "completed")}
    if len(counted) != 1 or not batches["current"]["completed"]:
        return  # mid-epoch, or at an epoch's end before Lightning counted it: restored right
    if not batches["is_last_batch"]:
        for progress in (epochs["current"], epochs["total"]):
            progress["processed"] -= 1
            progress["completed"] -= 1
        return
    _zero(batches["current"])
    batches["is_last_batch"] = False
    _zero(fit["epoch_loop.scheduler_progress"]["current"])
    optimizer = fit["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]
    _zero(optimizer["step"]["current"])
    _zero(optimizer["zero_grad"]["current"])
    _zero(fit["epoch_loop.val_loop.batch_progress"]["total"])


def _run_the_pending_validation(fit: dict[str, Any]) -> None:
    """Restore a checkpoint saved before or during a due validation as one stopped at its start.

    Lightning restores a checkpoint of a batch's end, or of a signal stop between validation
    batches, as if that validation had run, and skips it: its logged metrics and its
    ``best.ckpt`` candidate would be missing from the resumed run.
    Marked as a batch finished with its validation started, Lightning runs the validation first
    (its "restarted mid-evaluation" path), then trains on, logging at the steps it would have.
    """
    batches = fit["epoch_loop.batch_progress"]
    for progress in (batches["total"], batches["current"]):
        progress["completed"] = progress["processed"]
    validation = fit["epoch_loop.val_loop.batch_progress"]
    done = validation["total"]["completed"]
    validation["total"].update(ready=done + 1, started=done + 1, processed=done, completed=done)
    _zero(validation["current"])


def _validation_pending(trainer: L.Trainer) -> bool:
    """Whether a validation is under way (a signal stopped it) or due after this batch's end."""
    if trainer.sanity_checking:
        return False
    if trainer.validating:
        return True
    loop = trainer.fit_loop.epoch_loop
    batches = loop.batch_progress.total
    at_batch_end = batches.completed == batches.processed - 1
    return at_batch_end and loop._should_check_val_fx(trainer.fit_loop._data_fetcher)


def _zero(counters: dict[str, int]) -> None:
    for key in counters:
        counters[key] = 0


def _between_accumulated_batches(trainer: L.Trainer) -> bool:
    """Whether the last batch added gradients that no optimizer step has used yet."""
    batches = trainer.fit_loop.epoch_loop.batch_progress
    done = batches.current.processed % trainer.accumulate_grad_batches == 0
    return not (done or batches.is_last_batch)  # Lightning steps on an epoch's last batch


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@dataclass
class CheckpointPolicy:
    """How often to checkpoint and what to keep.

    Args:
        every_n_train_steps: save a step checkpoint this often (unless a time cadence is set).
        every_minutes: instead, save at the first step boundary this many minutes after the
            last save (0: by steps).
        mean_minutes_between_preemptions: instead, after a first save by steps, save every
            √(2 × measured save stall × this), Young–Daly's least-waste interval (0: off).
        keep_last: how many step checkpoints to keep; older ones are pruned.
        best_monitor: also keep ``best.ckpt`` by this logged metric (empty: don't).
        best_mode: whether the best ``best_monitor`` is the ``max`` or the ``min``.
    """

    every_n_train_steps: int = 100
    every_minutes: float = 0.0
    mean_minutes_between_preemptions: float = 0.0
    keep_last: int = 5
    best_monitor: str = ""
    best_mode: Literal["max", "min"] = "max"


def build_checkpoints(
    policy: CheckpointPolicy, dirpath: Path, commit: Callable[[], None]
) -> list[VolumeCheckpoint]:
    """The step checkpoints (the newest ``keep_last``; last.ckpt at stops) and, if asked, the
    best one."""
    if policy.every_n_train_steps < 1 or policy.keep_last < 1:
        raise TinyCatsError("checkpoint.every_n_train_steps and checkpoint.keep_last must be >= 1.")
    if policy.every_minutes < 0 or policy.mean_minutes_between_preemptions < 0:
        raise TinyCatsError(
            "checkpoint.every_minutes and checkpoint.mean_minutes_between_preemptions must be "
            ">= 0 (0: off)."
        )
    by_time = policy.every_minutes and not policy.mean_minutes_between_preemptions
    steps = VolumeCheckpoint(
        dirpath=dirpath,
        filename=STEP_FILENAME,
        monitor="step",
        mode="max",
        save_top_k=policy.keep_last,
        every_n_train_steps=None if by_time else policy.every_n_train_steps,
        train_time_interval=dt.timedelta(minutes=policy.every_minutes) if by_time else None,
        save_last=True,
        mean_minutes_between_preemptions=policy.mean_minutes_between_preemptions,
        auto_insert_metric_name=False,
        commit=commit,
    )
    if not policy.best_monitor:
        return [steps]
    best = VolumeCheckpoint(
        dirpath=dirpath,
        filename=Path(BEST).stem,
        monitor=policy.best_monitor,
        mode=policy.best_mode,
        save_top_k=1,
        auto_insert_metric_name=False,
        commit=commit,
    )
    return [steps, best]
