"""The tiny DiT shape of the CPU tests: tests/configs/dit_tiny.yaml's, read from that file."""

from pathlib import Path

import yaml

TINY_CONFIG = Path(__file__).parents[1] / "configs" / "dit_tiny.yaml"
_SHAPE_KEYS = ("patch_size", "width", "depth", "heads")


def _tiny_shape() -> dict[str, int]:
    init_args = yaml.safe_load(TINY_CONFIG.read_text())["model"]["init_args"]
    return {key: init_args[key] for key in _SHAPE_KEYS}


TINY_DIT = _tiny_shape()  # patch_size, width, depth, heads; pass image_size beside it
TINY_SIZE = yaml.safe_load(TINY_CONFIG.read_text())["data"]["image_size"]
