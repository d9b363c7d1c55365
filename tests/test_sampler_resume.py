"""The training order after a resume: a Lightning run restored from any step's checkpoint sees
exactly the batches the uninterrupted run saw from that step on (also in epoch 1 and later)."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from tinycats.data.sampler import EpochBatches

SIZE, BATCH, STEPS = 10, 3, 11  # 4 batches an epoch, the last one partial; ~3 epochs


class RecordBatches(L.LightningModule):
    """A linear model that records the indices of every training batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        (indices,) = batch
        self.seen.append(indices.tolist())
        return self.layer(indices.float().unsqueeze(1)).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> StatefulDataLoader:
        dataset = TensorDataset(torch.arange(SIZE))
        sampler = EpochBatches(SIZE, BATCH, seed=3, shuffle=True)
        return StatefulDataLoader(dataset, sampler=sampler, batch_size=None)


def fit(root: Path, ckpt_path: Path | None = None) -> RecordBatches:
    model = RecordBatches()
    trainer = L.Trainer(
        default_root_dir=root, max_steps=STEPS, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=1,
                                   save_top_k=-1)],
    )  # fmt: skip
    trainer.fit(model, ckpt_path=ckpt_path)
    return model


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[list[list[int]], Path]:
    root = tmp_path_factory.mktemp("reference")
    return fit(root).seen, root


@pytest.mark.parametrize("step", [2, 4, 5, 7, 8, 10], ids=lambda s: f"step{s}")
def test_a_resumed_run_sees_the_batches_of_the_uninterrupted_run(tmp_path, uninterrupted, step):
    """Steps 4 and 8 end an epoch (the restored iterator is spent); 5, 7 and 10 are in later epochs."""
    reference, root = uninterrupted
    resumed = fit(tmp_path, ckpt_path=root / f"step={step}.ckpt")
    assert resumed.seen == reference[step:]


def test_the_order_is_a_function_of_seed_and_epoch() -> None:
    first, second = EpochBatches(SIZE, BATCH, 3, True), EpochBatches(SIZE, BATCH, 3, True)
    second.set_epoch(1)
    pass
    second.set_epoch(0)
    pass
    assert sorted(i for batch in first.batches() for i in batch) == list(range(SIZE))
