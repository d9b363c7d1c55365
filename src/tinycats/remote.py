"""tinycats on Modal: the same training command, on a rented GPU, resumable across failures.

    modal run --detach src/tinycats/remote.py::fit --config configs/classifier.yaml
    modal run src/tinycats/remote.py::sample --run checkpoints/dit/2026-01-31/cats

The Modal layer, kept thin: the container runs the very LightningCLI that `tinycats fit` runs
on a laptop. What an attempt does in its container is `tinycats.attempt`; the checks before a
launch are `tinycats.launch`; how an attempt ends is plans/0013-modal-outcomes.md's table.

`modal run` imports this file on your computer too, to find out what to launch. That is why it
imports nothing but `modal`, the standard library and those two torch-free modules at the top:
torch and Lightning cost seconds to import, and only the container needs them.
"""

import datetime as dt
import os
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import modal

try:
    from tinycats import attempt, launch
    from tinycats.launch import LaunchError
except ImportError as missing:  # `modal run` from an environment without the project
    raise SystemExit(
        f"tinycats: cannot import the tinycats package ({missing}). Install the project, not "
        "only modal, from the repository root: pip install -e ."
    ) from None

# ## Settings, read from the environment and checked before anything is rented
#
# The GPU, the attempt's time limit and the retries are fixed when `@app.cls` runs, at import;
# they are checked here, since Modal's client accepts any GPU string. Every container imports
# this file again, seeing only its function's `env=`: every function gets `SETTINGS.env()`.

SETTINGS = launch.settings_from_env(os.environ)

# ## Volumes: one for what runs make, one for what they read
#
# Checkpoints, logs and grids go to the outputs volume, the dataset and its cache to the data
# volume. A write is durable once committed, through `STORAGE` (tests swap in folders).

outputs_volume = modal.Volume.from_name(SETTINGS.outputs_volume, create_if_missing=True)
data_volume = modal.Volume.from_name(SETTINGS.data_volume, create_if_missing=True)
STORAGE = attempt.Storage("/outputs", "/data", outputs_volume.commit, data_volume.commit)

# ## The image: pinned dependencies, then our source
#
# `uv` installs the pins of requirements-modal.txt; our code and the configs come last, so an
# edit never reinstalls torch. `add_local_python_source` ships only `*.py` by default
# (`modal/_image.py`); PACKAGE_FILES also ships the page `tinycats serve` reads.

