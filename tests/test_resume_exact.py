"""Exact resume in-process: a Lightning run restored from any step's checkpoint (or from the
last.ckpt of a signal stop) sees exactly the batches the uninterrupted run saw from that step
on, also in epoch 1 and later; and a step's random draws do not depend on the global RNG."""

import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from tinycats.data.datamodule import train_batches_limit
from tinycats.data.sampler import EpochBatches
from tinycats.models.optim import adamw_warmup_cosine
from tinycats.runs.checkpointing import CheckpointPolicy, build_checkpoints, no_commit

from helpers.stop import StopAtStep

SIZE, BATCH, STEPS = 10, 3, 11  # 4 batches an epoch, the last one partial; ~3 epochs
# The two limits a config can stop at: 11 steps, or 3 epochs (12 steps); and 4 epochs cut to
# 3 batches each by limit_train_batches (12 steps).
LIMITS = {
    "max_steps": {"max_steps": STEPS},
    "max_epochs": {"max_epochs": 3},
    "limit_train_batches": {"max_epochs": 4, "limit_train_batches": 3},
}


class RecordBatches(L.LightningModule):
    """A linear model that records the indices of every training batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters({"lr": 0.01, "weight_decay": 0.0, "warmup_fraction": 0.25})
        torch.manual_seed(0)  # every run starts from the same weights
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        (indices,) = batch
        self.seen.append(indices.tolist())
        return self.layer(indices.float().unsqueeze(1)).sum()

    def configure_optimizers(self):
        # The models' own optimizer: its horizon asks the trainer for estimated_stepping_batches.
        return adamw_warmup_cosine(self)

    def train_dataloader(self) -> StatefulDataLoader:
        dataset = TensorDataset(torch.arange(SIZE))
        sampler = EpochBatches(SIZE, BATCH, seed=3, shuffle=True)
        sampler.limit = train_batches_limit(self.trainer, len(sampler))  # as the data module does
        return StatefulDataLoader(dataset, sampler=sampler, batch_size=None)


def fit(
    root: Path,
    ckpt_path: Path | None = None,
    callbacks: list[L.Callback] | None = None,
    **trainer_args,
) -> RecordBatches:
    model = RecordBatches()
    every_step = ModelCheckpoint(
        dirpath=root, filename="{step}", every_n_train_steps=1, save_top_k=-1
    )
    trainer = L.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks or [every_step],
        **trainer_args,
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return model


@pytest.fixture(scope="module", params=sorted(LIMITS))
def limit(request) -> dict[str, int]:
    """The trainer's limit: ``max_steps``, or ``max_epochs`` as every shipped classifier has."""
    return LIMITS[request.param]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, limit) -> tuple[list[list[int]], Path]:
    root = tmp_path_factory.mktemp("reference")
    return fit(root, **limit).seen, root


@pytest.mark.parametrize("step", [2, 4, 5, 7, 8, 10], ids=lambda s: f"step{s}")
def test_a_resumed_run_sees_the_batches_of_the_uninterrupted_run(
    tmp_path, uninterrupted, limit, step
):
    """Steps 4 and 8 end an epoch (the restored iterator is spent); 5, 7 and 10 are in later epochs."""
    reference, root = uninterrupted
    resumed = fit(tmp_path, ckpt_path=root / f"step={step}.ckpt", **limit)
    assert resumed.seen == reference[step:]


@pytest.mark.parametrize("step", [4, 6, 8], ids=lambda s: f"step{s}")
def test_a_run_stopped_by_a_signal_resumes_with_the_batches_of_the_uninterrupted_run(
    tmp_path, uninterrupted, limit, step
):
    """At an epoch's last batch (4, 8) Lightning stops after counting the epoch done, and saves
    last.ckpt there; resumed as Lightning restores it, the next epoch would have no batch."""
    reference, _ = uninterrupted
    checkpoints = build_checkpoints(CheckpointPolicy(every_n_train_steps=3), tmp_path, no_commit)
    with pytest.raises(SIGTERMException):
        fit(tmp_path, callbacks=[*checkpoints, StopAtStep(step)], **limit)
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == step
    resumed = fit(
        tmp_path,
        tmp_path / "last.ckpt",
        build_checkpoints(CheckpointPolicy(), tmp_path, no_commit),
        **limit,
    )
    assert resumed.seen == reference[step:]


