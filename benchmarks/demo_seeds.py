"""The README's main job over several seeds: validation accuracy per seed against the majority class.

    python -m benchmarks.demo_seeds [--seeds 5] [--jobs 1]

Seed ``s`` runs ``tinycats fit -c configs/classifier_sample.yaml`` with ``seed_everything``,
``model.init_args.seed`` (augmentation draws) and ``data.split_seed`` (which photos validate,
and the training order) all set to ``s``: the weights' start, the augmentation, the order and
the validation photos all change. The split is stratified, so every seed validates on 29 cats
and 60 dogs. Prints a Markdown table with the machine it ran on. ``--jobs N`` trains N seeds at
once, each with ``cores // N`` threads (at least one): the accuracies stay, the times do not
compare with a sequential run's.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks.__main__ import machine
from benchmarks.harness import REPO, markdown_table

CONFIG = "configs/classifier_sample.yaml"


@dataclass(frozen=True)
class SeedResult:
    """One seed's finished run: validation accuracy, macro-F1, counts and wall time."""

    seed: int
    acc: float
    f1: float
    correct: int
    total: int
    majority: int
    seconds: float

    @property
    def majority_acc(self) -> float:
        """Accuracy of always answering the most common validation class."""
        return self.majority / self.total


def run_seed(seed: int, folder: Path, *overrides: str, threads: int | None = None) -> SeedResult:
    """Train the main job with ``seed`` (see the module docstring) in ``folder`` (runs under
    ``seed<N>/``, the shared image cache under ``data/``)."""
    began = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinycats",
            "fit",
            "-c",
            CONFIG,
            f"--run.outputs={folder / f'seed{seed}'}",
            f"--data.root={folder / 'data'}",
            f"--seed_everything={seed}",
            f"--model.init_args.seed={seed}",
            f"--data.split_seed={seed}",
            "--trainer.enable_progress_bar=false",
            *overrides,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"seed {seed} failed:\n{done.stderr[-3000:]}")
    seconds = time.perf_counter() - began
    run = next((folder / f"seed{seed}").rglob("summary.json")).parent
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    matrix = json.loads(next(run.rglob("confusion_val.json")).read_text())["matrix"]
    return SeedResult(
        seed=seed,
        acc=metrics["val/acc"],
        f1=metrics["val/f1"],
        correct=sum(row[i] for i, row in enumerate(matrix)),
        total=sum(map(sum, matrix)),
        majority=max(map(sum, matrix)),
        seconds=seconds,
    )


def table(results: list[SeedResult]) -> str:
    """Per-seed rows, then the mean and the lowest accuracy against the majority class."""
    rows = [
        [
            r.seed,
            f"{r.acc:.4f}",
            f"{r.f1:.4f}",
            f"{r.correct}/{r.total}",
            f"{r.majority_acc:.4f}",
            f"{r.acc - r.majority_acc:+.4f}",
            f"{r.seconds:.0f}",
        ]
        for r in results
    ]
    accs = [r.acc for r in results]
    margins = [r.acc - r.majority_acc for r in results]
    rows.append(
        ["mean", f"{statistics.mean(accs):.4f}", "", "", "", f"{statistics.mean(margins):+.4f}", ""]
    )
    rows.append(["lowest", f"{min(accs):.4f}", "", "", "", f"{min(margins):+.4f}", ""])
    header = ["seed", "val/acc", "val/f1", "correct", "majority", "margin", "wall s"]
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 (default 5)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once (default 1)")
    args = parser.parse_args()
    load = os.getloadavg()
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        # Seeds share one image cache; each process writes it atomically (data/cache.py).
        results = list(
            pool.map(lambda s: run_seed(s, Path(tmp), threads=threads), range(args.seeds))
        )
    jobs = f" --jobs {args.jobs}" if args.jobs > 1 else ""
    print(f"`python -m benchmarks.demo_seeds --seeds {args.seeds}{jobs}` ({CONFIG})\n")
    per_seed = (
        f"{threads} thread(s) per seed, {args.jobs} seeds at once"
        if threads
        else "torch's default threads, one seed at a time"
    )
    print(machine(load, os.getloadavg()) + f"\n- training: {per_seed}\n")
    print(table(results))


if __name__ == "__main__":
    main()
