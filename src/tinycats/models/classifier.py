"""CatClassifier: a torchvision backbone that tells cats from dogs, or one cat breed from another."""

import json
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from tinycats.models.labels import display_labels
from tinycats.models.optim import adamw_warmup_cosine
from tinycats.models.performance import CompiledOrEager
from tinycats.models.report import write_report
from tinycats.networks.augment import color_jitter, random_flip, random_resized_crop, to_unit_range
from tinycats.networks.randomness import step_generator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CatClassifier(L.LightningModule):
    """Image classifier with accuracy, macro-F1 and a confusion matrix on validation and test.

    Args:
        num_classes: number of classes (linked from the data module).
        class_names: their names, used by ``predict`` (linked from the data module).
        backbone: a torchvision classification model name, e.g. resnet18.
        weights: torchvision weights to start from, e.g. ``DEFAULT`` for ImageNet; ``null``
            trains from scratch (the only option offline).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        warmup_fraction: share of the training steps spent warming the learning rate up.
        label_smoothing: cross-entropy label smoothing.
        augment: random crop, flip and colour jitter on training batches.
        seed: seed of the augmentation draws.
        channels_last: NHWC memory layout for the CNN; null means on GPUs only.
        compile: run the network through ``torch.compile`` (eager if compiling fails).
    """

    run_group = "classifier"
    description = "the classifier (a run of `tinycats fit -c configs/classifier.yaml`)"
    # What fit logs: the names a checkpoint can monitor (launch.py reads this line, torch-free).
    fit_metrics = ("train/loss", "val/acc", "val/f1")
    # Loading a trained one: its checkpoint holds the weights, so nothing is downloaded.
    load_overrides: ClassVar[dict[str, Any]] = {"weights": None}

    def __init__(
        self,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        backbone: str = "resnet18",
        weights: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_fraction: float = 0.05,
        label_smoothing: float = 0.1,
        augment: bool = True,
        seed: int = 0,
        channels_last: bool | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.trained_image_size: int | None = None  # known once loaded from a checkpoint
        self.net = _with_new_head(
            torchvision.models.get_model(backbone, weights=weights), num_classes
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        self._channels_last = False  # both decided in configure_model, once the device is known
        self._compiled: CompiledOrEager | None = None
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_confusion = MulticlassConfusionMatrix(num_classes)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The data's image size, which an export needs: LightningCLI saves it beside the weights.
        data = checkpoint.get("datamodule_hyper_parameters") or {}
        self.trained_image_size = data.get("image_size")

    def configure_model(self) -> None:
        # The strategy knows the device before the module has moved there.
        device = self.trainer.strategy.root_device.type if self._trainer else self.device.type
        wanted = self.hparams.channels_last
        self._channels_last = device == "cuda" if wanted is None else wanted
        if self._channels_last:
            self.net.to(memory_format=torch.channels_last)
        self._compiled = CompiledOrEager(self.net) if self.hparams.compile else None

    @property
    def class_labels(self) -> list[str]:
        """A display name per class: the class names, or their indices when there are none."""
        return display_labels(self.hparams.class_names, self.hparams.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of float images in ``[0, 1]``."""
        images = (images - self.mean) / self.std
        if self._channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return (self._compiled or self.net)(images)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        images, targets = batch
        images = to_unit_range(images)
        generator = step_generator(self.hparams.seed, self.global_step, self.global_rank)
        if self.hparams.augment:
            images = color_jitter(
                random_flip(random_resized_crop(images, generator), generator), generator
            )
        # Dropout in some backbones (MobileNet, EfficientNet) draws from the global RNG, which a
        # resumed run does not restore: seed it per step as well (plans/0011-exact-resume.md).
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        loss = F.cross_entropy(self(images), targets, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.val_confusion)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, self.test_confusion)

    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        """Class probabilities for each image."""
        return self(to_unit_range(batch[0])).softmax(dim=-1)

    def on_validation_epoch_end(self) -> None:
        self._write_confusion("val", self.val_confusion)

    def on_test_epoch_end(self) -> None:
        self._write_confusion("test", self.test_confusion)

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_warmup_cosine(self)

    def _evaluate(
        self, batch, metrics: MetricCollection, confusion: MulticlassConfusionMatrix
    ) -> None:
        images, targets = batch
        logits = self(to_unit_range(images))
        metrics.update(logits, targets)
        confusion.update(logits, targets)
        self.log_dict(metrics, prog_bar=True)

    def _write_confusion(self, stage: str, confusion: MulticlassConfusionMatrix) -> None:
        """Save the epoch's confusion matrix (rows: true class) as JSON beside the run's logs, and
        after a test also the report (``report_test.json``, ``confusion_test.png``)."""
        matrix = confusion.compute().tolist()  # collective under DDP: every rank computes
        confusion.reset()
        log_dir = self.trainer.log_dir  # also collective (a broadcast), so before the rank check
        if self.trainer.sanity_checking or not self.trainer.is_global_zero or not log_dir:
            return
        names = self.class_labels
        path = Path(log_dir) / f"confusion_{stage}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"classes": list(names), "matrix": matrix}, indent=1))
        # Only the test gets the full report: validation would redraw the picture every epoch.
        if stage == "test" and sum(map(sum, matrix)):
            write_report(torch.tensor(matrix), names, Path(log_dir), stage)


def _with_new_head(net: nn.Module, num_classes: int) -> nn.Module:
    """Replace the last linear layer of a torchvision classifier with one for ``num_classes``."""
    for parent in [net, *net.modules()]:
        for name in ("fc", "head", "classifier"):
            layer = getattr(parent, name, None)
            if isinstance(layer, nn.Sequential) and isinstance(layer[-1], nn.Linear):
                parent, name, layer = layer, str(len(layer) - 1), layer[-1]
            if isinstance(layer, nn.Linear):
                setattr(parent, name, nn.Linear(layer.in_features, num_classes))
                return net
    raise ValueError(f"Cannot find the classification head of {type(net).__name__}")
