"""Run identity: where a run's checkpoints, config, logs and summary live.

A run is ``<outputs>/checkpoints/<model>/<YYYY-MM-DD>/<name>/``. The date and name are fixed
when the run is launched (the CLI's defaults, or the Modal entrypoint's explicit values), so a
rerun or a retry, also one that starts after midnight, lands in the same directory.
"""

import datetime as dt
import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tinycats.atomic import write_atomically
from tinycats.errors import TinyCatsError

SUMMARY = "summary.json"
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
    """A run's directory and how to read and write its summary."""

    path: Path

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

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
    return RunDir(Path(spec.outputs) / "checkpoints" / model / date / spec.name)


def model_dir(spec: RunSpec, default_model: str) -> Path:
    """The folder holding every run of a model, across dates."""
    return Path(spec.outputs) / "checkpoints" / (spec.model or default_model)


def read_config(path: Path) -> dict[str, Any]:
    """A training config (``configs/*.yaml``, or the ``config.yaml`` a run saves) as a dict."""
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
    found = (Path(outputs) / "checkpoints").glob("*/*/*")
    return [RunDir(p) for p in sorted(found, key=lambda p: (p.parent.name, p)) if p.is_dir()]
