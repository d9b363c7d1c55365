"""``tinycats sample``: draw cats of a chosen breed with the EMA weights of a trained TinyDiT."""

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from tinycats.errors import TinyCatsError
from tinycats.grid import save_labelled_grid
from tinycats.models.flow import METHODS
from tinycats.models.generator import DiTGenerator
from tinycats.performance import autocast, choose_precision
from tinycats.resume import newest_first, resumable_checkpoints

log = logging.getLogger(__name__)

DESCRIPTION = """\
Draw cats with a TinyDiT trained by `tinycats fit -c configs/dit.yaml`, and save them as one
PNG grid with a row per breed. The checkpoint's EMA weights are used. Runs on the GPU when
there is one, else on the CPU (slow for the big models: try --n 4 --steps 20). The same
checkpoint, options and --seed give the same picture on the same machine (in bf16 where the
processor computes it natively, as `tinycats fit` trains).

examples:
  tinycats sample --ckpt outputs/checkpoints/dit/2025-01-31/sample --breed all --n 8
  tinycats sample --ckpt path/to/last.ckpt --breed Bengal --n 16 --cfg 4 --method heun
"""


def main(argv: list[str]) -> None:
    """Parse the ``tinycats sample`` arguments, draw the samples and save the grid."""
    args = _parser().parse_args(argv)
    if args.n < 1 or args.steps < 1:
        raise TinyCatsError("--n and --steps must be at least 1.")
    model = load_generator(Path(args.ckpt))
    breeds = _chosen_breeds(args.breed, model.class_labels)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    precision = choose_precision(None, device.type, model)
    log.info("Precision: %s, as %s.", precision.precision or "32-true", precision.reason)
    classes = torch.tensor([model.class_labels.index(b) for b in breeds]).repeat_interleave(args.n)
    with autocast(precision.precision, device):
        images = model.generate(
            classes, seed=args.seed, steps=args.steps, cfg_scale=args.cfg, method=args.method
        )
    out = Path(args.out)
    save_labelled_grid(images, breeds, out)
    print(f"Saved {len(breeds)} × {args.n} samples to {out}")


def load_generator(path: Path) -> DiTGenerator:
    """A DiTGenerator holding the EMA weights of a checkpoint, or of a run directory's newest one."""
    candidates = _candidates(path)
    for candidate in candidates:
        try:
            checkpoint = torch.load(candidate, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated zip raises RuntimeError, garbage raises others
            if len(candidates) == 1:
                raise TinyCatsError(f"Cannot read checkpoint {candidate}: {err}") from err
            log.warning("Skipping unreadable checkpoint %s: %s", candidate, err)
            continue
        return _generator_from(checkpoint, candidate)
    raise TinyCatsError(f"No readable checkpoint in {path}.")


def _candidates(path: Path) -> list[Path]:
    """The checkpoint file itself, or a run directory's checkpoints, newest first."""
    if path.is_file():
        return [path]
    if path.is_dir():
        found = newest_first(resumable_checkpoints(path))
        if not found:
            raise TinyCatsError(
                f"{path} holds no last.ckpt or step=*.ckpt: pass a run directory of "
                "`tinycats fit -c configs/dit.yaml` or a checkpoint file."
            )
        return found
    raise TinyCatsError(f"--ckpt {path} does not exist: pass a checkpoint file or a run directory.")


def _generator_from(checkpoint: dict[str, Any], path: Path) -> DiTGenerator:
    """Rebuild the DiTGenerator a checkpoint was saved from and load its EMA weights."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if "arch" not in hparams:  # every DiTGenerator has one, no other model does
        kind = hparams.get("_class_path", "").rpartition(".")[2] or "another model"
        raise TinyCatsError(
            f"{path} is a checkpoint of {kind}, not of the DiT generator: `tinycats sample` "
            "needs a run of `tinycats fit -c configs/dit.yaml`."
        )
    # The EMA callback stores the averaged weights as the state_dict, the live ones beside it.
    if "current_model_state" not in checkpoint:
        log.warning("%s holds no EMA weights; sampling with the training weights.", path)
    model = DiTGenerator(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    model.load_state_dict(checkpoint["state_dict"])
    return model


def _chosen_breeds(breed: str, names: list[str]) -> list[str]:
    """All breeds for ``all``, else the one named (case and spaces vs underscores don't matter)."""
    if breed == "all":
        return names
    wanted = breed.replace(" ", "_").lower()
    for name in names:
        if name.lower() == wanted:
            return [name]
    raise TinyCatsError(f"Unknown breed {breed!r}. This model knows: all, {', '.join(names)}.")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinycats sample",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", required=True,
                        help="a DiT checkpoint (.ckpt) or a run directory (its newest readable "
                        "checkpoint is used)")  # fmt: skip
    parser.add_argument("--breed", default="all",
                        help="the breed to draw, e.g. Bengal, or 'all' for a row per breed "
                        "(default: all)")  # fmt: skip
    parser.add_argument("--n", type=int, default=16, help="samples per breed (default: 16)")
    parser.add_argument("--steps", type=int, default=50,
                        help="ODE steps from noise to image (default: 50)")  # fmt: skip
    parser.add_argument("--cfg", type=float, default=3.0,
                        help="classifier-free guidance scale: 1 turns it off, higher follows "
                        "the breed more closely at the cost of variety (default: 3.0)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the starting noise (default: 0)")  # fmt: skip
    parser.add_argument("--method", choices=METHODS, default="euler",
                        help="ODE solver; heun is more accurate per step, at two model calls "
                        "per step (default: euler)")  # fmt: skip
    parser.add_argument("--out", default="grid.png", help="PNG file to write (default: grid.png)")
    return parser
