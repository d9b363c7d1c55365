"""Decoding one photo into a square uint8 tensor, whatever the file actually holds."""

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF


class UnreadableImage(Exception):
    """The file is not an image PIL can decode completely (truncated, corrupt, not an image)."""


def load_square(path: Path, size: int) -> tuple[torch.Tensor, bool]:
    """Decode ``path`` as RGB, resize its short side to ``size`` and center-crop to a square.

    Returns the ``(3, size, size)`` uint8 tensor and whether the file needed converting to RGB
    (grayscale, CMYK, palette or PNG data behind a .jpg name).
    """
    try:
        with Image.open(path) as image:
            # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: much faster for big photos.
            image.draft("RGB", (size, size))
            image.load()
            converted = image.mode != "RGB"
            rgb = image.convert("RGB") if converted else image.copy()
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as err:
        raise UnreadableImage(f"{path.name}: {err}") from err
    square = TF.center_crop(TF.resize(TF.pil_to_tensor(rgb), size, antialias=True), size)
    return square, converted
