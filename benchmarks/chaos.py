"""Kill harness: ``tinycats fit`` killed at random moments, rerun to the end, must end bit-equal.

    python -m benchmarks.chaos [--trials N] [--seed S] [--kills K] [--quick] [--configs A B]
    python -m benchmarks.chaos --configs dit --replay SEED     # one trial again, same kills

Per config (benchmarks/derived_configs.py: each shipped config shrunk, and a few extra cases):
one uninterrupted run, then N trials. A trial starts on
a fresh data root (so the image cache is built again) and a fresh run folder, launches
``tinycats fit`` up to K times, each time sending SIGKILL or SIGINT (to the whole process
group, as a container stop would) at a moment drawn uniformly over the uninterrupted run's
wall time (start-up, cache build, restore, steps, validation, sample grids, checkpoint
writes), then runs it to the end. Its ``last.ckpt`` must equal the uninterrupted one's in the
global step, the weights (the EMA's too), the optimizer state and the LR schedulers, and its
metrics.csv the uninterrupted one's, row for row.

Where a kill landed is read at the moment of the signal: the last line a ``PhaseTrace``
callback (benchmarks/chaos_trace.py) wrote, a ``*.partial`` checkpoint being written, the image
cache being built, a sample grid due but not yet on disk. It is approximate by the time a
phase takes to start and to write its mark, a few milliseconds. Each trial's seed draws its
kills; ``--replay SEED`` runs that trial again.
"""

import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning
import torch

from benchmarks import derived_configs
from benchmarks.chaos_trace import TRACE_ENV
from benchmarks.harness import replace_section

REPO = Path(__file__).resolve().parents[1]
CONFIGS = tuple(derived_configs.names())
QUICK_TRIALS = {"classifier_sample": 2, "dit_sample": 1}  # --quick (CI): 3 trials, up to 2 kills
PHOTOS = REPO / "data/sample/images"  # the sample that ships with the repository
RUN = "checkpoints/*/2026-01-01/chaos"
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGINT": signal.SIGINT}
STOP_TIMEOUT = 180  # seconds a signalled run may take to stop before it counts as hung
COMPARED = (
    "global_step",
    "state_dict",
    "current_model_state",
    "averaging_state",
    "optimizer_states",
    "lr_schedulers",
)

HEADING = "## Kill harness"  # its section of benchmarks/results.md, kept by the suite
RESULTS = REPO / "benchmarks/results.md"


@dataclass
class Kill:
    """One signal sent to a launch: which, when (s after launch), where it landed, the exit code."""

    signal: str
    at: float
    landed: str
    code: int | None


@dataclass
class Trial:
    """One trial of a config: its seed, its kills and how its final state compares."""

    config: str
    seed: int
    kills: list[Kill] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not self.differences


def command(config: str, root: Path, photos: Path) -> list[str]:
    """``tinycats fit`` of ``config`` with its run and data under ``root``, traced."""
    return [
        sys.executable,
        "-m",
        "tinycats",
        "fit",
        "-c",
        str(derived_configs.write(config, root)),
        f"--run.outputs={root / 'outputs'}",
        f"--data.root={root / 'data'}",
        f"--data.source={photos}",
        "--run.name=chaos",
        "--run.date=2026-01-01",
        "--trainer.callbacks+=benchmarks.chaos_trace.PhaseTrace",
    ]


def launch(config: str, root: Path, photos: Path) -> subprocess.Popen:
    """Start one ``tinycats fit`` in its own process group (a DDP run's ranks are in it too)."""
    (root / "trace.txt").unlink(missing_ok=True)
    env = {
        **os.environ,
        TRACE_ENV: str(root / "trace.txt"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")]
        ),
    }
    with open(root / "log.txt", "a") as log:
        return subprocess.Popen(
            command(config, root, photos),
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )


def _default_sigint() -> None:
    # A background job of a non-interactive shell (nohup ... &) ignores SIGINT, and so would
    # every run it starts: give the runs the default handling a container's processes have.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_to_end(config: str, root: Path, photos: Path) -> None:
    """Launch until the run finishes (a retry after a clean stop, as Modal would)."""
    for _ in range(3):
        code = launch(config, root, photos).wait()
        if code == 0:
            return
    log = (root / "log.txt").read_text()[-3000:]
    raise RuntimeError(f"{config} did not finish in {root} (exit {code}):\n{log}")


