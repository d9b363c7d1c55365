"""Writing a file so that no reader (or volume commit) ever sees half of it; the local commit."""

from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on ``<path>.partial``, then rename that file to ``path`` in one step."""
    partial = path.with_name(f"{path.name}.partial")
    write(partial)
    partial.replace(path)


def no_commit() -> None:
    """The local stand-in for a volume commit (on Modal, a volume's ``commit``)."""
