"""Extending a finished run: more steps continue from its last checkpoint; other shapes or labels
are refused with a message that says what to do."""

import logging
from pathlib import Path

import pytest
import torch

from tinycats.cli import run_cli
from tinycats.errors import TinyCatsError

pytestmark = pytest.mark.slow  # two to three short trainings each

TINY = "tests/configs/classifier_tiny.yaml"
RUN = "checkpoints/classifier/2026-03-04/tiny"


def fit(tmp_path: Path, sample: Path, *extra: str) -> dict:
    return run_cli(
        [
            "fit",
            "-c",
            TINY,
            f"--run.outputs={tmp_path}",
            f"--data.root={tmp_path / 'data'}",
            f"--data.source={sample}",
            "--run.date=2026-03-04",
            "--trainer.limit_val_batches=0",
            *extra,
        ]
    )


@pytest.fixture
def finished(tmp_path: Path, pets_sample: Path) -> Path:
    """A run that finished at step 3 (its last.ckpt saved at the end, mid-epoch)."""
    assert fit(tmp_path, pets_sample, "--trainer.max_steps=3")["global_step"] == 3
    return tmp_path / RUN


def test_more_steps_continue_a_finished_run_at_the_schedules_floor(
    tmp_path: Path, pets_sample: Path, finished: Path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="tinycats")
    assert fit(tmp_path, pets_sample, "--trainer.max_steps=3")["global_step"] == 3  # unchanged
    assert "already finished" in caplog.text
    summary = fit(tmp_path, pets_sample, "--trainer.max_steps=5")
    assert summary["global_step"] == 5
    assert f"Resuming from {finished / 'last.ckpt'}" in caplog.text
    last = torch.load(finished / "last.ckpt", weights_only=False)
    schedule = last["lr_schedulers"][0]
    cosine = schedule.get("_schedulers", [schedule])[-1]  # after a warm-up, if there is one
    assert cosine["T_max"] < 5  # the horizon of the first launch, kept
    assert schedule["_last_lr"] == [pytest.approx(cosine["eta_min"])]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("--data.labels=cat_breeds", "other shapes"),
        ("--model.init_args.backbone=resnet34", "another model"),
    ],
)
def test_a_change_that_cannot_continue_is_refused(
    tmp_path: Path, pets_sample: Path, finished: Path, change: str, reason: str
) -> None:
    with pytest.raises(TinyCatsError, match=f"Cannot extend.*{reason}.*new --run.name"):
        fit(tmp_path, pets_sample, "--trainer.max_steps=5", change)
