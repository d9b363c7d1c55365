"""A resumed run's logs equal an uninterrupted run's: metrics.csv holds every logged step once
(Lightning's CSVLogger would delete it), TensorBoard shows each step once, and a validation a
kill interrupted right after a step checkpoint is run and logged again."""

import csv
import os
import shutil
import signal
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from tinycats.data.sampler import EpochBatches
from tinycats.models.optim import adamw_warmup_cosine
from tinycats.runs.checkpointing import CheckpointPolicy, build_checkpoints, no_commit
from tinycats.runs.logs import ContinueLogs, run_loggers

SIZE, BATCH = 10, 3  # 4 batches an epoch, the last one partial
TRAINER = {"max_epochs": 3, "val_check_interval": 2, "log_every_n_steps": 1}  # 12 steps


class LogEverything(L.LightningModule):
    """A linear model that logs a training loss every step and a metric at every validation."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters({"lr": 0.01, "weight_decay": 0.0, "warmup_fraction": 0.25})
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0].float().unsqueeze(1)).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0].float().unsqueeze(1)).pow(2).mean())

    def configure_optimizers(self):
        return adamw_warmup_cosine(self)

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader(shuffle=True)

    def val_dataloader(self) -> StatefulDataLoader:
        return self._loader(shuffle=False)

    def _loader(self, shuffle: bool) -> StatefulDataLoader:
        batches = EpochBatches(SIZE, BATCH, seed=3, shuffle=shuffle)
        return StatefulDataLoader(
            TensorDataset(torch.arange(SIZE)), sampler=batches, batch_size=None
        )


class Stop(L.Callback):
    """Stop the run at ``step``: SIGTERM after the batch, or a crash as the validation starts."""

    def __init__(self, step: int, in_validation: bool = False) -> None:
        self.step, self.in_validation = step, in_validation

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step and not self.in_validation:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_validation_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step and self.in_validation and not trainer.sanity_checking:
            raise RuntimeError("killed")  # as a SIGKILL would: nothing more is written


def fit(run: Path, ckpt_path: Path | None = None, *callbacks: L.Callback) -> None:
    checkpoints = build_checkpoints(CheckpointPolicy(every_n_train_steps=3), run, no_commit)
    trainer = L.Trainer(
        default_root_dir=run,
        accelerator="cpu",
        logger=run_loggers(run, "fit"),
        callbacks=[*checkpoints, LearningRateMonitor(), ContinueLogs(), *callbacks],
        enable_progress_bar=False,
        enable_model_summary=False,
        **TRAINER,
    )
    trainer.fit(LogEverything(), ckpt_path=ckpt_path)


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def scalars(run: Path) -> dict[str, Counter]:
    """Each scalar's (step, value) points as TensorBoard's own reader shows them over all the
    event files, counted."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: Counter((e.step, e.value) for e in events.Scalars(tag))
        for tag in events.Tags()["scalars"]
    }


def assert_tensorboard_shows(run: Path, reference: Path, validated_again: int | None) -> None:
    """``run`` shows each of ``reference``'s points once; a validation run again on resume,
    after a kill that came after it, shows its points at step ``validated_again`` a second
    time, with the same values (plans/0011)."""
    shown, expected = scalars(run), scalars(reference)
    assert shown.keys() == expected.keys()
    for tag, points in expected.items():
        assert not points - shown[tag], f"{tag}: missing"
        extra = shown[tag] - points
        assert all(step == validated_again and points[step, value] for step, value in extra), tag


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted")
    fit(run)
    return run


@pytest.mark.parametrize("step", [3, 6, 8], ids=lambda s: f"step{s}")
def test_a_run_stopped_by_a_signal_logs_every_step_once(tmp_path, uninterrupted, step) -> None:
    with pytest.raises(SIGTERMException):
        fit(tmp_path, None, Stop(step))
    fit(tmp_path, tmp_path / "last.ckpt")
    assert rows(tmp_path) == rows(uninterrupted)
    assert_tensorboard_shows(tmp_path, uninterrupted, None)


@pytest.mark.parametrize(("step", "validated_again"), [(3, None), (6, 5), (9, None)])
def test_a_run_resumed_from_a_step_checkpoint_logs_every_step_once(
    tmp_path, uninterrupted, step, validated_again
) -> None:
    """As after a SIGKILL once the whole run was logged: the steps after the checkpoint are
    logged again, in place of the first attempt's rows. Step 6's checkpoint is written before
    its validation, which is run again (and logged at step 5, as in the uninterrupted run)."""
    shutil.copytree(uninterrupted, tmp_path, dirs_exist_ok=True)
    (tmp_path / "last.ckpt").unlink()
    fit(tmp_path, tmp_path / f"step={step:08d}.ckpt")
    assert rows(tmp_path) == rows(uninterrupted)
    assert_tensorboard_shows(tmp_path, uninterrupted, validated_again)


def test_a_validation_killed_after_a_step_checkpoint_is_run_again(tmp_path, uninterrupted) -> None:
    """Step 6's checkpoint is written before its validation; Lightning would skip it on resume."""
    with pytest.raises(RuntimeError, match="killed"):
        fit(tmp_path, None, Stop(6, in_validation=True))
    fit(tmp_path, tmp_path / "step=00000006.ckpt")
    assert rows(tmp_path) == rows(uninterrupted)
    assert_tensorboard_shows(tmp_path, uninterrupted, None)
