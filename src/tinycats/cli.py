"""The ``tinycats`` command: LightningCLI (fit/validate/test/predict) with run directories,
resume policies and volume commits, plus the commands in ``TOOLS`` (sample, evaluate, export)."""

import datetime as dt
import importlib
import logging
import sys
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tinycats.atomic import no_commit
from tinycats.commands.parsing import HelpFormatter
from tinycats.commands.predict import PrintPredictions
from tinycats.data import PetsDataModule
from tinycats.errors import (
    EXIT_CONTINUE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    TinyCatsError,
    TransientError,
)
from tinycats.models.performance import allow_tf32, choose_precision, default_device_type
from tinycats.runs import ledger
from tinycats.runs.attempt_clock import AttemptClock
from tinycats.runs.checkpointing import CheckpointPolicy, build_checkpoints
from tinycats.runs.deadline import AttemptDeadline
from tinycats.runs.logs import ContinueLogs, run_loggers
from tinycats.runs.preflight import FitPreflight
from tinycats.runs.resume import resolve_extension, resolve_resume
from tinycats.runs.run_dir import (
    RunSpec,
    dated_runs,
    model_dir,
    model_group,
    newest_run,
    resolve_run_dir,
)

log = logging.getLogger("tinycats")

DESCRIPTION = """\
Train and use the tinycats models; each run is set by one YAML config in configs/.

commands:
  fit        train a model (continues the run if it was interrupted)
  validate   score a checkpoint on the validation split
  test       score a checkpoint on the test split (the classifier adds a report)
  predict    label photos with a trained classifier
  sample     draw cats of a breed with a trained TinyDiT
  evaluate   FID/KID per breed, guidance sweep and memorisation of a trained TinyDiT
  export     ONNX (and int8) of the classifier and the DiT
  serve      a web page and JSON API over trained runs
  runs       the runs in outputs/: progress, goodput, cost
Each command explains its options: tinycats COMMAND --help.

examples:
  tinycats fit -c configs/classifier_sample.yaml
  tinycats test -c configs/classifier.yaml --ckpt_path PATH
  tinycats predict -c configs/classifier.yaml --ckpt_path PATH --data.predict_paths '[a.jpg]'
  tinycats sample --ckpt_path outputs/checkpoints/dit/2026-01-31/sample --breed all --n 8
  tinycats serve
"""

# Commands beside LightningCLI's: name → module with ``main(argv)``.
# Each parses its flags with jsonargparse, as LightningCLI does (tinycats.commands.parsing).
TOOLS = {
    "sample": "tinycats.commands.sample",
    "evaluate": "tinycats.commands.evaluate",
    "evaluate-generator": "tinycats.commands.evaluate",  # the earlier name, still accepted
    "export": "tinycats.commands.export",
    "serve": "tinycats.commands.serve",
    "runs": "tinycats.commands.runs",
}

EXIT_FAILED = 1  # a failure that may not happen again (the network): run the command again


