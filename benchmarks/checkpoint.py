"""What a checkpoint costs: one save + prune + commit against one training step, and resume latency.

    python -m benchmarks.checkpoint [--configs configs/dit.yaml,...] [--quick]

The costs come from the step split's fit (benchmarks/step_split.py), which checkpoints every
step and keeps five: the median over the timed steps of the checkpoint callback's time, against
the median step without it. The warm-up steps, whose first save also creates the folder, are
left out. The resume latency is a fresh ``tinycats fit`` process that continues a finished
one-step tiny-classifier run by one step: from process start to exit.
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import step_split
from benchmarks.harness import REPO, markdown_table, parse_args, prepare
from benchmarks.step_split import StepSplit

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
        rows = step_split.measure(setup)
    print(table(rows, resume_latency()))


if __name__ == "__main__":
    main()
