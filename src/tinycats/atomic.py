"""Writing a file so that no reader (or volume commit) ever sees half of it."""

from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on ``<path>.partial``, then rename that file to ``path`` in one step."""
    partial = path.with_name(f"{path.name}.partial")
    write(partial)
    partial.replace(path)
