"""The GPU check: everything a lent GPU should measure, in one call of at most 8 minutes.

    python -m benchmarks.gpu [--out DIR]      # on a CUDA machine
    python -m benchmarks.gpu --dry-run        # the same code on the CPU at toy sizes (~2 min)

Parts, in order (one failing does not stop the others; the exit status says if any did):
1. the GPU and its published dense bf16 peak (``throughput.PUBLISHED_BF16_PEAKS``);
2. DiT-S/4 (configs/dit.yaml) at 64 px, batch 128, in the precision ``tinycats fit`` picks
   (bf16-mixed), trained by Lightning for about a minute: step time and MFU against the
   peak, with the goal of 35 % marked met or not;
3. the classifier's step split (``step_split``): data, forward+backward, optimizer, checkpoint;
4. ``torch.compile`` against eager: the DiT's raw training steps, alternating, and the first
   compiled step's seconds (the compile);
5. kill and resume (``gpu_runs``): what stays bit-equal on this device, with and without
   ``torch.use_deterministic_algorithms``;
6. synchronous against asynchronous checkpoint stall (``checkpoint.stall_table``, where the
   checkpoint writer provides it);
7. DDP on two devices, where there are two (the dry run uses two CPU processes).

Everything goes under one folder: ``--out``, else ``$OUT``, else a new temporary one (printed).
``gpu.md`` there is a section ready for benchmarks/results.md; the runs and their logs are
beside it. The dry run trains the tiny test configs for seconds and compiles with the
``aot_eager`` backend (inductor's C++ build of even the tiny DiT takes ~110 s on these CPUs).
"""

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from unittest import mock

import torch

from benchmarks import checkpoint, derived_configs, gpu_runs, step_split
from benchmarks.__main__ import machine
from benchmarks.harness import (
    REPO,
    Setup,
    StepTimer,
    Workload,
    markdown_table,
    prepare,
    trainer,
)
from benchmarks.throughput import DTYPES, Peak, RawLoop, device_peak, matmul_rate, step_flops

MFU_GOAL = 0.35
HEADING = "## GPU check"


@dataclass(frozen=True)
class Plan:
    """The sizes of one check: the real one on a GPU, or the dry run's on the CPU."""

    dit: str  # trained for the MFU and compiled
    classifier: str  # split into its parts
    train_seconds: float
    compile_steps: int  # timed steps of each of eager and compiled, after two warm-up steps
    compile_backend: str
    kill_config: Path | str  # a config file, or the name of a derived config
    kill_overrides: tuple[str, ...]
    kill_modes: tuple[str, ...]  # of gpu_runs.MODES
    ddp_steps: int


GPU_PLAN = Plan(
    dit="configs/dit.yaml",
    classifier="configs/classifier.yaml",
    train_seconds=60,
    compile_steps=20,  # the harness repeats the photos for 26 steps an epoch on a GPU
    compile_backend="inductor",
    kill_config=REPO / "configs/dit.yaml",  # shrunk below to a short run
    kill_overrides=(
        "--trainer.max_steps=60",
        "--trainer.val_check_interval=30",
        "--checkpoint.every_n_train_steps=20",
        "--model.init_args.ema_start_step=10",
        "--model.init_args.sample_every_n_steps=30",
    ),
    kill_modes=("default", "deterministic"),
    ddp_steps=50,
)
DRY_PLAN = Plan(
    dit="tests/configs/dit_tiny.yaml",
    classifier="tests/configs/classifier_tiny.yaml",
    train_seconds=3,
    compile_steps=2,
    compile_backend="aot_eager",
    kill_config="dit",  # the shipped configs/dit.yaml shrunk (benchmarks/derived_configs.py)
    kill_overrides=(),
    kill_modes=("deterministic",),  # the default mode runs the same code without two flags
    ddp_steps=6,
)


def train_for(workload: Workload, setup: Setup, seconds: float, warmup: int = 5) -> list[float]:
    """Seconds of each step of a Lightning fit of ``workload`` stopped after ``seconds`` of
    training (Lightning's ``max_time``), the first ``warmup`` steps left out."""
    timer = StepTimer()
    trainer(
        setup.device,
        max_steps=10**6,  # a horizon for the LR schedule; max_time ends the fit
        callbacks=[timer],
        precision=workload.precision,
        max_epochs=-1,
        max_time=dt.timedelta(seconds=seconds),
    ).fit(workload.module(), datamodule=workload.data(setup))
    steps = [b - a for a, b in zip(timer.stamps, timer.stamps[1:], strict=False)]
    return steps[warmup:] or steps


