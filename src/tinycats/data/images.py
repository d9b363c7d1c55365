"""Decoding one photo into a square uint8 tensor, whatever the file actually holds."""

from pathlib import Path
from typing import IO

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF


class UnreadableImage(Exception):
    """The file is not an image PIL can decode completely (truncated, corrupt, not an image)."""


class TooManyPixels(ValueError):
    """The image's header states more pixels than the caller allows (a decompression bomb)."""


def decode_square(
    file: Path | IO[bytes], size: int, max_pixels: int | None = None
) -> tuple[torch.Tensor, bool]:
    """Decode ``file`` as RGB, resize its short side to ``size`` and center-crop to a square.

    Returns the ``(3, size, size)`` uint8 tensor and whether the file needed converting to RGB
    (grayscale, CMYK, palette or PNG data behind a .jpg name). Raises PIL's own errors, and
    ``TooManyPixels`` (read from the header, before decoding) above ``max_pixels``.
    """
    with Image.open(file) as image:
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise TooManyPixels(
                f"The image has {image.width}×{image.height} pixels; the limit is "
                f"{max_pixels} pixels."
            )
        # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: much faster for big photos.
        image.draft("RGB", (size, size))
        image.load()
        converted = image.mode != "RGB"
        rgb = image.convert("RGB") if converted else image.copy()
    square = TF.center_crop(TF.resize(TF.pil_to_tensor(rgb), size, antialias=True), size)
    return square, converted


def load_square(path: Path, size: int) -> tuple[torch.Tensor, bool]:
    """``decode_square`` of a file on disk; a file PIL cannot decode raises ``UnreadableImage``."""
    try:
        return decode_square(path, size)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as err:
        raise UnreadableImage(f"{path.name}: {err}") from err
