"""The tiny DiT shape of the CPU tests (tests/configs/dit_tiny.yaml's), and ``patchify``."""

from pathlib import Path

import yaml
from torch import Tensor

TINY_CONFIG = Path(__file__).parents[1] / "configs" / "dit_tiny.yaml"
_SHAPE_KEYS = ("patch_size", "width", "depth", "heads")


def _tiny_shape() -> dict[str, int]:
    init_args = yaml.safe_load(TINY_CONFIG.read_text())["model"]["init_args"]
    return {key: init_args[key] for key in _SHAPE_KEYS}


TINY_DIT = _tiny_shape()  # patch_size, width, depth, heads; pass image_size beside it
TINY_SIZE = yaml.safe_load(TINY_CONFIG.read_text())["data"]["image_size"]


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """Cut images (B, C, H, W) into row-major tokens (B, H/p * W/p, p * p * C): the order
    ``tinycats.networks.dit.unpatchify`` reassembles, which the DiT tests check against."""
    b, c, h, w = x.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)
