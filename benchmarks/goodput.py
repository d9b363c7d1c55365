"""Goodput under preemption: the ledger's figure against the wall clock's.

    python -m benchmarks.goodput [--mean-s 40] [--seed 0] [--signal SIGKILL]

A short training (configs/classifier_sample.yaml, shrunk) is killed at random moments, a
Poisson process with a mean of ``--mean-s`` seconds between kills, and launched again until it
finishes, as Modal retries a preempted attempt. Measured from the outside:

- paid time: each attempt's wall time, from launching the process to its exit;
- productive time: for every step of the finished run, the wall time of the execution that
  counted (the last one; earlier ones were redone), stamped by ``StepStamps`` in the process.

goodput = productive / paid, beside what the run's ledger says (plans/0018-ledger.md).
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

REPO = Path(__file__).resolve().parents[1]
STAMPS_ENV = "TINYCATS_STEP_STAMPS"
CONFIG = "configs/classifier_sample.yaml"
# Shrunk in size only: smaller photos and 20 of its 30 epochs; the rest (a checkpoint every 65
# steps, validation each epoch, best.ckpt) as shipped.
SHRUNK = ["--data.image_size=32", "--trainer.max_epochs=20"]


class StepStamps(L.Callback):
    """Append ``<global step> <start> <end>`` (Unix seconds) for every training step (rank 0)."""

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        self._start = time.time()

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.is_global_zero:
            with open(os.environ[STAMPS_ENV], "a") as stamps:
                stamps.write(f"{trainer.global_step} {self._start} {time.time()}\n")


def train_with_kills(root: Path, mean_s: float, kill: signal.Signals, seed: int) -> list[float]:
    """Launch the run until it finishes, killing each attempt at a Poisson moment; wall times."""
    draw = random.Random(seed)
    env = {**os.environ, STAMPS_ENV: str(root / "stamps.txt")}
    command = [sys.executable, "-m", "tinycats", "fit", "-c", CONFIG, *SHRUNK]
    command += [f"--run.outputs={root}", "--trainer.enable_progress_bar=false"]
    command += ["--trainer.callbacks+=benchmarks.goodput.StepStamps"]
    walls = []
    while True:
        launched = time.time()
        attempt = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            status = attempt.wait(timeout=draw.expovariate(1 / mean_s))
        except subprocess.TimeoutExpired:
            os.killpg(attempt.pid, kill)
            status = attempt.wait()
        walls.append(time.time() - launched)
        print(f"  attempt {len(walls)}: {walls[-1]:.1f} s, exit {status}", flush=True)
        if status == 0:
            return walls


def step_times(stamps: Path) -> tuple[float, float]:
    """Wall time of the steps' last executions (the ones that counted), and of all the others."""
    last, total = {}, 0.0
    for line in stamps.read_text().splitlines():
        step, start, end = line.split()
        last[int(step)] = float(end) - float(start)
        total += float(end) - float(start)
    return sum(last.values()), total - sum(last.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mean-s", type=float, default=40.0, help="mean seconds between kills")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--signal", default="SIGKILL", choices=["SIGKILL", "SIGINT"])
    args = parser.parse_args()

    from tinycats.runs import ledger

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        print(f"Training {CONFIG} {' '.join(SHRUNK)}, killed every {args.mean_s:.0f} s on average")
        walls = train_with_kills(root, args.mean_s, signal.Signals[args.signal], args.seed)
        run_dir = next((root / "checkpoints").glob("*/*/*"))
        figures = ledger.read_ledger(run_dir).summary()
        paid, (productive, redone) = sum(walls), step_times(root / "stamps.txt")
    measured = productive / paid
    rows = [
        ("attempts", f"{len(walls)}", f"{figures['attempts']}"),
        ("paid time", f"{paid:.1f} s", f"{figures['paid_s']:.1f} s"),
        ("productive training time", f"{productive:.1f} s", f"{figures['productive_s']:.1f} s"),
        ("training time of redone steps", f"{redone:.1f} s", f"{figures['lost_s']:.1f} s"),
        ("goodput", f"{measured:.1%}", f"{figures['goodput']:.1%}"),
    ]
    print("\n| | wall clock | ledger |\n|---|---|---|")
    print("\n".join(f"| {name} | {wall} | {book} |" for name, wall, book in rows))
    difference = 100 * (figures["goodput"] - measured)
    print(
        f"\nledger − wall clock: {difference:+.1f} percentage points ({args.signal}, seed {args.seed})"
    )


if __name__ == "__main__":
    main()