def peak(setup: Setup, workload: Workload) -> Peak:
    """The peak of the workload's precision: published for known GPUs, else measured."""
    kind = "bf16" if workload.precision == "bf16-mixed" else "fp32"
    return device_peak(setup.device, matmul_rate(setup.device, DTYPES[kind]), kind)


def mfu(setup: Setup, plan: Plan) -> str:
    """The DiT's training step for about ``plan.train_seconds``, against its precision's peak."""
    workload = next(w for w in setup.workloads if w.config == plan.dit)
    steps = train_for(workload, setup, plan.train_seconds)
    step = statistics.median(steps)
    flops = step_flops(workload, setup)
    top = peak(setup, workload)
    share = flops / step / top.flops
    verdict = "met" if share >= MFU_GOAL else "not met"
    if setup.device.type != "cuda":
        verdict = "not judged on a CPU"
    row = (
        workload.config, workload.batch, workload.precision or "32-true", len(steps),
        f"{1000 * step:,.1f}", f"{workload.batch / step:,.0f}", f"{flops / step / 1e12:,.3f}",
        f"{share:.1%}", f"{verdict} (goal {MFU_GOAL:.0%})",
    )  # fmt: skip
    header = ["config", "batch", "precision", "steps timed", "ms/step", "img/s", "TFLOP/s",
              "MFU", "goal"]  # fmt: skip
    return (
        f"- peak: {top.flops / 1e12:,.3f} TFLOP/s, the {top.source}\n"
        f"- {flops / 1e9:,.1f} GFLOP per step (forward and backward, FlopCounterMode); Lightning's "
        f"Trainer.fit for {plan.train_seconds:.0f} s, the median step after 5 warm-up steps\n\n"
        + markdown_table(header, [row])
    )


def classifier_split(setup: Setup, plan: Plan) -> str:
    """The classifier's step, part by part (benchmarks/step_split.py)."""
    workload = next(w for w in setup.workloads if w.config == plan.classifier)
    return step_split.table(step_split.measure(replace(setup, workloads=[workload])))


def compile_vs_eager(setup: Setup, plan: Plan) -> str:
    """The DiT's raw training step eager and compiled, alternating step by step."""
    workload = next(w for w in setup.workloads if w.config == plan.dit)
    compiled_workload = replace(workload, model_args={**workload.model_args, "compile": True})
    real_compile = torch.compile
    with mock.patch.object(torch, "compile", partial(real_compile, backend=plan.compile_backend)):
        eager, compiled = (RawLoop(w, setup, w.precision) for w in (workload, compiled_workload))
        first_compiled = compiled.step()  # the compile happens here
        eager.step()
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for i in range(1 + plan.compile_steps):
            for name, loop in (("eager", eager), ("compiled", compiled)):
                seconds = loop.step()
                if i:  # one more warm-up step each
                    times[name].append(seconds)
    fell_back = compiled.module._compiled.compiled is None
    ratios = [e / c for e, c in zip(times["eager"], times["compiled"], strict=True)]
    row = (
        workload.config, plan.compile_backend, f"{first_compiled:,.1f}",
        f"{1000 * statistics.median(times['eager']):,.1f}",
        f"{1000 * statistics.median(times['compiled']):,.1f}",
        f"{statistics.median(ratios):.2f}x", "yes (see the log)" if fell_back else "no",
    )  # fmt: skip
    header = ["config", "backend", "first compiled step s", "eager ms/step", "compiled ms/step",
              "speed-up", "fell back to eager"]  # fmt: skip
    return markdown_table(header, [row], text_columns=2)


def checkpoint_stall(setup: Setup) -> str:
    """Synchronous against asynchronous checkpoint stall, where benchmarks/checkpoint.py has it."""
    stall_table = getattr(checkpoint, "stall_table", None)
    if stall_table is None:
        return "not available: benchmarks/checkpoint.py has no `stall_table` yet."
    return stall_table(setup)


