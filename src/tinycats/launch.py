"""Checks made on your computer before a Modal launch, without torch, and the commands printed.

`remote.py` imports this module on the client side of `modal run`, so it needs nothing beyond
the standard library and PyYAML (which `pip install -e .` brings). Everything here can fail
before a GPU is rented, with a message that names the fix.
"""

import ast
import datetime as dt
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tinycats.runs import ledger
from tinycats.runs.run_dir import CHECKPOINTS, ESSENTIAL, LAST

# ## GPUs, timeouts and retries (Modal's documented values, FACTS.md)

GPU_TYPES = (
    "T4",
    "L4",
    "A10",
    "L40S",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "RTX-PRO-6000",
    "H100",
    "H100!",
    "H200",
    "B200",
    "B200+",
)
MAX_GPUS = 8
MAX_GPUS_OF = {"A10": 4}  # types with a lower limit per container
MAX_TIMEOUT_S = 24 * 60 * 60  # Modal's limit for one attempt
DEFAULT_RETRIES = 10
# Client 1.6.4 checks only that retries are not negative (modal/retries.py); its commit raising
# the server's limit says 90. The launch accepts what the client accepts.
SERVER_MAX_RETRIES = 90
# An attempt's training ends this long before its timeout at the latest (less for short ones):
# what follows `fit` in the process (the summary, the lease's release, the last commit). What
# follows the last step inside `fit` is measured while training (runs/deadline.py).
MAX_END_MARGIN_S = 60


class LaunchError(ValueError):
    """A problem found before launching; the message says what was wrong and how to fix it."""


def validate_launch_settings(gpu: str, timeout: int, retries: int) -> None:
    """Raise LaunchError unless ``gpu``, ``timeout`` (seconds) and ``retries`` are valid on Modal."""
    kind, colon, count = gpu.partition(":")
    kind = kind.upper()
    limit = MAX_GPUS_OF.get(kind, MAX_GPUS)
    if kind not in GPU_TYPES or (colon and not count.isdigit()):
        raise LaunchError(
            f"Unknown GPU {gpu!r}. Use one of {', '.join(GPU_TYPES)} (any case), optionally "
            f"followed by :N for N GPUs in one container, e.g. TINYCATS_GPU=L40S or "
            "TINYCATS_GPU=H100:4."
        )
    if colon and not 1 <= int(count) <= limit:
        raise LaunchError(
            f"GPU {gpu!r} asks for {count} GPUs; Modal gives one container 1 to {limit} {kind} "
            f"GPUs. Set TINYCATS_GPU={kind}:N with N from 1 to {limit}."
        )
    if not 1 <= timeout <= MAX_TIMEOUT_S:
        raise LaunchError(
            f"Timeout {timeout} s is outside Modal's range for one attempt, 1 s to 24 h "
            f"({MAX_TIMEOUT_S} s). Set TINYCATS_TIMEOUT to seconds in that range, e.g. 21600 for "
            "6 h; a longer run continues in further attempts."
        )
    if retries < 0:
        raise LaunchError(
            f"Retries {retries} is negative. Set TINYCATS_RETRIES to a whole number from 0 "
            f"(Modal's server allows up to {SERVER_MAX_RETRIES})."
        )


def whole_number_from_env(name: str, default: int, environ: Mapping[str, str] = os.environ) -> int:
    """The whole number the environment variable ``name`` holds (``default`` when unset)."""
    value = environ.get(name, "")
    if not value.strip():
        return default
    try:
        return int(value)
    except ValueError:
        raise LaunchError(
            f"{name}={value!r} is not a whole number. Set it to one, or unset it for {default}."
        ) from None


def attempt_end_s(timeout: int) -> float:
    """When an attempt's training must have ended, in seconds from its start: its timeout less
    a margin for what follows training (at most MAX_END_MARGIN_S, a tenth of short timeouts)."""
    return timeout - min(MAX_END_MARGIN_S, timeout / 10)


# ## The launch's settings, from the environment

MAX_SCALEDOWN_S = 60 * 60  # the longest warm window the Modal client accepts


