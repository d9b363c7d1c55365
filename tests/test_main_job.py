"""The README's main job, ``tinycats fit -c configs/classifier_sample.yaml``, stopped with
Ctrl-C at a random moment and run again, ends bit-equal to an uninterrupted run: weights,
optimizer, LR schedule, global step and metrics.csv (plans/0011).

Its only change: 6 of its 30 epochs (78 steps: its step-65 checkpoint, best.ckpt, a validation
each epoch). On a shared 2-core machine the full job took about 25 minutes a run (measured
2026-12-06, ~4 s a step under load), three runs far too long even for a slow test."""

import csv
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.chaos import COMPARED, differences

RUN = "checkpoints/classifier/2026-01-03/sample"
EPOCHS, STEPS = 6, 78  # 13 steps an epoch
TIMEOUT = 1200

pytestmark = pytest.mark.slow


def start(root: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tinycats",
            "fit",
            "-c",
            "configs/classifier_sample.yaml",
            f"--run.outputs={root / 'outputs'}",
            f"--data.root={root / 'data'}",
            "--run.date=2026-01-03",
            f"--trainer.max_epochs={EPOCHS}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, stderr[-3000:]


def final_state(root: Path) -> dict:
    checkpoint = torch.load(root / "outputs" / RUN / "last.ckpt", weights_only=False)
    with open(root / "outputs" / RUN / "metrics.csv", newline="") as file:
        logged = list(csv.DictReader(file))
    return {**{key: checkpoint.get(key) for key in COMPARED}, "metrics.csv": logged}


def test_the_main_job_stopped_with_ctrl_c_ends_bit_equal(tmp_path: Path) -> None:
    began = time.monotonic()
    finish(start(tmp_path / "uninterrupted"))
    duration = time.monotonic() - began
    reference = final_state(tmp_path / "uninterrupted")
    assert reference["global_step"] == STEPS

    seed = random.randrange(2**31)
    at = random.Random(seed).uniform(0.25, 0.85) * duration  # inside the training, not start-up
    stopped = start(tmp_path / "stopped")
    time.sleep(at)
    stopped.send_signal(signal.SIGINT)
    _, stderr = stopped.communicate(timeout=TIMEOUT)
    assert stopped.returncode == 143, f"seed {seed}, SIGINT at {at:.1f} s:\n{stderr[-3000:]}"
    finish(start(tmp_path / "stopped"))

    assert differences(reference, final_state(tmp_path / "stopped")) == [], (
        f"seed {seed}: SIGINT at {at:.1f} s of {duration:.1f} s"
    )
