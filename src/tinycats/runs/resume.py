"""Finding checkpoints: the one a run continues from (newest first, skipping any that cannot
load), and the one loader of trained modules that every command uses (``load_trained``).

Policies (``--resume``): ``auto`` continues this run if it has a checkpoint, else starts fresh;
``latest`` continues the newest run of this model across names and dates; ``never`` starts
fresh (and refuses a run directory that already holds checkpoints); anything else is a path.
"""

import inspect
import logging
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from torch import nn

from tinycats import models
from tinycats.errors import TinyCatsError
from tinycats.runs.run_dir import model_class

log = logging.getLogger(__name__)

POLICIES = ("auto", "latest", "never")

Module = TypeVar("Module", bound=L.LightningModule)


def newest_first(paths: list[Path]) -> list[Path]:
    """Checkpoints by modification time, newest first; ``last.ckpt`` wins a tie."""
    return sorted(paths, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"), reverse=True)


def resumable_checkpoints(run_dir: Path) -> list[Path]:
    """``last.ckpt`` and the step checkpoints of a run (``best.ckpt`` is for evaluation only)."""
    return [*run_dir.glob("last.ckpt"), *run_dir.glob("step=*.ckpt")]


def newest_run(model_root: Path) -> Path | None:
    """The run directory (``<date>/<name>``) holding the newest checkpoint of a model."""
    found = newest_first([p for run in model_root.glob("*/*") for p in resumable_checkpoints(run)])
    return found[0].parent if found else None


def first_loadable(candidates: list[Path], model: nn.Module) -> Path | None:
    """The first checkpoint that loads and fits ``model``; each one passed over is named in a warning."""
    expected = {key: value.shape for key, value in model.state_dict().items()}
    for path in candidates:
        problem = _problem_with(path, expected)
        if problem is None:
            return path
        log.warning("Skipping checkpoint %s: %s", path, problem)
    return None


def resolve_resume(policy: str, run_dir: Path, model: nn.Module) -> Path | None:
    """The checkpoint to resume from under ``policy``, or None to start fresh."""
    existing = newest_first(resumable_checkpoints(run_dir))
    if policy == "never":
        if existing:
            raise TinyCatsError(
                f"--resume never, but {run_dir} already holds checkpoints: pick a new --run.name "
                "or remove that directory to start over."
            )
        return None
    if policy in ("auto", "latest"):
        chosen = first_loadable(existing, model)
        if existing and chosen is None:
            log.warning("No loadable checkpoint in %s: training starts from scratch.", run_dir)
        return chosen
    path = Path(policy)
    if not path.is_file():
        raise TinyCatsError(
            f"--resume {policy!r} is neither auto, latest, never nor an existing checkpoint file."
        )
    if first_loadable([path], model) is None:
        raise TinyCatsError(
            f"Cannot resume from {path}: it does not load into this model (see warning)."
        )
    return path


def _problem_with(path: Path, expected: dict[str, torch.Size]) -> str | None:
    """Why a checkpoint cannot resume this model, or None when it can."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # a truncated zip raises RuntimeError, garbage raises others
        return f"unreadable ({type(err).__name__}: {err})"
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if state is None:
        return "not a Lightning checkpoint (no state_dict)"
    found = {key: value.shape for key, value in state.items()}
    if found.keys() != expected.keys():
        return "it belongs to another model (different parameter names)"
    mismatched = [key for key, shape in expected.items() if found[key] != shape]
    if mismatched:
        return f"it has other shapes (another config?), e.g. {mismatched[0]}"
    return None


def load_trained(
    path: Path, expected: type[Module] | None = None, *, prefer_best: bool = False
) -> Module:
    """The trained module in a checkpoint file, or in a run directory's newest readable one
    (``best.ckpt`` first when ``prefer_best``), rebuilt by ``load_from_checkpoint`` on the CPU."""
    candidates = _checkpoints_to_load(path, prefer_best)
    for candidate in candidates:
        try:
            checkpoint = torch.load(candidate, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # a truncated zip raises RuntimeError, garbage raises others
            if len(candidates) == 1:
                raise TinyCatsError(f"Cannot read checkpoint {candidate}: {err}") from err
            log.warning("Skipping unreadable checkpoint %s: %s", candidate, err)
            continue
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
        best = list(path.glob("best.ckpt")) if prefer_best else []
        found = [*best, *newest_first(resumable_checkpoints(path))]
        if not found:
            raise TinyCatsError(
                f"{path} holds no last.ckpt or step=*.ckpt: pass a run directory of "
                "`tinycats fit` or a checkpoint file."
            )
        return found
    raise TinyCatsError(
        f"--ckpt_path {path} does not exist: pass a checkpoint file or a run directory."
    )