def kill_and_resume(setup: Setup, plan: Plan, out: Path) -> str:
    """What stays bit-equal after a SIGKILL and a resume (benchmarks/gpu_runs.py)."""
    folder = out / "runs" / "kill"
    config = plan.kill_config
    if isinstance(config, str):
        config = derived_configs.write(config, folder / "configs")
    return gpu_runs.kill_and_resume(config, plan.kill_overrides, plan.kill_modes, folder)


def ddp(setup: Setup, plan: Plan, out: Path) -> str:
    """DDP across two devices: two GPUs where there are, two CPU processes in the dry run."""
    if setup.device.type == "cuda":
        if torch.cuda.device_count() < 2:
            return f"not measured: {torch.cuda.device_count()} GPU here."
        overrides: tuple[str, ...] = ("--trainer.strategy=ddp",)
    else:
        overrides = ("--trainer.accelerator=cpu", "--trainer.strategy=ddp")
    folder = out / "runs" / "ddp"
    return gpu_runs.ddp(
        REPO / plan.dit, (*overrides, f"--trainer.max_steps={plan.ddp_steps}"), 2, folder
    )


def device(setup: Setup) -> str:
    """The device and the peak its bf16 MFU is taken against."""
    if setup.device.type != "cuda":
        return "the CPU (dry run): no published peak; MFU is taken against a measured matmul rate."
    name = torch.cuda.get_device_name(setup.device)
    published = device_peak(setup.device, matmul_rate(setup.device, torch.bfloat16))
    return f"{name}: {published.flops / 1e12:,.0f} TFLOP/s dense bf16, the {published.source}."


def parts(plan: Plan, out: Path) -> dict[str, Callable[[Setup], str]]:
    """Each section's heading and what measures it, in order."""
    return {
        "Device": device,
        f"{Path(plan.dit).stem} training: MFU": partial(mfu, plan=plan),
        f"{Path(plan.classifier).stem}: step split": partial(classifier_split, plan=plan),
        "torch.compile against eager": partial(compile_vs_eager, plan=plan),
        "Kill (SIGKILL) and resume": partial(kill_and_resume, plan=plan, out=out),
        "Checkpoint stall: synchronous against asynchronous": checkpoint_stall,
        "DDP on two devices": partial(ddp, plan=plan, out=out),
    }


def run_parts(setup: Setup, plan: Plan, out: Path) -> Iterator[tuple[str, str, bool]]:
    """Each part's heading, its section (or its error) and whether it failed."""
    for heading, part in parts(plan, out).items():
        start = time.perf_counter()
        print(f"{heading} ...", file=sys.stderr, flush=True)
        try:
            section, failed = part(setup), False
        except Exception:
            section, failed = f"FAILED:\n\n```\n{traceback.format_exc()[-3000:]}```", True
        seconds = time.perf_counter() - start
        print(f"{heading}: {seconds:.0f} s", file=sys.stderr, flush=True)
        yield heading, f"{section}\n\n({seconds:.0f} s)", failed


def output_folder(requested: Path | None) -> Path:
    """``--out``, else ``$OUT``, else a new temporary folder (kept)."""
    chosen = requested or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    folder = chosen or Path(tempfile.mkdtemp(prefix="tinycats-gpu-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="toy sizes, on the CPU too")
    parser.add_argument(
        "--out", type=Path, help="the output folder (default: $OUT, else a temp one)"
    )
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("No CUDA device here: `python -m benchmarks.gpu --dry-run` checks the script on the "
              "CPU at toy sizes.", file=sys.stderr)  # fmt: skip
        return 2
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    out = output_folder(args.out)
    print(f"Writing to {out}", flush=True)
    start, load = time.perf_counter(), os.getloadavg()
    with prepare(quick=args.dry_run, configs=(plan.dit, plan.classifier)) as setup:
        sections = list(run_parts(setup, plan, out))
    command = "python -m benchmarks.gpu" + (" --dry-run" if args.dry_run else "")
    report = "\n\n".join(
        [f"{HEADING}\n\n`{command}`, {time.perf_counter() - start:.0f} s in all.\n",
         machine(load, os.getloadavg())]
        + [f"### {heading}\n\n{section}" for heading, section, _ in sections]
    ) + "\n"  # fmt: skip
    (out / "gpu.md").write_text(report)
    print(report + f"\nWritten to {out / 'gpu.md'}")
    return 1 if any(failed for _, _, failed in sections) else 0


if __name__ == "__main__":
    raise SystemExit(main())
