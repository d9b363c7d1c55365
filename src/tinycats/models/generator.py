"""DiTGenerator: trains a TinyDiT by rectified flow, with EMA weights and sample grids."""

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchvision.transforms.v2.functional import pil_to_tensor

from tinycats.errors import TinyCatsError
from tinycats.models.ema import GeneratorEMA
from tinycats.models.grid import save_labelled_grid
from tinycats.models.labels import display_labels
from tinycats.models.optim import adamw_warmup_cosine
from tinycats.models.performance import CompiledOrEager
from tinycats.networks.augment import random_flip, to_unit_range
from tinycats.networks.dit import TinyDiT
from tinycats.networks.flow import flow_loss, sample
from tinycats.networks.randomness import step_generator

log = logging.getLogger(__name__)

# Keeps the fixed validation noise apart from the per-step training draws of the same seed.
_VALIDATION_STREAM = -1


def drop_labels(labels: Tensor, rate: float, null_class: int, generator: torch.Generator) -> Tensor:
    """Replace each label by ``null_class`` with probability ``rate`` (for classifier-free guidance)."""
    dropped = torch.rand(labels.shape[0], generator=generator) < rate
    return torch.where(dropped.to(labels.device), null_class, labels)


class DiTGenerator(L.LightningModule):
    """A class-conditional TinyDiT trained by rectified flow; validates and samples with its EMA.

    Args:
        num_classes: number of classes (linked from the data module).
        class_names: their names, used to label sample grids (linked from the data module).
        patch_size: side of the square patches the network cuts images into (its tokens).
        width: the network's token width.
        depth: its number of transformer blocks.
        heads: attention heads per block (width must be divisible by them).
        image_size: side of the images; must equal the data's (the CLI sets it from
            ``data.image_size``).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        warmup_fraction: share of the training steps spent warming the learning rate up.
        label_dropout: probability of training a sample with the null (unconditional) label.
        flip: mirror a random half of each batch left-right (the only augmentation).
        ema_decay: decay of the exponential moving average of the weights.
        ema_start_step: the EMA starts as a copy of the weights at this step (before it, it
            holds the initial weights).
        ema_every_n_steps: update the EMA every this many optimizer steps.
        val_timesteps: validation measures the loss at this many evenly spaced flow times,
            with noise that is the same at every validation.
        sample_every_n_steps: write a grid of EMA samples this often (0: never).
        samples_per_class: images per class (one row each) in that grid.
        sample_steps: ODE steps of the grid's sampler.
        sample_cfg_scale: classifier-free guidance scale of the grid.
        seed: seed of the training draws (flip, label dropout, noise, times) and fixed noises.
        compile: train the network through ``torch.compile`` (eager if compiling fails).
    """

    run_group = "dit"
    description = "the DiT generator (a run of `tinycats fit -c configs/dit.yaml`)"
    # What fit logs: the names a checkpoint can monitor (launch.py reads this line, torch-free).
    fit_metrics = ("train/flow_loss", "val/flow_loss")
    # bf16-mixed trains a DiT faster than float32 on a CPU only from about this width on (ADR
    # 0014, one core of an AMX CPU: width 384 1.86x faster; 128 (mini) 0.93x, 64 (tiny) 0.62x).
    cpu_bf16_min_width = 256

    def __init__(
        self,
        *,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        num_classes: int = 12,
        class_names: list[str] | None = None,
        image_size: int | None = None,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_fraction: float = 0.02,
        label_dropout: float = 0.1,
        flip: bool = True,
        ema_decay: float = 0.9999,
        ema_start_step: int = 0,
        ema_every_n_steps: int = 1,
        val_timesteps: int = 8,
        sample_every_n_steps: int = 0,
        samples_per_class: int = 8,
        sample_steps: int = 50,
        sample_cfg_scale: float = 3.0,
        seed: int = 0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not 0 <= label_dropout < 1:
            raise TinyCatsError(f"label_dropout must be in [0, 1), got {label_dropout}.")
        if not 0 <= ema_decay <= 1 or ema_every_n_steps < 1:
            raise TinyCatsError(
                f"ema_decay must be in [0, 1] and ema_every_n_steps >= 1, got {ema_decay} and "
                f"{ema_every_n_steps}."
            )
        if image_size is None:
            raise TinyCatsError("DiTGenerator needs image_size (the CLI sets data.image_size).")
        try:
            self.model = TinyDiT(
                image_size=image_size,
                patch_size=patch_size,
                width=width,
                depth=depth,
                heads=heads,
                num_classes=num_classes,
            )
        except ValueError as err:
            raise TinyCatsError(f"Cannot build the DiT: {err}.") from err
        self._compiled: CompiledOrEager | None = None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The EMA callback stores the averaged weights as the state_dict, the live ones beside it.
        if "current_model_state" not in checkpoint:
            log.warning("The checkpoint holds no EMA weights; using the training weights.")

    def configure_model(self) -> None:
        self._compiled = CompiledOrEager(self.model) if self.hparams.compile else None

    @property
    def cpu_bf16(self) -> bool:
        """Whether bf16-mixed trains this network faster than float32 on a CPU that has bf16."""
        return self.hparams.width >= self.cpu_bf16_min_width

    @property
    def class_labels(self) -> list[str]:
        """A display name per class: the class names, or their indices when there are none."""
        return display_labels(self.hparams.class_names, self.hparams.num_classes)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """The velocity the network predicts for noisy images x at times t with labels y."""
        return self.model(x, t, y)

    def training_inputs(
        self, batch: tuple[Tensor, Tensor], generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """A batch's images in [-1, 1], randomly mirrored, and its labels, randomly nulled."""
        images, labels = batch
        x0 = _to_signed_range(images)
        if self.hparams.flip:
            x0 = random_flip(x0, generator)
        labels = drop_labels(labels, self.hparams.label_dropout, self.model.null_class, generator)
        return x0, labels

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        # One generator per (seed, step, rank) for every draw: a resumed run repeats them exactly.
        generator = step_generator(self.hparams.seed, self.global_step, self.global_rank)
        x0, labels = self.training_inputs(batch, generator)
        velocity = self._compiled or self.model
        loss = flow_loss(velocity, x0, labels, generator=generator)
        self.log("train/flow_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        x0 = _to_signed_range(images)
        steps = self.hparams.val_timesteps
        # Fixed times and fixed noise: the loss changes only when the weights do.
        times = (torch.arange(steps, dtype=x0.dtype) + 0.5) / steps
        generator = step_generator(self.hparams.seed, batch_idx, _VALIDATION_STREAM)
        noise = torch.randn((steps, *x0.shape), generator=generator).to(x0)
        losses = [
            flow_loss(self.model, x0, labels, noise=noise[i], t=times[i].expand(x0.shape[0]))
            for i in range(steps)
        ]
        self.log(
            "val/flow_loss",
            torch.stack(losses).mean(),
            prog_bar=True,
            batch_size=x0.shape[0],
            sync_dist=True,
        )

    @torch.no_grad()
    def generate(
        self,
        labels: Tensor,
        seed: int,
        steps: int = 50,
        cfg_scale: float = 3.0,
        method: str = "euler",
    ) -> Tensor:
        """Images in [0, 1] of the given classes, from noise fixed by ``seed``."""
        size, channels = self.model.image_size, self.model.in_channels
        noise = torch.randn(
            (labels.shape[0], channels, size, size), generator=torch.Generator().manual_seed(seed)
        )
        images = sample(
            self.model,
            noise.to(self.device),
            labels.to(self.device),
            steps=steps,
            cfg_scale=cfg_scale,
            null_class=self.model.null_class,
            method=method,
        )
        return images.clamp(-1, 1).add(1).div(2)

    def on_train_start(self) -> None:
        # Resumed at a grid's step, the run may have stopped before that grid was drawn; its
        # logs continue from this step (runs/logs.py), so it is drawn again.
        if self.global_step:
            self._sample_grid_if_due()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._sample_grid_if_due()

    def _sample_grid_if_due(self) -> None:
        every = self.hparams.sample_every_n_steps
        if every and self.global_step % every == 0:
            log_dir = Path(self.trainer.log_dir)  # a broadcast: every rank must ask for it
            if self.trainer.is_global_zero:
                self._save_sample_grid(log_dir / "samples" / f"step={self.global_step:08d}.png")

    def configure_callbacks(self) -> list[GeneratorEMA]:
        # Trainer.validate/test after fit ask again: keep the fit's EMA, as a new one would be empty.
        existing = [cb for cb in self.trainer.callbacks if isinstance(cb, GeneratorEMA)]
        return existing or [
            GeneratorEMA(
                self.hparams.ema_decay, self.hparams.ema_start_step, self.hparams.ema_every_n_steps
            )
        ]

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_warmup_cosine(self)

    def _save_sample_grid(self, path: Path) -> None:
        """Write one row of EMA samples per class to ``path``."""
        ema = next(cb for cb in self.trainer.callbacks if isinstance(cb, GeneratorEMA)).averaged
        per_class = self.hparams.samples_per_class
        labels = torch.arange(self.hparams.num_classes).repeat_interleave(per_class)
        images = ema.generate(
            labels,
            seed=self.hparams.seed,
            steps=self.hparams.sample_steps,
            cfg_scale=self.hparams.sample_cfg_scale,
        )
        grid = save_labelled_grid(images, self.class_labels, path)
        for logger in self.loggers:  # TensorBoard shows each grid at its step, beside the PNGs
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", pil_to_tensor(grid), self.global_step)


def _to_signed_range(images: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` → float ``[-1, 1]``."""
    return to_unit_range(images).mul_(2).sub_(1)
