"""PetsDataModule: download → verify → cache → seeded split → loaders, for both models."""

import logging
import os
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.trainer.connectors.data_connector import _parse_num_batches
from lightning.pytorch.trainer.states import RunningStage
from torch.utils.data import Dataset, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from tinycats.atomic import no_commit
from tinycats.data.cache import ImageCache, load_or_build_cache
from tinycats.data.catalog import Catalog, LabelMode, build_catalog, class_names_for
from tinycats.data.download import OXFORD_PETS_ARCHIVES, OXFORD_PETS_URL, ensure_oxford_pets
from tinycats.data.images import UnreadableImage, load_square
from tinycats.data.sampler import EpochBatches
from tinycats.data.split import stratified_split
from tinycats.errors import TinyCatsError

log = logging.getLogger(__name__)

OXFORD_PETS = "oxford-pets"


class PetsDataModule(L.LightningDataModule):
    """Oxford-IIIT Pet (or a folder of your own photos) as uint8 image batches and class indices.

    Args:
        root: where downloads and caches live (a Modal volume on Modal).
        source: ``oxford-pets`` to download the dataset, or a folder of images, either flat with
            Oxford names (``Bengal_1.jpg``) or one subfolder per class (``labels: folder``).
        labels: cat_vs_dog (2 classes), cat_breeds (12), pet_breeds (37) or folder.
        image_size: side of the square images the models see (and the cache holds).
        batch_size: images per training batch (per device).
        split: train, val, test fractions of every class.
        split_seed: seed of the split and of the training order.
        num_workers: DataLoader worker processes; null: none on a CPU, one per core (up to 8)
            on a GPU machine. Unused when the images live on the GPU.
        on_device: keep the uint8 images on the training device (on a GPU: when they fit in a
            quarter of its free memory): no workers, no host-to-device copies.
        base_url: where the Oxford-IIIT Pet archives are downloaded from.
        checksums: MD5 of each archive; override only for a mirror with other archives.
        predict_paths: image files for ``tinycats predict``.
    """

    def __init__(
        self,
        root: str = "data",
        source: str = OXFORD_PETS,
        labels: LabelMode = "cat_vs_dog",
        image_size: int = 64,
        batch_size: int = 64,
        split: tuple[float, float, float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        num_workers: int | None = None,
        on_device: bool = True,
        base_url: str = OXFORD_PETS_URL,
        checksums: dict[str, str] | None = None,
        predict_paths: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.class_names = class_names_for(labels, None if source == OXFORD_PETS else Path(source))
        self.commit: Callable[[], None] = no_commit
        self.datasets: dict[str, Dataset] = {}
        self.images_on_device = False
        self._prepared: ImageCache | None = None  # prepare_data's cache, on the process that ran it

    @property
    def num_classes(self) -> int:
        """How many classes the label mode has."""
        return len(self.class_names)

    def prepare_data(self) -> None:
        """Download (once) and build the uint8 cache (once); runs on one process per machine."""
        catalog = self._catalog()
        # Kept for setup in this process: the cache key hashes every photo, once is enough.
        self._prepared = load_or_build_cache(
            catalog.paths, self.hparams.image_size, self._cache_dir, self.commit
        )

    def setup(self, stage: str) -> None:
        """Load the cache and split it the same way on every run."""
        if stage == "predict":
            self.datasets["predict"] = self._predict_dataset()
            return
        catalog = self._catalog()
        cache = self._prepared or load_or_build_cache(
            catalog.paths, self.hparams.image_size, self._cache_dir
        )
        targets = torch.tensor([catalog.targets[i] for i in cache.kept])
        parts = stratified_split(
            targets.tolist(), tuple(self.hparams.split), self.hparams.split_seed
        )
        root = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        self.images_on_device = self.hparams.on_device and self._fits(root, cache.images.numel())
        device = root if self.images_on_device else torch.device("cpu")
        for name, indices in zip(("train", "val", "test"), parts, strict=True):
            self.datasets[name] = TensorDataset(
                cache.images[indices].to(device), targets[indices].to(device)
            )
        log.info(
            "%s: %d train / %d val / %d test images, %d classes (%s)",
            self.hparams.labels,
            *(len(part) for part in parts),
            self.num_classes,
            self.hparams.source,
        )

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> StatefulDataLoader:
        return self._loader("val")

    def test_dataloader(self) -> StatefulDataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> StatefulDataLoader:
        return self._loader("predict")

    @property
    def _cache_dir(self) -> Path:
        return Path(self.hparams.root) / "cache"

    def _image_folder(self) -> Path:
        if self.hparams.source != OXFORD_PETS:
            return Path(self.hparams.source)
        dataset = ensure_oxford_pets(
            Path(self.hparams.root),
            base_url=self.hparams.base_url,
            checksums=self.hparams.checksums or OXFORD_PETS_ARCHIVES,
            commit=self.commit,
        )
        return dataset / "images"

    def _catalog(self) -> Catalog:
        return build_catalog(self._image_folder(), self.hparams.labels)

    def _predict_dataset(self) -> TensorDataset:
        paths = [Path(p) for p in self.hparams.predict_paths or []]
        if not paths:
            raise TinyCatsError("Nothing to predict: pass image files with --data.predict_paths.")
        images, problems = [], []
        for path in paths:
            try:
                images.append(load_square(path, self.hparams.image_size)[0])
            except (UnreadableImage, FileNotFoundError) as err:
                problems.append(str(err))
        if problems:
            raise TinyCatsError(
                "Cannot predict on files that are not readable images: " + "; ".join(problems)
            )
        # In place of a label: each image's index in predict_paths, for printing the results.
        return TensorDataset(torch.stack(images), torch.arange(len(images)))

    def _loader(self, split: str, shuffle: bool = False) -> StatefulDataLoader:
        # A stateful loader (Lightning checkpoints its position) over epoch-seeded batches: a
        # resumed run continues mid-epoch with exactly the batches it would have seen.
        dataset = self.datasets[split]
        # Each rank its share of the batches (the trainer has use_distributed_sampler=False).
        shared = split != "predict" and self.trainer is not None
        batches = EpochBatches(
            len(dataset),
            self.hparams.batch_size,
            self.hparams.split_seed,
            shuffle,
            rank=self.trainer.global_rank if shared else 0,
            world_size=self.trainer.world_size if shared else 1,
        )
        if split == "train" and self.trainer is not None:
            batches.limit = train_batches_limit(self.trainer, len(batches))
        on_device = split != "predict" and self.images_on_device
        workers = 0 if on_device else self._workers()
        return StatefulDataLoader(
            dataset,
            sampler=batches,
            batch_size=None,  # the sampler yields whole batches
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available() and not on_device,
        )

    def _workers(self) -> int:
        """Worker processes: as configured, or on a GPU machine one per core up to 8."""
        if self.hparams.num_workers is not None:
            return self.hparams.num_workers
        return min(os.cpu_count() or 1, 8) if torch.cuda.is_available() else 0

    def _fits(self, device: torch.device, nbytes: int) -> bool:
        """Whether the images fit on ``device``: on a GPU, in a quarter of its free memory."""
        if device.type != "cuda" or nbytes <= torch.cuda.mem_get_info(device)[0] // 4:
            return True
        log.info("The images (%.1f GB) stay in host memory: too big for %s.", nbytes / 1e9, device)
        return False


def train_batches_limit(trainer: L.Trainer, batches: int) -> int:
    """The training batches an epoch of ``batches`` takes under ``trainer.limit_train_batches``,
    as Lightning counts them (its own function: a count, or a share rounded down)."""
    return int(_parse_num_batches(RunningStage.TRAINING, batches, trainer.limit_train_batches))
