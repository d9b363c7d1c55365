"""Cold start of the Modal layer, measured on this machine.

Two costs, side by side: what `modal run src/tinycats/remote.py::fit` pays on your computer
before it can launch (importing remote.py), and what a fresh container pays before its first
training step (the training-stack imports of `@modal.enter`, the data cache, the first step).
A real container adds the image pull, the GPU attach and the CUDA warm-up, which need Modal.

    python benchmarks/cold_start.py
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REMOTE = REPO / "src/tinycats/remote.py"
TINY = REPO / "tests/configs/classifier_tiny.yaml"
PHOTOS = REPO.parent / "shared/data/oxford-pets-sample/images"
REPEATS = 3

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
remote.STORAGE = remote.Storage(str(root / "outputs"), str(root / "data"), lambda: None, lambda: None)
overrides = ["--data.source={photos}", "--trainer.max_steps=2", "--checkpoint.every_n_train_steps=1",
             "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0"]
summary = remote.Runner().fit.local(Path({config!r}).read_text(), overrides, {name!r}, "2026-01-02")
first_step = Path(summary["run_dir"], "step=00000001.ckpt").stat().st_mtime - process_start
caches = [p.stat().st_mtime - process_start for p in (root / "data/cache").glob("*.pt")
          if p.stat().st_mtime > process_start]
print(json.dumps({{"stack": client + stack, "cache": max(caches, default=None),
                  "first_step": first_step}}))
"""


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=600)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def median_seconds(code: str) -> float:
    return statistics.median(float(run_python(code)) for _ in range(REPEATS))


def container_start(root: Path, name: str) -> dict[str, float | None]:
    code = CONTAINER.format(remote=str(REMOTE), root=str(root), photos=str(PHOTOS),
                            config=str(TINY), name=name)  # fmt: skip
    return json.loads(run_python(code))


def main() -> None:
    if not PHOTOS.is_dir():
        raise SystemExit(f"needs the Oxford-IIIT Pet sample photos at {PHOTOS}")
    client = median_seconds(IMPORT_REMOTE)
    modal_only = median_seconds(IMPORT_MODAL)
    with tempfile.TemporaryDirectory() as tmp:
        cold = container_start(Path(tmp), "cold")  # empty data volume: the cache is built
        warm = container_start(Path(tmp), "warm")  # a retry: the cache is on the data volume
    rows = [
        ("client", f"import remote.py (median of {REPEATS})", client, "< 1 s"),
        ("client", f"import modal alone (median of {REPEATS})", modal_only, ""),
        ("container", "training stack imported (@modal.enter)", cold["stack"], ""),
        ("container", "image cache written (empty data volume)", cold["cache"], ""),
        ("container", "first step checkpointed (empty data volume)", cold["first_step"], "< 20 s"),
        ("container", "first step checkpointed (cache on the volume)", warm["first_step"], "< 20 s"),
    ]  # fmt: skip
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"Cold start on this machine ({os.cpu_count()} CPU cores, load average {load}).\n"
          "Client rows: import time in a fresh process. Container rows: seconds from the start\n"
          "of a fresh process that runs the tiny classifier config through Runner.fit.local().\n")  # fmt: skip
    print(f"{'side':<10} {'what':<47} {'seconds':>8}  goal")
    for side, what, seconds, goal in rows:
        shown = "-" if seconds is None else f"{seconds:.2f}"
        print(f"{side:<10} {what:<47} {shown:>8}  {goal}")


if __name__ == "__main__":
    main()
