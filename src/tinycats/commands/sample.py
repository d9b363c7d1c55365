"""``tinycats sample``: draw cats of a chosen breed with the EMA weights of a trained TinyDiT."""

import logging
import tempfile
from pathlib import Path

import torch

from tinycats.commands.parsing import call_with_args
from tinycats.errors import TinyCatsError
from tinycats.models.generator import DiTGenerator
from tinycats.models.grid import save_labelled_grid
from tinycats.models.labels import chosen_breeds
from tinycats.models.performance import autocast, choose_precision
from tinycats.networks.flow import Method
from tinycats.runs.loading import load_trained

log = logging.getLogger(__name__)

DESCRIPTION = """\
Draw cats with a TinyDiT trained by `tinycats fit -c configs/dit.yaml`, and save them as one
PNG grid with a row per breed. The checkpoint's EMA weights are used. Runs on the GPU when
there is one, else on the CPU (slow for the big models: try --n 4 --steps 20). The same
checkpoint, options and --seed give the same picture on the same machine (in bf16 where the
processor computes it natively, as `tinycats fit` trains).

examples:
  tinycats sample --ckpt_path outputs/checkpoints/dit/2025-01-31/sample --breed all --n 8
  tinycats sample --ckpt_path path/to/last.ckpt --breed Bengal --n 16 --cfg_scale 4 --method heun
"""


def main(argv: list[str]) -> None:
    """Parse the ``tinycats sample`` arguments (or a ``--config`` file) and draw."""
    call_with_args(sample, argv, "tinycats sample", DESCRIPTION, renamed={"cfg": "cfg_scale"})


def sample(
    ckpt_path: Path,
    breed: str = "all",
    n: int = 16,
    steps: int = 50,
    cfg_scale: float = 3.0,
    seed: int = 0,
    method: Method = "euler",
    out: Path = Path("grid.png"),
) -> None:
    """Draw samples of the chosen breeds and save them as one labelled grid.

    Args:
        ckpt_path: a DiT checkpoint (.ckpt) or a run directory (its newest readable checkpoint).
        breed: the breed to draw, e.g. Bengal, or 'all' for a row per breed.
        n: samples per breed.
        steps: ODE steps from noise to image.
        cfg_scale: classifier-free guidance scale: 1 turns it off, higher follows the breed more
            closely at the cost of variety.
        seed: seed of the starting noise.
        method: ODE solver; heun is more accurate per step, at two model calls per step.
        out: the PNG file to write.
    """
    if n < 1 or steps < 1:
        raise TinyCatsError("--n and --steps must be at least 1.")
    model = load_trained(Path(ckpt_path), DiTGenerator)
    breeds = chosen_breeds(breed, model.class_labels)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    precision = choose_precision(None, device.type, model)
    log.info("Precision: %s, as %s.", precision.precision or "32-true", precision.reason)
    classes = torch.tensor([model.class_labels.index(b) for b in breeds]).repeat_interleave(n)
    with autocast(precision.precision, device):
        images = model.generate(classes, seed=seed, steps=steps, cfg_scale=cfg_scale, method=method)
    save_labelled_grid(images, breeds, Path(out))
    print(f"Saved {len(breeds)} × {n} samples to {out}")


def sample_png(
    ckpt_path: Path, breed: str, n: int, steps: int, cfg_scale: float, seed: int
) -> bytes:
    """The grid ``sample`` draws, as PNG bytes (for a caller with no file to write, e.g. Modal)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "grid.png"
        sample(ckpt_path, breed, n, steps, cfg_scale, seed, out=out)
        return out.read_bytes()
