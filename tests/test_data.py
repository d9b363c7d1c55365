"""The data path: catalog, split, decoding, the uint8 cache and the data module."""

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tinycats.data import PetsDataModule
from tinycats.data.cache import load_or_build_cache
from tinycats.data.catalog import CAT_BREEDS, build_catalog
from tinycats.data.images import UnreadableImage, load_square
from tinycats.data.sampler import EpochBatches
from tinycats.data.split import stratified_split
from tinycats.errors import TinyCatsError

from helpers.folders import distinct_image_folder
from helpers.photos import make_broken_images


def test_label_modes_follow_the_oxford_naming(pets_sample: Path) -> None:
    both = build_catalog(pets_sample, "cat_vs_dog")
    assert len(both.paths) == 296 and both.class_names == ("cat", "dog")
    assert both.targets.count(0) == 96  # capitalised names are cats
    cats = build_catalog(pets_sample, "cat_breeds")
    assert cats.class_names == CAT_BREEDS and len(cats.paths) == 96
    assert all(
        cats.class_names[t] == p.name.rsplit("_", 1)[0]
        for p, t in zip(cats.paths, cats.targets, strict=True)
    )
    assert len(build_catalog(pets_sample, "pet_breeds").class_names) == 37


def test_folder_layout_uses_subfolders_as_classes(tmp_path: Path, pets_sample: Path) -> None:
    for breed in ("Bengal", "Sphynx"):
        (tmp_path / breed.lower()).mkdir()
        for photo in sorted(pets_sample.glob(f"{breed}_*.jpg"))[:3]:
            shutil.copy(photo, tmp_path / breed.lower() / photo.name)
    catalog = build_catalog(tmp_path, "folder")
    assert catalog.class_names == ("bengal", "sphynx")
    assert catalog.targets == (0, 0, 0, 1, 1, 1)


def test_empty_or_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TinyCatsError, match="No images"):
        build_catalog(tmp_path, "cat_breeds")
    with pytest.raises(TinyCatsError, match="does not exist"):
        build_catalog(tmp_path / "nope", "cat_vs_dog")


def test_split_is_stratified_seeded_and_disjoint() -> None:
    targets = [0] * 80 + [1] * 20 + [2] * 3
    train, val, test = stratified_split(targets, (0.8, 0.1, 0.1), seed=3)
    assert sorted(train + val + test) == list(range(len(targets)))
    assert [sum(targets[i] == c for i in val) for c in range(3)] == [8, 2, 1]
    assert [sum(targets[i] == c for i in test) for c in range(3)] == [8, 2, 1]
    assert stratified_split(targets, (0.8, 0.1, 0.1), seed=3) == (train, val, test)
    assert stratified_split(targets, (0.8, 0.1, 0.1), seed=4) != (train, val, test)
    with pytest.raises(ValueError, match="sum"):
        stratified_split(targets, (0.8, 0.3, 0.1), seed=0)


def test_split_seed_sets_the_split_and_the_training_order(tmp_path: Path) -> None:
    source = distinct_image_folder(tmp_path / "images", classes=2, per_class=20)

    def loaded(seed: int, split: tuple[float, float, float]) -> PetsDataModule:
        data = PetsDataModule(
            root=str(tmp_path / "data"),
            source=str(source),
            labels="folder",
            image_size=8,
            batch_size=8,
            split=split,
            split_seed=seed,
        )
        data.setup("fit")
        return data

    val = [loaded(seed, (0.6, 0.2, 0.2)).datasets["val"].tensors[0] for seed in (1, 1, 2)]
    assert torch.equal(val[0], val[1]) and not torch.equal(val[0], val[2])
    # Everything in training: the same images, in an order that only the seed changes.
    first = [next(iter(loaded(seed, (1.0, 0.0, 0.0)).train_dataloader()))[0] for seed in (1, 1, 2)]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])


def test_epoch_batches_reshuffle_each_epoch_and_repeat_for_the_same_epoch() -> None:
    batches = EpochBatches(size=50, batch_size=8, seed=3, shuffle=True)
    orders = {}
    for epoch in (0, 1, 0):
        batches.set_epoch(epoch)
        order = [i for batch in batches for i in batch]
        assert sorted(order) == list(range(50)) and len(list(batches)) == len(batches) == 7
        assert orders.setdefault(epoch, order) == order  # the same epoch: the same order
    assert orders[0] != orders[1] and orders[0] != list(range(50))
    unshuffled = EpochBatches(size=50, batch_size=8, seed=3, shuffle=False)
    assert [i for batch in unshuffled for i in batch] == list(range(50))


def test_every_kind_of_bad_file_is_converted_or_rejected(tmp_path: Path) -> None:
    broken = make_broken_images(tmp_path)
    for kind, needs_converting in (("grayscale", True), ("cmyk", True), ("png_as_jpg", False)):
        image, converted = load_square(broken[kind], 24)
        assert image.shape == (3, 24, 24) and image.dtype == torch.uint8, kind
        assert converted == needs_converting, kind
    for kind in ("truncated", "not_an_image"):
        with pytest.raises(UnreadableImage, match=broken[kind].name):
            load_square(broken[kind], 24)


def test_resize_keeps_the_aspect_and_crops_the_centre(tmp_path: Path) -> None:
    wide = Image.new("RGB", (300, 100), (0, 0, 255))
    wide.paste((255, 0, 0), (100, 0, 200, 100))  # red centre square between blue sides
    wide.save(tmp_path / "wide.png")
    image, converted = load_square(tmp_path / "wide.png", 10)
    assert not converted
    assert image.shape == (3, 10, 10)
    interior = image[:, :, 1:-1].float()  # the outer columns blend in a little blue when resized
    assert interior[0].min() == 255 and interior[2].max() == 0  # only the red centre is kept


