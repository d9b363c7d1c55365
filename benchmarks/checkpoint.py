"""What a checkpoint costs: one save + prune + commit against one training step, the training
thread's stall per save (synchronous vs asynchronous), and resume latency.

    python -m benchmarks.checkpoint [--configs configs/dit.yaml,...] [--quick]

The costs come from the step split's fit (benchmarks/step_split.py), which checkpoints every
step and keeps five: the median over the timed steps of the checkpoint callback's time, against
the median step without it. The warm-up steps, whose first save also creates the folder, are
left out. The stalls (``save_stalls``) are timed inside a fit, after one training step (so the
optimizer state exists), on the device: ``trainer.save_checkpoint`` through two writers
(runs/checkpoint_io.py), one writing on the training thread and one in the background,
interleaved, the median of a few after one warm-up save each (the background writer's first save
allocates the host buffers it reuses); each background save is waited for before the next, and
the disk given what the page cache holds (``os.sync``, untimed), as a checkpoint interval longer
than a write does. Beside them: the background write's own time, the
SHA-256 of the file's bytes (already in memory: what hashing adds to a save), and the copy of
the step file into last.ckpt that every checkpoint paid before last.ckpt was written at stops
only, and the whole save as it was (Lightning's ``TorchCheckpointIO``, which serialises into
memory and then writes, and that copy) on the training thread. The resume latency is a fresh
``tinycats fit`` process that continues a finished one-step tiny-classifier run by one step:
from process start to exit.
"""

import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.plugins.io import TorchCheckpointIO

from benchmarks import step_split
from benchmarks.harness import REPO, Setup, Workload, markdown_table, parse_args, prepare, trainer
from benchmarks.step_split import StepSplit
from tinycats.atomic import no_commit
from tinycats.runs.checkpoint_io import VolumeCheckpointIO

REPEATS = 3


@dataclass(frozen=True)
class SaveStall:
    """Seconds one checkpoint costs, medians of ``REPEATS`` (see the module docstring)."""

    config: str
    checkpoint_mb: float
    synchronous: float  # the training thread's stall when it writes the file itself
    asynchronous: float  # its stall when it copies to host memory and the writer goes on
    background_write: float  # from the asynchronous save's start until the file is committed
    sha256: float  # hashing the file's bytes, part of both saves
    last_copy: float  # the second full write (last.ckpt) each checkpoint no longer makes
    before: float  # the save as it was: Lightning's TorchCheckpointIO, then that last.ckpt copy


class _MeasureSaves(L.Callback):
    """Times the saves at the end of training, while the model and optimizer are on the device."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.times: dict[str, list[float]] = {}
        self.size = 0

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writers = {background: VolumeCheckpointIO(no_commit, background) for background in (0, 1)}
        for repeat in range(1 + REPEATS):  # the first: warm-up (the host buffers are allocated)
            for background, writer in writers.items():  # interleaved: drift hits both alike
                self._save(trainer, writer, self.folder / f"{background}.ckpt", noted=repeat > 0)

    def _save(
        self, trainer: L.Trainer, writer: VolumeCheckpointIO, path: Path, noted: bool
    ) -> None:
        trainer.strategy.checkpoint_io = writer
        os.sync()  # the disk takes what the page cache holds, as between real checkpoints
        start = time.perf_counter()
        trainer.save_checkpoint(path)
        stalled = time.perf_counter() - start
        writer.wait()
        written = time.perf_counter() - start
        if writer.background:
            self._note("asynchronous", stalled, noted)
            self._note("background_write", written, noted)
            return
        self._note("synchronous", stalled, noted)
        data = path.read_bytes()
        start = time.perf_counter()
        hashlib.sha256(data).hexdigest()
        self._note("sha256", time.perf_counter() - start, noted)
        start = time.perf_counter()
        shutil.copyfile(path, path.with_name("last.ckpt"))
        self._note("last_copy", time.perf_counter() - start, noted)
        trainer.strategy.checkpoint_io = TorchCheckpointIO()
        os.sync()
        start = time.perf_counter()
        trainer.save_checkpoint(path)
        shutil.copyfile(path, path.with_name("last.ckpt"))
        self._note("before", time.perf_counter() - start, noted)
        self.size = len(data)
        for written_file in self.folder.glob("*.ckpt*"):
            written_file.unlink()

    def _note(self, name: str, seconds: float, noted: bool) -> None:
        if noted:
            self.times.setdefault(name, []).append(seconds)


def save_stall(workload: Workload, setup: Setup) -> SaveStall:
    """The stall of one save of ``workload``'s checkpoint, synchronous vs asynchronous."""
    with tempfile.TemporaryDirectory(dir=setup.root.parent) as tmp:
        probe = _MeasureSaves(Path(tmp))
        trainer(setup.device, 1, callbacks=[probe], precision=workload.precision).fit(
            workload.module(), datamodule=workload.data(setup)
        )
    median = {name: statistics.median(values) for name, values in probe.times.items()}
    return SaveStall(config=workload.config, checkpoint_mb=probe.size / 1e6, **median)