@dataclass(frozen=True)
class Settings:
    """The TINYCATS_* settings of a launch; ``env()`` gives them to every container."""

    gpu: str = "L4"  # cheap, 24 GB, and bfloat16 (plans/0004-modal-layer.md)
    timeout_s: int = 6 * 60 * 60
    retries: int = DEFAULT_RETRIES
    outputs_volume: str = "tinycats-outputs"
    data_volume: str = "tinycats-data"
    serve_gpu: str = "L4"  # empty: CPU only
    serve_warm_s: int = 5 * 60
    serve_public: bool = False
    serve_classifier: str = "newest"  # a run on the outputs volume, or the newest of the model
    serve_dit: str = "newest"
    # What a deployment may cost: at most this many Server containers at once (a burst queues
    # rather than renting more GPUs), and in public mode what one client may ask a minute.
    # Modal publishes no preemption rate: an assumed mean time between preemptions sets the
    # checkpoint cadence on Modal by Young–Daly (runs/cadence.py); 0 keeps the config's cadence.
    preemption_minutes: int = 6 * 60
    serve_max_containers: int = 1
    serve_requests_per_min: int = 60
    serve_draws_per_min: int = 10

    def env(self) -> dict[str, str]:
        """The environment variables that give a container these settings."""
        text = lambda value: ("1" if value else "") if isinstance(value, bool) else str(value)  # noqa: E731
        return {VARIABLES[name]: text(value) for name, value in vars(self).items()}


VARIABLES = {
    "gpu": "TINYCATS_GPU",
    "timeout_s": "TINYCATS_TIMEOUT",
    "retries": "TINYCATS_RETRIES",
    "outputs_volume": "TINYCATS_OUTPUTS_VOLUME",
    "data_volume": "TINYCATS_DATA_VOLUME",
    "serve_gpu": "TINYCATS_SERVE_GPU",
    "serve_warm_s": "TINYCATS_SERVE_WARM_S",
    "serve_public": "TINYCATS_SERVE_PUBLIC",
    "serve_classifier": "TINYCATS_SERVE_CLASSIFIER",
    "serve_dit": "TINYCATS_SERVE_DIT",
    "preemption_minutes": "TINYCATS_PREEMPTION_MINUTES",
    "serve_max_containers": "TINYCATS_SERVE_MAX_CONTAINERS",
    "serve_requests_per_min": "TINYCATS_SERVE_REQUESTS_PER_MIN",
    "serve_draws_per_min": "TINYCATS_SERVE_DRAWS_PER_MIN",
}


def settings_from_env(environ: Mapping[str, str]) -> Settings:
    """The settings the environment gives, checked; LaunchError names the variable to fix."""
    values: dict[str, Any] = {}
    if "TINYCATS_SERVE_GENERATOR" in environ and "TINYCATS_SERVE_DIT" not in environ:
        print("tinycats: TINYCATS_SERVE_GENERATOR is deprecated: use TINYCATS_SERVE_DIT.")
        environ = {**environ, "TINYCATS_SERVE_DIT": environ["TINYCATS_SERVE_GENERATOR"]}
    for name, default in vars(Settings()).items():
        variable = VARIABLES[name]
        if isinstance(default, bool):
            values[name] = environ.get(variable, "").strip() == "1"
        elif isinstance(default, int):
            values[name] = whole_number_from_env(variable, default, environ)
        else:
            values[name] = environ.get(variable, default).strip()
    settings = Settings(**values)
    validate_launch_settings(settings.gpu, settings.timeout_s, settings.retries)
    validate_serve_settings(
        settings.serve_gpu,
        settings.serve_warm_s,
        settings.serve_max_containers,
        settings.serve_requests_per_min,
        settings.serve_draws_per_min,
    )
    return settings


# ## The config and the overrides

# Set by the launch itself: the config, the run's folder, the volumes, the attempt's deadline.
FIXED_BY_LAUNCH = (
    "--run.outputs",
    "--run.name",
    "--run.date",
    "--data.root",
    "-c",
    "--config",
    "--stop_at",
)
# Flags that print something and exit without training.
PRINT_AND_EXIT = ("-h", "--help", "--print_config")


def check_config(
    config_text: str, source: str, overrides: list[str], data_mount: str, data_volume: str
) -> dict[str, Any]:
    """The parsed config, if it can train on Modal as far as can be told without torch."""
    yaml = _yaml()
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
    printing = [arg for arg in overrides if arg.split("=")[0] in PRINT_AND_EXIT]
    if printing:
        raise LaunchError(
            f"--overrides={' '.join(printing)} prints and exits without training, which would "
            f"rent a GPU for nothing. Run it here instead: tinycats fit -c {source} "
            f"{' '.join(printing)}"
        )
    fixed = [arg for arg in overrides if arg.split("=")[0] in FIXED_BY_LAUNCH]
    if fixed:
        raise LaunchError(
            f"--overrides may not set {', '.join(fixed)}: the launch fixes the config, the run "
            "(use --name and --date), the volume folders and the attempt's deadline."
        )
    data_source = override_value(overrides, "--data.source") or config["data"].get(
        "source", "oxford-pets"
    )
    if data_source != "oxford-pets" and not data_source.startswith(data_mount + "/"):
        raise LaunchError(
            f"data.source {data_source!r} is a folder on this computer, which the GPU container "
            f"cannot see. Upload it once (modal volume put {data_volume} {data_source} photos) "
            f"and train on {data_mount}/photos (--overrides='--data.source={data_mount}/photos')."
        )
    check_monitored_metric(config, overrides)
    return config


