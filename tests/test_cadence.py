"""When checkpoints are saved: every N minutes, or at Young–Daly's interval from the save stall."""

from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import model_checkpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from tinycats.atomic import no_commit
from tinycats.errors import TinyCatsError
from tinycats.runs import checkpointing
from tinycats.runs.cadence import young_daly_seconds
from tinycats.runs.checkpoint_io import VolumeCheckpointIO
from tinycats.runs.checkpointing import CheckpointPolicy, build_checkpoints

SECONDS_PER_STEP = 10.0


class Clock(L.Callback):
    """A monotonic clock for the checkpoint callbacks that moves 10 s with each training step."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def on_train_batch_start(self, *args) -> None:
        self.now += SECONDS_PER_STEP


def _steps_saved(
    tmp_path: Path, monkeypatch, policy: CheckpointPolicy, max_steps: int
) -> list[int]:
    clock = Clock()
    for module in (model_checkpoint, checkpointing):
        monkeypatch.setattr(module, "time", clock)
    trainer = L.Trainer(
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock, *build_checkpoints(policy, tmp_path, no_commit)],
        limit_val_batches=0,
    )
    trainer.fit(BoringModel())
    return sorted(int(p.stem[5:]) for p in tmp_path.glob("step=*.ckpt"))


def test_every_minutes_saves_at_the_first_step_past_the_interval(tmp_path, monkeypatch) -> None:
    policy = CheckpointPolicy(every_n_train_steps=100, every_minutes=0.5, keep_last=10)
    assert _steps_saved(tmp_path, monkeypatch, policy, max_steps=10) == [3, 6, 9]


def test_young_daly_sets_the_interval_from_the_measured_stall(tmp_path, monkeypatch) -> None:
    save = VolumeCheckpointIO.save_checkpoint

    def slow_volume(io: VolumeCheckpointIO, *args, **kwargs) -> None:
        save(io, *args, **kwargs)
        io.stall_seconds += 4.5  # as if each save held training 4.5 s (+ its real few ms)

    monkeypatch.setattr(VolumeCheckpointIO, "save_checkpoint", slow_volume)
    policy = CheckpointPolicy(every_n_train_steps=2, mean_minutes_between_preemptions=7.5)
    # √(2 × 4.5…5 s × 450 s) = 64–67 s: after the first save by steps, one every 7 steps.
    assert _steps_saved(tmp_path, monkeypatch, policy, max_steps=16) == [2, 9, 16]


def test_young_daly_interval() -> None:
    assert young_daly_seconds(2.0, 3600.0) == pytest.approx(120.0)


def test_a_negative_cadence_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TinyCatsError, match="every_minutes"):
        build_checkpoints(CheckpointPolicy(every_minutes=-1), tmp_path, no_commit)