@pytest.mark.parametrize("stop", [6, 8], ids=lambda s: f"step{s}")
def test_a_finished_run_extended_to_more_steps_sees_the_batches_of_a_longer_run(
    tmp_path, uninterrupted, limit, stop
):
    """A run that reached max_steps mid-epoch (6) or at an epoch's end (8) saves last.ckpt after
    Lightning counted that epoch done; extended, it goes on with the next batch."""
    reference, _ = uninterrupted
    checkpoints = build_checkpoints(CheckpointPolicy(every_n_train_steps=5), tmp_path, no_commit)
    fit(tmp_path, callbacks=checkpoints, **{**limit, "max_steps": stop})
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == stop
    more = build_checkpoints(CheckpointPolicy(every_n_train_steps=5), tmp_path, no_commit)
    assert fit(tmp_path, tmp_path / "last.ckpt", more, **limit).seen == reference[stop:]


class StopMidAccumulation(L.Callback):
    """SIGTERM after the first of two accumulated batches of optimizer step ``step + 1``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and batch_idx % 2 == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_stop_between_accumulated_batches_resumes_to_the_same_weights(tmp_path) -> None:
    """The half-summed gradient is in no checkpoint: the run continues from the one before."""
    policy = CheckpointPolicy(every_n_train_steps=2)
    reference = fit(
        tmp_path / "reference",
        max_steps=5,
        accumulate_grad_batches=2,
        callbacks=build_checkpoints(policy, tmp_path / "reference", no_commit),
    )
    with pytest.raises(SIGTERMException):
        fit(
            tmp_path,
            max_steps=5,
            accumulate_grad_batches=2,
            callbacks=[*build_checkpoints(policy, tmp_path, no_commit), StopMidAccumulation(3)],
        )
    newest = tmp_path / "step=00000002.ckpt"  # no last.ckpt: the stop wrote nothing
    assert not (tmp_path / "last.ckpt").exists()
    assert torch.load(newest, weights_only=False)["global_step"] == 2
    # Resumed at step 2, the first batch does not step: step 2 must not be saved again there.
    with pytest.raises(SIGTERMException):
        fit(
            tmp_path,
            newest,
            max_steps=5,
            accumulate_grad_batches=2,
            callbacks=[*build_checkpoints(policy, tmp_path, no_commit), StopMidAccumulation(2)],
        )
    resumed = fit(
        tmp_path,
        newest,
        build_checkpoints(policy, tmp_path, no_commit),
        max_steps=5,
        accumulate_grad_batches=2,
    )
    for name, weight in reference.state_dict().items():
        assert torch.equal(weight, resumed.state_dict()[name]), name


def test_the_order_is_a_function_of_seed_and_epoch() -> None:
    first, second = EpochBatches(SIZE, BATCH, 3, True), EpochBatches(SIZE, BATCH, 3, True)
    assert second.batches() == first.batches()  # same seed, same epoch: the same order
    second.set_epoch(1)
    assert second.batches() != first.batches()  # another epoch: another order
    second.set_epoch(0)
    assert second.batches() == first.batches()  # epoch 0's order again, nothing carried over
    assert EpochBatches(SIZE, BATCH, 4, True).batches() != first.batches()  # another seed
    assert sorted(i for batch in first.batches() for i in batch) == list(range(SIZE))


def test_a_training_step_does_not_depend_on_the_global_rng() -> None:
    """MobileNet's dropout draws from the global RNG, which a resumed run does not restore."""
    from tinycats.models import CatClassifier

    model = CatClassifier(backbone="mobilenet_v3_small", augment=False)
    batch = (torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
    losses = []
    for state in (1, 2):
        torch.manual_seed(state)  # as if the process had drawn differently before this step
        losses.append(model.training_step(batch, 0))
    assert torch.equal(losses[0], losses[1])
