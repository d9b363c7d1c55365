"""Saving a batch of images as a PNG grid with a text label on the left of each row."""

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.transforms.v2.functional import to_pil_image
from torchvision.utils import make_grid

from tinycats.atomic import write_atomically

PADDING = 2  # pixels between images and around the grid


def save_labelled_grid(images: Tensor, row_labels: Sequence[str], path: Path) -> Image.Image:
    """Save images (N, C, H, W) in [0, 1] as a PNG of labelled rows; returns the picture."""
    canvas = labelled_grid(images, row_labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda partial: canvas.save(partial, format="PNG"))
    return canvas


def labelled_grid(images: Tensor, row_labels: Sequence[str]) -> Image.Image:
    """Images (N, C, H, W) in [0, 1] as one picture of ``len(row_labels)`` labelled rows."""
    rows = len(row_labels)
    if rows == 0 or images.shape[0] % rows:
        raise ValueError(f"cannot lay {images.shape[0]} images out in {rows} equal rows")
    grid = make_grid(
        images.detach().float().cpu(), nrow=images.shape[0] // rows, padding=PADDING, pad_value=1.0
    )
    picture = to_pil_image(grid.mul(255).round().to(torch.uint8))
    image_height = images.shape[-2]
    # Text about half a row high stays legible from 16 px images up without dwarfing them.
    font = ImageFont.load_default(size=max(8, min(16, image_height // 2)))
    measure = ImageDraw.Draw(picture)
    margin = round(max(measure.textlength(label, font=font) for label in row_labels)) + 2 * PADDING
    canvas = Image.new("RGB", (margin + picture.width, picture.height), "white")
    canvas.paste(picture, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for row, label in enumerate(row_labels):
        middle = PADDING + row * (image_height + PADDING) + image_height / 2
        draw.text((PADDING, middle), label, fill="black", font=font, anchor="lm")
    return canvas
