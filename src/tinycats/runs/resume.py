"""Choosing the checkpoint a run continues from: newest first, skipping any that cannot load.

Policies (``--resume``): ``auto`` continues this run if it has a checkpoint, else starts fresh;
``latest`` continues the newest run of this model across names and dates; ``never`` starts
fresh (and refuses a run directory that already holds checkpoints); anything else is a path.
"""

import logging
from pathlib import Path

import torch
from torch import nn

from tinycats.errors import TinyCatsError
from tinycats.runs import checksums
from tinycats.runs.run_dir import LAST, newest_first, resumable_checkpoints

log = logging.getLogger(__name__)


def first_loadable(candidates: list[Path], model: nn.Module) -> Path | None:
    """The first checkpoint that loads and fits ``model``; each one passed over is named in a warning."""
    expected = {key: value.shape for key, value in model.state_dict().items()}
    for path in candidates:
        problem = _problem_with(path, expected)
        if problem is None:
            return path
        log.warning("Skipping checkpoint %s: %s", path, problem)
    return None


def intact(candidates: list[Path]) -> list[Path]:
    """The checkpoints whose bytes match the SHA-256 recorded when they were written; each one
    left out is named in a warning."""
    kept = []
    for path in candidates:
        damaged = checksums.damage(path)
        if damaged:
            log.warning("Skipping checkpoint %s: %s", path, damaged)
        else:
            kept.append(path)
    return kept


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


def resolve_extension(run_dir: Path, model: nn.Module) -> Path:
    """The checkpoint a finished run continues from when its config asks for more steps or
    epochs; refuses (TinyCatsError) when the config changed what that checkpoint can continue."""
    newest = next(iter(intact(newest_first(resumable_checkpoints(run_dir)))), None)
    if newest is None:
        raise TinyCatsError(
            f"{run_dir} finished but holds no intact {LAST} or step checkpoint to "
            "continue from: train under a new --run.name."
        )
    problem = _problem_with(newest, {k: v.shape for k, v in model.state_dict().items()})
    saved = torch.load(newest, map_location="cpu", weights_only=False, mmap=True)
    names = saved.get("hyper_parameters", {}).get("class_names")
    wanted = getattr(model, "hparams", {}).get("class_names")
    if problem is None and names is not None and wanted is not None and list(names) != list(wanted):
        problem = f"it was trained on other labels ({list(names)}, now {list(wanted)})"
    if problem:
        raise TinyCatsError(
            f"Cannot extend the finished run {run_dir} from {newest.name}: {problem}. Only "
            "trainer.max_steps/max_epochs may grow; to train this config, pick a new --run.name."
        )
    return newest


def _problem_with(path: Path, expected: dict[str, torch.Size]) -> str | None:
    """Why a checkpoint cannot resume this model, or None when it can."""
    damaged = checksums.damage(path)
    if damaged:
        return damaged
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