def landed(config: str, root: Path) -> str:
    """What the launched run was doing just now (see the module docstring)."""
    runs = list((root / "outputs").glob(RUN))
    if runs and list(runs[0].glob("*.partial")):
        return "checkpoint write"
    trace = root / "trace.txt"
    lines = trace.read_text().split() if trace.exists() else []
    if len(lines) < 2:
        building = list((root / "data/cache").glob("*.tmp-*"))
        return "cache build" if building else "start-up"
    phase, step = lines[-2], int(lines[-1])
    if phase == "step-end":
        every = _model_args(config).get("sample_every_n_steps", 0)
        grid = runs[0] / "samples" / f"step={step:08d}.png" if runs else None
        if every and step % every == 0 and grid is not None and not grid.exists():
            return "sample grid"
    return phase


def final_state(root: Path) -> dict[str, Any]:
    """The compared parts of a finished run's ``last.ckpt``, and its metrics.csv rows."""
    (run,) = (root / "outputs").glob(RUN)
    checkpoint = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)
    with open(run / "metrics.csv", newline="") as file:
        logged = list(csv.DictReader(file))
    return {**{key: checkpoint.get(key) for key in COMPARED}, "metrics.csv": logged}


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two checkpoint trees differ (tensors by ``torch.equal``), as key paths."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where} keys"]
        return [d for key in a for d in differences(a[key], b[key], f"{where}/{key}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{where} length"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{where}/{i}")
        ]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return [] if a.shape == b.shape and torch.equal(a, b) else [where]
    return [] if a == b else [where]


def run_trial(
    config: str, seed: int, reference: dict, duration: float, max_kills: int, photos: Path
) -> Trial:
    """Kill a fresh run of ``config`` 1..max_kills times as ``seed`` draws, finish it, compare."""
    rng = random.Random(seed)
    trial = Trial(config, seed)
    with tempfile.TemporaryDirectory(prefix=f"chaos-{config}-") as tmp:
        root = Path(tmp)
        for _ in range(rng.randint(1, max_kills)):
            name, at = rng.choice(sorted(SIGNALS)), rng.uniform(0, duration)
            process = launch(config, root, photos)
            try:
                process.wait(timeout=at)
                trial.kills.append(Kill(name, at, "after exit", process.returncode))
                continue  # it finished (or stopped) before the signal
            except subprocess.TimeoutExpired:
                where = landed(config, root)
                os.killpg(process.pid, SIGNALS[name])
            try:
                code = process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                code, where = process.wait(), f"{where} (hung)"
                trial.differences.append(f"a {name} in {where} did not stop the run")
            trial.kills.append(Kill(name, at, where, code))
        run_to_end(config, root, photos)
        trial.differences += differences(reference, final_state(root))
    return trial


def uninterrupted(config: str, photos: Path) -> tuple[dict, float]:
    """The reference: ``config`` trained without interruption; (final state, wall seconds)."""
    with tempfile.TemporaryDirectory(prefix=f"chaos-{config}-ref-") as tmp:
        start = time.monotonic()
        run_to_end(config, Path(tmp), photos)
        return final_state(Path(tmp)), time.monotonic() - start


def table(trials: list[Trial]) -> str:
    """The summary (one row per config) and every trial's seed, kills and result, as Markdown."""
    rows = [
        "| config | trials | kills | where they landed | equal | different |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for config in dict.fromkeys(t.config for t in trials):
        mine = [t for t in trials if t.config == config]
        kills = [k for t in mine for k in t.kills if k.landed != "after exit"]
        where = Counter(k.landed for k in kills)
        spots = ", ".join(f"{spot} {n}" for spot, n in where.most_common())
        equal = sum(t.equal for t in mine)
        rows.append(
            f"| {config} | {len(mine)} | {len(kills)} | {spots} | {equal} | {len(mine) - equal} |"
        )
    rows += [
        "",
        "| config | seed | kills (signal @ s: where → exit) | result |",
        "|---|---:|---|---|",
    ]
    for t in trials:
        kills = "; ".join(f"{k.signal} @ {k.at:.1f}: {k.landed} → {k.code}" for k in t.kills)
        result = "equal" if t.equal else "DIFFERENT: " + ", ".join(t.differences[:3])
        rows.append(f"| {t.config} | {t.seed} | {kills} | {result} |")
    return "\n".join(rows)


def _cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    names = [line for line in info.read_text().splitlines() if line.startswith("model name")]
    return names[0].split(":", 1)[1].strip() if names else "an unknown CPU"


def _model_args(config: str) -> dict[str, Any]:
    return derived_configs.derived(config)["model"]["init_args"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="trials per config")
    parser.add_argument(
        "--ddp-trials",
        type=int,
        default=None,
        help="trials of the DDP config (default: half of --trials; a launch "
        "there costs two processes and the DDP start-up)",
    )
    parser.add_argument("--seed", type=int, default=None, help="draws the trials' seeds")
    parser.add_argument("--kills", type=int, default=3, help="at most this many kills a trial")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=None)
    parser.add_argument("--quick", action="store_true", help=f"trials of {QUICK_TRIALS}")
    parser.add_argument("--replay", type=int, default=None, help="run one trial of this seed")
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="the data source folder")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help=f"replaces its {HEADING!r} section there"
    )
    args = parser.parse_args(argv)
    configs = args.configs or (tuple(QUICK_TRIALS) if args.quick else CONFIGS)
    trials_each = args.trials
    max_kills = min(args.kills, 2) if args.quick else args.kills
    seed = random.randrange(2**31) if args.seed is None else args.seed
    quick = "--quick " if args.quick else ""
    invocation = (
        f"python -m benchmarks.chaos {quick}--seed {seed} --trials {trials_each} --ddp-trials "
        f"{args.ddp_trials} --kills {max_kills} --configs {' '.join(configs)}  "
        f"(photos: {args.photos})"
    )
    print(invocation, flush=True)
    draw = random.Random(seed)
    trials = []
    for config in configs:
        reference, duration = uninterrupted(config, args.photos)
        print(f"{config}: uninterrupted run {duration:.1f} s", flush=True)
        count = QUICK_TRIALS.get(config, trials_each) if args.quick else trials_each
        if "ddp" in config and not args.quick:
            count = max(1, trials_each // 2) if args.ddp_trials is None else args.ddp_trials
        seeds = [draw.randrange(2**31) for _ in range(count)]
        if args.replay is not None:
            seeds = [args.replay]
        for trial_seed in seeds:
            trial = run_trial(config, trial_seed, reference, duration, max_kills, args.photos)
            trials.append(trial)
            print(
                f"  seed {trial_seed}: {'equal' if trial.equal else 'DIFFERENT'} "
                f"{[(k.signal, round(k.at, 1), k.landed, k.code) for k in trial.kills]}",
                flush=True,
            )
    print(table(trials))
    if not args.quick and args.replay is None:
        replace_section(args.out, HEADING, section(invocation, trials))
        print(f"(written to the {HEADING!r} section of {args.out})")
    return 0 if all(t.equal for t in trials) else 1


def section(invocation: str, trials: list[Trial]) -> str:
    """The harness's section of benchmarks/results.md: what ran, where, and the table."""
    different = sum(not t.equal for t in trials)
    return (
        f"{HEADING} (`benchmarks/chaos.py`)\n\n"
        f"Not part of `python -m benchmarks` (the suite keeps this section as it is). Written by "
        f"the harness on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {_cpu_name()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, Lightning {lightning.__version__}:\n\n"
        f"```\n{invocation}\n```\n\n"
        "Each config is a shipped config (configs/) shrunk in size only, or an extra case "
        "(benchmarks/derived_configs.py). Each trial kills `tinycats fit` at uniformly random "
        "moments of its process's life (SIGKILL or SIGINT), runs it again to the end, and "
        "compares weights, optimizer state, LR schedulers, EMA weights, the global step "
        "(`torch.equal`) and metrics.csv (row for row) with the uninterrupted run.\n\n"
        f"{table(trials)}\n\n"
        f"**{len(trials)} trials, {different} with a different final state or log.**\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
