"""Download the Oxford-IIIT Pet archives once, verify them and install them atomically.

The dataset folder appears under the data root only when it is whole: archives are fetched and
extracted in a hidden temporary folder next to it, marked with a `.complete` file there, and moved
into place with one `os.replace`. A folder without the marker is a leftover of an install that was
killed (or of an older version that marked it after the move): it is set aside and the install is
done again. Call it from one process per data root at a time (Lightning's `prepare_data` does
this): a call removes the temporary folders that earlier calls left behind.

A failed or corrupt download raises `DatasetDownloadError`, a `TransientError`: the network may
work on the next try, and on Modal the attempt is retried. A wrong archive placed by hand or a
`base_url` serving other archives raises a plain `TinyCatsError`: trying again cannot fix those.
"""

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from torchvision.datasets.utils import calculate_md5, download_url, extract_archive

from tinycats.atomic import no_commit
from tinycats.errors import TinyCatsError, TransientError

__all__ = [
    "OXFORD_PETS_ARCHIVES",
    "OXFORD_PETS_URL",
    "DatasetDownloadError",
    "ensure_oxford_pets",
]

log = logging.getLogger(__name__)

OXFORD_PETS_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"
OXFORD_PETS_ARCHIVES: dict[str, str] = {
    "images.tar.gz": "5c4f3ee8e5d25df40f4fd59a7f44e54c",
    "annotations.tar.gz": "95a8c909bbe2e81eed6a22bccdf3f68f",
}

_DATASET_DIR = "oxford-iiit-pet"
_COMPLETE_MARKER = ".complete"
_TEMP_PREFIX = ".download-"
_EXPECTED_SUBDIRS = ("images", "annotations")


class DatasetDownloadError(TransientError):
    """The dataset could not be downloaded, or the download was corrupt: worth another try."""


def ensure_oxford_pets(
    root: Path,
    *,
    base_url: str = OXFORD_PETS_URL,
    checksums: Mapping[str, str] = OXFORD_PETS_ARCHIVES,
    commit: Callable[[], None] = no_commit,
) -> Path:
    """Return <root>/oxford-iiit-pet (holding images/ and annotations/), downloading it once."""
    root = Path(root)
    dataset_dir = root / _DATASET_DIR
    if (dataset_dir / _COMPLETE_MARKER).is_file():
        return dataset_dir
    root.mkdir(parents=True, exist_ok=True)
    if dataset_dir.exists():
        _set_aside_unmarked(dataset_dir)
    _remove_stale_temp_dirs(root)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=_TEMP_PREFIX))
    try:
        extracted = staging / _DATASET_DIR
        for filename, md5 in checksums.items():
            archive = _verified_archive(root, staging, filename, md5, base_url, checksums)
            extract_archive(archive, extracted)
        _check_layout(extracted, checksums)
        (extracted / _COMPLETE_MARKER).touch()
        os.replace(extracted, dataset_dir)  # appears whole and marked, or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    commit()
    return dataset_dir


def _set_aside_unmarked(dataset_dir: Path) -> None:
    """Move an unmarked dataset folder (an install killed half-way) to a temporary name."""
    aside = Path(tempfile.mkdtemp(dir=dataset_dir.parent, prefix=_TEMP_PREFIX))
    log.warning(
        "%s has no %s marker: an earlier install was cut short. Installing it again.",
        dataset_dir,
        _COMPLETE_MARKER,
    )
    os.replace(dataset_dir, aside / _DATASET_DIR)


def _remove_stale_temp_dirs(root: Path) -> None:
    """Delete the temporary folders that killed earlier calls left under root."""
    for stale in root.glob(f"{_TEMP_PREFIX}*"):
        if stale.is_dir():
            log.warning("Removing %s, left behind by an interrupted download", stale)
            shutil.rmtree(stale, ignore_errors=True)


def _verified_archive(
    root: Path,
    staging: Path,
    filename: str,
    md5: str,
    base_url: str,
    checksums: Mapping[str, str],
) -> Path:
    """Return a verified copy of one archive: the one placed by hand in root, else a download."""
    url = base_url.rstrip("/") + "/" + filename
    placed = root / filename
    if placed.is_file():
        actual = calculate_md5(placed)
        if actual != md5:
            raise TinyCatsError(
                f"{placed} has MD5 {actual}, expected {md5}: the archive placed there by hand is "
                f"incomplete or a different file. Replace it with a complete copy of {url}, or "
                "delete it to let ensure_oxford_pets download it."
            )
        log.info("Using %s placed by hand (MD5 %s verified)", placed, md5)
        return placed

    try:
        download_url(url, staging, filename)
    except OSError as err:  # URLError, HTTPError and ConnectionError are all OSErrors.
        raise DatasetDownloadError(
            _no_download_message(url, root, base_url, checksums, err)
        ) from err
    downloaded = staging / filename
    actual = calculate_md5(downloaded)
    if actual != md5:
        raise DatasetDownloadError(
            f"{filename} downloaded from {url} has MD5 {actual}, expected {md5}: the download is "
            f"corrupt or the file on the server changed. Nothing was kept under {root}; call again "
            f"to retry, or place a verified copy at {placed}."
        )
    log.info("Downloaded %s from %s (MD5 %s verified)", filename, url, md5)
    return downloaded


def _no_download_message(
    url: str, root: Path, base_url: str, checksums: Mapping[str, str], err: OSError
) -> str:
    """Explain a failed download and how to place the archives by hand instead."""
    sources = ", ".join(base_url.rstrip("/") + "/" + name for name in checksums)
    targets = " and ".join(str(root / name) for name in checksums)
    return (
        f"Could not download {url} into the data root {root}: {err}. This machine may have no "
        f"internet access. To install the dataset by hand, download {sources} on a machine that "
        f"has it and copy them to {targets}, then call again; or point the data source at a "
        "folder of images instead of the Oxford-IIIT Pet download."
    )


def _check_layout(extracted: Path, checksums: Mapping[str, str]) -> None:
    """Fail unless the extracted archives hold the Oxford-IIIT Pet images/ and annotations/."""
    missing = [name for name in _EXPECTED_SUBDIRS if not (extracted / name).is_dir()]
    if missing:
        raise TinyCatsError(
            f"The archives {', '.join(checksums)} do not hold the Oxford-IIIT Pet layout: "
            f"{', '.join(missing)}/ missing after extraction, expected "
            f"{' and '.join(_EXPECTED_SUBDIRS)}/ at the top of the archives. Use the archives "
            f"from {OXFORD_PETS_URL}."
        )
