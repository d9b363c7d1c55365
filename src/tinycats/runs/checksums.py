"""SHA-256 of checkpoint files: recorded beside each one when it is written, checked before use.

``step=00000100.ckpt`` gets ``step=00000100.ckpt.sha256`` in ``sha256sum`` format, so
``sha256sum -c`` checks a run by hand too. A checkpoint without one (written before checksums
existed, or by a process killed between its rename and its checksum) is accepted unverified:
it was renamed into place only once whole.
"""

import hashlib
from pathlib import Path
from typing import BinaryIO

from tinycats.atomic import write_atomically

SUFFIX = ".sha256"


class HashingWriter:
    """A binary file that hashes what goes through it, so a checkpoint is never read back to hash."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def checksum_path(path: Path) -> Path:
    """Where the SHA-256 of the checkpoint ``path`` is recorded."""
    return path.with_name(path.name + SUFFIX)


def record(path: Path, digest: str) -> None:
    """Record ``digest`` as the SHA-256 of ``path`` (atomically, like the checkpoint itself)."""
    write_atomically(checksum_path(path), lambda file: file.write_text(f"{digest}  {path.name}\n"))


def recorded(path: Path) -> str | None:
    """The SHA-256 recorded for ``path``, or None when none was."""
    try:
        return checksum_path(path).read_text().split()[0]
    except (FileNotFoundError, IndexError):
        return None


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def damage(path: Path) -> str | None:
    """Why ``path`` differs from the file that was written, or None when it matches (or has no
    recorded checksum)."""
    expected = recorded(path)
    if expected is None or file_sha256(path) == expected:
        return None
    return f"its SHA-256 differs from the one recorded when it was written ({checksum_path(path).name}): the file is damaged"
