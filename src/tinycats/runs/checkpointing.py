"""VolumeCheckpoint: Lightning's ModelCheckpoint, made safe for a network volume and preemption.

- Every file is written under a temporary name and renamed into place, so a kill mid-write
  never leaves a truncated checkpoint under a real name.
- ``commit`` (the Modal volume's commit, a no-op locally) runs on global rank 0 after each
  completed file and after each prune: what is on the volume is always a whole checkpoint.
- ``last.ckpt`` after a step checkpoint of the same step is a copy of that file, not a second
  serialisation of the model: half the work and half the bytes written per checkpoint.
- SIGINT, Modal's preemption signal, is handled like SIGTERM: Lightning stops at the next batch
  boundary and this callback writes ``last.ckpt`` there, so the resumed run is exact.
"""

import os
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tinycats.errors import TinyCatsError

STEP_FILENAME = "step={step:08d}"


def no_commit() -> None:
    """The local stand-in for a volume commit."""


class VolumeCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint with atomic writes, a commit hook and a clean stop on SIGINT/SIGTERM."""

    def __init__(self, *args: Any, commit: Callable[[], None] = no_commit, **kwargs: Any) -> None:
        super().__init__(*args, enable_version_counter=False, **kwargs)
        self.commit = commit
        self._previous_sigint: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.save_last and _in_main_thread():
            # Forward SIGINT to SIGTERM, which Lightning turns into a stop at a batch boundary.
            self._previous_sigint = signal.signal(
                signal.SIGINT, lambda *_: os.kill(os.getpid(), signal.SIGTERM)
            )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Only a signal stops at a known batch boundary; after any other error the state may be
        # half-updated, and the last periodic checkpoint is the safer place to resume from.
        stopped_cleanly = isinstance(exception, SIGTERMException)
        if stopped_cleanly and self.save_last and self._should_save_on_exception(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Steps that are not a multiple of every_n_train_steps would otherwise never be saved.
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _should_save_on_exception(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and self._last_global_step_saved != trainer.global_step

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        partial = f"{filepath}.partial"
        just_saved = self._last_checkpoint_saved
        step_file_of_this_step = (
            self._last_global_step_saved == trainer.global_step and just_saved not in ("", filepath)
        )
        if filepath == self.last_model_path and step_file_of_this_step:
            # The same state was just written to the step file; only rank 0 writes files.
            if trainer.is_global_zero:
                shutil.copyfile(just_saved, partial)
        else:
            super()._save_checkpoint(trainer, partial)
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            os.replace(partial, filepath)
            self.commit()

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            self.commit()


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
        dirpath=dirpath, filename=STEP_FILENAME, monitor="step", mode="max",
        save_top_k=policy.keep_last, every_n_train_steps=policy.every_n_train_steps,
        save_last=True, auto_insert_metric_name=False, commit=commit,
    )  # fmt: skip
    if not policy.best_monitor:
        return [steps]
    best = VolumeCheckpoint(
        dirpath=dirpath, filename="best", monitor=policy.best_monitor, mode=policy.best_mode,
        save_top_k=1, auto_insert_metric_name=False, commit=commit,
    )  # fmt: skip
    return [steps, best]