def check_volume_path(run: str, volume: str) -> None:
    """Exit with a message unless ``run`` is a path inside the outputs volume."""
    if Path(run).is_absolute() or ".." in Path(run).parts:
        raise SystemExit(
            f"tinycats: --run {run} must be a path inside the {volume} volume, e.g. "
            "checkpoints/dit/2026-01-31/cats."
        )


def check_monitored_metric(config: dict[str, Any], overrides: list[str]) -> None:
    """Refuse a ``checkpoint.best_monitor`` the config's model never logs in fit, or logs only in
    a validation the config never runs: on the GPU it would fail at the first validation."""
    monitor = override_value(overrides, "--checkpoint.best_monitor")
    if monitor is None:
        monitor = (config.get("checkpoint") or {}).get("best_monitor") or ""
    class_name = config["model"].get("class_path", "").rpartition(".")[2]
    logged = _fit_metrics(class_name)
    if not monitor or logged is None:
        return
    if monitor not in (*logged, "epoch", "step"):
        raise LaunchError(
            f"checkpoint.best_monitor={monitor!r} is never logged by {class_name}, so best.ckpt "
            f"could never be chosen. It logs {', '.join(logged)}: pick one of them."
        )
    shares = _split_shares(override_value(overrides, "--data.split") or config["data"].get("split"))
    if monitor.startswith("val/") and shares is not None and not shares[1]:
        raise LaunchError(
            f"checkpoint.best_monitor={monitor!r} is logged by validation, and data.split "
            f"{list(shares)} leaves no validation images. Give it a validation share."
        )


def start_checkpoint(config: dict[str, Any], overrides: list[str]) -> tuple[list[str], str]:
    """The overrides without a start checkpoint, and that checkpoint ("" for none).

    Modal retries an attempt, and a long run takes several: each one must continue the run,
    not start again. So ``--resume PATH`` and ``--ckpt_path PATH`` become a start point that the
    container uses only while the run's folder has no checkpoint of its own, and the policies
    that cannot survive a retry are refused here.
    """
    policy = override_value(overrides, "--resume") or str(config.get("resume") or "auto")
    path = override_value(overrides, "--ckpt_path") or str(config.get("ckpt_path") or "")
    if policy == "never":
        raise LaunchError(
            "--resume never cannot survive a retry: the next attempt would find the first one's "
            "checkpoints and stop. A new --name starts a fresh run; that is all `never` is for."
        )
    if policy == "latest":
        raise LaunchError(
            "--resume latest would train in whichever run wrote last, not in the run this launch "
            "names. On Modal a run is found by its name: pass --name NAME (and --date to pick one "
            "of several) to continue it."
        )
    if policy != "auto" and path:
        raise LaunchError("Set either --resume PATH or --ckpt_path PATH, not both.")
    kept = _without(overrides, ("--resume", "--ckpt_path"))
    return kept, path or ("" if policy == "auto" else policy)


def run_identity(config: dict[str, Any], source: str, name: str, date: str) -> tuple[str, str]:
    """The run's name (given, else the config's run.name, else the file name) and date ("" for
    the newest run of that name, or today's when there is none)."""
    run_name = name or (config.get("run") or {}).get("name") or Path(source).stem
    if not _RUN_NAME.match(run_name):
        raise LaunchError(f"Run name {run_name!r} must be letters, digits, '.', '_' or '-'.")
    if date:
        try:
            dt.date.fromisoformat(date)
        except ValueError:
            raise LaunchError(
                f"--date {date!r} must be YYYY-MM-DD, the date the run started."
            ) from None
    return run_name, date


def override_value(overrides: list[str], key: str) -> str | None:
    """The value an override list gives ``key`` (``--key=value`` or ``--key value``), if any."""
    value = None
    for i, arg in enumerate(overrides):
        if arg.startswith(key + "="):
            value = arg.partition("=")[2]
        elif arg == key and i + 1 < len(overrides):
            value = overrides[i + 1]
    return value


# ## Commands printed for the user

LARGE_RUN_BYTES = 1 << 30


