"""Cold start of the Modal layer, measured on this machine.

Two costs, side by side: what `modal run src/tinycats/remote.py::fit` pays on your computer
before it can launch (importing remote.py), and what a fresh container pays before its first
training step (the training-stack imports of `@modal.enter`, the data cache, the first step).
A real container adds the image pull, the GPU attach and the CUDA warm-up, which need Modal.
And for each training config (benchmarks/harness.py), a fresh process's import of the training
stack and its first training step, with the image cache already built.

    python -m benchmarks.cold_start [--repeats 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L

from benchmarks.harness import (
    PHOTOS,
    REPO,
    Setup,
    load_workload,
    markdown_table,
    quiet,
    sizes_for,
    synchronize,
    trainer,
    training_device,
)
from tinycats.models.performance import allow_tf32

REMOTE = REPO / "src/tinycats/remote.py"
TINY = REPO / "tests/configs/classifier_tiny.yaml"

IMPORT_REMOTE = f"""
import importlib.util, sys, time
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("remote", {str(REMOTE)!r})
remote = importlib.util.module_from_spec(spec)
sys.modules["remote"] = remote
spec.loader.exec_module(remote)
print(time.perf_counter() - start)
"""

IMPORT_MODAL = """
import time
start = time.perf_counter()
import modal
print(time.perf_counter() - start)
"""

# One fresh process, as a container runs it: import remote.py, then the training stack (what
# `@modal.enter` imports), then a 2-step run that checkpoints every step. The checkpoint's and the
# cache's modification times say when the first step and the cache were done.
CONTAINER = """
import time
process_start = time.time()
import importlib.util, json, sys, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
spec = importlib.util.spec_from_file_location("remote", {remote!r})
remote = importlib.util.module_from_spec(spec)
sys.modules["remote"] = remote
spec.loader.exec_module(remote)
client = time.time() - process_start
import tinycats.cli
stack = time.time() - process_start - client
root = Path({root!r})
remote.STORAGE = remote.attempt.Storage(str(root / "outputs"), str(root / "data"), lambda: None, lambda: None)
overrides = ["--data.source={photos}", "--trainer.max_steps=2", "--checkpoint.every_n_train_steps=1",
             "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0"]
job = remote.attempt.Launch(Path({config!r}).read_text(), tuple(overrides), {name!r}, "2026-01-02")
summary = remote.Runner().fit.local(job, "cold-start")
first_step = Path(summary["run_dir"], "step=00000001.ckpt").stat().st_mtime - process_start
caches = [p.stat().st_mtime - process_start for p in (root / "data/cache").glob("*.pt")
          if p.stat().st_mtime > process_start]
print(json.dumps({{"stack": client + stack, "cache": max(caches, default=None),
                  "first_step": first_step}}))
"""


# One fresh process per training config: the training stack's imports, then one step of the
# config with its image cache already on disk (as on a retry, or a second run).
FIRST_STEP = """
import time
import json
import tinycats.cli  # the training stack: torch, Lightning, torchvision, our models and data
imported = time.time()
from benchmarks.cold_start import first_step_here
done = first_step_here({config!r}, {quick!r}, {photos!r}, {root!r})
print(json.dumps({{"imported": imported, "first_step": done}}))
"""


@dataclass(frozen=True)
class Start:
    """Seconds from a fresh process's start until something was ready."""

    side: str
    what: str
    seconds: float | None
    goal: str = ""


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    if done.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def median_seconds(code: str, repeats: int) -> float:
    return statistics.median(float(run_python(code)) for _ in range(repeats))


def container_start(root: Path, name: str) -> dict[str, float | None]:
    code = CONTAINER.format(
        remote=str(REMOTE), root=str(root), photos=str(PHOTOS), config=str(TINY), name=name
    )
    return json.loads(run_python(code))


def measure(repeats: int = 3, retry: bool = True) -> list[Start]:
    """The client's imports (median of ``repeats``) and a container's start with an empty data
    volume, then (``retry``) again with the cache on it."""
    client = median_seconds(IMPORT_REMOTE, repeats)
    modal_only = median_seconds(IMPORT_MODAL, repeats)
    with tempfile.TemporaryDirectory() as tmp:
        cold = container_start(Path(tmp), "cold")  # empty data volume: the cache is built
        warm = container_start(Path(tmp), "warm") if retry else {"first_step": None}
    return [
        Start("client", f"import remote.py (median of {repeats})", client, "< 1 s"),
        Start("client", f"import modal alone (median of {repeats})", modal_only),
        Start("container", "training stack imported (@modal.enter)", cold["stack"]),
        Start("container", "image cache written (empty data volume)", cold["cache"]),
        Start(
            "container", "first step checkpointed (empty data volume)", cold["first_step"], "< 20 s"
        ),
        Start(
            "container",
            "first step checkpointed (cache on the volume)",
            warm["first_step"],
            "< 20 s",
        ),
    ]


def first_step(config: str, setup: Setup, quick: bool) -> tuple[float, float]:
    """Seconds from a fresh process's start to the training stack imported, and to the end of
    the first training step of ``config`` (its cache already built, in ``setup.root``)."""
    code = FIRST_STEP.format(
        config=config, quick=quick, photos=str(setup.photos), root=str(setup.root)
    )
    start = time.time()
    stamps = json.loads(run_python(code))
    return stamps["imported"] - start, stamps["first_step"] - start


class _FirstStepEnd(L.Callback):
    """Notes the wall-clock time at the end of the first step, its GPU work done."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(pl_module.device)
        self.time = time.time()


def first_step_here(config: str, quick: bool, photos: str, root: str) -> float:
    """Train one step of ``config`` in this process; return the time.time() when it ended."""
    quiet()
    allow_tf32(True)
    device = training_device()
    workload = load_workload(config, device, quick)
    setup = Setup(device, sizes_for(device, quick), [workload], Path(photos), Path(root))
    end = _FirstStepEnd()
    trainer(device, max_steps=1, callbacks=[end], precision=workload.precision).fit(
        workload.module(), datamodule=workload.data(setup)
    )
    return end.time


def table(rows: list[Start]) -> str:
    return markdown_table(
        ["side", "what", "seconds", "goal"],
        [
            (row.side, row.what, "-" if row.seconds is None else f"{row.seconds:.2f}", row.goal)
            for row in rows
        ],
        text_columns=2,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="client imports to take the median of"
    )
    args = parser.parse_args()
    rows = measure(args.repeats)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"Cold start on this machine ({os.cpu_count()} CPU cores, load average {load}).\n"
        "Client rows: import time in a fresh process. Container rows: seconds from the start\n"
        "of a fresh process that runs the tiny classifier config through Runner.fit.local().\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