class TinyCatsCLI(LightningCLI):
    """LightningCLI that puts every run in its dated directory and resumes it by policy."""

    def __init__(
        self,
        *args: Any,
        commit_outputs: Callable[[], None] = no_commit,
        commit_data: Callable[[], None] = no_commit,
        **kwargs: Any,
    ) -> None:
        self.commit_outputs = commit_outputs
        self.commit_data = commit_data
        self.summary: dict[str, Any] | None = None
        super().__init__(
            *args,
            datamodule_class=PetsDataModule,
            subclass_mode_model=True,
            save_config_kwargs={"overwrite": True},  # a rerun or retry rewrites the same config
            parser_kwargs={
                "prog": "tinycats",
                "description": DESCRIPTION,
                "formatter_class": HelpFormatter,
            },
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunSpec, "run")
        parser.add_class_arguments(CheckpointPolicy, "checkpoint")
        parser.add_argument(
            "--tf32",
            type=bool,
            default=True,
            help="allow TF32 matmuls on GPUs (trainer.precision unset means bf16-mixed where the "
            "GPU or CPU computes bfloat16 natively).",
        )
        parser.add_argument(
            "--resume",
            default="auto",
            help="fit only: auto (continue this run if it has a checkpoint), latest (the newest "
            "run of this model), never (start fresh), or a checkpoint path.",
        )
        parser.add_argument(
            "--stop_at",
            type=float,
            default=0.0,
            help="fit only: the Unix time by which training must have ended (0: never). It stops "
            "at a step boundary, with last.ckpt written, once twice the longest stretch between "
            "steps so far would pass it; the next launch continues the run. The Modal layer sets "
            "it a minute before an attempt's timeout.",
        )
        parser.link_arguments(
            "data.num_classes", "model.init_args.num_classes", apply_on="instantiate"
        )
        parser.link_arguments(
            "data.class_names", "model.init_args.class_names", apply_on="instantiate"
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        model_args = config.model.init_args
        if "image_size" in model_args and model_args.image_size is None:
            model_args.image_size = config.data.image_size  # a DiT is built for the data's size
        spec = RunSpec(**vars(config.run))
        self.model_group = model_group(config.model.class_path)
        if self.subcommand == "fit" and config.resume == "latest":
            newest = newest_run(dated_runs(model_dir(spec, self.model_group)))
            if newest is not None:
                spec.date, spec.name = newest.parent.name, newest.name
        self.run = resolve_run_dir(spec, self.model_group)  # an empty date is today: fixed now
        if self.subcommand == "fit":  # the ledger's record starts as soon as the run is known
            self.clock = AttemptClock(self.run.path)

    def instantiate_classes(self) -> None:
        """Build data, model and trainer; an error doing so is the config's, unless it is I/O."""
        try:
            super().instantiate_classes()
        except OSError:
            raise
        except TinyCatsError:
            self._refused()
            raise
        except Exception as err:
            self._refused()
            raise TinyCatsError(
                f"The config could not be built into data, a model and a trainer: "
                f"{type(err).__name__}: {err}. Fix the value it names in the config or overrides."
            ) from err

    def _refused(self) -> None:
        if self.subcommand == "fit":
            self.clock.close("refused")

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        self.datamodule.commit = self.commit_data
        config = self.config_init[self.subcommand]
        self.checkpoints = build_checkpoints(config.checkpoint, self.run.path, self.commit_outputs)
        extra = {
            "predict": [PrintPredictions()],
            "fit": [FitPreflight(), LearningRateMonitor(), ContinueLogs()],
        }
        self.deadline = AttemptDeadline(config.get("stop_at") or float("inf"))
        if self.subcommand == "fit":
            extra["fit"] += [self.deadline, self.clock]
        allow_tf32(config.tf32)
        device_type = _device_type(config.trainer.accelerator)
        precision = choose_precision(config.trainer.precision, device_type, self.model)
        log.info("Precision: %s, as %s.", precision.precision or "32-true", precision.reason)
        return super().instantiate_trainer(
            precision=precision.precision,
            default_root_dir=str(self.run.path),
            logger=run_loggers(self.run.path, self.subcommand),
            callbacks=[
                *(config.trainer.callbacks or []),
                *self.checkpoints,
                *extra.get(self.subcommand, []),
            ],
            # EpochBatches shares the batches between DDP ranks itself: wrapped in Lightning's
            # DistributedSamplerWrapper its epoch and position would not be saved (plans/0011).
            use_distributed_sampler=False,
            **kwargs,
        )

    def fit(
        self, model: L.LightningModule, datamodule: L.LightningDataModule, **kwargs: Any
    ) -> None:
        """Train, continuing this run from its newest good checkpoint, unless it already finished."""
        policy = self.config_init.fit.resume
        finished = self.run.summary()
        if finished and policy in ("auto", "latest"):
            if not _asks_for_more(self.trainer, finished):
                log.info(
                    "Run %s already finished at step %s: %s. Nothing to train; raise "
                    "trainer.max_steps/max_epochs to extend it, or pass a new --run.name.",
                    self.run.path,
                    finished["global_step"],
                    _format_metrics(finished["metrics"]),
                )
                self.summary = finished
                self.clock.close("finished")
                return
            kwargs["ckpt_path"] = resolve_extension(self.run.path, model)
            log.info(
                "Extending run %s past step %s (the LR stays at its schedule's floor).",
                self.run.path,
                finished["global_step"],
            )
        if kwargs.get("ckpt_path") is None:
            kwargs["ckpt_path"] = resolve_resume(policy, self.run.path, model)
        if kwargs["ckpt_path"]:
            log.info("Resuming from %s", kwargs["ckpt_path"])
        try:
            self.trainer.fit(model, datamodule=datamodule, **kwargs)
        except SIGTERMException as stop:
            log.warning(
                "Stopped by a signal; the run continues from %s on the next launch.",
                self.run.last,
            )
            raise SystemExit(EXIT_INTERRUPTED) from stop
        except torch.cuda.OutOfMemoryError as err:  # the same batch runs out again on a retry
            batch = datamodule.hparams.batch_size
            raise TinyCatsError(
                f"The GPU ran out of memory at data.batch_size={batch} (per GPU): "
                f"{str(err).splitlines()[0]} Lower it, e.g. --data.batch_size={max(1, batch // 2)} "
                "(on Modal: --overrides='--data.batch_size=...'), or use a GPU with more memory."
            ) from err
        if self.deadline.reached:
            log.warning(
                "This attempt's time is up: stopped at step %d with %s written; the run "
                "continues from there on the next launch.",
                self.trainer.global_step,
                self.run.last,
            )
            self.summary = {
                "status": "continue",
                "run_dir": str(self.run.path),
                "global_step": self.trainer.global_step,
                "ledger": ledger.read_ledger(self.run.path).summary(),
            }
            return
        self.summary = self._finish()

    def _finish(self) -> dict[str, Any]:
        """Record the finished run (rank 0) and say where it is."""
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1}
        best = self.checkpoints[-1].best_model_path if len(self.checkpoints) > 1 else ""
        summary = {
            "status": "finished",
            "run_dir": str(self.run.path),
            "global_step": self.trainer.global_step,
            "epoch": self.trainer.current_epoch,
            "metrics": metrics,
            "last_checkpoint": str(self.run.last),
            "best_checkpoint": best,
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "ledger": ledger.read_ledger(self.run.path).summary(),
        }
        if self.trainer.is_global_zero:
            self.run.write_summary(summary)
            self.commit_outputs()
            log.info(
                "Finished %s at step %d: %s",
                self.run.path,
                self.trainer.global_step,
                _format_metrics(metrics),
            )
        return summary


