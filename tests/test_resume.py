"""Which checkpoint a run resumes from (runs/resume.py), on hand-made checkpoint files."""

import logging
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from tinycats.errors import TinyCatsError
from tinycats.runs.resume import resolve_resume


def _checkpoint(path: Path, model: nn.Module, mtime_s: int) -> Path:
    """A Lightning-like checkpoint of ``model`` whose modification time is ``mtime_s``."""
    torch.save({"state_dict": model.state_dict(), "global_step": mtime_s}, path)
    os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))  # the order is set, not left to the clock
    return path


def test_never_refuses_a_run_directory_that_holds_checkpoints(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    assert resolve_resume("never", tmp_path, model) is None  # nothing there: a fresh start
    _checkpoint(tmp_path / "step=00000002.ckpt", model, 100)
    with pytest.raises(TinyCatsError, match="--resume never") as refused:
        resolve_resume("never", tmp_path, model)
    assert str(tmp_path) in str(refused.value) and "pick a new --run.name" in str(refused.value)


def test_auto_passes_over_a_truncated_newest_checkpoint(tmp_path: Path, caplog) -> None:
    model = nn.Linear(2, 2)
    good = _checkpoint(tmp_path / "step=00000002.ckpt", model, 100)
    _checkpoint(tmp_path / "step=00000004.ckpt", nn.Linear(3, 2), 200)  # another shape
    last = _checkpoint(tmp_path / "last.ckpt", model, 300)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    os.utime(last, ns=(300 * 10**9, 300 * 10**9))
    with caplog.at_level(logging.WARNING, logger="tinycats"):
        assert resolve_resume("auto", tmp_path, model) == good
    assert f"Skipping checkpoint {last}: unreadable" in caplog.text
    assert "step=00000004.ckpt: it has other shapes" in caplog.text


def test_last_ckpt_wins_a_tie_and_nothing_loadable_starts_fresh(tmp_path: Path, caplog) -> None:
    model = nn.Linear(2, 2)
    _checkpoint(tmp_path / "step=00000004.ckpt", model, 100)
    last = _checkpoint(tmp_path / "last.ckpt", model, 100)
    assert resolve_resume("auto", tmp_path, model) == last
    assert resolve_resume("auto", tmp_path, nn.Linear(5, 5)) is None
    assert "training starts from scratch" in caplog.text
