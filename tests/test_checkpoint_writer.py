"""The checkpoint writer (runs/checkpoint_io.py): its order, its waits, its failures, a full disk."""

import errno
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from tinycats.atomic import no_commit
from tinycats.runs import checksums
from tinycats.runs.checkpoint_io import OutOfSpace, VolumeCheckpointIO
from tinycats.runs.checkpointing import CheckpointPolicy, build_checkpoints

from helpers.stop import InterruptAtStep


def _fit(tmp_path: Path, commit, max_steps: int, keep_last: int, *callbacks: L.Callback) -> None:
    policy = CheckpointPolicy(every_n_train_steps=1, keep_last=keep_last)
    trainer = L.Trainer(
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*build_checkpoints(policy, tmp_path, commit), *callbacks],
        limit_val_batches=0,
    )
    trainer.fit(BoringModel())


def _slow_saves(monkeypatch, seconds: float) -> None:
    """Make every serialisation take ``seconds`` longer: a save stays in flight that long."""
    save = torch.save
    monkeypatch.setattr(torch, "save", lambda *args: (time.sleep(seconds), save(*args))[1])


def _step_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("step=*.ckpt"))


class CheckingCommit:
    """A volume commit that records what it would upload and what was wrong with it."""

    def __init__(self, folder: Path, keep_last: int) -> None:
        self.folder, self.keep_last = folder, keep_last
        self.snapshots: list[list[str]] = []
        self.problems: list[str] = []

    def __call__(self) -> None:
        names = sorted(p.name for p in self.folder.iterdir())
        self.snapshots.append(names)
        self.problems += [f"{n} half-written" for n in names if n.endswith(".partial")]
        for path in self.folder.glob("*.ckpt"):
            if checksums.recorded(path) != checksums.file_sha256(path):
                self.problems.append(f"{path.name} committed without its SHA-256")
        saved = len(self.snapshots)  # a step file per step, each committed once, prunes after
        if len(_step_files(self.folder)) < min(self.keep_last, saved):
            self.problems.append(f"a step file pruned before its successor was committed: {names}")


def test_each_commit_sees_whole_checksummed_files_and_prunes_follow_it(
    tmp_path: Path, monkeypatch
) -> None:
    _slow_saves(monkeypatch, 0.05)  # the training thread runs ahead of the writer
    commit = CheckingCommit(tmp_path, keep_last=3)
    _fit(tmp_path, commit, max_steps=6, keep_last=3)
    assert commit.problems == []
    assert len(commit.snapshots) == 6 + 3 + 1  # six saves, three prunes, last.ckpt
    assert _step_files(tmp_path) == [f"step={s:08d}.ckpt" for s in (4, 5, 6)]


def test_a_signal_stop_waits_for_the_save_in_flight(tmp_path: Path, monkeypatch) -> None:
    _slow_saves(monkeypatch, 0.3)
    commits: list[list[str]] = []
    with pytest.raises(SystemExit):
        _fit(
            tmp_path,
            lambda: commits.append(sorted(p.name for p in tmp_path.glob("*.ckpt"))),
            10,
            5,
            InterruptAtStep(3),
        )
    # When fit has returned, step 3's file and last.ckpt (a link to it) are on the volume.
    assert len(commits) == 3 + 1
    assert commits[-1] == ["last.ckpt", *(f"step={s:08d}.ckpt" for s in (1, 2, 3))]


def test_a_failed_save_is_raised_in_training_and_nothing_is_pruned_after_it(
    tmp_path: Path, monkeypatch
) -> None:
    save, calls = torch.save, []

    def failing_fourth(*args) -> None:
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("the volume went away")
        save(*args)

    monkeypatch.setattr(torch, "save", failing_fourth)
    with pytest.raises(RuntimeError, match="the volume went away"):
        _fit(tmp_path, no_commit, max_steps=8, keep_last=2)
    # Step 4 failed; the prune of step 2 queued behind it did not run: two good files remain.
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".ckpt") == [
        "step=00000002.ckpt",
        "step=00000003.ckpt",
    ]
    assert not list(tmp_path.glob("*.partial"))


def test_a_full_disk_refuses_with_the_space_needed_and_keeps_the_good_checkpoints(
    tmp_path: Path, monkeypatch
) -> None:
    _fit(tmp_path / "probe", no_commit, max_steps=1, keep_last=1)
    size = (tmp_path / "probe/step=00000001.ckpt").stat().st_size
    budget = [int(3.5 * size)]  # three checkpoints fit, the fourth fills the disk mid-write
    write = checksums.HashingWriter.write

    def filling(self, data: bytes) -> int:
        budget[0] -= len(data)
        if budget[0] < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, data)

    monkeypatch.setattr(checksums.HashingWriter, "write", filling)
    with pytest.raises(OutOfSpace) as refused:
        _fit(tmp_path / "run", no_commit, max_steps=8, keep_last=5)
    tmp_path = tmp_path / "run"
    message = str(refused.value)
    assert "step=00000004.ckpt" in message and str(tmp_path) in message
    assert "a checkpoint needs about" in message and "MB are free there" in message
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert _step_files(tmp_path) == [f"step={s:08d}.ckpt" for s in (1, 2, 3)]
    for path in tmp_path.glob("step=*.ckpt"):
        assert checksums.damage(path) is None
        assert torch.load(path, weights_only=False)["global_step"] == int(path.stem[5:])


def test_the_sha256_is_hashed_while_writing_and_matches_the_file(tmp_path: Path) -> None:
    writer = VolumeCheckpointIO(no_commit, background=False)
    path = tmp_path / "step=00000001.ckpt"
    writer.save_checkpoint({"state_dict": BoringModel().state_dict()}, path)
    assert checksums.recorded(path) == checksums.file_sha256(path)
    assert writer.stall_seconds >= writer.write_seconds > 0  # written on the training thread
    assert (tmp_path / "step=00000001.ckpt.sha256").read_text().endswith("  step=00000001.ckpt\n")


def test_a_background_save_holds_the_state_at_the_call_though_training_goes_on(
    tmp_path: Path, monkeypatch
) -> None:
    _slow_saves(monkeypatch, 0.2)  # the write happens well after training changed the weights
    writer, weight = VolumeCheckpointIO(no_commit), torch.zeros(3)
    for step in (1, 2):  # the second save reuses the first one's host buffers
        writer.save_checkpoint({"state_dict": {"w": weight}}, tmp_path / f"{step}.ckpt")
        weight.add_(1.0)  # the next training step, while the save is in flight
    writer.teardown()
    for step in (1, 2):
        saved = torch.load(tmp_path / f"{step}.ckpt", weights_only=True)["state_dict"]["w"]
        assert torch.equal(saved, torch.full((3,), step - 1.0))


def test_a_replaced_checkpoint_never_keeps_the_checksum_of_the_file_before(tmp_path: Path) -> None:
    writer = VolumeCheckpointIO(no_commit, background=False)
    last, old_step = tmp_path / "last.ckpt", tmp_path / "step=00000001.ckpt"
    writer.save_checkpoint({"global_step": 0}, last)
    torch.save({"global_step": 1}, old_step)  # written before checksums: no .sha256
    writer.keep_as(old_step, last)
    assert checksums.damage(last) is None  # unverified, not passed over as damaged
    assert torch.load(last, weights_only=True)["global_step"] == 1