def fetch_commands(volume: str, run_dir: str, run_bytes: int, present: list[str]) -> list[str]:
    """Commands that download a run (a path inside ``volume``) into ./outputs/<same path>.

    ``modal volume get VOL DIR LOCAL`` writes every file of DIR onto LOCAL itself unless LOCAL
    is an existing folder, so each command creates the folder first. When the run holds
    ``LARGE_RUN_BYTES`` or more (a DiT's step checkpoints), a second command fetches only what
    is needed to use and judge it, of the top-level names ``present`` in the run's folder.
    """
    run = PurePosixPath(run_dir)
    local = PurePosixPath("outputs") / run
    whole = (
        f"mkdir -p {shlex.quote(str(local.parent))} && modal volume get {volume} "
        f"{shlex.quote(str(run))} {shlex.quote(str(local.parent))}"
    )
    commands = [whole]
    if run_bytes >= LARGE_RUN_BYTES:
        parts = " && ".join(
            f"modal volume get {volume} {shlex.quote(str(run / name))} {shlex.quote(str(local))}"
            for name in ESSENTIAL
            if name in present
        )
        commands.append(f"mkdir -p {shlex.quote(str(local))} && {parts}")
    return commands


def continue_command(entrypoint: str, config: str, name: str, date: str, overrides: str) -> str:
    """The command that continues this launch's run."""
    return (
        f"modal run --detach {entrypoint}::fit --config {shlex.quote(config)} --name {name}"
        + (f" --date {date}" if date else "")
        + (f" --overrides={shlex.quote(overrides)}" if overrides else "")
    )


def start_message(
    config: str, settings: Settings, name: str, date: str, app_id: str, again: str
) -> str:
    """What a launch prints before it starts: the run, and how to follow and stop it."""
    app_id = app_id or "APP_ID (modal app list)"
    return (
        f"Training {config} on {settings.gpu} as run {name!r} (attempts of up to "
        f"{settings.timeout_s / 3600:g} h, each ending its training in time to save; up to "
        f"{settings.retries} retries after a failure, none spent on a preemption).\n"
        f"  it continues the newest run of that name on volume {settings.outputs_volume}, else "
        f"starts {CHECKPOINTS}/<model>/{date or dt.date.today().isoformat()}/{name}/\n"
        f"  follow it:   modal app logs -f {app_id}\n"
        f"  stop it:     modal app stop {app_id}\n"
        f"  continue it later (same command, same name):\n    {again}"
    )


def report(result: dict[str, Any], again: str, volume: str, mount: str, entrypoint: str) -> None:
    """Print how the run ended and the commands to use it; exit non-zero unless it finished."""
    if result["status"] == "refused":
        raise SystemExit(f"tinycats: the run was refused, and not retried: {result['error']}")
    if result["status"] != "finished":
        raise SystemExit(
            f"tinycats: the run stopped after Modal's retries: {result['error']}\n"
            f"  continue it from its last checkpoint: {again}"
        )
    run_dir = str(Path(result["run_dir"]).relative_to(mount))
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result["metrics"].items()))
    fetch = fetch_commands(volume, run_dir, result["run_bytes"], result["run_files"])
    print(
        f"Finished {run_dir} at step {result['global_step']} in {result['attempts']} "
        f"attempt(s): {metrics or 'no metrics'}\n"
        f"  fetch it ({result['run_bytes'] / 1e9:.2f} GB):  {fetch[0]}"
    )
    if len(fetch) > 1:
        print(f"  or only {LAST}, the summary, metrics and sample grids:\n    {fetch[1]}")
    print(f"  sample it: modal run {entrypoint}::sample --run {run_dir}  (DiT runs)")
    if result.get("ledger"):
        print(f"  what it cost: {ledger.describe(result['ledger'])}")


_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _without(overrides: list[str], keys: tuple[str, ...]) -> list[str]:
    """``overrides`` with every ``--key=value`` and ``--key value`` of ``keys`` removed."""
    kept: list[str] = []
    skip = False
    for arg in overrides:
        if skip:
            skip = False
        elif arg in keys:
            skip = True
        elif arg.partition("=")[0] not in keys:
            kept.append(arg)
    return kept


def _yaml() -> Any:
    """PyYAML, which the project's install brings (through jsonargparse), or a clear error."""
    try:
        import yaml
    except ImportError:
        raise LaunchError(
            "PyYAML is missing, so the config cannot be checked before launch. Install the "
            "project, not only modal, from the repository root: pip install -e ."
        ) from None
    return yaml


