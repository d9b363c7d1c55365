"""Write the repository's compact photo sample from full-size Oxford-IIIT Pet photos.

    python scripts/make_sample.py FULL_SIZE_IMAGES data/sample/images

Each ``<Breed>_<n>.jpg`` keeps its name (labels come from names) and is saved as an RGB
baseline JPEG whose short side is ``--short-side`` pixels, without metadata. The same input
and Pillow version give the same bytes.
"""

import argparse
from pathlib import Path

from PIL import Image


def shrink(source: Path, target: Path, short_side: int, quality: int) -> None:
    """Save ``source`` at ``target`` as an RGB JPEG whose short side is at most ``short_side``."""
    with Image.open(source) as photo:
        rgb = photo.convert("RGB")
    scale = short_side / min(rgb.size)
    if scale < 1:
        size = (round(rgb.width * scale), round(rgb.height * scale))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    rgb.save(target, format="JPEG", quality=quality, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="folder of full-size <Breed>_<n>.jpg photos")
    parser.add_argument("target", type=Path, help="folder to write the small copies into")
    parser.add_argument("--short-side", type=int, default=128, help="pixels (default 128)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    args = parser.parse_args(argv)
    photos = sorted(args.source.glob("*.jpg"))
    if not photos:
        raise SystemExit(f"No .jpg photos in {args.source}")
    args.target.mkdir(parents=True, exist_ok=True)
    for photo in photos:
        shrink(photo, args.target / photo.name, args.short_side, args.quality)
    print(f"Wrote {len(photos)} photos to {args.target}")


if __name__ == "__main__":
    main()
