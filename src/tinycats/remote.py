"""tinycats on Modal: the same training command, on a rented GPU, resumable across failures.

    modal run --detach src/tinycats/remote.py::fit --config configs/classifier.yaml
    modal run src/tinycats/remote.py::sample --run checkpoints/dit/2026-01-31/cats

This file is the whole Modal layer, and it is meant to stay thin: the container runs the very
LightningCLI that `tinycats fit` runs on a laptop. Only two things differ on Modal, where files
live and how a write becomes durable, and both are passed in.

`modal run` imports this file on your computer too, to find out what to launch. That is why it
imports nothing but `modal` and the standard library at the top: torch and Lightning cost
seconds to import, and only the container needs them.
"""

import ast
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
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
# refuses it, after the image is built. A mistake should cost a second, not a build.

GPU_TYPES = ("T4", "L4", "A10", "L40S", "A100", "A100-40GB", "A100-80GB", "H100", "H200", "B200")
MAX_GPUS = 8
MAX_TIMEOUT_S = 24 * 60 * 60  # Modal's limit for one attempt; each retry gets a fresh one
MAX_RETRIES = 10  # Modal's documented maximum


class LaunchError(ValueError):
    """A problem found before launching; the message says what was wrong and how to fix it."""


def validate_launch_settings(gpu: str, timeout: int, retries: int) -> None:
    """Raise LaunchError unless ``gpu``, ``timeout`` (seconds) and ``retries`` are valid on Modal."""
    kind, colon, count = gpu.partition(":")
    count_ok = not colon or (count.isdigit() and 1 <= int(count) <= MAX_GPUS)
    if kind.upper() not in GPU_TYPES or not count_ok:
        raise LaunchError(
            f"Unknown GPU {gpu!r}. Use one of {', '.join(GPU_TYPES)}, optionally followed by "
            f":N for N GPUs in one container (N from 1 to {MAX_GPUS}), e.g. "
            "TINYCATS_GPU=L40S or TINYCATS_GPU=H100:4."
        )
    if not 1 <= timeout <= MAX_TIMEOUT_S:
        raise LaunchError(
            f"Timeout {timeout} s is outside Modal's range for one attempt, 1 s to 24 h "
            f"({MAX_TIMEOUT_S} s). Set TINYCATS_TIMEOUT to seconds in that range, e.g. 21600 for 6 h; "
            "a longer run continues over retries."
        )
    if not 0 <= retries <= MAX_RETRIES:
        raise LaunchError(
            f"Retries {retries} is outside 0 to {MAX_RETRIES}, the range Modal allows. "
            f"Set TINYCATS_RETRIES to a whole number in that range."
        )


