"""Printing what ``tinycats predict`` found in each image."""

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class PrintPredictions(BasePredictionWriter):
    """Print ``path  label  probability`` for every predicted image."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: torch.Tensor,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        paths = trainer.datamodule.hparams.predict_paths
        names = pl_module.class_labels
        probability, label = prediction.max(dim=-1)
        indices = batch[1].tolist()  # the predict dataset pairs each image with its path index
        for index, p, k in zip(indices, probability.tolist(), label.tolist(), strict=True):
            print(f"{paths[index]}\t{names[k]}\t{p:.3f}")
