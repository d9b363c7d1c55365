"""The benchmark suite: every part, one summary table, written with the machine's description.

    python -m benchmarks [--quick] [--out benchmarks/results.md]

One summary row per training config (configs/classifier.yaml, dit.yaml, dit_128.yaml), then
each part's own table. On a GPU the configs train at their configured batch, on a CPU at a
sixteenth of it, each in the precision ``tinycats fit`` picks on this machine (see
benchmarks/harness.py); the throughput part also times float32 beside it. ``--quick`` is sized for CI: the tiny test
configs, 3 timed steps, one epoch per data pipeline, one import per client row, no retry start.
"""

import argparse
import datetime as dt
import os
import platform
import subprocess
import time
from pathlib import Path

import lightning as L
import torch

from benchmarks import (
    chaos,
    checkpoint,
    cold_start,
    data_pipeline,
    harness,
    serve,
    step_split,
    throughput,
)
from benchmarks.harness import REPO, markdown_table, prepare, training_device

SUMMARY_NOTES = """\
- **img/s**: training images per second as the config trains: the median step with the EMA
  updating, plus one checkpoint per `checkpoint every` steps of the config.
- **shares** of that step, from Lightning's SimpleProfiler (see *Step split*): data (fetch and
  copy to the device), forward+backward, optimizer (AdamW step, zero_grad), checkpoint (save,
  prune, commit, amortised), other (EMA update, LR scheduler, logging, Lightning's bookkeeping).
- **precision**: what `tinycats fit` picks on this machine (trainer.precision unset);
  **vs fp32**: the float32 raw step over the raw step in that precision, step by step in one
  process (see *Training throughput*).
- **TFLOP/s**: FLOPs of one training step (torch's FlopCounterMode) over that step's time;
  **% of peak** against the peak of its precision named above.
- **Lightning vs raw**: `Trainer.fit` against a plain loop over the same module's
  `training_step`, both without EMA and checkpoints (see *Training throughput*).
- **import s / first step s**: a fresh process, from its start to the training stack imported,
  and to the end of the config's first training step (image cache already built)."""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CI sizes: well under 2 minutes")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks/results.md",
        help="where to write the report (Markdown)",
    )
    args = parser.parse_args()
    began, load = time.perf_counter(), os.getloadavg()
    device = training_device()

    with prepare(args.quick) as setup:
        speeds = throughput.measure(setup)
        splits = step_split.measure(setup)
        stalls = checkpoint.save_stalls(setup)
        starts = [cold_start.first_step(w.config, setup, args.quick) for w in setup.workloads]
        sizes = setup.sizes
    pipelines = data_pipeline.measure(epochs=1 if args.quick else 3)
    resume = checkpoint.resume_latency()
    container = cold_start.measure(repeats=1 if args.quick else 3, retry=not args.quick)
    peaks = throughput.measured_peaks(speeds, device)

    mode = ("`--quick` (CI sizes; not for comparing)" if args.quick else "full") + (
        f": {sizes.warmup} warm-up + {sizes.steps} timed steps per measurement"
    )
    sections = [
        "# tinycats benchmarks",
        f"`python -m benchmarks{' --quick' if args.quick else ''}`, {mode}; "
        f"{time.perf_counter() - began:.0f} s in all.",
        "## Machine\n\n" + machine(load, os.getloadavg()),
        "## Summary\n\n"
        + throughput.describe_peaks(peaks)
        + "\n\n"
        + summary(speeds, splits, starts, peaks)
        + "\n\n"
        + SUMMARY_NOTES,
        "## Training throughput (`benchmarks/throughput.py`)\n\n" + throughput.table(speeds, peaks),
        "## Step split (`benchmarks/step_split.py`)\n\n" + step_split.table(splits),
        "## Checkpoints (`benchmarks/checkpoint.py`)\n\n"
        + checkpoint.format_stalls(stalls)
        + "\n\n"
        + checkpoint.table(splits, resume),
        "## Data pipeline (`benchmarks/data_pipeline.py`)\n\n" + data_pipeline.table(pipelines),
        "## Cold start (`benchmarks/cold_start.py`)\n\n" + cold_start.table(container),
    ]
    report = "\n\n".join(sections) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Measured apart (the serving benchmark, the kill harness): kept as they were.
    kept = "".join(harness.kept_section(args.out, h) for h in (serve.HEADING, chaos.HEADING))
    args.out.write_text(report + kept)
    print(f"Written to {args.out}")


def summary(
    speeds: list[throughput.Throughput],
    splits: list[step_split.StepSplit],
    starts: list[tuple[float, float]],
    peaks: dict[str, throughput.Peak],
) -> str:
    """One row per config: speed, where the step goes, FLOP/s, Lightning's cost, cold start."""
    header = [
        "config",
        "batch",
        "precision",
        "vs fp32",
        "img/s",
        "data",
        "forward+backward",
        "optimizer",
        "checkpoint",
        "other",
        "TFLOP/s",
        "% of peak",
        "Lightning vs raw",
        "import s",
        "first step s",
    ]
    rows = []
    for speed, split, (imported, first) in zip(speeds, splits, starts, strict=True):
        flops = speed.flops / split.amortized_step
        shares = [f"{share:.1%}" for share in split.shares().values()]
        peak = throughput.peak_of(speed, peaks)
        rows.append(
            (
                speed.config,
                speed.batch,
                speed.precision,
                f"{speed.speedup:.2f}x",
                f"{speed.batch / split.amortized_step:,.1f}",
                *shares,
                f"{flops / 1e12:.3f}",
                f"{flops / peak.flops:.1%}",
                f"{speed.lightning_overhead:+.1%}",
                f"{imported:.1f}",
                f"{first:.1f}",
            )
        )
    return markdown_table(header, rows)


def machine(start_load: tuple[float, ...], end_load: tuple[float, ...]) -> str:
    """The machine and software the numbers were measured on, as a Markdown list."""
    gpu = "none"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [
        f"date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"CPU: {cpu_model()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads)",
        f"RAM: {ram:.0f} GiB",
        f"GPU: {gpu}",
        f"software: Python {platform.python_version()}, torch {torch.__version__}, "
        f"Lightning {L.__version__}, tinycats at {git_commit()}",
        "load average (1, 5, 15 min) at the start and the end: "
        + " and ".join(", ".join(f"{x:.1f}" for x in load) for load in (start_load, end_load)),
    ]
    return "\n".join(f"- {line}" for line in lines)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """The checkout's commit, marked when the working tree has changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "an unknown commit"
    return commit + (" with uncommitted changes" if git("status", "--porcelain") else "")


if __name__ == "__main__":
    main()