REPO = Path(__file__).resolve().parent.parent.parent
PACKAGE_FILES = modal.FilePatternMatcher("**/*.py", "**/*.html")
image = (
    modal.Image.debian_slim(python_version="3.12")
    .uv_pip_install(requirements=[str(REPO / "requirements-modal.txt")])
    .env({"HF_XET_HIGH_PERFORMANCE": "1", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"})
    # The standard FID Inception weights, fetched once at build time into torch's hub cache.
    .run_commands(
        'python -c "from torchmetrics.image.fid import NoTrainInceptionV3; '
        "NoTrainInceptionV3(name='inception-v3-compat', features_list=['2048'])\""
    )
    .add_local_python_source("tinycats", ignore=~PACKAGE_FILES)
    .add_local_dir(REPO / "configs", "/root/configs")  # for `modal shell` sessions
)
app = modal.App("tinycats", image=image)

# ## Retries: a failure costs a restart, never the run
#
# A failed attempt is retried in a fresh container, from the last committed checkpoint. Attempts
# are spawned, so Modal's server applies this policy (a `.remote()` call's retries are the
# client's, which ignore `max_delay`: modal/retries.py). Preemptions do not spend it.

RETRY_POLICY = modal.Retries(
    max_retries=SETTINGS.retries, backoff_coefficient=2.0, initial_delay=10.0, max_delay=60.0
)
VOLUMES = {STORAGE.outputs: outputs_volume, STORAGE.data: data_volume}


@app.cls(
    gpu=SETTINGS.gpu,
    timeout=SETTINGS.timeout_s,
    retries=RETRY_POLICY,
    volumes=VOLUMES,
    single_use_containers=True,  # a retry never inherits a wedged CUDA context
    env=SETTINGS.env(),
)
class Runner:
    """A GPU container that trains one attempt of a run, or draws samples from one."""

    @modal.enter()
    def start(self) -> None:
        """Import the training stack and initialise CUDA before the first input arrives."""
        self.started = time.time()  # the ledger counts the attempt's paid time from here
        import torch

        from tinycats.cli import show_logs  # torch, Lightning, torchvision, our models and data

        show_logs()
        self.gpus = torch.cuda.device_count()
        if self.gpus == 1:
            attempt.warm_up_cuda(torch)
        reload_outputs()  # a volume shows what was committed when the container started
        if not modal.is_local():
            data_volume.reload()

    @modal.method()
    def fit(self, job: attempt.Launch, holder: str) -> dict:
        """Train one attempt of ``job``'s run for ``holder`` (one id for all retries of a call):
        the result, or a raise as Modal counts it (`attempt.run_attempt`)."""
        from tinycats.cli import run_cli

        def train(args: list[str]) -> dict:
            return run_cli(args, STORAGE.commit_outputs, STORAGE.commit_data)

        box = attempt.Container.of(STORAGE, SETTINGS, self.gpus, self.started)
        return attempt.run_attempt(job, holder, box, train, modal.exception.InputCancellation)

    @modal.method()
    def sample(self, run: str, breed: str, n: int, steps: int, cfg_scale: float, seed: int) -> dict:
        """Draw a grid from the newest checkpoint of ``run`` (a path on the outputs volume):
        ``status: drawn`` with the PNG bytes, or ``status: refused`` with the error."""
        from tinycats.commands.sample import sample_png
        from tinycats.errors import TinyCatsError

        try:
            png = sample_png(Path(STORAGE.outputs) / run, breed, n, steps, cfg_scale, seed)
        except TinyCatsError as err:
            return attempt.refuse(str(err))
        return {"status": "drawn", "png": png}


# ## A driver that keeps a long run going
#
# An attempt that used its time returns `continue`; this CPU function calls again, so a run of
# any length finishes with the laptop closed (`modal run --detach`). It waits while another call
# holds the run, calls again after a failed call that moved the run on, and before its own 24 h
# limit hands the call it waits on to a fresh driver.

POLL_S = 60
HAND_OVER_S = 10 * 60


@app.function(
    timeout=launch.MAX_TIMEOUT_S, retries=RETRY_POLICY, volumes=VOLUMES, env=SETTINGS.env()
)
def drive(job: attempt.Launch, waiting_on: str = "") -> dict:
    """Run attempts of ``job`` until its run is finished, refused or failed; return that."""
    hand_over_at = time.time() + launch.MAX_TIMEOUT_S - HAND_OVER_S
    calls = 0
    while True:
        if waiting_on:
            call, waiting_on = modal.FunctionCall.from_id(waiting_on), ""
        else:
            attempt.wait_while_held(job, STORAGE.outputs, reload_outputs)
            call = Runner().fit.spawn(job, uuid.uuid4().hex)
        before = attempt.progress(job, STORAGE.outputs)
        result = attempt.await_result(call, hand_over_at, POLL_S)
        if result is None:
            return {"status": "handed over", "call_id": drive.spawn(job, call.object_id).object_id}
        calls += 1
        reload_outputs()  # a call that failed after moving the run on is not the run's end
        if result["status"] == "failed" and attempt.progress(job, STORAGE.outputs) != before:
            continue
        if result["status"] not in ("continue", "busy"):
            return {**result, "calls": calls}
        job = job.dated(Path(result["run_dir"]).parent.name)  # the run has a date now: keep it


def reload_outputs() -> None:
    """See what other containers committed to the outputs volume (not in `.local()` tests)."""
    if not modal.is_local():
        outputs_volume.reload()


# ## Launching from your computer: `modal run src/tinycats/remote.py::fit` runs this locally; it
# checks what it can without torch, fixes the run's name, starts the driver, waits for the result.

ENTRYPOINT = "src/tinycats/remote.py"


@app.local_entrypoint()
def fit(
    config: str = "configs/classifier.yaml", name: str = "", date: str = "", overrides: str = ""
) -> None:
    """Train CONFIG on Modal; --name continues that run (--date picks one of several); --overrides adds CLI flags."""
    try:
        if not Path(config).is_file():
            raise LaunchError(f"Config file {config} does not exist (relative to {Path.cwd()}).")
        config_text = Path(config).read_text()
        extra = shlex.split(overrides)
        parsed = launch.check_config(config_text, config, extra, STORAGE.data, SETTINGS.data_volume)
        extra, start_from = launch.start_checkpoint(parsed, extra)
        run_name, run_date = launch.run_identity(parsed, config, name, date)
    except LaunchError as err:
        raise SystemExit(f"tinycats: {err}") from None
    today = dt.date.today().isoformat()
    job = attempt.Launch(config_text, tuple(extra), run_name, run_date, start_from, today)
    again = launch.continue_command(ENTRYPOINT, config, run_name, run_date, overrides)
    print(launch.start_message(config, SETTINGS, run_name, run_date, app.app_id, again))
    result = drive.spawn(job).get()
    while result["status"] == "handed over":
        result = modal.FunctionCall.from_id(result["call_id"]).get()
    launch.report(result, again, SETTINGS.outputs_volume, STORAGE.outputs, ENTRYPOINT)


@app.local_entrypoint()
def sample(
    run: str,
    breed: str = "all",
    n: int = 8,
    steps: int = 50,
    cfg_scale: float = 3.0,
    seed: int = 0,
    out: str = "samples.png",
) -> None:
    """Draw cats with the newest checkpoint of RUN (checkpoints/dit/DATE/NAME) and save a PNG."""
    launch.check_volume_path(run, SETTINGS.outputs_volume)
    drawn = sampler().sample.remote(run, breed, n, steps, cfg_scale, seed)
    if drawn["status"] != "drawn":
        raise SystemExit(f"tinycats: {drawn['error']}")
    Path(out).write_bytes(drawn["png"])
    print(f"Saved the samples of {run} to {out}")


# `modal run src/tinycats/remote.py::runs` shows where every run on the volume stands (step,
# attempts, goodput, lost work, cost so far, state) without the dashboard or a fetch.


@app.function(volumes={STORAGE.outputs: outputs_volume}, env=SETTINGS.env(), timeout=5 * 60)
def run_table() -> str:
    """The `tinycats runs` table of the outputs volume, from its newest commit."""
    from tinycats.commands.runs import table_of

    reload_outputs()
    return table_of(Path(STORAGE.outputs))


@app.local_entrypoint()
def runs() -> None:
    """Print every run on the outputs volume: progress, attempts, goodput, lost work, cost."""
    print(run_table.remote())


# ## Serving: `tinycats serve` deployed, and TensorBoard over the outputs volume
#
#     modal deploy src/tinycats/remote.py      then open the URLs it prints (Modal login needed)
#
# `Server` is `tinycats serve` over the outputs volume's runs, warm TINYCATS_SERVE_WARM_S s after
# a request; a memory snapshot keeps its imports and CPU-side models (`snap=True`). Endpoints ask
# for Modal's proxy auth unless TINYCATS_SERVE_PUBLIC=1, which gives each client address a budget
# a minute. At most TINYCATS_SERVE_MAX_CONTAINERS GPUs are rented; `modal deploy` prints the cost.

if modal.is_local() and sys.argv[1:2] in (["deploy"], ["serve"]):  # the commands that start it
    cost = launch.serving_cost(SETTINGS.serve_gpu, SETTINGS.serve_max_containers)
    print(f"tinycats: Server costs {cost}.")


@app.cls(
    gpu=SETTINGS.serve_gpu or None,
    volumes={STORAGE.outputs: outputs_volume},
    scaledown_window=SETTINGS.serve_warm_s,
    max_containers=SETTINGS.serve_max_containers,
    enable_memory_snapshot=True,
    timeout=10 * 60,
    env=SETTINGS.env(),
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
        runs = (SETTINGS.serve_classifier, SETTINGS.serve_dit)
        self.store = load_store(Path(STORAGE.outputs), *runs, Limits(), require_a_run=False)

    @modal.enter(snap=False)
    def start(self) -> None:
        """After a restore: see the volume's newest commits and move the models to the GPU."""
        import torch

        reload_outputs()
        runs = {"classifier": SETTINGS.serve_classifier, "dit": SETTINGS.serve_dit}
        for kind, run in runs.items():  # "newest" may be a run trained since the snapshot
            self.store.load_default(kind, run)
        self.store.to("cuda" if torch.cuda.is_available() else "cpu")

    @modal.method()
    def sample(self, run: str, breed: str, n: int, steps: int, cfg_scale: float, seed: int) -> dict:
        """`Runner.sample` from a warm container: ``status: drawn`` with the PNG, or ``refused``."""
        from tinycats.commands.serve_models import BadRequest, draw

        limits = self.store.limits
        if not (1 <= n <= limits.max_n and 1 <= steps <= limits.max_steps):
            return attempt.refuse(
                f"--n must be 1 to {limits.max_n} and --steps 1 to {limits.max_steps}."
            )
        try:
            png = draw(self.store.get("dit", run), breed, n, steps, cfg_scale, seed)
        except BadRequest as err:
            return attempt.refuse(str(err))
        return {"status": "drawn", "png": png}

    @modal.asgi_app(requires_proxy_auth=not SETTINGS.serve_public)
    def web(self) -> Any:
        """The FastAPI app of `tinycats serve` over this container's loaded runs."""
        from tinycats.commands.serve_api import build_app
        from tinycats.commands.serve_budget import Budget

        if not SETTINGS.serve_public:  # behind proxy auth, only the workspace's tokens get in
            return build_app(self.store)
        return build_app(
            self.store, Budget(SETTINGS.serve_requests_per_min, SETTINGS.serve_draws_per_min)
        )


def sampler() -> Any:
    """The deployed `Server` when `modal deploy` has run (warm, snapshotted), else a `Runner`."""
    try:
        deployed = modal.Cls.from_name(app.name, "Server")
        deployed.hydrate()
    except (modal.exception.NotFoundError, modal.exception.AuthError):
        return Runner()  # not deployed (or no token: the Runner call then says so)
    return deployed()


@app.function(
    volumes={STORAGE.outputs: outputs_volume},
    scaledown_window=SETTINGS.serve_warm_s,
    max_containers=1,
    env=SETTINGS.env(),
)
@modal.concurrent(max_inputs=100)  # one CPU container answers every viewer
@modal.wsgi_app(requires_proxy_auth=not SETTINGS.serve_public)
def tensorboard() -> Any:
    """TensorBoard over every run on the outputs volume; opening the page shows new commits."""
    from tinycats.commands.board import board_app

    return board_app(STORAGE.outputs, reload_outputs)
