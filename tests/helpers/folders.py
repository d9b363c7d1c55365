"""Tiny ImageFolder trees of synthetic PNGs, for data tests that need no real photos."""

from pathlib import Path

from PIL import Image


def distinct_image_folder(root: Path, classes: int, per_class: int, size: int = 8) -> Path:
    """One subfolder per class of solid-colour PNGs, every image a colour of its own."""
    for kind in range(classes):
        folder = root / f"class_{kind}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            n = kind * per_class + i
            colour = (n % 256, (n * 7) % 256, 255 - n % 256)
            Image.new("RGB", (size, size), colour).save(folder / f"{i:03d}.png")
    return root
