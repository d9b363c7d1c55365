"""Every ``tinycats fit`` run also writes TensorBoard events: scalars, the learning rate and the
DiT's sample grids, in its run directory (so ``tensorboard --logdir outputs`` finds them)."""

import subprocess
import sys
from pathlib import Path

import pytest

TIMEOUT = 300


@pytest.fixture(scope="module")
def dit_run(tmp_path_factory, pets_sample: Path) -> Path:
    """One tiny DiT run (4 steps, a sample grid at step 4) through the real command."""
    tmp = tmp_path_factory.mktemp("tensorboard")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinycats",
            "fit",
            "-c",
            "tests/configs/dit_tiny.yaml",
            f"--run.outputs={tmp / 'outputs'}",
            f"--data.root={tmp / 'data'}",
            f"--data.source={pets_sample}",
            "--run.date=2026-01-02",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "outputs/checkpoints/dit/2026-01-02/tiny"


def read_events(run: Path):
    """TensorBoard's own reader over the run directory (the events files directly in it)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def test_fit_writes_scalars_learning_rate_and_sample_grids(dit_run: Path) -> None:
    assert list(dit_run.glob("events.out.tfevents.*")), sorted(p.name for p in dit_run.iterdir())
    events = read_events(dit_run)
    tags = events.Tags()
    assert {"train/flow_loss", "lr-AdamW"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/flow_loss")] == [0, 1, 2, 3]
    learning_rates = [e.value for e in events.Scalars("lr-AdamW")]
    assert len(learning_rates) == 4 and learning_rates[0] < max(learning_rates)  # the warm-up
    grids = events.Images("samples")
    assert [g.step for g in grids] == [4]
    png = (dit_run / "samples/step=00000004.png").read_bytes()
    from io import BytesIO

    from PIL import Image

    with (
        Image.open(BytesIO(png)) as saved,
        Image.open(BytesIO(grids[0].encoded_image_string)) as logged,
    ):
        assert (logged.width, logged.height) == (saved.width, saved.height)
        assert logged.convert("RGB").tobytes() == saved.convert("RGB").tobytes()
    # The CSV log is still the trainer's log_dir: metrics.csv beside the events.
    assert (dit_run / "metrics.csv").is_file()