def run_cli(
    args: list[str] | None = None,
    commit_outputs: Callable[[], None] = no_commit,
    commit_data: Callable[[], None] = no_commit,
) -> dict[str, Any] | None:
    """Run one ``tinycats`` LightningCLI command; returns the run summary after ``fit``."""
    with warnings.catch_warnings():
        # Continuing a run reuses its directory on purpose; and ``args`` is how we call it.
        warnings.filterwarnings("ignore", message=".*exists and is not empty")
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        # torchdata's StatefulDataLoader calls this deprecated torch API itself; nothing to fix here.
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
        cli = TinyCatsCLI(args=args, commit_outputs=commit_outputs, commit_data=commit_data)
    return cli.summary


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``tinycats`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    show_logs()
    try:
        if argv[:1] and argv[0] in TOOLS:
            importlib.import_module(TOOLS[argv[0]]).main(argv[1:])
            return
        summary = run_cli(argv)
    except TinyCatsError as err:
        print(f"tinycats: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED if isinstance(err, TransientError) else EXIT_USAGE) from None
    if summary and summary["status"] == "continue":
        raise SystemExit(EXIT_CONTINUE)


def _asks_for_more(trainer: L.Trainer, finished: dict[str, Any]) -> bool:
    """Whether the trainer's limits go past where a finished run stopped (-1: no limit)."""
    steps = trainer.max_steps == -1 or trainer.max_steps > finished["global_step"]
    epochs = trainer.max_epochs in (None, -1) or trainer.max_epochs > finished["epoch"]
    return steps and epochs


def _device_type(accelerator: Any) -> str:
    """The device type a Trainer with ``accelerator`` trains on, as far as precision cares."""
    name = str(accelerator).lower()
    if name == "auto":
        return default_device_type()
    return "cuda" if name == "gpu" else name


def _format_metrics(metrics: dict[str, float]) -> str:
    shown = {k: v for k, v in sorted(metrics.items()) if k.startswith(("val/", "test/"))}
    return ", ".join(f"{k}={v:.4f}" for k, v in (shown or metrics).items()) or "no metrics"


def show_logs() -> None:
    """Print tinycats' INFO messages ("Resuming from ...") on stderr, once per process."""
    logger = logging.getLogger("tinycats")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s tinycats: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
