"""VolumeCheckpoint: Lightning's ModelCheckpoint, made safe for a network volume and preemption.

- Every file is written under a temporary name and renamed into place, so a kill mid-write
  never leaves a truncated checkpoint under a real name.
- ``commit`` (the Modal volume's commit, a no-op locally) runs on global rank 0 after each
  completed file and after each prune: what is on the volume is always a whole checkpoint.
- ``last.ckpt`` right after a step checkpoint of the same step is a copy of that file, not a
  second serialisation of the model: half the work and half the bytes written per checkpoint.
- SIGINT, Modal's preemption signal, is handled like SIGTERM: Lightning stops at the next batch
  boundary and this callback writes ``last.ckpt`` there, so the resumed run is exact.

The first three live in ``VolumeCheckpointIO``, the strategy's ``CheckpointIO`` (Lightning
calls it on rank 0 for every write and prune); the callback uses public hooks only.
"""

import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tinycats.errors import TinyCatsError

log = logging.getLogger(__name__)

STEP_FILENAME = "step={step:08d}"
LAST = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
# Set in a checkpoint saved before or during a validation that is due: it is run on resume.
VALIDATION_PENDING = "tinycats_validation_pending"


def no_commit() -> None:
    """The local stand-in for a volume commit."""


class VolumeCheckpointIO(CheckpointIO):
    """Writes checkpoints atomically and commits after each write and removal (rank 0 only).

    A ``last.ckpt`` of the same global step as the file written just before it is a copy of
    that file. Wraps the strategy's own ``CheckpointIO``, which serialises and loads.
    """

    def __init__(self, inner: CheckpointIO, commit: Callable[[], None]) -> None:
        self.inner = inner
        self.commit = commit
        self._previous: tuple[str, int] | None = None  # (path, global step) of the last write

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        path, step = str(path), checkpoint.get("global_step")
        partial = f"{path}.partial"
        previous = self._previous
        if Path(path).name == LAST and previous and previous[1] == step and previous[0] != path:
            shutil.copyfile(previous[0], partial)
        else:
            self.inner.save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, path)
        self._previous = (path, step)
        self.commit()

    def load_checkpoint(self, path: str | Path, map_location: Any = None, **kwargs: Any) -> Any:
        return self.inner.load_checkpoint(path, map_location, **kwargs)

    def remove_checkpoint(self, path: str | Path) -> None:
        self.inner.remove_checkpoint(path)
        self.commit()

    def teardown(self) -> None:
        self.inner.teardown()


class VolumeCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint with atomic writes, a commit hook and a clean stop on SIGINT/SIGTERM."""

    def __init__(self, *args: Any, commit: Callable[[], None] = no_commit, **kwargs: Any) -> None:
        super().__init__(*args, enable_version_counter=False, **kwargs)
        self.commit = commit
        self._previous_sigint: Any = None
        self._last_saved_step = -1  # the step of the last.ckpt this process serialised itself

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        strategy = trainer.strategy
        if not isinstance(strategy.checkpoint_io, VolumeCheckpointIO):
            strategy.checkpoint_io = VolumeCheckpointIO(
                strategy.checkpoint_io or TorchCheckpointIO(), self.commit
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.save_last and _in_main_thread():
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
        if not _between_accumulated_batches(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Only a signal stops at a known batch boundary; after any other error the state may be
        # half-updated, and the last periodic checkpoint is the safer place to resume from.
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        if _between_accumulated_batches(trainer):
            # The gradients summed so far are in no checkpoint: resuming here would step with
            # part of them. The newest checkpoint on disk is an exact place to continue from.
            log.warning(
                "Stopped between the batches of one accumulated step: not saving; the "
                "run continues from its newest checkpoint."
            )
            return
        self._save_last_if_unsaved(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Steps that are not a multiple of every_n_train_steps would otherwise never be saved.
        self._save_last_if_unsaved(trainer)

    def _save_last_if_unsaved(self, trainer: L.Trainer) -> None:
        """Serialise last.ckpt unless this step is on disk already (every rank decides alike)."""
        # The step files are the top-k by ``step`` (build_checkpoints), so their scores are steps.
        saved = {int(step) for step in self.best_k_models.values()} | {self._last_saved_step}
        if self.save_last and self.dirpath and trainer.global_step not in saved:
            self.last_model_path = str(Path(self.dirpath) / LAST)
            trainer.save_checkpoint(self.last_model_path, self.save_weights_only)
            self._last_saved_step = trainer.global_step


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
        every_n_train_steps: save a step checkpoint (and last.ckpt) this often.
        keep_last: how many step checkpoints to keep; older ones are pruned.
        best_monitor: also keep ``best.ckpt`` by this logged metric (empty: don't).
        best_mode: whether the best ``best_monitor`` is the ``max`` or the ``min``.
    """

    every_n_train_steps: int = 100
    keep_last: int = 5
    best_monitor: str = ""
    best_mode: Literal["max", "min"] = "max"


def build_checkpoints(
    policy: CheckpointPolicy, dirpath: Path, commit: Callable[[], None]
) -> list[VolumeCheckpoint]:
    """The step checkpoints (the newest ``keep_last`` and last.ckpt) and, if asked, the best one."""
    if policy.every_n_train_steps < 1 or policy.keep_last < 1:
        raise TinyCatsError("checkpoint.every_n_train_steps and checkpoint.keep_last must be >= 1.")
    steps = VolumeCheckpoint(
        dirpath=dirpath,
        filename=STEP_FILENAME,
        monitor="step",
        mode="max",
        save_top_k=policy.keep_last,
        every_n_train_steps=policy.every_n_train_steps,
        save_last=True,
        auto_insert_metric_name=False,
        commit=commit,
    )
    if not policy.best_monitor:
        return [steps]
    best = VolumeCheckpoint(
        dirpath=dirpath,
        filename="best",
        monitor=policy.best_monitor,
        mode=policy.best_mode,
        save_top_k=1,
        auto_insert_metric_name=False,
        commit=commit,
    )
    return [steps, best]
