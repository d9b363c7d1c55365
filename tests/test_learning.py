"""The classifier learns: through the real CLI, on images whose class is visible, and on real photos."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from benchmarks.demo_seeds import run_seed

pytestmark = pytest.mark.slow

TINY = "tests/configs/classifier_tiny.yaml"


def stripes(folder: Path, per_class: int = 60, size: int = 32) -> None:
    """An ImageFolder of random-coloured, noisy stripes: ``horizontal/`` and ``vertical/``."""
    generator = torch.Generator().manual_seed(0)
    for label in ("horizontal", "vertical"):
        (folder / label).mkdir(parents=True)
        for i in range(per_class):
            period = int(torch.randint(3, 8, (1,), generator=generator))
            wave = (torch.arange(size) // period % 2).float()
            pattern = (
                wave[:, None].expand(size, size)
                if label == "horizontal"
                else wave[None, :].expand(size, size)
            )
            colours = torch.rand(2, 3, 1, 1, generator=generator)
            image = (
                colours[0] * pattern
                + colours[1] * (1 - pattern)
                + 0.1 * torch.randn(3, size, size, generator=generator)
            )
            pixels = (image.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(folder / label / f"{i}.png")


def fit(tmp: Path, config: str, *overrides: str) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinycats",
            "fit",
            "-c",
            config,
            f"--run.outputs={tmp / 'out'}",
            f"--data.root={tmp / 'data'}",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(next((tmp / "out").rglob("summary.json")).read_text())


def test_classifier_learns_a_visible_class_far_above_chance(tmp_path: Path) -> None:
    # 24 px, 20 epochs of 3 steps; validated once, at the end, and no step checkpoints: neither
    # changes the training (its randomness is per step), and both cost time (0.98 measured).
    stripes(tmp_path / "stripes", size=24)
    summary = fit(
        tmp_path,
        TINY,
        f"--data.source={tmp_path / 'stripes'}",
        "--data.labels=folder",
        "--data.split=[0.6,0.4,0.0]",
        "--data.image_size=24",
        "--trainer.max_steps=-1",
        "--trainer.max_epochs=20",
        "--trainer.check_val_every_n_epoch=20",
        "--trainer.limit_val_batches=null",
        "--checkpoint.every_n_train_steps=1000",
    )
    assert summary["global_step"] == 60
    assert summary["metrics"]["val/acc"] >= 0.8  # chance is 0.5; 48 validation images


def test_readme_main_job_stays_near_the_majority_class_over_two_seeds(tmp_path: Path) -> None:
    # The README's first command, as shipped, over two seeds: each seed changes the start
    # weights, the augmentation, the training order and which photos validate (29 cats, 60 dogs
    # each time). From scratch on 207 photos it does not beat always answering "dog" reliably
    # (ADR 0012: no recipe measured does), so this asserts only what holds on any CPU:
    # the mean of two seeds is not far below that, as a broken pipeline would be.
    results = [run_seed(seed, tmp_path) for seed in (0, 1)]
    assert all(r.total == 89 and r.majority == 60 for r in results)
    assert statistics.mean(r.acc - r.majority_acc for r in results) > -0.05
