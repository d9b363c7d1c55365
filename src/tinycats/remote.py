"""tinycats on Modal: the same training command, on a rented GPU, resumable across failures.

    modal run --detach src/tinycats/remote.py::fit --config configs/classifier.yaml
    modal run src/tinycats/remote.py::sample --run checkpoints/dit/2026-01-31/cats

This file is the Modal layer, and it is meant to stay thin: the container runs the very
LightningCLI that `tinycats fit` runs on a laptop. Only two things differ on Modal, where files
live and how a write becomes durable, and both are passed in. What Modal must do when an attempt
fails, is refused or runs out of time is the table in plans/0013-modal-outcomes.md.

`modal run` imports this file on your computer too, to find out what to launch. That is why it
imports nothing but `modal`, the standard library and `tinycats.launch` (the checks made before a
launch, torch-free) at the top: torch and Lightning cost seconds to import, and only the
container needs them.
"""

import contextlib
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import modal

# ## Launch settings, checked before anything is rented
#
# The GPU, the time limit of one attempt and the number of retries are arguments of `@app.cls`,
# fixed when this module is imported. So they come from environment variables read right here,
# and are checked right here too: Modal's client accepts any GPU string and only the server
# refuses it, after the image is built. A mistake should cost a second, not a build. The checks
# live in `tinycats.launch`, which needs no torch; `pip install -e .` makes it importable.

try:
    from tinycats import launch
    from tinycats.launch import LaunchError
except ImportError as missing:  # `modal run` from an environment without the project
    raise SystemExit(
        f"tinycats: cannot import the tinycats package ({missing}). Install the project, not "
        "only modal, from the repository root: pip install -e ."
    ) from None

# An L4 is the default: cheap, 24 GB, and unlike the T4 it has bfloat16, which the DiT configs
# train in. plans/0004-modal-layer.md and the README compare the other GPUs.
GPU = os.environ.get("TINYCATS_GPU", "L4").strip()
TIMEOUT_S = launch.whole_number_from_env("TINYCATS_TIMEOUT", 6 * 60 * 60)
RETRIES = launch.whole_number_from_env("TINYCATS_RETRIES", launch.MAX_RETRIES)
launch.validate_launch_settings(GPU, TIMEOUT_S, RETRIES)

# ## Volumes: one for what runs make, one for what they read
#
# Checkpoints, logs and sample grids go to the outputs volume; downloads and decoded image caches
# to the data volume, so the dataset is fetched once and every later run reads it from there.
# Files written to a volume become visible to other containers (and safe from a crash) when the
# volume is committed: the training code commits after each checkpoint and after the data is
# ready, through the callables in `Storage`.

OUTPUTS_VOLUME = os.environ.get("TINYCATS_OUTPUTS_VOLUME", "tinycats-outputs")
DATA_VOLUME = os.environ.get("TINYCATS_DATA_VOLUME", "tinycats-data")
outputs_volume = modal.Volume.from_name(OUTPUTS_VOLUME, create_if_missing=True)
data_volume = modal.Volume.from_name(DATA_VOLUME, create_if_missing=True)


@dataclass(frozen=True)
class Storage:
    """Where a run writes (outputs) and reads (data), and how each write is made durable."""

    outputs: str
    data: str
    commit_outputs: Callable[[], None]
    commit_data: Callable[[], None]


# The container's storage. Tests replace it with temporary folders and recording commits.
STORAGE = Storage("/outputs", "/data", outputs_volume.commit, data_volume.commit)

# ## The image: pinned dependencies, then our source
#
# `uv` installs the exact pins of requirements-modal.txt much faster than pip. Our code and the
# configs are added last: they change often, and a layer added after the installs means an edit
# never reinstalls torch. Paths are resolved from this file, so `modal run` works from any folder.
# (In the container this file sits at /root/remote.py; the image is built by then and these
# paths are not read.)