def _whole_number_from_env(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise LaunchError(
            f"{name}={value!r} is not a whole number. Set it to one, or unset it for {default}."
        ) from None


# An L4 is the default: cheap, 24 GB, and unlike the T4 it has bfloat16, which the DiT configs
# train in. plans/0004-modal-layer.md and the README compare the other GPUs.
GPU = os.environ.get("TINYCATS_GPU", "L4").strip()
TIMEOUT_S = _whole_number_from_env("TINYCATS_TIMEOUT", 6 * 60 * 60)
RETRIES = _whole_number_from_env("TINYCATS_RETRIES", MAX_RETRIES)
validate_launch_settings(GPU, TIMEOUT_S, RETRIES)

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

# ## The container
#
# A class, so that the slow start-up work (imports, CUDA initialisation) happens once in
# `@modal.enter`, before the method, and the method is only the run itself.
# `single_use_containers=True` gives every attempt a fresh container: a retry never inherits a
# wedged GPU or half-torn-down state from the attempt that failed.
# The container imports this module again; `env` gives it the same settings as the launch.


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
    def fit(self, config_text: str, overrides: list[str], run_name: str, run_date: str) -> dict:
        """Train the run named by ``run_name`` and ``run_date``, continuing it if it was cut short.

        Returns the run summary (``status: finished``), the same one on every call once the run
        is done, or ``status: refused`` with the error when the config cannot run at all, which
        no retry would fix.
        """
        from tinycats.errors import TinyCatsError

        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(config_text)
            args = ["fit", "-c", str(config), *overrides,
                    "--run.outputs", STORAGE.outputs, "--run.name", run_name,
                    "--run.date", run_date, "--data.root", STORAGE.data]  # fmt: skip
            if self.gpus > 1:
                return _fit_in_subprocess(args, run_name, run_date)
            from tinycats.cli import run_cli

            try:
                return run_cli(
                    args, commit_outputs=STORAGE.commit_outputs, commit_data=STORAGE.commit_data
                )
            except TinyCatsError as err:
                return _refusal(str(err))
            except SystemExit as stop:
                # 143 means a signal stopped training at a checkpoint: re-raised, it fails this
                # attempt and Modal retries, continuing the run. 2 is a rejected argument.
                if stop.code != _USAGE_ERROR:
                    raise
                return _refusal(_REJECTED)

    @modal.method()
    def sample(self, run: str, breed: str = "all", n: int = 8, steps: int = 50,
               cfg: float = 3.0, seed: int = 0) -> dict:  # fmt: skip
        """Draw a grid from the newest checkpoint of ``run`` (a path on the outputs volume).

        Returns ``status: drawn`` with the PNG bytes, or ``status: refused`` with the error.
        """
        from tinycats.errors import TinyCatsError
        from tinycats.sample import main as sample_main

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "grid.png"
            try:
                sample_main(["--ckpt", str(Path(STORAGE.outputs) / run), "--breed", breed,
                             "--n", str(n), "--steps", str(steps), "--cfg", str(cfg),
                             "--seed", str(seed), "--out", str(out)])  # fmt: skip
            except TinyCatsError as err:
                return _refusal(str(err))
            return {"status": "drawn", "png": out.read_bytes()}


# Retries are for failures that may not happen again. A config that cannot run fails the same way
# every time, so it is returned as a refusal instead of raised, and nothing is retried.
_USAGE_ERROR = 2
_REJECTED = (
    "the tinycats command rejected the config or the overrides; its message is in the log above"
)


def _refusal(error: str) -> dict[str, Any]:
    return {"status": "refused", "error": error}


def _warm_up_cuda(torch: Any) -> None:
    """Create the CUDA context and load cuBLAS and cuDNN now, so the first step does not wait."""
    images = torch.randn(8, 3, 64, 64, device="cuda")
    conv = torch.nn.Conv2d(3, 16, kernel_size=3, padding=1).cuda()
    (conv(images).flatten(1) @ torch.ones(16 * 64 * 64, 8, device="cuda")).sum().item()
    del images, conv
    torch.cuda.empty_cache()


# ## Several GPUs in one container
#
# With `gpu="H100:4"` Lightning trains with DDP, and its launcher starts the other ranks by
# re-running the command line of the current process. In a Modal container that command line is
# Modal's, not ours, so the run goes through `python -m tinycats fit ...` in a subprocess whose
# command line Lightning can re-run. The subprocess cannot call this container's volume commit;
# Modal commits in the background every few seconds, and this process commits once more when the
# subprocess exits, whatever its status. Several machines (`modal.clustered`) are the next step.


def _fit_in_subprocess(args: list[str], run_name: str, run_date: str) -> dict[str, Any]:
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
    finally:
        STORAGE.commit_outputs()
        STORAGE.commit_data()
    if returncode == _USAGE_ERROR:
        return _refusal(_REJECTED)
    if returncode != 0:
        raise RuntimeError(
            f"`tinycats fit` exited with status {returncode}; Modal retries the run."
        )
    return _finished_summary(Path(STORAGE.outputs), run_name, run_date)


def _finished_summary(outputs: Path, run_name: str, run_date: str) -> dict[str, Any]:
    """The summary the run left; its model folder is not known here (the newest wins a tie)."""
    found = sorted(outputs.glob(f"checkpoints/*/{run_date}/{run_name}/summary.json"),
                   key=lambda path: path.stat().st_mtime_ns)  # fmt: skip
    if not found:
        raise RuntimeError(
            f"`tinycats fit` succeeded but left no summary for {run_date}/{run_name}."
        )
    return json.loads(found[-1].read_text())


# ## Launching from your computer
#
# `modal run src/tinycats/remote.py::fit` runs this function locally. It checks everything it can
# without torch, fixes the run's identity (its name and date: a retry, and a later rerun with the
# same --name and --date, land in the same directory and continue it), then starts the remote call
# and waits for it. With `modal run --detach` the run goes on if this terminal closes.

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FIXED_BY_LAUNCH = ("--run.outputs", "--run.name", "--run.date", "--data.root", "-c", "--config")
_ENTRYPOINT = "src/tinycats/remote.py"


@app.local_entrypoint()
def fit(config: str = "configs/classifier.yaml", name: str = "", date: str = "",
        overrides: str = "") -> None:  # fmt: skip
    """Train CONFIG on Modal; --name and --date continue an earlier run, --overrides adds CLI flags."""
    try:
        validate_launch_settings(GPU, TIMEOUT_S, RETRIES)
        if not Path(config).is_file():
            raise LaunchError(f"Config file {config} does not exist (relative to {Path.cwd()}).")
        config_text = Path(config).read_text()
        extra = shlex.split(overrides)
        parsed = check_config(config_text, config, extra)
        run_name, run_date = run_identity(parsed, config, name, date)
    except LaunchError as err:
        raise SystemExit(f"tinycats: {err}") from None
    resume = (f"modal run --detach {_ENTRYPOINT}::fit --config {config} --name {run_name} "
              f"--date {run_date}" + (f" --overrides={shlex.quote(overrides)}" if overrides else ""))  # fmt: skip
    print(f"Training {config} on {GPU} as run {run_name!r} of {run_date} "
          f"(attempts of up to {TIMEOUT_S / 3600:g} h, {RETRIES} retries).\n"
          f"  checkpoints: volume {OUTPUTS_VOLUME}, checkpoints/<model>/{run_date}/{run_name}/\n"
          f"  to continue it after a stop, run the same command with the same name and date:\n"
          f"    {resume}")  # fmt: skip
    summary = Runner().fit.spawn(config_text, extra, run_name, run_date).get()
    if summary["status"] != "finished":
        raise SystemExit(f"tinycats: the run was refused: {summary['error']}")
    run_dir = Path(summary["run_dir"]).relative_to(STORAGE.outputs)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(summary["metrics"].items()))
    print(f"Finished at step {summary['global_step']}: {metrics or 'no metrics'}\n"
          f"  fetch it:  modal volume get {OUTPUTS_VOLUME} {run_dir} ./outputs/{run_dir.parent}\n"
          f"  sample it: modal run {_ENTRYPOINT}::sample --run {run_dir}  (DiT runs)")  # fmt: skip