def test_cache_skips_and_counts_bad_files_in_one_line(
    tmp_path: Path, pets_sample: Path, caplog
) -> None:
    photos = sorted(pets_sample.glob("Bengal_*.jpg"))[:4]
    broken = make_broken_images(tmp_path / "broken")
    paths = photos + list(broken.values())
    commits = []
    with caplog.at_level(logging.INFO, logger="tinycats"):
        cache = load_or_build_cache(paths, 16, tmp_path / "cache", lambda: commits.append(1))
    assert cache.images.shape == (7, 3, 16, 16) and cache.images.dtype == torch.uint8
    assert [paths[i] for i in cache.kept] == photos + [
        broken[k] for k in ("grayscale", "cmyk", "png_as_jpg")
    ]
    lines = [r.getMessage() for r in caplog.records if "Cached" in r.getMessage()]
    assert len(lines) == 1 and "2 converted to RGB, 2 skipped" in lines[0]
    assert broken["truncated"].name in lines[0] and broken["not_an_image"].name in lines[0]
    assert commits == [1]


def test_cache_is_reused_and_rebuilt_when_resolution_or_files_change(
    tmp_path: Path, pets_sample: Path, monkeypatch
) -> None:
    photos = sorted(pets_sample.glob("Persian_*.jpg"))[:3]
    first = load_or_build_cache(photos, 16, tmp_path)
    decoded = []
    monkeypatch.setattr(
        "tinycats.data.cache.load_square", lambda p, s: decoded.append(p) or load_square(p, s)
    )
    again = load_or_build_cache(photos, 16, tmp_path)
    assert decoded == [] and torch.equal(first.images, again.images)
    load_or_build_cache(photos, 24, tmp_path)
    assert len(decoded) == 3
    load_or_build_cache(photos[:2], 16, tmp_path)
    assert len(decoded) == 5
    assert len(list(tmp_path.glob("*.pt"))) == 3 and not list(tmp_path.glob("*.tmp-*"))


def test_cache_is_rebuilt_when_a_photo_is_replaced_by_one_of_the_same_size(
    tmp_path: Path,
) -> None:
    photo = tmp_path / "Bengal_1.bmp"  # uncompressed: every 8 px image has the same file size
    Image.new("RGB", (8, 8), (255, 0, 0)).save(photo)
    stat = photo.stat()
    red = load_or_build_cache([photo], 8, tmp_path / "cache").images
    Image.new("RGB", (8, 8), (0, 0, 255)).save(photo)
    # The worst case, set rather than left to the clock: a copy that keeps the time stamp, or a
    # replacement within one tick of a coarse file-system clock.
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert photo.stat().st_size == stat.st_size and photo.stat().st_mtime_ns == stat.st_mtime_ns
    blue = load_or_build_cache([photo], 8, tmp_path / "cache").images
    assert red[0, :, 0, 0].tolist() == [255, 0, 0] and blue[0, :, 0, 0].tolist() == [0, 0, 255]


def test_labels_stay_with_their_images_when_a_file_is_skipped(tmp_path: Path) -> None:
    colours = {0: (255, 0, 0), 1: (0, 0, 255)}
    for target, colour in colours.items():
        folder = tmp_path / "images" / f"class_{target}"
        folder.mkdir(parents=True)
        for i in range(1, 9):
            Image.new("RGB", (8, 8), colour).save(folder / f"{i:03d}.png")
    (tmp_path / "images/class_0/000.png").write_text("not an image, listed first and skipped")
    data = PetsDataModule(
        root=str(tmp_path / "data"),
        source=str(tmp_path / "images"),
        labels="folder",
        image_size=8,
        split=(0.5, 0.25, 0.25),
    )
    data.setup("fit")
    for name in ("train", "val", "test"):
        images, targets = data.datasets[name].tensors
        assert [tuple(image[:, 0, 0].tolist()) for image in images] == [
            colours[t] for t in targets.tolist()
        ], name
    assert sum(len(data.datasets[name]) for name in ("train", "val", "test")) == 16


def test_datamodule_downloads_caches_and_splits(
    tmp_path: Path, oxford_archives, loopback_server
) -> None:
    server = loopback_server(oxford_archives.folder)
    data = PetsDataModule(
        root=str(tmp_path),
        labels="cat_breeds",
        image_size=16,
        batch_size=8,
        base_url=server.url,
        checksums=oxford_archives.checksums,
    )
    commits = []
    data.commit = lambda: commits.append(1)
    data.prepare_data()
    assert len(commits) == 2  # after the download and after the cache
    data.setup("fit")
    sizes = {name: len(data.datasets[name]) for name in ("train", "val", "test")}
    assert sum(sizes.values()) == 96 + 3  # 96 cats + the 3 convertible broken Bengal files
    images, targets = next(iter(data.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 16, 16) and targets.max() < 12
    requests = len(server.requests)
    data.prepare_data()
    assert len(server.requests) == requests and len(commits) == 2  # no network, no new cache


def test_missing_data_without_network_says_what_to_do(tmp_path: Path) -> None:
    data = PetsDataModule(root=str(tmp_path), base_url="http://127.0.0.1:9/")
    with pytest.raises(Exception, match=r"images\.tar\.gz") as error:
        data.prepare_data()
    assert str(tmp_path) in str(error.value)