def save_stalls(setup: Setup) -> list[SaveStall]:
    """The save stalls of every workload of ``setup``, one after the other in this process."""
    return [save_stall(workload, setup) for workload in setup.workloads]


def stall_table(setup: Setup) -> str:
    """The stall table, synchronous vs asynchronous, of every workload of ``setup`` (what
    ``benchmarks.gpu`` calls)."""
    return format_stalls(save_stalls(setup))


def compare_save_stalls(configs: list[str] | None = None, quick: bool = False) -> str:
    """The stall table for ``configs`` (default: DiT-S/4 and the classifier) on this machine's
    device, preparing their data itself."""
    with prepare(quick, configs or (None if quick else STALL_CONFIGS)) as setup:
        return stall_table(setup)


STALL_CONFIGS = ("configs/dit.yaml", "configs/classifier.yaml")


def format_stalls(rows: list[SaveStall]) -> str:
    """One row per config: what a save stalls training, inline and in the background, against
    the save as it was before the writer (Lightning's), and what hashing adds."""
    header = [
        "config",
        "checkpoint MB",
        "sync stall s",
        "async stall s",
        "async / sync",
        "background write s",
        "SHA-256 s",
        "last.ckpt copy s (gone)",
        "before: Lightning's save + copy s",
        "async / before",
    ]
    return markdown_table(
        header,
        [
            (
                row.config,
                f"{row.checkpoint_mb:,.0f}",
                f"{row.synchronous:.3f}",
                f"{row.asynchronous:.3f}",
                f"{row.asynchronous / row.synchronous:.1%}",
                f"{row.background_write:.3f}",
                f"{row.sha256:.3f}",
                f"{row.last_copy:.3f}",
                f"{row.before:.3f}",
                f"{row.asynchronous / row.before:.1%}",
            )
            for row in rows
        ],
    )


TINY = "tests/configs/classifier_tiny.yaml"


def resume_latency() -> float:
    """Seconds from process start until a run resumed one step before its end has finished."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            sys.executable,
            "-m",
            "tinycats",
            "fit",
            "-c",
            TINY,
            f"--run.outputs={tmp}/out",
            f"--data.root={tmp}/data",
            "--trainer.max_steps=1",
        ]
        subprocess.run(args, cwd=REPO, check=True, capture_output=True)
        run = next(Path(tmp, "out").rglob("summary.json")).parent
        (run / "summary.json").unlink()
        start = time.perf_counter()
        subprocess.run(
            [*args[:-1], "--trainer.max_steps=2"], cwd=REPO, check=True, capture_output=True
        )
        return time.perf_counter() - start


def table(rows: list[StepSplit], resume_seconds: float | None) -> str:
    """One row per config, then the resume latency (``None``: not measured)."""
    header = [
        "config",
        "batch",
        "checkpoint MB",
        "step s",
        "checkpoint s",
        "checkpoint / step",
        "commits / checkpoint",
        "checkpoint every",
        "share of the step",
    ]
    text = markdown_table(
        header,
        [
            (
                row.config,
                row.batch,
                f"{row.checkpoint_mb:,.0f}",
                f"{row.step:.3f}",
                f"{row.checkpoint:.3f}",
                f"{row.checkpoint / row.step:.2f}",
                f"{row.commits_per_checkpoint:.1f}",
                row.checkpoint_every,
                f"{row.shares()['checkpoint']:.2%}",
            )
            for row in rows
        ],
    )
    if resume_seconds is None:
        return text
    return (
        f"{text}\n\nResume latency (process start → resumed, one step, exit; "
        f"tests/configs/classifier_tiny.yaml): {resume_seconds:.1f} s"
    )


def main() -> None:
    args = parse_args(__doc__)
    with prepare(args.quick, args.configs) as setup:
        stalls = save_stalls(setup)
        rows = step_split.measure(setup)
    print(f"{format_stalls(stalls)}\n\n{table(rows, resume_latency())}")


if __name__ == "__main__":
    main()