def _model_classes() -> list[str]:
    """The names ``tinycats.models`` exports, read from its source without importing torch."""
    source = (Path(__file__).resolve().parent / "models" / "__init__.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", "") == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    return []


def _split_shares(split: Any) -> list[float] | None:
    """``data.split`` as numbers (None when unset or unreadable: the container checks it)."""
    try:
        shares = ast.literal_eval(split) if isinstance(split, str) else split
        return [float(share) for share in shares] if shares is not None else None
    except (ValueError, TypeError, SyntaxError):
        return None


def _fit_metrics(class_name: str) -> tuple[str, ...] | None:
    """A model's ``fit_metrics``, read from its source without importing torch (None: unknown)."""
    for path in (Path(__file__).resolve().parent / "models").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name == class_name:
                for statement in node.body:
                    if isinstance(statement, ast.Assign) and any(
                        getattr(t, "id", "") == "fit_metrics" for t in statement.targets
                    ):
                        return tuple(ast.literal_eval(statement.value))
    return None


# ## What a GPU costs (the one price table: docs/modal.md "Choose a GPU" shows the same figures)
#
# Modal's list prices in US dollars per GPU-hour, billed per second; CPU and memory are charged
# on top. Read on 2026-11-29 from a transcription of modal.com/pricing dated 2026-07-01. `A100`
# is priced as the 40 GB card it asks for; `H100!` only forbids the upgrade to an H200. Prices
# change: check modal.com/pricing before relying on them.

GPU_PRICES_READ_ON = "2026-11-29"
GPU_DOLLARS_PER_HOUR = {
    "T4": 0.59,
    "L4": 0.80,
    "A10": 1.10,
    "L40S": 1.95,
    "A100": 2.10,
    "A100-40GB": 2.10,
    "A100-80GB": 2.50,
    "H100": 3.95,
    "H100!": 3.95,
    "H200": 4.54,
    "B200": 6.25,
}


def gpu_dollars_per_hour(gpu: str) -> float | None:
    """What ``gpu`` (``TYPE`` or ``TYPE:N``) costs an hour at list price; None if not in the table."""
    kind, _, count = gpu.partition(":")
    price = GPU_DOLLARS_PER_HOUR.get(kind.upper())
    return None if price is None else price * int(count or 1)


# ## Serving on Modal: its settings, and what a deployment may cost

MAX_SCALEDOWN_S = 60 * 60  # the longest warm window the Modal client accepts


def validate_serve_settings(
    gpu: str, warm_s: int, max_containers: int, requests_per_minute: int, draws_per_minute: int
) -> None:
    """Raise LaunchError unless the TINYCATS_SERVE_* settings are valid on Modal."""
    if gpu:
        try:
            validate_launch_settings(gpu, MAX_TIMEOUT_S, 0)
        except LaunchError as err:
            raise LaunchError(f"TINYCATS_SERVE_GPU={gpu!r}: {err}") from None
    if not 2 <= warm_s <= MAX_SCALEDOWN_S:
        raise LaunchError(
            f"TINYCATS_SERVE_WARM_S={warm_s} is outside Modal's warm window of 2 to "
            f"{MAX_SCALEDOWN_S} s: set seconds in that range, e.g. 300."
        )
    if max_containers < 1:
        # Modal reads 0 as "no limit": the one value that must never get through.
        raise LaunchError(
            f"TINYCATS_SERVE_MAX_CONTAINERS={max_containers} would not bound the number of "
            "serving containers: set a whole number of at least 1, e.g. 1."
        )
    for name, value in (
        ("TINYCATS_SERVE_REQUESTS_PER_MIN", requests_per_minute),
        ("TINYCATS_SERVE_DRAWS_PER_MIN", draws_per_minute),
    ):
        if value < 0:
            raise LaunchError(f"{name}={value} is negative: set 0 for no limit, or a whole number.")


def serving_cost(gpu: str, max_containers: int) -> str:
    """The worst case a `Server` deployment costs an hour: every container up, at list price."""
    if not gpu:
        return (
            f"at most {max_containers} CPU container(s) of Server while requests keep them warm "
            "(no GPU; CPU and memory are billed by use)"
        )
    price = gpu_dollars_per_hour(gpu)
    if price is None:
        return (
            f"at most {max_containers} × {gpu} while requests keep them warm (no price for "
            f"{gpu} in tinycats' table: see modal.com/pricing)"
        )
    return (
        f"at most {max_containers} × {gpu} at ${price:.2f}/h = ${max_containers * price:.2f} an "
        f"hour while requests keep them warm (list price read {GPU_PRICES_READ_ON}; CPU and "
        "memory extra)"
    )
