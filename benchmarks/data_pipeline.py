"""Images/s delivered to the model: the uint8 cache against ImageFolder + JPEG decoding.

Same photos (the shared Oxford-IIIT Pet sample), same resolution, same batch size, same run.
The comparison pipeline decodes, crops and flips each image; the cache is shown as delivered
and with the same crop and flip applied to the batch (which on a GPU runs on the GPU).

    python benchmarks/data_pipeline.py [--size 64] [--epochs 3] [--sample PATH]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from tinycats.augment import random_flip, random_resized_crop, to_unit_range
from tinycats.data import PetsDataModule
from tinycats.randomness import step_generator

SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/oxford-pets-sample/images"


def images_per_second(batches, augment) -> float:
    """Iterate all batches, turning each into the float batch a model takes."""
    count, start = 0, time.perf_counter()
    for step, (images, _) in enumerate(batches):
        count += len(augment(images, step))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = PetsDataModule(root=tmp, source=str(args.sample), image_size=args.size,
                              batch_size=args.batch, split=(1.0, 0.0, 0.0))  # fmt: skip
        data.prepare_data()
        data.setup("fit")

        def cached_augment(images, step):
            generator = step_generator(0, step)
            return random_flip(random_resized_crop(to_unit_range(images), generator), generator)

        loader = data.train_dataloader()
        delivered = max(
            images_per_second(loader, lambda images, _: to_unit_range(images))
            for _ in range(args.epochs)
        )
        augmented = max(images_per_second(loader, cached_augment) for _ in range(args.epochs))

        folder = Path(tmp) / "imagefolder"
        for photo in args.sample.glob("*.jpg"):
            label = "cat" if photo.name[0].isupper() else "dog"
            (folder / label).mkdir(parents=True, exist_ok=True)
            (folder / label / photo.name).symlink_to(photo)
        transform = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(args.size, scale=(0.5, 1.0), antialias=True),
                                v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True)])  # fmt: skip
        plain = DataLoader(
            datasets.ImageFolder(str(folder), transform=transform),
            batch_size=args.batch,
            shuffle=True,
        )
        decoded = max(
            images_per_second(plain, lambda images, _: images) for _ in range(args.epochs)
        )

    print(
        f"| pipeline ({len(data.datasets['train'])} photos, {args.size} px, batch {args.batch}) | images/s |"
    )
    print("|---|---:|")
    print(f"| ImageFolder + JPEG decode + torchvision transforms | {decoded:,.0f} |")
    print(
        f"| tinycats uint8 cache, delivered as float | {delivered:,.0f} ({delivered / decoded:,.0f}x) |"
    )
    print(
        f"| tinycats uint8 cache + batch crop and flip on this device | {augmented:,.0f} ({augmented / decoded:,.0f}x) |"
    )


if __name__ == "__main__":
    main()
