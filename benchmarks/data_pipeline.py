"""Images/s delivered to the model: the uint8 cache against ImageFolder + JPEG decoding.

Same photos (the Oxford-IIIT Pet sample in ``data/sample``), same resolution, same batch size, same run.
The comparison pipeline decodes, crops and flips each image and copies the batch to the
training device; the cache is shown as delivered and with the same crop and flip applied to the
batch. On a GPU the cache lives on the GPU (the data module's ``on_device``), so both run there.

    python -m benchmarks.data_pipeline [--size 64] [--epochs 3] [--sample PATH]
"""

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from benchmarks.harness import PHOTOS, markdown_table, synchronize, trainer, training_device
from tinycats.data import PetsDataModule
from tinycats.networks.augment import random_flip, random_resized_crop, to_unit_range
from tinycats.networks.randomness import step_generator

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Pipelines:
    """Images/s of each way of feeding the model (the best epoch), JPEG decoding first."""

    photos: int
    size: int
    batch: int
    images_per_second: dict[str, float]


def images_per_second(
    batches: Batches, augment: Callable[[torch.Tensor, int], torch.Tensor], device: torch.device
) -> float:
    """Iterate all batches, turning each into the float batch a model takes on ``device``."""
    count, start = 0, time.perf_counter()
    for step, (images, _) in enumerate(batches):
        count += len(augment(images.to(device), step))
    synchronize(device)
    return count / (time.perf_counter() - start)


def measure(size: int = 64, epochs: int = 3, batch: int = 64, sample: Path = PHOTOS) -> Pipelines:
    """The three pipelines, each the best of ``epochs`` epochs."""
    device = training_device()

    def best(batches: Batches, augment: Callable[[torch.Tensor, int], torch.Tensor]) -> float:
        return max(images_per_second(batches, augment, device) for _ in range(epochs))

    def cached_augment(images: torch.Tensor, step: int) -> torch.Tensor:
        generator = step_generator(0, step)
        return random_flip(random_resized_crop(to_unit_range(images), generator), generator)

    with tempfile.TemporaryDirectory() as tmp:
        data = PetsDataModule(
            root=tmp, source=str(sample), image_size=size, batch_size=batch, split=(1.0, 0.0, 0.0)
        )
        data.trainer = trainer(device, max_steps=1)  # asked for the device by setup()
        data.prepare_data()
        data.setup("fit")
        loader = data.train_dataloader()
        delivered = best(loader, lambda images, _: to_unit_range(images))
        augmented = best(loader, cached_augment)

        folder = Path(tmp) / "imagefolder"
        for photo in sample.glob("*.jpg"):
            label = "cat" if photo.name[0].isupper() else "dog"
            (folder / label).mkdir(parents=True, exist_ok=True)
            (folder / label / photo.name).symlink_to(photo)
        transform = v2.Compose(
            [
                v2.PILToTensor(),
                v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )
        plain = DataLoader(
            datasets.ImageFolder(str(folder), transform=transform), batch_size=batch, shuffle=True
        )
        decoded = best(plain, lambda images, _: images)

    where = "GPU" if device.type == "cuda" else "CPU"
    return Pipelines(
        len(data.datasets["train"]),
        size,
        batch,
        {
            "ImageFolder + JPEG decode + torchvision transforms": decoded,
            f"tinycats uint8 cache on the {where}, delivered as float": delivered,
            f"tinycats uint8 cache on the {where} + batch crop and flip there": augmented,
        },
    )


def table(result: Pipelines) -> str:
    """Images/s of each pipeline and its speed-up over JPEG decoding."""
    jpeg = next(iter(result.images_per_second.values()))
    return markdown_table(
        [
            f"pipeline ({result.photos} photos, {result.size} px, batch {result.batch})",
            "images/s",
            "vs JPEG",
        ],
        [
            (name, f"{speed:,.0f}", f"{speed / jpeg:,.1f}x")
            for name, speed in result.images_per_second.items()
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sample", type=Path, default=PHOTOS)
    args = parser.parse_args()
    print(table(measure(args.size, args.epochs, args.batch, args.sample)))


if __name__ == "__main__":
    main()
