"""``tinycats sample``: draw cats of a chosen breed with the EMA weights of a trained TinyDiT."""

import argparse
from pathlib import Path

import torch

from tinycats.errors import TinyCatsError
from tinycats.models.generator import DiTGenerator
from tinycats.models.grid import save_labelled_grid
from tinycats.networks.flow import METHODS
from tinycats.runs.resume import load_trained

DESCRIPTION = """\
Draw cats with a TinyDiT trained by `tinycats fit -c configs/dit.yaml`, and save them as one
PNG grid with a row per breed. The checkpoint's EMA weights are used. Runs on the GPU when
there is one, else on the CPU (slow for the big models: try --n 4 --steps 20). The same
checkpoint, options and --seed give the same picture.

examples:
  tinycats sample --ckpt outputs/checkpoints/dit/2025-01-31/sample --breed all --n 8
  tinycats sample --ckpt path/to/last.ckpt --breed Bengal --n 16 --cfg 4 --method heun
"""


def main(argv: list[str]) -> None:
    """Parse the ``tinycats sample`` arguments, draw the samples and save the grid."""
    args = _parser().parse_args(argv)
    if args.n < 1 or args.steps < 1:
        raise TinyCatsError("--n and --steps must be at least 1.")
    model = load_trained(Path(args.ckpt), DiTGenerator)
    breeds = _chosen_breeds(args.breed, model.class_labels)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    classes = torch.tensor([model.class_labels.index(b) for b in breeds]).repeat_interleave(args.n)
    images = model.generate(
        classes, seed=args.seed, steps=args.steps, cfg_scale=args.cfg, method=args.method
    )
    out = Path(args.out)
    save_labelled_grid(images, breeds, out)
    print(f"Saved {len(breeds)} × {args.n} samples to {out}")


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
