"""Values that would fail only later are refused when ``tinycats fit`` starts, before the first
step, with exit 2 and the fix; the Modal launch refuses what the config alone tells; and each
model's ``fit_metrics`` (what both checks read) is what its fit logs."""

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml

from benchmarks import derived_configs
from tinycats import launch
from tinycats.data import PetsDataModule
from tinycats.models import CatClassifier, DiTGenerator


def fit(tmp_path: Path, sample: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``tinycats fit`` of the derived classifier config (8 batches an epoch)."""
    config = derived_configs.write("classifier", tmp_path)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tinycats",
            "fit",
            "-c",
            str(config),
            f"--run.outputs={tmp_path / 'outputs'}",
            f"--data.root={tmp_path / 'data'}",
            f"--data.source={sample}",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_refused_before_any_step(done: subprocess.CompletedProcess, tmp_path: Path) -> None:
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "outputs").rglob("*.ckpt"))
    assert not list((tmp_path / "outputs").rglob("metrics.csv"))


def test_a_monitor_the_model_never_logs_is_refused(tmp_path: Path, pets_sample: Path) -> None:
    done = fit(tmp_path, pets_sample, "--checkpoint.best_monitor=val/loss")
    assert_refused_before_any_step(done, tmp_path)
    assert "'val/loss' is never logged by CatClassifier" in done.stderr
    assert "train/loss, val/acc, val/f1" in done.stderr


def test_a_validation_interval_longer_than_an_epoch_is_refused(
    tmp_path: Path, pets_sample: Path
) -> None:
    done = fit(tmp_path, pets_sample, "--trainer.val_check_interval=9")
    assert_refused_before_any_step(done, tmp_path)
    assert "val_check_interval=9 batches is more than an epoch (8 batches" in done.stderr


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        ([], None),
        (["--checkpoint.best_monitor=val/f1"], None),
        (["--checkpoint.best_monitor=val/loss"], "never logged by CatClassifier"),
        (["--data.split=[0.9, 0.0, 0.1]"], "leaves no validation images"),
    ],
)
def test_the_launch_refuses_a_monitor_from_the_config_alone(overrides, refused) -> None:
    config = yaml.safe_load(Path("configs/classifier.yaml").read_text())
    if refused is None:
        launch.check_monitored_metric(config, overrides)
    else:
        with pytest.raises(launch.LaunchError, match=refused):
            launch.check_monitored_metric(config, overrides)


def test_the_modal_launch_checks_the_monitor_before_renting_a_gpu() -> None:
    text = Path("configs/classifier.yaml").read_text()
    with pytest.raises(launch.LaunchError, match="never logged by CatClassifier"):
        launch.check_config(
            text, "configs/classifier.yaml", ["--checkpoint.best_monitor=val/loss"], "/data", "v"
        )


@pytest.mark.parametrize(
    "model",
    [
        CatClassifier(backbone="mobilenet_v3_small"),
        DiTGenerator(patch_size=4, width=32, depth=1, heads=2, image_size=16, num_classes=2),
    ],
    ids=lambda m: type(m).__name__,
)
def test_fit_metrics_are_what_fit_logs(tmp_path: Path, pets_sample: Path, model) -> None:
    data = PetsDataModule(root=str(tmp_path), source=str(pets_sample), image_size=16, batch_size=64)
    trainer = L.Trainer(
        default_root_dir=tmp_path,  # the classifier writes its confusion matrix there
        max_steps=1,
        val_check_interval=1,  # validate after the one step
        limit_val_batches=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    assert sorted(trainer.callback_metrics) == sorted(type(model).fit_metrics)
