"""Values that would fail only later in a run (at its first validation or checkpoint), refused
when ``tinycats fit`` starts: before the first step, with a message that names the fix."""

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from tinycats.errors import TinyCatsError

ALWAYS_MONITORABLE = ("epoch", "step")  # Lightning adds these to every checkpoint's candidates


class FitPreflight(L.Callback):
    """Checks the monitored metrics and the validation cadence once the data is set up."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for callback in trainer.checkpoint_callbacks:
            check_monitor(callback, pl_module, validates=trainer.limit_val_batches != 0)
        check_validation_interval(trainer)


def check_monitor(checkpoint: ModelCheckpoint, module: L.LightningModule, validates: bool) -> None:
    """Refuse a checkpoint monitor the module never logs (or logs only in a skipped validation)."""
    logged = getattr(module, "fit_metrics", None)
    if checkpoint.monitor is None or logged is None:
        return
    if checkpoint.monitor not in (*logged, *ALWAYS_MONITORABLE):
        raise TinyCatsError(
            f"checkpoint.best_monitor={checkpoint.monitor!r} is never logged by "
            f"{type(module).__name__}, so best.ckpt could never be chosen. It logs "
            f"{', '.join(logged)}: pick one of them (and checkpoint.best_mode: max or min)."
        )
    val_loader = module.trainer.datamodule.val_dataloader() if module.trainer.datamodule else None
    if checkpoint.monitor.startswith("val/") and not (validates and val_loader and len(val_loader)):
        raise TinyCatsError(
            f"checkpoint.best_monitor={checkpoint.monitor!r} is logged by validation, which this "
            "run never does (no validation images, or trainer.limit_val_batches: 0). Give "
            "data.split a validation share, or leave checkpoint.best_monitor empty."
        )


def check_validation_interval(trainer: L.Trainer) -> None:
    """Refuse a whole-number ``val_check_interval`` longer than an epoch counted per epoch."""
    interval = trainer.val_check_interval
    if not isinstance(interval, int) or trainer.check_val_every_n_epoch is None:
        return
    batches = len(trainer.datamodule.train_dataloader())  # limit_train_batches applied
    if interval > batches:
        raise TinyCatsError(
            f"trainer.val_check_interval={interval} batches is more than an epoch ({batches} "
            f"batches of data.batch_size={trainer.datamodule.hparams.batch_size}), so it would "
            "never validate. Use at most that, or count across epochs with "
            "trainer.check_val_every_n_epoch: null (as configs/dit.yaml does)."
        )
