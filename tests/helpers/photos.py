"""Test photos: the real Oxford-IIIT Pet sample, broken images made from it, and archives in
the dataset's layout (conftest.py's fixtures build on these)."""

import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

PETS_SAMPLE = Path(__file__).resolve().parents[2] / "data/sample/images"


def pets_sample_images() -> Path:
    """The folder of the 296 real sample photos that ship with the repository (data/sample)."""
    return PETS_SAMPLE


# --- Broken images ---------------------------------------------------------------------------


def make_broken_images(folder: Path) -> dict[str, Path]:
    """Write five cat-named files that are not plain RGB JPEGs into folder and return them by kind.

    Kinds: "truncated" (first 40 % of a real JPEG), "grayscale", "cmyk", "png_as_jpg" (PNG data
    named .jpg) and "not_an_image" (text named .jpg). Names start with a cat breed, so they land
    in cat classes. Skips the calling test where the real sample photos are absent.
    """
    source = sorted(pets_sample_images().glob("Bengal_*.jpg"))[0]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        kind: folder / f"Bengal_{9001 + i}.jpg"
        for i, kind in enumerate(("truncated", "grayscale", "cmyk", "png_as_jpg", "not_an_image"))
    }
    data = source.read_bytes()
    paths["truncated"].write_bytes(data[: len(data) * 2 // 5])
    with Image.open(source) as photo:
        photo.convert("L").save(paths["grayscale"], format="JPEG")
        photo.convert("CMYK").save(paths["cmyk"], format="JPEG")
        photo.save(paths["png_as_jpg"], format="PNG")
    paths["not_an_image"].write_text("This is a text file, not a photo of a Bengal cat.\n")
    return paths


# --- Oxford-IIIT Pet archives ----------------------------------------------------------------


@dataclass(frozen=True)
class OxfordArchives:
    """Archives in the Oxford-IIIT Pet layout, in `folder`, with their MD5 per file name."""

    folder: Path
    checksums: dict[str, str]
    image_names: frozenset[str]


def _list_txt(image_names: list[str]) -> str:
    """Build annotations/list.txt in the dataset's format: `Name CLASS-ID SPECIES BREED-ID`."""
    breed_of = {name: name.rsplit(".", 1)[0].rsplit("_", 1)[0] for name in image_names}
    breeds = sorted(set(breed_of.values()), key=str.lower)
    cats = [b for b in breeds if b[0].isupper()]
    dogs = [b for b in breeds if not b[0].isupper()]
    lines = [
        "#Image CLASS-ID SPECIES BREED ID",
        f"#ID: 1:{len(breeds)} Class ids",
        "#SPECIES: 1:Cat 2:Dog",
        f"#BREED ID: 1-{len(cats)}:Cat 1:{len(dogs)}:Dog",
        "#All images with 1st letter as captial are cat images",
        "#images with small first letter are dog images",
    ]
    for name in sorted(image_names, key=str.lower):
        breed = breed_of[name]
        species, same_species = (1, cats) if breed in cats else (2, dogs)
        class_id = breeds.index(breed) + 1
        breed_id = same_species.index(breed) + 1
        lines.append(f"{name.rsplit('.', 1)[0]} {class_id} {species} {breed_id}")
    return "\n".join(lines) + "\n"


def _md5(path: Path) -> str:
    """Return the hex MD5 of a file."""
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def build_oxford_archives(images: list[Path], folder: Path) -> OxfordArchives:
    """images.tar.gz (the given photos) and annotations.tar.gz (their list.txt) in folder."""
    # JPEGs do not compress: the fastest level keeps building the archive under a second.
    with tarfile.open(folder / "images.tar.gz", "w:gz", compresslevel=1) as tar:
        for image in images:
            tar.add(image, arcname=f"images/{image.name}")
    list_txt = _list_txt([image.name for image in images]).encode()
    with tarfile.open(folder / "annotations.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("annotations/list.txt")
        info.size = len(list_txt)
        tar.addfile(info, io.BytesIO(list_txt))
    checksums = {name: _md5(folder / name) for name in ("images.tar.gz", "annotations.tar.gz")}
    return OxfordArchives(folder, checksums, frozenset(image.name for image in images))