@app.local_entrypoint()
def sample(run: str, breed: str = "all", n: int = 8, steps: int = 50, cfg: float = 3.0,
           seed: int = 0, out: str = "samples.png") -> None:  # fmt: skip
    """Draw cats with the newest checkpoint of RUN (checkpoints/dit/DATE/NAME) and save a PNG."""
    if Path(run).is_absolute() or ".." in Path(run).parts:
        raise SystemExit(f"tinycats: --run {run} must be a path inside the {OUTPUTS_VOLUME} "
                         "volume, e.g. checkpoints/dit/2026-01-31/cats.")  # fmt: skip
    drawn = sampler().sample.remote(run, breed, n, steps, cfg, seed)
    if drawn["status"] != "drawn":
        raise SystemExit(f"tinycats: {drawn['error']}")
    Path(out).write_bytes(drawn["png"])
    print(f"Saved the samples of {run} to {out}")


def check_config(config_text: str, source: str, overrides: list[str]) -> dict[str, Any]:
    """The parsed config, if it can train on Modal as far as can be told without torch."""
    import yaml  # jsonargparse's dependency, so present wherever tinycats is installed

    try:
        config = yaml.safe_load(config_text)
    except yaml.YAMLError as err:
        raise LaunchError(f"{source} is not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise LaunchError(f"{source} must be a YAML mapping with model, data and trainer sections.")
    missing = [key for key in ("model", "data", "trainer") if not isinstance(config.get(key), dict)]
    if missing:
        raise LaunchError(f"{source} has no {', '.join(missing)} section: copy one from configs/.")
    class_path = config["model"].get("class_path", "")
    known = _model_classes()
    if class_path.rpartition(".")[2] not in known or not class_path.startswith("tinycats.models."):
        raise LaunchError(
            f"{source}: model.class_path {class_path!r} is not a tinycats model; use one of "
            f"{', '.join('tinycats.models.' + name for name in known)}."
        )
    fixed = [arg for arg in overrides if arg.split("=")[0] in _FIXED_BY_LAUNCH]
    if fixed:
        raise LaunchError(
            f"--overrides may not set {', '.join(fixed)}: the launch fixes the config, the run "
            "(use --name and --date) and the volume folders."
        )
    data_source = _override_value(overrides, "--data.source") or config["data"].get(
        "source", "oxford-pets"
    )
    if data_source != "oxford-pets" and not data_source.startswith(STORAGE.data + "/"):
        raise LaunchError(
            f"data.source {data_source!r} is a folder on this computer, which the GPU container "
            f"cannot see. Upload it once (modal volume put {DATA_VOLUME} {data_source} photos) "
            f"and train on {STORAGE.data}/photos (--overrides='--data.source={STORAGE.data}/photos')."
        )
    return config


def run_identity(config: dict[str, Any], source: str, name: str, date: str) -> tuple[str, str]:
    """The run's name (given, else the config's run.name, else the file name) and date (today)."""
    run_name = name or (config.get("run") or {}).get("name") or Path(source).stem
    run_date = date or dt.date.today().isoformat()
    if not _RUN_NAME.match(run_name):
        raise LaunchError(f"Run name {run_name!r} must be letters, digits, '.', '_' or '-'.")
    try:
        dt.date.fromisoformat(run_date)
    except ValueError:
        raise LaunchError(
            f"--date {run_date!r} must be YYYY-MM-DD, the date the run started."
        ) from None
    return run_name, run_date


def _model_classes() -> list[str]:
    """The names ``tinycats.models`` exports, read from its source without importing torch."""
    source = (Path(__file__).resolve().parent / "models" / "__init__.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", "") == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    return []


def _override_value(overrides: list[str], key: str) -> str | None:
    """The value an override list gives ``key`` (``--key=value`` or ``--key value``), if any."""
    value = None
    for i, arg in enumerate(overrides):
        if arg.startswith(key + "="):
            value = arg.partition("=")[2]
        elif arg == key and i + 1 < len(overrides):
            value = overrides[i + 1]
    return value


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
# token); TINYCATS_SERVE_PUBLIC=1 makes them public, deliberately.

SERVE_GPU = os.environ.get("TINYCATS_SERVE_GPU", "L4").strip()  # empty: CPU only
SERVE_WARM_S = _whole_number_from_env("TINYCATS_SERVE_WARM_S", 5 * 60)
SERVE_PUBLIC = os.environ.get("TINYCATS_SERVE_PUBLIC", "").strip() == "1"
# Runs on the outputs volume (relative to it), or "newest" for the newest run of the model.
SERVE_CLASSIFIER = os.environ.get("TINYCATS_SERVE_CLASSIFIER", "newest").strip()
SERVE_GENERATOR = os.environ.get("TINYCATS_SERVE_GENERATOR", "newest").strip()
MAX_SCALEDOWN_S = 60 * 60  # the longest warm window the Modal client accepts
try:
    validate_launch_settings(SERVE_GPU or "T4", TIMEOUT_S, RETRIES)
except LaunchError as err:
    raise LaunchError(f"TINYCATS_SERVE_GPU={SERVE_GPU!r}: {err}") from None
if not 2 <= SERVE_WARM_S <= MAX_SCALEDOWN_S:
    raise LaunchError(
        f"TINYCATS_SERVE_WARM_S={SERVE_WARM_S} is outside Modal's warm window of 2 to "
        f"{MAX_SCALEDOWN_S} s: set seconds in that range, e.g. 300."
    )


@app.cls(
    gpu=SERVE_GPU or None,
    volumes={STORAGE.outputs: outputs_volume},
    scaledown_window=SERVE_WARM_S,
    enable_memory_snapshot=True,
    timeout=10 * 60,
    env={
        "TINYCATS_SERVE_GPU": SERVE_GPU,
        "TINYCATS_SERVE_WARM_S": str(SERVE_WARM_S),
        "TINYCATS_SERVE_PUBLIC": "1" if SERVE_PUBLIC else "",
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
        self.store = load_store(Path(STORAGE.outputs), SERVE_CLASSIFIER, SERVE_GENERATOR,
                                Limits(), require_a_run=False)  # fmt: skip

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
    def sample(self, run: str, breed: str = "all", n: int = 8, steps: int = 50,
               cfg: float = 3.0, seed: int = 0) -> dict:  # fmt: skip
        """`Runner.sample` from a warm container: ``status: drawn`` with the PNG, or ``refused``."""
        from tinycats.commands.serve_models import BadRequest, draw

        limits = self.store.limits
        if not (1 <= n <= limits.max_n and 1 <= steps <= limits.max_steps):
            return _refusal(f"--n must be 1 to {limits.max_n} and --steps 1 to {limits.max_steps}.")
        try:
            return {"status": "drawn",
                    "png": draw(self.store.get("dit", run), breed, n, steps, cfg, seed)}  # fmt: skip
        except BadRequest as err:
            return _refusal(str(err))

    @modal.asgi_app(requires_proxy_auth=not SERVE_PUBLIC)
    def web(self) -> Any:
        """The FastAPI app of `tinycats serve` over this container's loaded runs."""
        from tinycats.commands.serve_api import build_app

        return build_app(self.store)


def sampler() -> Any:
    """The deployed `Server` when `modal deploy` has run (warm, snapshotted), else a `Runner`."""
    try:
        deployed = modal.Cls.from_name(app.name, "Server")
        deployed.hydrate()
    except (modal.exception.NotFoundError, modal.exception.AuthError):
        return Runner()  # not deployed (or no token: the Runner call then says so)
    return deployed()


@app.function(volumes={STORAGE.outputs: outputs_volume}, scaledown_window=SERVE_WARM_S)
@modal.concurrent(max_inputs=100)
@modal.wsgi_app(requires_proxy_auth=not SERVE_PUBLIC)
def tensorboard() -> Any:
    """TensorBoard over every run on the outputs volume (the events each run writes beside its
    metrics.csv), as modal-examples serve it; opening the page shows the newest commits."""
    from tensorboard import program
    from tensorboard.backend.application import TensorBoardWSGIApp

    board = program.TensorBoard()
    board.configure(logdir=STORAGE.outputs)
    data_provider, multiplexer = board._make_data_provider()
    inner = TensorBoardWSGIApp(board.flags, board.plugin_loaders, data_provider,
                               board.assets_zip_provider, multiplexer)  # fmt: skip

    def reloading(environ: dict, start_response: Callable) -> Any:
        if environ.get("PATH_INFO") == "/" and not modal.is_local():
            try:  # fails while TensorBoard has an events file open; the next visit retries
                outputs_volume.reload()
            except Exception as err:
                print(f"tensorboard: volume not reloaded ({err}); showing what it had")
        return inner(environ, start_response)

    return reloading
