"""The run layout: where a run lives and the names of what it holds (the one owner of both).

A run is ``<outputs>/checkpoints/<model>/<YYYY-MM-DD>/<name>/``. The date and name are fixed
when the run is launched (the CLI's defaults, or the Modal entrypoint's explicit values), so a
rerun or a retry, also one that starts after midnight, lands in the same directory.

Plain Python: the Modal client (``launch.py``, ``attempt.py``) imports it without torch, and
without PyYAML until a config is read.
"""

import datetime as dt
import importlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinycats.atomic import write_atomically
from tinycats.errors import TinyCatsError

CHECKPOINTS = "checkpoints"  # <outputs>/checkpoints/<model>/<date>/<name>/
SUMMARY = "summary.json"  # written last, when the run finished
LAST = "last.ckpt"  # the state an attempt stopped at (Lightning's "last" + ".ckpt")
STEP_FILENAME = "step={step:08d}"  # a step checkpoint, as Lightning formats it (+ ".ckpt")
STEP_GLOB = "step=*.ckpt"
BEST = "best.ckpt"  # by the monitored metric; for evaluation, never resumed from
CONFIG = "config.yaml"  # the config LightningCLI saved
METRICS = "metrics.csv"  # the CSV logger's, in the run directory
SAMPLES = "samples"  # the DiT's sample grids
ATTEMPTS = "attempts.jsonl"  # one line per Modal attempt start and end
LEDGER = "ledger"  # one record per attempt (runs/ledger.py)
LEASE = "lease.json"  # held by the one attempt training the run
ESSENTIAL = (LAST, SUMMARY, METRICS, SAMPLES)  # what a run is used and judged by
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class RunSpec:
    """Where this run lives.

    Args:
        outputs: root folder of all runs (the outputs volume on Modal).
        name: the run's name; rerunning with the same name and date continues the run.
        date: the run's date, YYYY-MM-DD; empty means today, fixed at launch.
        model: the model folder; empty means the model's own (classifier, dit).
    """

    outputs: str = "outputs"
    name: str = "run"
    date: str = ""
    model: str = ""


@dataclass(frozen=True)
class RunDir:
    """A run's directory: the paths of what it holds, and its summary.

    The newest of several runs is the one holding the newest checkpoint (``last.ckpt`` or a
    step file, by modification time; see ``newest_run``), whatever its date folder says.
    """

    path: Path

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def attempts(self) -> Path:
        return self.path / ATTEMPTS

    @property
    def lease(self) -> Path:
        return self.path / LEASE

    def checkpoints(self) -> list[Path]:
        """Its checkpoints to resume from, newest first."""
        return newest_first(resumable_checkpoints(self.path))

    def summary(self) -> dict[str, Any] | None:
        """The summary a finished run left, or None."""
        if not self.summary_path.exists():
            return None
        return json.loads(self.summary_path.read_text())

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Record that the run finished, with its final metrics (written atomically)."""
        text = json.dumps(summary, indent=2, sort_keys=True)
        write_atomically(self.summary_path, lambda partial: partial.write_text(text))


def resolve_run_dir(spec: RunSpec, default_model: str, today: dt.date | None = None) -> RunDir:
    """The directory of the run ``spec`` names, checking each part is a plain folder name."""
    date = spec.date or (today or dt.date.today()).isoformat()
    model = spec.model or default_model
    try:
        dt.date.fromisoformat(date)
    except ValueError as err:
        raise TinyCatsError(f"run.date must be YYYY-MM-DD, got {date!r}.") from err
    for field, value in (("run.name", spec.name), ("run.model", model)):
        if not _NAME.match(value):
            raise TinyCatsError(
                f"{field} must be a plain folder name (letters, digits, '.', '_', '-'), got {value!r}."
            )
    return RunDir(model_runs(spec.outputs, model) / date / spec.name)


def model_dir(spec: RunSpec, default_model: str) -> Path:
    """The folder holding every run of a model, across dates."""
    return model_runs(spec.outputs, spec.model or default_model)


def model_runs(outputs: str | Path, model: str) -> Path:
    """``<outputs>/checkpoints/<model>``: every run of a model, one folder per date."""
    return Path(outputs) / CHECKPOINTS / model


def dated_runs(model_folder: Path, name: str = "*") -> list[Path]:
    """The runs called ``name`` (``*``: any) in a model's folder, one per date, oldest first."""
    return sorted(run for run in Path(model_folder).glob(f"*/{name}") if run.is_dir())


def run_name(run: Path, outputs: str | Path) -> str:
    """A run's ``<model>/<date>/<name>``, as ``tinycats runs`` lists it."""
    return str(Path(run).relative_to(Path(outputs) / CHECKPOINTS))


def newest_first(paths: Iterable[Path]) -> list[Path]:
    """Checkpoints by modification time, newest first; ``last.ckpt`` wins a tie."""
    return sorted(paths, key=lambda p: (p.stat().st_mtime_ns, p.name == LAST), reverse=True)


def resumable_checkpoints(run: Path) -> list[Path]:
    """``last.ckpt`` and the step checkpoints of a run (``best.ckpt`` is for evaluation only)."""
    return [*Path(run).glob(LAST), *Path(run).glob(STEP_GLOB)]


def newest_run(runs: Iterable[Path]) -> Path | None:
    """The newest of ``runs``: the one holding the newest checkpoint; None when none holds one."""
    found = newest_first(p for run in runs for p in resumable_checkpoints(run))
    return found[0].parent if found else None


def read_config(path: Path) -> dict[str, Any]:
    """A training config (``configs/*.yaml``, or the ``config.yaml`` a run saves) as a dict."""
    import yaml  # here: the Modal client imports this module before PyYAML is checked

    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise TinyCatsError(f"Cannot read the config {path}: {err}") from err
    if not isinstance(config, dict):
        raise TinyCatsError(f"{path} is not a tinycats config (a YAML mapping of sections).")
    return config


def model_class(class_path: str) -> type:
    """The class a config's or a checkpoint's ``class_path`` names (tinycats.models.X)."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise TinyCatsError(f"{class_path!r} names no importable class ({err}).") from err


def model_group(class_path: str) -> str:
    """The folder name of a model's runs: its class's ``run_group`` (classifier, dit)."""
    found = model_class(class_path)
    return getattr(found, "run_group", found.__name__.lower())


def all_runs(outputs: Path) -> list[RunDir]:
    """Every run under an outputs folder (``checkpoints/<model>/<date>/<name>``), oldest date first."""
    found = (Path(outputs) / CHECKPOINTS).glob("*/*/*")
    return [RunDir(p) for p in sorted(found, key=lambda p: (p.parent.name, p)) if p.is_dir()]
