"""Loading trained modules: the one loader every command uses, from a checkpoint file or a run
directory, by ``LightningModule.load_from_checkpoint``."""

import inspect
import logging
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch

from tinycats import models
from tinycats.errors import TinyCatsError
from tinycats.runs import checksums
from tinycats.runs.run_dir import (
    BEST,
    LAST,
    STEP_GLOB,
    model_class,
    newest_first,
    resumable_checkpoints,
)

log = logging.getLogger(__name__)

Module = TypeVar("Module", bound=L.LightningModule)


def load_trained(
    path: Path, expected: type[Module] | None = None, *, prefer_best: bool = False
) -> Module:
    """The trained module in a checkpoint file, or in a run directory's newest intact one
    (``best.ckpt`` first when ``prefer_best``), rebuilt by ``load_from_checkpoint`` on the CPU."""
    candidate, checkpoint = _first_readable(path, prefer_best)
    module_class = trained_class(checkpoint, candidate)
    if expected is not None and not issubclass(module_class, expected):
        raise TinyCatsError(
            f"{candidate} is a checkpoint of {module_class.__name__}, not of "
            f"{getattr(expected, 'description', expected.__name__)}."
        )
    # Arguments that only matter for training from scratch (pretrained weights to download).
    overrides = getattr(module_class, "load_overrides", {})
    return module_class.load_from_checkpoint(
        candidate, map_location="cpu", weights_only=True, **overrides
    )


def checkpoint_to_load(path: Path, prefer_best: bool = False) -> Path:
    """The checkpoint ``load_trained`` would load from ``path`` (a file or a run directory)."""
    return _first_readable(path, prefer_best)[0]


def _first_readable(path: Path, prefer_best: bool) -> tuple[Path, dict[str, Any]]:
    """The first candidate that matches its recorded SHA-256 and loads, with what it holds;
    each one passed over is named in a warning."""
    candidates = _checkpoints_to_load(path, prefer_best)
    for candidate in candidates:
        try:
            problem = checksums.damage(candidate)
            if problem is None:
                return candidate, torch.load(
                    candidate, map_location="cpu", weights_only=True, mmap=True
                )
        except Exception as err:  # a truncated zip raises RuntimeError, garbage raises others
            problem = f"unreadable ({type(err).__name__}: {err})"
        if len(candidates) == 1:
            raise TinyCatsError(f"Cannot read checkpoint {candidate}: {problem}")
        log.warning("Skipping checkpoint %s: %s", candidate, problem)
    raise TinyCatsError(f"No readable checkpoint in {path}.")


def trained_class(checkpoint: dict[str, Any], path: Path) -> type[L.LightningModule]:
    """The LightningModule class a checkpoint was saved from: its ``_class_path`` (LightningCLI
    records it), else the tinycats model whose arguments are its hyperparameters."""
    if "state_dict" not in checkpoint:
        raise TinyCatsError(f"{path} is not a Lightning checkpoint (no state_dict).")
    hparams = checkpoint.get("hyper_parameters") or {}
    given = {key for key in hparams if not key.startswith("_")}
    class_path = hparams.get("_class_path", "")
    if not class_path:
        for name in models.__all__:
            if given and given <= _arguments(getattr(models, name)):
                return getattr(models, name)
        raise TinyCatsError(
            f"{path} is not a checkpoint of a tinycats model ({', '.join(models.__all__)})."
        )
    module_class = model_class(class_path)
    unknown = sorted(given - _arguments(module_class))
    if unknown:  # load_from_checkpoint would drop them and fail later, on the weights
        raise TinyCatsError(
            f"{path} was written by an older tinycats: {module_class.__name__} no longer takes "
            f"{', '.join(unknown)} (plans/0010-layout.md says what changed). Train it again, or "
            "load it with the tinycats version that wrote it."
        )
    return module_class


def _arguments(module_class: type) -> set[str]:
    return set(inspect.signature(module_class.__init__).parameters)


def _checkpoints_to_load(path: Path, prefer_best: bool) -> list[Path]:
    """The checkpoint file itself, or a run directory's checkpoints, newest first."""
    if path.is_file():
        return [path]
    if path.is_dir():
        best = list(path.glob(BEST)) if prefer_best else []
        found = [*best, *newest_first(resumable_checkpoints(path))]
        if not found:
            raise TinyCatsError(
                f"{path} holds no {LAST} or {STEP_GLOB}: pass a run directory of "
                "`tinycats fit` or a checkpoint file."
            )
        return found
    raise TinyCatsError(
        f"--ckpt_path {path} does not exist: pass a checkpoint file or a run directory."
    )
