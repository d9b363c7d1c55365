"""Which image files a dataset holds and which class each one belongs to.

Two layouts are understood:
- the flat Oxford-IIIT Pet naming, ``<Breed>_<n>.jpg``, where a name starting with a capital
  letter is a cat and a lower-case one is a dog (the dataset's own convention);
- the ImageFolder layout, one subfolder per class, for a user's own photos.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from tinycats.errors import TinyCatsError

LabelMode = Literal["cat_vs_dog", "cat_breeds", "pet_breeds", "folder"]

CAT_BREEDS = (
    "Abyssinian",
    "Bengal",
    "Birman",
    "Bombay",
    "British_Shorthair",
    "Egyptian_Mau",
    "Maine_Coon",
    "Persian",
    "Ragdoll",
    "Russian_Blue",
    "Siamese",
    "Sphynx",
)
DOG_BREEDS = (
    "american_bulldog",
    "american_pit_bull_terrier",
    "basset_hound",
    "beagle",
    "boxer",
    "chihuahua",
    "english_cocker_spaniel",
    "english_setter",
    "german_shorthaired",
    "great_pyrenees",
    "havanese",
    "japanese_chin",
    "keeshond",
    "leonberger",
    "miniature_pinscher",
    "newfoundland",
    "pomeranian",
    "pug",
    "saint_bernard",
    "samoyed",
    "scottish_terrier",
    "shiba_inu",
    "staffordshire_bull_terrier",
    "wheaten_terrier",
    "yorkshire_terrier",
)


@dataclass(frozen=True)
class Catalog:
    """Image files (sorted, so every run sees the same order) with their class indices."""

    paths: tuple[Path, ...]
    targets: tuple[int, ...]
    class_names: tuple[str, ...]


def class_names_for(labels: LabelMode, folder: Path | None = None) -> tuple[str, ...]:
    """The class names of a label mode; the ``folder`` mode reads them from the subfolders."""
    if labels == "cat_vs_dog":
        return ("cat", "dog")
    if labels == "cat_breeds":
        return CAT_BREEDS
    if labels == "pet_breeds":
        return CAT_BREEDS + DOG_BREEDS
    if labels == "folder":
        if folder is None or not folder.is_dir():
            raise TinyCatsError(f"labels='folder' needs an image folder; {folder} is not one.")
        return tuple(find_classes(str(folder))[0])
    raise TinyCatsError(
        f"Unknown label mode {labels!r}: use cat_vs_dog, cat_breeds, pet_breeds or folder."
    )


def oxford_breed(path: Path) -> str:
    """The breed in an Oxford-IIIT Pet file name: ``Maine_Coon_12.jpg`` → ``Maine_Coon``."""
    return path.stem.rsplit("_", 1)[0]


def build_catalog(folder: Path, labels: LabelMode) -> Catalog:
    """List the images of ``folder`` with their classes under the given label mode."""
    if not folder.is_dir():
        raise TinyCatsError(f"Image folder {folder} does not exist.")
    class_names = class_names_for(labels, folder)
    if labels == "folder":
        pairs = make_dataset(
            str(folder),
            {name: i for i, name in enumerate(class_names)},
            extensions=IMG_EXTENSIONS,
            allow_empty=True,
        )
        items = sorted((Path(path), target) for path, target in pairs)
    else:
        items = sorted(_oxford_items(folder, labels, class_names))
    if not items:
        raise TinyCatsError(
            f"No images for labels={labels!r} in {folder}: expected Oxford-IIIT Pet names "
            "like Bengal_1.jpg (flat) or one subfolder per class with labels='folder'."
        )
    paths, targets = zip(*items, strict=True)
    return Catalog(paths=paths, targets=targets, class_names=class_names)


def _oxford_items(folder: Path, labels: LabelMode, class_names: tuple[str, ...]):
    """Yield (path, class index) for the flat Oxford naming; unknown breeds are left out."""
    index = {name: i for i, name in enumerate(class_names)}
    for path in folder.iterdir():
        if path.suffix.lower() not in IMG_EXTENSIONS:
            continue
        breed = oxford_breed(path)
        if labels == "cat_vs_dog":
            yield path, 0 if breed[:1].isupper() else 1
        elif breed in index:
            yield path, index[breed]
