"""The pre-decoded uint8 image cache: every photo decoded once, so no epoch decodes a JPEG.

The cache is one ``.pt`` file per (image set, resolution), named by a hash of the files' paths
and contents and the resolution, so a change to any builds a new one. Contents, not sizes and
modification times: a photo replaced by one of the same size whose time stamp was kept (``cp -p``,
tar, rsync) or fell in the same tick of a coarse file-system clock would otherwise keep its old
pixels. Hashing reads every file once per call (SHA-256, on all cores): far less than decoding.
"""

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from tinycats.atomic import no_commit
from tinycats.data.images import UnreadableImage, load_square

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass(frozen=True)
class ImageCache:
    """Decoded images ``(N, 3, S, S)`` uint8 and, for each, its index in the source file list."""

    images: torch.Tensor
    kept: list[int]


def cache_path(cache_dir: Path, paths: Sequence[Path], size: int) -> Path:
    """Where the cache for these files (their paths and contents) at this resolution lives."""
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        listing = list(zip(map(str, paths), pool.map(_content_digest, paths), strict=True))
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, size, listing]).encode()).hexdigest()
    return cache_dir / f"images-{size}px-{digest[:16]}.pt"


def load_or_build_cache(
    paths: Sequence[Path], size: int, cache_dir: Path, commit: Callable[[], None] = no_commit
) -> ImageCache:
    """Load the cache for ``paths`` at ``size`` px, building (and committing) it first if needed."""
    target = cache_path(cache_dir, paths, size)
    if not target.exists():
        _build(paths, size, target)
        commit()
    stored = torch.load(target, mmap=True, weights_only=True)
    return ImageCache(images=stored["images"], kept=stored["kept"].tolist())


def _build(paths: Sequence[Path], size: int, target: Path) -> None:
    """Decode every file on all cores and write the cache atomically; bad files are skipped."""
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        results = list(pool.map(lambda path: _try_load(path, size), paths))
    kept = [i for i, result in enumerate(results) if not isinstance(result, str)]
    skipped = [result for result in results if isinstance(result, str)]
    converted = sum(1 for i in kept if results[i][1])
    images = (
        torch.stack([results[i][0] for i in kept])
        if kept
        else torch.empty(0, 3, size, size, dtype=torch.uint8)
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".tmp-{os.getpid()}")
    torch.save({"images": images, "kept": torch.tensor(kept, dtype=torch.long)}, partial)
    os.replace(partial, target)
    log.info(
        "Cached %d images at %d px in %s (%d converted to RGB, %d skipped as unreadable%s)",
        len(kept),
        size,
        target,
        converted,
        len(skipped),
        ": " + "; ".join(skipped) if skipped else "",
    )


def _content_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _try_load(path: Path, size: int) -> tuple[torch.Tensor, bool] | str:
    """Decode one file, or return the reason it could not be decoded."""
    try:
        return load_square(path, size)
    except UnreadableImage as err:
        return str(err)
