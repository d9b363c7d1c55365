"""VolumeCheckpoint: what is kept, when the volume is committed, and which rank commits."""

import datetime as dt
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from tinycats.atomic import no_commit
from tinycats.cli import run_cli
from tinycats.runs.checkpointing import CheckpointPolicy, build_checkpoints
from tinycats.runs.run_dir import RunSpec, newest_first, resolve_run_dir, resumable_checkpoints

from helpers.stop import InterruptAtStep

TINY = "tests/configs/classifier_tiny.yaml"


class CountingCommit:
    """A stand-in for a volume commit that records the files present at each call."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.snapshots: list[set[str]] = []

    def __call__(self) -> None:
        self.snapshots.append({p.name for p in self.folder.iterdir()})


def test_keeps_the_newest_five_and_commits_after_every_save_and_prune(tmp_path: Path) -> None:
    commit = CountingCommit(tmp_path)
    callbacks = build_checkpoints(
        CheckpointPolicy(every_n_train_steps=1, keep_last=5), tmp_path, commit
    )
    trainer = L.Trainer(
        max_steps=12,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        limit_val_batches=0,
    )
    trainer.fit(BoringModel())
    names = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert names == ["last.ckpt", *(f"step={s:08d}.ckpt" for s in range(8, 13))]
    saves, prunes = 12 + 1, 12 - 5  # a step file per step, last.ckpt at the end; a prune from 6 on
    assert len(commit.snapshots) == saves + prunes
    assert all(not any(n.endswith(".partial") for n in snapshot) for snapshot in commit.snapshots)
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 12


@pytest.mark.parametrize(("max_steps", "last_step"), [(6, 6), (5, 5)])
def test_last_ckpt_is_written_once_at_the_end_and_links_the_step_file_of_its_step(
    tmp_path: Path, monkeypatch, max_steps: int, last_step: int
) -> None:
    callbacks = build_checkpoints(CheckpointPolicy(every_n_train_steps=2), tmp_path, no_commit)
    trainer = L.Trainer(
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        limit_val_batches=0,
    )
    serialized: list[str] = []
    save = torch.save
    monkeypatch.setattr(
        torch,
        "save",
        lambda checkpoint, file, *args: (
            serialized.append(Path(file.file.name).name),
            save(checkpoint, file, *args),
        ),
    )
    trainer.fit(BoringModel())
    steps = [f"step={s:08d}.ckpt.partial" for s in range(2, max_steps + 1, 2)]
    # A step that ends the run without a step file is serialized into last.ckpt itself.
    assert serialized == steps + (["last.ckpt.partial"] if max_steps % 2 else [])
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["global_step"] == last_step
    if not max_steps % 2:
        assert (tmp_path / "last.ckpt").samefile(tmp_path / steps[-1][: -len(".partial")])


def test_sigint_stops_at_the_next_step_boundary_with_last_ckpt_of_that_step(tmp_path: Path) -> None:
    callbacks = build_checkpoints(CheckpointPolicy(every_n_train_steps=100), tmp_path, no_commit)
    trainer = L.Trainer(
        max_steps=10,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, InterruptAtStep(3)],
        limit_val_batches=0,
    )
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit):  # Lightning's exit after a SIGTERM stop
        trainer.fit(BoringModel())
    assert signal.getsignal(signal.SIGINT) is handler  # put back after training
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 3


def test_an_empty_run_date_is_today_and_an_explicit_one_survives_midnight(tmp_path: Path) -> None:
    spec = RunSpec(outputs=str(tmp_path), name="a")
    first = resolve_run_dir(spec, "classifier", today=dt.date(2026, 5, 1))
    assert first.path == tmp_path / "checkpoints/classifier/2026-05-01/a"
    retried = resolve_run_dir(
        RunSpec(outputs=str(tmp_path), name="a", date="2026-05-01"),
        "classifier",
        today=dt.date(2026, 5, 2),
    )
    assert retried.path == first.path


@pytest.mark.parametrize("field", ["name", "date"])
def test_run_identity_rejects_unsafe_values(tmp_path: Path, field: str) -> None:
    from tinycats.errors import TinyCatsError

    with pytest.raises(TinyCatsError, match=f"run.{field}"):
        resolve_run_dir(RunSpec(outputs=str(tmp_path), **{field: "../escape"}), "classifier")


def test_pruning_continues_in_the_same_directory_after_a_date_change(
    tmp_path: Path, pets_sample: Path, monkeypatch
) -> None:
    args = [
        "fit",
        "-c",
        TINY,
        f"--run.outputs={tmp_path}",
        f"--data.root={tmp_path / 'data'}",
        f"--data.source={pets_sample}",
        "--checkpoint.every_n_train_steps=1",
        "--trainer.limit_val_batches=0",
    ]

    class Clock(dt.date):
        now = dt.date(2026, 5, 1)

        @classmethod
        def today(cls) -> dt.date:
            return cls.now

    monkeypatch.setattr("tinycats.runs.run_dir.dt.date", Clock)
    commits: list[int] = []
    with pytest.raises(SystemExit):  # stopped as a preempted run is, after step 4
        run_cli(
            [
                *args,
                "--trainer.max_steps=8",
                "--trainer.callbacks+=helpers.stop.StopAtStep",
                "--trainer.callbacks.step=4",
            ],
            commit_outputs=lambda: commits.append(1),
        )
    run = tmp_path / "checkpoints/classifier/2026-05-01/tiny"
    assert sorted(p.name for p in run.glob("*.ckpt"))[-1] == "step=00000004.ckpt"
    Clock.now = dt.date(
        2026, 5, 2
    )  # the retry starts after midnight, with the date fixed at launch
    summary = run_cli(
        [*args, "--trainer.max_steps=8", "--run.date=2026-05-01"],
        commit_outputs=lambda: commits.append(1),
    )
    assert summary["global_step"] == 8 and summary["run_dir"] == str(run)
    assert not (tmp_path / "checkpoints/classifier/2026-05-02").exists()
    assert sorted(p.name for p in run.glob("*.ckpt")) == [
        "last.ckpt",
        *(f"step={s:08d}.ckpt" for s in range(4, 9)),
    ]
    # Attempt 1: 4 step files, last.ckpt at the stop; attempt 2: 4 step files, the stale
    # last.ckpt removed, 3 prunes, last.ckpt at the end; the summary.
    assert len(commits) == (4 + 1) + (4 + 1 + 3 + 1) + 1


@pytest.mark.slow
def test_two_process_ddp_trains_and_only_rank_zero_commits(
    tmp_path: Path, pets_sample: Path
) -> None:
    record = tmp_path / "commits.txt"
    done = subprocess.run(
        [
            sys.executable,
            "tests/helpers/ddp_commits.py",
            str(record),
            "--",
            "-c",
            TINY,
            f"--run.outputs={tmp_path}",
            f"--data.root={tmp_path / 'data'}",
            f"--data.source={pets_sample}",
            "--trainer.strategy=ddp",
            "--trainer.devices=2",
            "--trainer.accelerator=cpu",
            "--trainer.max_steps=4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = record.read_text().split()
    assert ranks and set(ranks) == {"0"}
    last = next(tmp_path.rglob("last.ckpt"))
    assert torch.load(last, weights_only=False)["global_step"] == 4


class CrashAtStep(BoringModel):
    """Raises in the forward pass of step ``step``: the weights may be half-updated then."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.crash_step = step

    def training_step(self, batch, batch_idx: int):
        if self.global_step == self.crash_step:
            raise RuntimeError("crash mid-step")
        return super().training_step(batch, batch_idx)


def test_a_crash_saves_nothing_so_last_ckpt_stays_the_newest_step_file(
    tmp_path: Path,
) -> None:
    callbacks = build_checkpoints(CheckpointPolicy(every_n_train_steps=2), tmp_path, no_commit)
    trainer = L.Trainer(
        max_steps=10,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        limit_val_batches=0,
    )
    with pytest.raises(RuntimeError, match="crash mid-step"):
        trainer.fit(CrashAtStep(5))
    # No last.ckpt (it is written at stops only): the newest step file, 4, is the resume point.
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == [
        "step=00000002.ckpt",
        "step=00000004.ckpt",
    ]
    assert newest_first(resumable_checkpoints(tmp_path))[0].name == "step=00000004.ckpt"