REPO = Path(__file__).resolve().parent.parent.parent
image = (
    modal.Image.debian_slim(python_version="3.12")
    .uv_pip_install(requirements=[str(REPO / "requirements-modal.txt")])
    .env({"HF_XET_HIGH_PERFORMANCE": "1", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"})
    # The standard FID Inception weights, fetched once at build time into torch's hub cache
    # (where torch-fidelity looks first), so `evaluate-generator` needs no download per run.
    .run_commands(
        'python -c "from torchmetrics.image.fid import NoTrainInceptionV3; '
        "NoTrainInceptionV3(name='inception-v3-compat', features_list=['2048'])\""
    )
    .add_local_python_source("tinycats")
    .add_local_dir(REPO / "configs", "/root/configs")  # for `modal shell` sessions
)
app = modal.App("tinycats", image=image)

# ## Retries: a failure costs a restart, never the run
#
# A preempted or crashed container is replaced and the run continues from its last committed
# checkpoint. Modal caps the wait between attempts at 60 s, so a long outage is ridden out by
# more attempts, each of which resumes, rather than by longer waits: 10 s, 20 s, 40 s, then 60 s.

RETRY_POLICY = modal.Retries(
    max_retries=RETRIES, backoff_coefficient=2.0, initial_delay=10.0, max_delay=60.0
)

# ## What an attempt can end in (plans/0013-modal-outcomes.md has the table)
#
# Modal retries a call when it raises, and only then: a returned value is a success. So an
# attempt ends in one of four ways.
#
# - finished: the run's summary, returned. Calling again returns the same summary.
# - continue: the attempt's time is nearly up, so training stopped at a step, wrote last.ckpt
#   and committed it; returned, so no retry is spent. The driver below calls again.
# - refused: a failure that would happen again on every retry (a config or usage error, a file
#   the user named that is not there, CUDA out of memory), returned with its message and
#   printed loudly in the container's log, so a detached run shows it too.
# - raised: everything else (the network, I/O, preemption, a signal, a crash, a CUDA error).
#   Modal retries it in a fresh container, which continues from the last checkpoint.


@app.cls(
    gpu=GPU,
    timeout=TIMEOUT_S,
    retries=RETRY_POLICY,
    volumes={STORAGE.outputs: outputs_volume, STORAGE.data: data_volume},
    single_use_containers=True,
    env={
        "TINYCATS_GPU": GPU,
        "TINYCATS_TIMEOUT": str(TIMEOUT_S),
        "TINYCATS_RETRIES": str(RETRIES),
        "TINYCATS_OUTPUTS_VOLUME": OUTPUTS_VOLUME,
        "TINYCATS_DATA_VOLUME": DATA_VOLUME,
    },
)
class Runner:
    """A GPU container that trains one tinycats run, or draws samples from one."""

    @modal.enter()
    def start(self) -> None:
        """Import the training stack and initialise CUDA before the first input arrives."""
        import torch

        from tinycats.cli import show_logs  # torch, Lightning, torchvision, our models and data

        show_logs()
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs that have them
        self.gpus = torch.cuda.device_count()
        if self.gpus == 1:
            _warm_up_cuda(torch)
        # A volume shows what was committed when the container started; reloading picks up
        # anything committed since. A `.local()` run (the tests) has no volumes mounted and no
        # Modal client, so reload() would fail there: that is the only case it is skipped.
        if not modal.is_local():
            outputs_volume.reload()
            data_volume.reload()

    @modal.method()
    def fit(
        self,
        config_text: str,
        overrides: list[str],
        run_name: str,
        run_date: str = "",
        start_from: str = "",
        today: str = "",
    ) -> dict:
        """Train one attempt of the run called ``run_name``, continuing it where it stopped.

        ``run_date`` picks one run of that name; empty means the newest, or a new one dated
        ``today``. ``start_from`` is a checkpoint to start from while the run has none of its own.
        Returns the run's summary with ``status`` finished, continue or refused (see above), and
        how many attempts it has taken; raises for anything a retry may fix.
        """
        stop_at = time.time() + launch.attempt_budget_s(TIMEOUT_S)
        tail = _StderrTail(sys.stderr)
        try:
            with contextlib.redirect_stderr(tail):
                run = _run_folder(config_text, overrides, run_name, run_date, today)
                if (run / "summary.json").is_file():  # finished: nothing to train
                    return _with_run_facts(json.loads((run / "summary.json").read_text()), run)
                _record_attempt(run)
                summary = self._train(config_text, overrides, run, start_from, stop_at)
        except BaseException as failure:
            refusal = _refusal_for(failure, tail.text)
            if refusal is None:
                print(
                    f"tinycats: this attempt failed ({type(failure).__name__}: {failure}). "
                    "Modal retries it; the run continues from its last checkpoint.",
                    file=sys.stderr,
                    flush=True,
                )
                raise
            return _refuse(refusal)
        return _with_run_facts(summary, run)

    def _train(
        self, config_text: str, overrides: list[str], run: Path, start_from: str, stop_at: float
    ) -> dict[str, Any]:
        """Run `tinycats fit` for this attempt and return its summary."""
        # A start checkpoint is only for a run that has none of its own: a retry continues.
        resume = "auto"
        if start_from and not any(run.glob("*.ckpt")):
            resume = str(Path(STORAGE.outputs) / start_from)  # an absolute path stays as it is
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(config_text)
            args = [
                "fit",
                "-c",
                str(config),
                *overrides,
                "--resume",
                resume,
                "--ckpt_path=null",
                "--run.outputs",
                STORAGE.outputs,
                "--run.name",
                run.name,
                "--run.date",
                run.parent.name,
                "--data.root",
                STORAGE.data,
                "--stop_at",
                str(stop_at),
            ]
            if self.gpus > 1:
                return _fit_in_subprocess(args, run)
            from tinycats.cli import run_cli

            return run_cli(
                args, commit_outputs=STORAGE.commit_outputs, commit_data=STORAGE.commit_data
            )

    @modal.method()
    def sample(
        self,
        run: str,
        breed: str = "all",
        n: int = 8,
        steps: int = 50,
        cfg: float = 3.0,
        seed: int = 0,
    ) -> dict:
        """Draw a grid from the newest checkpoint of ``run`` (a path on the outputs volume).

        Returns ``status: drawn`` with the PNG bytes, or ``status: refused`` with the error.
        """
        from tinycats.commands.sample import main as sample_main
        from tinycats.errors import TinyCatsError

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "grid.png"
            try:
                sample_main(
                    [
                        "--ckpt_path",
                        str(Path(STORAGE.outputs) / run),
                        "--breed",
                        breed,
                        "--n",
                        str(n),
                        "--steps",
                        str(steps),
                        "--cfg",
                        str(cfg),
                        "--seed",
                        str(seed),
                        "--out",
                        str(out),
                    ]
                )
            except TinyCatsError as err:
                return _refuse(str(err))
            return {"status": "drawn", "png": out.read_bytes()}


def _refuse(error: str) -> dict[str, Any]:
    """Say loudly in the container's log that a call is refused, and return the refusal."""
    print(
        f"\n{'=' * 78}\ntinycats: REFUSED, not retried: {error}\n{'=' * 78}",
        file=sys.stderr,
        flush=True,
    )
    return {"status": "refused", "error": error}


def _refusal_for(failure: BaseException, stderr: str) -> str | None:
    """Why ``failure`` would happen again on every retry, or None when a retry may fix it."""
    from tinycats.errors import EXIT_USAGE, TinyCatsError, TransientError

    if isinstance(failure, SystemExit) and failure.code in (0, None):
        return (
            "the tinycats command printed and exited without training (--help or "
            "--print_config); run it locally: tinycats fit -c CONFIG --print_config"
        )
    if isinstance(failure, SystemExit) and failure.code == EXIT_USAGE:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        first = max((i for i, line in enumerate(lines) if "error:" in line), default=len(lines))
        said = " ".join(lines[first : first + 4]) or "its message is in the log above"
        return (
            f"the tinycats command rejected the config or the overrides: {said} "
            "(`tinycats fit --help` lists the options)"
        )
    if isinstance(failure, TinyCatsError) and not isinstance(failure, TransientError):
        return str(failure)  # a config error, a missing file the user named, out of memory
    return None


class _StderrTail:
    """Standard error that also keeps its last few thousand characters, to quote in a refusal."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.text = stream, ""

    def write(self, text: str) -> int:
        self.text = (self.text + text)[-4000:]
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding: the real stream's
        return getattr(self.stream, name)


def _warm_up_cuda(torch: Any) -> None:
    """Create the CUDA context and load cuBLAS and cuDNN now, so the first step does not wait."""
    images = torch.randn(8, 3, 64, 64, device="cuda")
    conv = torch.nn.Conv2d(3, 16, kernel_size=3, padding=1).cuda()
    (conv(images).flatten(1) @ torch.ones(16 * 64 * 64, 8, device="cuda")).sum().item()
    del images, conv
    torch.cuda.empty_cache()


# ## A run is found by its name
#
# A run lives in checkpoints/<model>/<date>/<name>/ on the outputs volume. A launch names it;
# without --date it continues the newest run of that name (or returns its result, if finished),
# and only when there is none does it start one, dated by the launch (not by the container's
# clock: a retry after midnight lands in the same folder). Each attempt adds a line to the run's
# attempts.jsonl, so the summary can say how many attempts the run took.


def _run_folder(config_text: str, overrides: list[str], name: str, date: str, today: str) -> Path:
    """The folder of the run ``name`` (of ``date``; empty: its newest, else a new one)."""
    import yaml

    from tinycats.runs.run_dir import model_group

    config = yaml.safe_load(config_text)
    model = launch.override_value(overrides, "--run.model") or (config.get("run") or {}).get(
        "model"
    )
    model = model or model_group(config["model"]["class_path"])
    runs = Path(STORAGE.outputs) / "checkpoints" / model
    dates = sorted(found.parent.name for found in runs.glob(f"*/{name}") if found.is_dir())
    return runs / (date or (dates[-1] if dates else today or dt.date.today().isoformat())) / name


def _record_attempt(run: Path) -> None:
    run.mkdir(parents=True, exist_ok=True)
    with (run / "attempts.jsonl").open("a") as attempts:
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        attempts.write(json.dumps({"started": started, "gpu": GPU}) + "\n")
    STORAGE.commit_outputs()


def _with_run_facts(summary: dict[str, Any], run: Path) -> dict[str, Any]:
    """The summary, with the attempts taken and what the run's folder holds (for fetching)."""
    attempts = run / "attempts.jsonl"
    files = [path for path in run.rglob("*") if path.is_file()]
    return {
        **summary,
        "attempts": len(attempts.read_text().splitlines()) if attempts.is_file() else 0,
        "run_bytes": sum(path.stat().st_size for path in files),
        "run_files": sorted({path.relative_to(run).parts[0] for path in files}),
    }


# ## Several GPUs in one container
#
# With `gpu="H100:4"` Lightning trains with DDP, and its launcher starts the other ranks by
# re-running the command line of the current process. In a Modal container that command line is
# Modal's, not ours, so the run goes through `python -m tinycats fit ...` in a subprocess whose
# command line Lightning can re-run. The subprocess cannot call this container's volume commit;
# Modal commits in the background every few seconds, and this process commits once more when the
# subprocess exits, whatever its status. Its exit status says how the attempt ended.


def _fit_in_subprocess(args: list[str], run: Path) -> dict[str, Any]:
    from tinycats.errors import EXIT_CONTINUE, EXIT_USAGE

    # The child must import the same tinycats as this process, wherever the image put it.
    package_root = str(Path(sys.modules["tinycats"].__file__).parent.parent)
    paths = [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    child = subprocess.Popen([sys.executable, "-m", "tinycats", *args], env=env)
    try:
        returncode = child.wait()
    except KeyboardInterrupt:  # Modal's preemption signal: let rank 0 stop at a checkpoint
        child.terminate()
        returncode = child.wait(timeout=25)  # within Modal's 30 s grace period
        raise
    finally:
        STORAGE.commit_outputs()
        STORAGE.commit_data()
    if returncode == EXIT_USAGE:
        raise SystemExit(EXIT_USAGE)  # refused; the child printed why
    if returncode == EXIT_CONTINUE:
        return {"status": "continue", "run_dir": str(run)}
    if returncode != 0:
        raise RuntimeError(f"`tinycats fit` exited with status {returncode}; Modal retries it.")
    return json.loads((run / "summary.json").read_text())


# ## A driver that keeps a long run going
#
# An attempt that used its time returns `continue`, and something must call again. This small
# CPU function does it, on Modal, so a run of any length finishes with the laptop closed
# (`modal run --detach`). It waits on each attempt without a GPU. Its own calls are limited to
# 24 h too, so before it could run out it hands over to a fresh driver and says which.


@app.function(timeout=launch.MAX_TIMEOUT_S, retries=RETRY_POLICY)
def drive(
    config_text: str,
    overrides: list[str],
    run_name: str,
    run_date: str,
    start_from: str,
    today: str,
) -> dict:
    """Call Runner.fit until the run is finished, refused or failed, and return that result."""
    hand_over_at = time.time() + launch.MAX_TIMEOUT_S - TIMEOUT_S - 10 * 60
    calls = 0
    while True:
        try:
            result = Runner().fit.remote(
                config_text, overrides, run_name, run_date, start_from, today
            )
        except Exception as err:  # Modal's retries are spent
            return {"status": "failed", "error": f"{type(err).__name__}: {err}", "calls": calls}
        calls += 1
        if result["status"] != "continue":
            return {**result, "calls": calls}
        run_date = Path(result["run_dir"]).parent.name  # the run has a date now: keep it
        if time.time() >= hand_over_at:
            successor = drive.spawn(config_text, overrides, run_name, run_date, start_from, today)
            return {**result, "status": "handed over", "call_id": successor.object_id}


# ## Launching from your computer
#
# `modal run src/tinycats/remote.py::fit` runs this function locally. It checks everything it can
# without torch, fixes the run's name, starts the driver and waits for the result. With
# `modal run --detach` the run goes on if this terminal closes; the printed commands follow it.

_ENTRYPOINT = "src/tinycats/remote.py"


@app.local_entrypoint()
def fit(
    config: str = "configs/classifier.yaml", name: str = "", date: str = "", overrides: str = ""
) -> None:
    """Train CONFIG on Modal; --name continues that run (--date picks one of several); --overrides adds CLI flags."""
    try:
        launch.validate_launch_settings(GPU, TIMEOUT_S, RETRIES)
        if not Path(config).is_file():
            raise LaunchError(f"Config file {config} does not exist (relative to {Path.cwd()}).")
        config_text = Path(config).read_text()
        extra = shlex.split(overrides)
        parsed = launch.check_config(config_text, config, extra, STORAGE.data, DATA_VOLUME)
        extra, start_from = launch.start_checkpoint(parsed, extra)
        run_name, run_date = launch.run_identity(parsed, config, name, date)
    except LaunchError as err:
        raise SystemExit(f"tinycats: {err}") from None
    today = dt.date.today().isoformat()
    again = (
        f"modal run --detach {_ENTRYPOINT}::fit --config {shlex.quote(config)} "
        f"--name {run_name}"
        + (f" --date {run_date}" if run_date else "")
        + (f" --overrides={shlex.quote(overrides)}" if overrides else "")
    )
    app_id = app.app_id or "APP_ID (modal app list)"
    print(
        f"Training {config} on {GPU} as run {run_name!r} (attempts of up to "
        f"{TIMEOUT_S / 3600:g} h, each stopping {launch.MAX_STOP_MARGIN_S // 60} min or less "
        f"before that; up to {RETRIES} retries after a failure).\n"
        f"  it continues the newest run of that name on volume {OUTPUTS_VOLUME}, else starts "
        f"checkpoints/<model>/{run_date or today}/{run_name}/\n"
        f"  follow it:   modal app logs -f {app_id}\n"
        f"  stop it:     modal app stop {app_id}\n"
        f"  continue it later (same command, same name):\n    {again}"
    )
    call = drive.spawn(config_text, extra, run_name, run_date, start_from, today)
    result = call.get()
    while result["status"] == "handed over":
        result = modal.FunctionCall.from_id(result["call_id"]).get()
    report(result, again)


def report(result: dict[str, Any], again: str) -> None:
    """Print how the run ended and the commands to use it; exit non-zero unless it finished."""
    if result["status"] == "refused":
        raise SystemExit(f"tinycats: the run was refused, and not retried: {result['error']}")
    if result["status"] != "finished":
        raise SystemExit(
            f"tinycats: the run stopped after Modal's retries: {result['error']}\n"
            f"  continue it from its last checkpoint: {again}"
        )
    run_dir = str(Path(result["run_dir"]).relative_to(STORAGE.outputs))
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result["metrics"].items()))
    fetch = launch.fetch_commands(OUTPUTS_VOLUME, run_dir, result["run_bytes"], result["run_files"])
    print(
        f"Finished {run_dir} at step {result['global_step']} in {result['attempts']} "
        f"attempt(s): {metrics or 'no metrics'}\n"
        f"  fetch it ({result['run_bytes'] / 1e9:.2f} GB):  {fetch[0]}"
    )
    if len(fetch) > 1:
        print(f"  or only last.ckpt, the summary, metrics and sample grids:\n    {fetch[1]}")
    print(f"  sample it: modal run {_ENTRYPOINT}::sample --run {run_dir}  (DiT runs)")


@app.local_entrypoint()
def sample(
    run: str,
    breed: str = "all",
    n: int = 8,
    steps: int = 50,
    cfg: float = 3.0,
    seed: int = 0,
    out: str = "samples.png",
) -> None:
    """Draw cats with the newest checkpoint of RUN (checkpoints/dit/DATE/NAME) and save a PNG."""
    if Path(run).is_absolute() or ".." in Path(run).parts:
        raise SystemExit(
            f"tinycats: --run {run} must be a path inside the {OUTPUTS_VOLUME} "
            "volume, e.g. checkpoints/dit/2026-01-31/cats."
        )
    drawn = sampler().sample.remote(run, breed, n, steps, cfg, seed)
    if drawn["status"] != "drawn":
        raise SystemExit(f"tinycats: {drawn['error']}")
    Path(out).write_bytes(drawn["png"])
    print(f"Saved the samples of {run} to {out}")


# ## Serving: `tinycats serve` deployed, and TensorBoard over the outputs volume
#
#     modal deploy src/tinycats/remote.py      then open the URLs it prints (Modal login needed)
#
# `Server` is the web page and JSON API of `tinycats serve`, answering from the runs on the
# outputs volume. Unlike `Runner` it is not single-use: a container stays warm for
# TINYCATS_SERVE_WARM_S seconds after its last request and answers the next one at once. Its
# cold start is cut by a memory snapshot: the imports and the CPU-side model loading run once,
# at deploy time, in `@modal.enter(snap=True)`; a new container is restored from that memory and
# only moves the models to its GPU. Web endpoints ask for Modal's proxy-auth headers (a workspace
# token); TINYCATS_SERVE_PUBLIC=1 makes them public, deliberately, and then each client address
# has a budget of requests and drawings a minute. However many requests come, at most
# TINYCATS_SERVE_MAX_CONTAINERS GPUs are rented: `modal deploy` prints what that costs an hour.

SERVE_GPU = os.environ.get("TINYCATS_SERVE_GPU", "L4").strip()  # empty: CPU only
SERVE_WARM_S = launch.whole_number_from_env("TINYCATS_SERVE_WARM_S", 5 * 60)
SERVE_PUBLIC = os.environ.get("TINYCATS_SERVE_PUBLIC", "").strip() == "1"
# Runs on the outputs volume (relative to it), or "newest" for the newest run of the model.
SERVE_CLASSIFIER = os.environ.get("TINYCATS_SERVE_CLASSIFIER", "newest").strip()
SERVE_GENERATOR = os.environ.get("TINYCATS_SERVE_GENERATOR", "newest").strip()
# What the deployment may cost: at most this many Server containers at once (a burst of requests
# queues rather than renting more GPUs), and in public mode, what one client may ask a minute.
SERVE_MAX_CONTAINERS = launch.whole_number_from_env("TINYCATS_SERVE_MAX_CONTAINERS", 1)
SERVE_REQUESTS_PER_MIN = launch.whole_number_from_env("TINYCATS_SERVE_REQUESTS_PER_MIN", 60)
SERVE_DRAWS_PER_MIN = launch.whole_number_from_env("TINYCATS_SERVE_DRAWS_PER_MIN", 10)
launch.validate_serve_settings(
    SERVE_GPU, SERVE_WARM_S, SERVE_MAX_CONTAINERS, SERVE_REQUESTS_PER_MIN, SERVE_DRAWS_PER_MIN
)
if modal.is_local() and sys.argv[1:2] in (["deploy"], ["serve"]):  # the commands that start it
    print(f"tinycats: Server costs {launch.serving_cost(SERVE_GPU, SERVE_MAX_CONTAINERS)}.")


@app.cls(
    gpu=SERVE_GPU or None,
    volumes={STORAGE.outputs: outputs_volume},
    scaledown_window=SERVE_WARM_S,
    max_containers=SERVE_MAX_CONTAINERS,
    enable_memory_snapshot=True,
    timeout=10 * 60,
    env={
        "TINYCATS_SERVE_GPU": SERVE_GPU,
        "TINYCATS_SERVE_WARM_S": str(SERVE_WARM_S),
        "TINYCATS_SERVE_PUBLIC": "1" if SERVE_PUBLIC else "",
        "TINYCATS_SERVE_MAX_CONTAINERS": str(SERVE_MAX_CONTAINERS),
        "TINYCATS_SERVE_REQUESTS_PER_MIN": str(SERVE_REQUESTS_PER_MIN),
        "TINYCATS_SERVE_DRAWS_PER_MIN": str(SERVE_DRAWS_PER_MIN),
        "TINYCATS_SERVE_CLASSIFIER": SERVE_CLASSIFIER,
        "TINYCATS_SERVE_GENERATOR": SERVE_GENERATOR,
        "TINYCATS_OUTPUTS_VOLUME": OUTPUTS_VOLUME,
    },
)
@modal.concurrent(max_inputs=8)  # requests share the loaded models; drawings queue per model
class Server:
    """The web page and API of `tinycats serve`, and a warm `sample` for `modal run ...::sample`."""

    @modal.enter(snap=True)
    def load(self) -> None:
        """Import torch and load the runs into CPU memory: this is what the snapshot keeps."""
        from tinycats.cli import show_logs
        from tinycats.commands.serve import load_store
        from tinycats.commands.serve_models import Limits

        show_logs()
        self.store = load_store(
            Path(STORAGE.outputs), SERVE_CLASSIFIER, SERVE_GENERATOR, Limits(), require_a_run=False
        )

    @modal.enter(snap=False)
    def start(self) -> None:
        """After a restore: see the volume's newest commits and move the models to the GPU."""
        import torch

        if not modal.is_local():  # no volumes are mounted in a `.local()` call (the tests)
            outputs_volume.reload()
        for kind, run in (("classifier", SERVE_CLASSIFIER), ("dit", SERVE_GENERATOR)):
            self.store.load_default(kind, run)  # "newest" may be a run trained since the snapshot
        self.store.to("cuda" if torch.cuda.is_available() else "cpu")

    @modal.method()
    def sample(
        self,
        run: str,
        breed: str = "all",
        n: int = 8,
        steps: int = 50,
        cfg: float = 3.0,
        seed: int = 0,
    ) -> dict:
        """`Runner.sample` from a warm container: ``status: drawn`` with the PNG, or ``refused``."""
        from tinycats.commands.serve_models import BadRequest, draw

        limits = self.store.limits
        if not (1 <= n <= limits.max_n and 1 <= steps <= limits.max_steps):
            return _refuse(f"--n must be 1 to {limits.max_n} and --steps 1 to {limits.max_steps}.")
        try:
            return {
                "status": "drawn",
                "png": draw(self.store.get("dit", run), breed, n, steps, cfg, seed),
            }
        except BadRequest as err:
            return _refuse(str(err))

    @modal.asgi_app(requires_proxy_auth=not SERVE_PUBLIC)
    def web(self) -> Any:
        """The FastAPI app of `tinycats serve` over this container's loaded runs."""
        from tinycats.commands.serve_api import build_app
        from tinycats.commands.serve_budget import Budget

        if not SERVE_PUBLIC:  # behind proxy auth, only the workspace's tokens get in
            return build_app(self.store)
        return build_app(self.store, Budget(SERVE_REQUESTS_PER_MIN, SERVE_DRAWS_PER_MIN))


def sampler() -> Any:
    """The deployed `Server` when `modal deploy` has run (warm, snapshotted), else a `Runner`."""
    try:
        deployed = modal.Cls.from_name(app.name, "Server")
        deployed.hydrate()
    except (modal.exception.NotFoundError, modal.exception.AuthError):
        return Runner()  # not deployed (or no token: the Runner call then says so)
    return deployed()


@app.function(
    volumes={STORAGE.outputs: outputs_volume}, scaledown_window=SERVE_WARM_S, max_containers=1
)
@modal.concurrent(max_inputs=100)  # one CPU container answers every viewer
@modal.wsgi_app(requires_proxy_auth=not SERVE_PUBLIC)
def tensorboard() -> Any:
    """TensorBoard over every run on the outputs volume (the events each run writes beside its
    metrics.csv), as modal-examples serve it; opening the page shows the newest commits."""
    from tensorboard import program
    from tensorboard.backend.application import TensorBoardWSGIApp

    board = program.TensorBoard()
    board.configure(logdir=STORAGE.outputs)
    data_provider, multiplexer = board._make_data_provider()
    inner = TensorBoardWSGIApp(
        board.flags, board.plugin_loaders, data_provider, board.assets_zip_provider, multiplexer
    )

    def reloading(environ: dict, start_response: Callable) -> Any:
        if environ.get("PATH_INFO") == "/" and not modal.is_local():
            try:  # fails while TensorBoard has an events file open; the next visit retries
                outputs_volume.reload()
            except Exception as err:
                print(f"tensorboard: volume not reloaded ({err}); showing what it had")
        return inner(environ, start_response)

    return reloading
