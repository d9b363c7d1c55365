"""A checkpoint damaged after it was written (one byte flipped) is passed over by every reader."""

import logging
import os
from pathlib import Path

import lightning as L
import pytest
import torch

from tinycats.atomic import no_commit
from tinycats.errors import TinyCatsError
from tinycats.models import CatClassifier
from tinycats.runs.checkpoint_io import VolumeCheckpointIO
from tinycats.runs.loading import checkpoint_to_load, load_trained
from tinycats.runs.resume import resolve_extension, resolve_resume


def _save(path: Path, model: CatClassifier, mtime_s: int) -> Path:
    """A checkpoint of ``model`` written by the writer (with its SHA-256), dated ``mtime_s``."""
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": L.__version__,
        "global_step": mtime_s,
    }
    VolumeCheckpointIO(no_commit, background=False).save_checkpoint(checkpoint, path)
    os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))  # the order is set, not left to the clock
    return path


def _flip_a_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    times = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, CatClassifier, Path, Path]:
    """A run whose newest checkpoint had a byte flipped after it was written."""
    torch.manual_seed(0)
    model = CatClassifier(backbone="resnet18", weights=None)
    good = _save(tmp_path / "step=00000002.ckpt", model, 100)
    with torch.no_grad():
        model.net.fc.weight.add_(1.0)
    newest = _save(tmp_path / "step=00000004.ckpt", model, 200)
    _flip_a_middle_byte(newest)
    assert torch.load(newest, weights_only=True)["global_step"] == 200  # torch.load cannot tell
    return tmp_path, model, good, newest


def test_resume_and_extension_pass_over_a_damaged_newest_checkpoint(run, caplog) -> None:
    folder, model, good, newest = run
    with caplog.at_level(logging.WARNING, logger="tinycats"):
        assert resolve_resume("auto", folder, model) == good
        assert resolve_extension(folder, model) == good
    assert caplog.text.count(f"Skipping checkpoint {newest}: its SHA-256 differs") == 2


def test_loading_and_serving_pass_over_a_damaged_newest_checkpoint(run, caplog) -> None:
    folder, _, good, newest = run
    with caplog.at_level(logging.WARNING, logger="tinycats"):
        loaded = load_trained(folder, CatClassifier)
        assert checkpoint_to_load(folder) == good  # what `tinycats serve` loads
    expected = torch.load(good, weights_only=True)["state_dict"]["net.fc.weight"]
    assert torch.equal(loaded.net.fc.weight, expected)
    assert f"Skipping checkpoint {newest}: its SHA-256 differs" in caplog.text
    with pytest.raises(TinyCatsError, match="SHA-256 differs"):
        load_trained(newest)  # asked for by name: refused, not loaded
