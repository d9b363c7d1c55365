"""The GPU check's parts that run ``tinycats fit`` as a user would, in subprocesses: a training
killed once with SIGKILL and resumed against uninterrupted ones, and DDP across devices.

Each run lives under the check's output folder (``runs/<part>/<variant>``, its log beside it).
The kill lands on a checkpoint boundary: the run is killed as soon as its first step file is on
disk, so the resumed run always has steps to redo.
"""

import itertools
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L

from benchmarks.chaos import PHOTOS, differences, final_state
from benchmarks.harness import REPO, markdown_table, synchronize

# torch.use_deterministic_algorithms (Lightning's trainer.deterministic) needs this for cuBLAS.
DETERMINISTIC = (("--trainer.deterministic=true",), {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
POLL_S = 0.02
STAMPS_ENV = "TINYCATS_STEP_STAMPS"


@dataclass(frozen=True)
class FitRun:
    """A ``tinycats fit`` of ``config`` with ``overrides``, its run named as the kill harness's."""

    config: Path
    overrides: tuple[str, ...]
    env: dict[str, str]

    def launch(self, root: Path) -> subprocess.Popen:
        """Start it with its outputs and data under ``root`` (log: root/log.txt)."""
        root.mkdir(parents=True, exist_ok=True)
        command = [
            *(sys.executable, "-m", "tinycats", "fit", "-c", str(self.config)),
            f"--run.outputs={root / 'outputs'}",
            f"--data.root={root / 'data'}",
            f"--data.source={PHOTOS}",
            "--run.name=chaos",
            "--run.date=2026-01-01",
            *self.overrides,
        ]
        env = {**os.environ, **self.env, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
        with open(root / "log.txt", "a") as log:
            return subprocess.Popen(
                command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def run_to_end(self, *roots: Path) -> None:
        """Run (or resume) it to the end in each of ``roots``, all at once."""
        processes = [self.launch(root) for root in roots]
        for root, process in zip(roots, processes, strict=True):
            if process.wait() != 0:
                log = (root / "log.txt").read_text()[-3000:]
                raise RuntimeError(f"{self.config} failed in {root}:\n{log}")

    def kill_after_first_checkpoint(self, root: Path) -> int:
        """Start it and SIGKILL its process group once a step file exists; the step killed at."""
        process = self.launch(root)
        while not list(root.glob("outputs/checkpoints/*/*/chaos/step=*.ckpt")):
            if process.poll() is not None:
                raise RuntimeError(f"{self.config} ended before its first checkpoint")
            time.sleep(POLL_S)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return min(int(p.stem.split("=")[1]) for p in root.glob("outputs/**/step=*.ckpt"))


MODES = {"default": ((), {}), "deterministic": DETERMINISTIC}


def kill_and_resume(
    config: Path, overrides: Sequence[str], modes: Sequence[str], folder: Path
) -> str:
    """Per mode (of MODES): two uninterrupted runs and one killed and resumed, compared by the
    kill harness's rule (every tensor of ``last.ckpt`` bit-equal). A mode whose run fails says
    why in its row (e.g. an op without a deterministic kernel)."""
    rows = []
    for mode in modes:
        extra, env = MODES[mode]
        try:
            rows.append(
                (mode, *_compare_runs(FitRun(config, (*overrides, *extra), env), folder / mode))
            )
        except RuntimeError as err:
            rows.append((mode, f"failed: {str(err).strip().splitlines()[-1]}", "", ""))
    header = [
        "mode",
        "uninterrupted vs uninterrupted",
        "killed at step",
        "resumed vs uninterrupted",
    ]
    shown = config.relative_to(REPO) if config.is_relative_to(REPO) else config
    command = " ".join(["tinycats fit -c", str(shown), *overrides])
    note = (
        f"`{command}`, SIGKILL to the "
        "process group once the first step file is on disk, then rerun to the end. Compared: "
        "global step, weights, EMA, optimizer and LR schedulers of `last.ckpt` (bit-equal or "
        "not). deterministic: `--trainer.deterministic=true` (torch.use_deterministic_algorithms)"
        " and CUBLAS_WORKSPACE_CONFIG=:4096:8. Logs and runs: "
        f"{folder}."
    )
    return note + "\n\n" + markdown_table(header, rows)


def _compare_runs(fit: FitRun, folder: Path) -> tuple[str, int, str]:
    """Two uninterrupted runs (at once) and one killed and resumed: how they compare."""
    fit.run_to_end(folder / "first", folder / "second")
    killed_at = fit.kill_after_first_checkpoint(folder / "killed")
    fit.run_to_end(folder / "killed")
    first, second, resumed = (final_state(folder / run) for run in ("first", "second", "killed"))
    return _verdict(differences(first, second)), killed_at, _verdict(differences(first, resumed))


def _verdict(found: list[str]) -> str:
    return "bit-equal" if not found else f"differ: {', '.join(found[:4])}"


class StepStamps(L.Callback):
    """Appends the time at each training step's start to the file ``$TINYCATS_STEP_STAMPS``
    (rank 0; added to a run with ``--trainer.callbacks+=benchmarks.gpu_runs.StepStamps``)."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        synchronize(pl_module.device)
        trainer.strategy.barrier()  # every rank has finished the step before
        if trainer.is_global_zero:
            with open(os.environ[STAMPS_ENV], "a") as stamps:
                stamps.write(f"{time.perf_counter()}\n")


def ddp(config: Path, overrides: Sequence[str], devices: int, folder: Path) -> str:
    """The median step of the same training on one device and on ``devices`` (DDP, each device
    its own batch), from the step starts ``StepStamps`` noted (after two warm-up steps)."""
    per_step = {}
    for count in (1, devices):
        root = folder / f"{count}-devices"
        extra = (
            f"--trainer.devices={count}",
            f"--trainer.callbacks+={StepStamps.__module__}.StepStamps",
        )
        FitRun(config, (*overrides, *extra), {STAMPS_ENV: str(root / "stamps.txt")}).run_to_end(
            root
        )
        stamps = [float(line) for line in (root / "stamps.txt").read_text().split()]
        per_step[count] = statistics.median(b - a for a, b in itertools.pairwise(stamps[2:]))
    rows = [
        (count, f"{1000 * s:,.1f}", f"{count * per_step[1] / s:.2f}x")
        for count, s in per_step.items()
    ]
    return markdown_table(["devices", "ms/step", "images/s vs one device"], rows, text_columns=0)
