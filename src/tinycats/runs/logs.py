"""A run's logs continue across its attempts: metrics.csv and TensorBoard hold each step once.

Lightning's CSVLogger deletes metrics.csv when its writer starts in a folder that has one, and
TensorBoard plots the steps an attempt redid after a kill twice. Here both continue at the step
the run resumed from (plans/0011-exact-resume.md): what was logged before that step stays,
what was logged from it on is dropped, and the resumed attempt logs it again.
"""

import csv
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from tinycats.atomic import write_atomically


class ContinuedCSVWriter(ExperimentWriter):
    """Lightning's metrics.csv writer, keeping the rows of earlier attempts until told the step.

    A row logged again at a step before that one (the validation a resumed run runs again,
    plans/0011) replaces the row of the same step and metric names.
    """

    def _check_log_dir_exists(self) -> None:
        # Lightning deletes metrics.csv here; the rows stay until ``continue_at`` picks them.
        self.metrics_keys, self._rows = _read_rows(self.metrics_file_path)
        self._redoable: dict[tuple, int] = {}

    def continue_at(self, step: int) -> None:
        """Keep the rows logged before ``step``; the rest are logged again from here."""
        kept = [row for row in self._rows if int(row["step"]) < step]
        self._redoable = {_identity(row): i for i, row in enumerate(kept)}
        self.metrics_keys = self.metrics_keys if kept else []
        self._write(kept)

    def save(self) -> None:
        redone = [row for row in self.metrics if _identity(row) in self._redoable]
        if redone:
            _, rows = _read_rows(self.metrics_file_path)
            for row in redone:
                rows[self._redoable.pop(_identity(row))] = row
            self._write(rows)
            self.metrics = [row for row in self.metrics if row not in redone]
        super().save()

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        # Lightning's rewrite, made atomic: a kill during it must not cost the run's history.
        self._write(_read_rows(self.metrics_file_path)[1])

    def _write(self, rows: list[dict[str, Any]]) -> None:
        """Replace metrics.csv by ``rows`` under the current header, atomically."""
        path = Path(self.metrics_file_path)
        if not rows:
            path.unlink(missing_ok=True)
            return

        def write(partial: Path) -> None:
            with open(partial, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(rows)

        write_atomically(path, write)


class ContinuedCSVLogger(CSVLogger):
    """Lightning's CSVLogger writing through a ``ContinuedCSVWriter``."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ContinuedCSVWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuedCSVWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def continue_at(self, step: int) -> None:
        """Keep the rows logged before ``step``."""
        self.experiment.continue_at(step)


class ContinuedTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger whose new event file hides the old events from a step on."""

    @rank_zero_only
    def continue_at(self, step: int) -> None:
        """Start a new event file that purges every earlier event at ``step`` or later."""
        if self._experiment is not None:
            self._experiment.close()
            self._experiment = None
        self._kwargs["purge_step"] = step  # passed to torch's SummaryWriter with the others


class ContinueLogs(L.Callback):
    """Tells the run's loggers the step training starts at, once a checkpoint is restored."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, ContinuedCSVLogger | ContinuedTensorBoardLogger):
                logger.continue_at(trainer.global_step)


def run_loggers(run_dir: Path, subcommand: str) -> list[CSVLogger | TensorBoardLogger]:
    """CSV (first: it is ``trainer.log_dir``) and TensorBoard loggers for a command on a run.

    ``fit`` logs into the run directory and continues its history; validate, test and predict
    log into a folder of their own, started afresh each time.
    """
    if subcommand == "fit":
        return [
            ContinuedCSVLogger(run_dir, name="", version=""),
            ContinuedTensorBoardLogger(run_dir, name="", version="", default_hp_metric=False),
        ]
    return [
        CSVLogger(run_dir, name="", version=subcommand),
        TensorBoardLogger(run_dir, name="", version=subcommand, default_hp_metric=False),
    ]


def _read_rows(path: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The header and the rows of a metrics.csv (none if there is no file)."""
    if not os.path.isfile(path):
        return [], []
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), [row for row in reader if row.get("step")]


def _identity(row: dict[str, Any]) -> tuple:
    """A row's step and the names of the metrics it holds."""
    names = frozenset(key for key, value in row.items() if key != "step" and value != "")
    return int(row["step"]), names
