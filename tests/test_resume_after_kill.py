"""Exact resume: a training process killed at any moment, rerun, ends with the same weights."""

import functools
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from benchmarks import derived_configs

STEPS = 24
RUN = "checkpoints/classifier/2026-03-04/resume"
TIMEOUT = 300

pytestmark = pytest.mark.slow


@functools.cache
def config() -> str:
    """configs/classifier.yaml shrunk (benchmarks/derived_configs.py): 3 epochs of 8 steps, a
    checkpoint every 5, validation and best.ckpt at each epoch's end."""
    return str(derived_configs.write("classifier", Path(tempfile.mkdtemp(prefix="test-resume-"))))


def command(outputs: Path, data: Path, sample: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tinycats",
        "fit",
        "-c",
        config(),
        f"--run.outputs={outputs}",
        f"--data.root={data}",
        f"--data.source={sample}",
        "--run.name=resume",
        "--run.date=2026-03-04",
    ]


def train(outputs: Path, data: Path, sample: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command(outputs, data, sample), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def interrupt(
    outputs: Path, data: Path, sample: Path, sig: int, after_checkpoint: bool = True
) -> int:
    """Start training, send ``sig`` at a random moment (after its first checkpoint), return the exit code."""
    process = subprocess.Popen(
        command(outputs, data, sample), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    run = outputs / RUN
    deadline = time.monotonic() + TIMEOUT
    while after_checkpoint and not list(run.glob("step=*.ckpt")) and time.monotonic() < deadline:
        assert process.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.5))
    if process.poll() is not None:
        pytest.fail("training finished before the signal: make the config longer")
    process.send_signal(sig)
    return process.wait(timeout=TIMEOUT)


def final_state(outputs: Path) -> dict:
    checkpoint = torch.load(outputs / RUN / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == STEPS
    return checkpoint


def assert_same_training(a: dict, b: dict) -> None:
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for (_, sa), (_, sb) in zip(
        a["optimizer_states"][0]["state"].items(),
        b["optimizer_states"][0]["state"].items(),
        strict=True,
    ):
        for name in sa:
            assert torch.equal(torch.as_tensor(sa[name]), torch.as_tensor(sb[name])), name
    assert a["lr_schedulers"] == b["lr_schedulers"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, pets_sample: Path) -> tuple[dict, Path]:
    """The reference: the same config trained without interruption; (final checkpoint, data root)."""
    tmp = tmp_path_factory.mktemp("reference")
    train(tmp / "outputs", tmp / "data", pets_sample)
    return final_state(tmp / "outputs"), tmp / "data"


def test_sigkill_then_rerun_ends_with_the_same_weights(
    tmp_path: Path, uninterrupted, pets_sample: Path
) -> None:
    reference, data = uninterrupted
    code = interrupt(tmp_path, data, pets_sample, signal.SIGKILL)
    assert code == -signal.SIGKILL
    resumed = train(tmp_path, data, pets_sample)
    assert "Resuming from" in resumed.stderr
    assert_same_training(final_state(tmp_path), reference)


def test_sigint_twice_interrupted_ends_with_the_same_weights(
    tmp_path: Path, uninterrupted, pets_sample: Path
) -> None:
    reference, data = uninterrupted
    assert interrupt(tmp_path, data, pets_sample, signal.SIGINT) == 143  # a clean stop, not "done"
    assert not (tmp_path / RUN / "summary.json").exists()
    assert torch.load(tmp_path / RUN / "last.ckpt", weights_only=False)["global_step"] > 0
    assert interrupt(tmp_path, data, pets_sample, signal.SIGKILL) == -signal.SIGKILL
    train(tmp_path, data, pets_sample)
    assert_same_training(final_state(tmp_path), reference)


def test_killed_before_its_first_checkpoint_starts_over(
    tmp_path: Path, uninterrupted, pets_sample: Path
) -> None:
    reference, data = uninterrupted
    interrupt(tmp_path, data, pets_sample, signal.SIGKILL, after_checkpoint=False)
    assert not list((tmp_path / RUN).glob("*.ckpt"))
    resumed = train(tmp_path, data, pets_sample)
    assert "Resuming from" not in resumed.stderr
    assert_same_training(final_state(tmp_path), reference)


def test_resume_latest_passes_over_a_truncated_checkpoint(
    tmp_path: Path, uninterrupted, pets_sample: Path
) -> None:
    reference, data = uninterrupted
    assert interrupt(tmp_path, data, pets_sample, signal.SIGINT) == 143
    last = tmp_path / RUN / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    # Another name and today's date: only --resume latest can find the interrupted run.
    latest = [*command(tmp_path, data, pets_sample)[:-1], "--run.name=other", "--resume=latest"]
    done = subprocess.run(latest, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Skipping checkpoint {last}: its SHA-256 differs" in done.stderr
    assert "Resuming from" in done.stderr and "step=" in done.stderr
    assert not (tmp_path / "checkpoints/classifier/2026-03-04/other").exists()
    assert_same_training(final_state(tmp_path), reference)
