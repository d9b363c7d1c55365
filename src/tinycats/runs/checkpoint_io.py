"""VolumeCheckpointIO: the one writer of checkpoint files, in the background, in a fixed order.

A save copies the checkpoint to host memory on the training thread and returns; one background
thread then writes ``<name>.partial`` (hashing the bytes as they go), renames it into place,
records its SHA-256, and commits the volume. Removals (pruning) queue behind the save, so a file
is deleted only after its successor is committed. At most one save is in flight: the next one
waits for it, and so do ``wait()`` (a signal stop, the attempt deadline, the end of training)
and ``teardown``. A failure in the writer stops the queue and is raised on the training thread
at the next save or wait. Lightning calls all of this on global rank 0 only (plans/0017).
"""

import copy
import errno
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tinycats.errors import TinyCatsError
from tinycats.runs import checksums

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class OutOfSpace(TinyCatsError):
    """The disk or volume that holds the run is full: a retry into it fails the same way."""


class VolumeCheckpointIO(TorchCheckpointIO):
    """Writes, renames, checksums and commits each checkpoint, then prunes, in that order.

    ``stall_seconds`` counts the time the training thread spent in saves (copying to host memory
    and waiting for the save before); ``write_seconds`` is the newest save's write, rename,
    checksum and commit (what a stop waits for at most); ``background=False`` writes on the
    training thread.
    """

    def __init__(self, commit: Callable[[], None], background: bool = True) -> None:
        self.commit = commit
        self.background = background
        self.stall_seconds = 0.0
        self.write_seconds = 0.0
        self._executor: ThreadPoolExecutor | None = None
        self._queued: list[Future] = []
        self._failed = False
        self._to_host = HostCopy()

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        start = time.perf_counter()
        self.wait()
        self._queue(
            self._write, self._to_host(checkpoint) if self.background else checkpoint, Path(path)
        )
        self.stall_seconds += time.perf_counter() - start

    def remove_checkpoint(self, path: str | Path) -> None:
        self._queue(self._remove, Path(path))

    def keep_as(self, source: Path, target: Path) -> None:
        """Make ``target`` hold the same checkpoint as ``source`` without serialising it again."""
        self._queue(self._link, source, target)

    def wait(self) -> None:
        """Block until every queued write and removal is done; raise the first failure among them."""
        queued, self._queued = self._queued, []
        for job in queued:
            job.result()

    def teardown(self) -> None:
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def _queue(self, job: Callable[..., None], *args: Any) -> None:
        if not self.background:
            job(*args)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoints")
        self._queued.append(self._executor.submit(self._unless_failed, job, *args))

    def _unless_failed(self, job: Callable[..., None], *args: Any) -> None:
        # After a failed save nothing else runs: no prune may follow a checkpoint never written.
        if self._failed:
            return
        try:
            job(*args)
        except BaseException:
            self._failed = True
            raise

    def _write(self, checkpoint: dict[str, Any], path: Path) -> None:
        start = time.perf_counter()
        with _cleaning_up(path, lambda: sum(t.nbytes for t in _tensors(checkpoint))):
            path.parent.mkdir(parents=True, exist_ok=True)
            with _partial(path).open("wb") as file:
                writer = checksums.HashingWriter(file)
                torch.save(checkpoint, writer)
            _replace(_partial(path), path)
            checksums.record(path, writer.sha256.hexdigest())
        self.commit()
        self.write_seconds = time.perf_counter() - start

    def _link(self, source: Path, target: Path) -> None:
        with _cleaning_up(target, lambda: source.stat().st_size):
            _partial(target).unlink(missing_ok=True)
            try:
                os.link(source, _partial(target))  # no bytes written where hard links exist
            except OSError:
                shutil.copyfile(source, _partial(target))
            _replace(_partial(target), target)
            digest = checksums.recorded(source)
            if digest:
                checksums.record(target, digest)
        self.commit()

    def _remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        checksums.checksum_path(path).unlink(missing_ok=True)
        self.commit()


class HostCopy:
    """Copies a checkpoint into host memory that training can no longer change.

    The tensors go into the buffers of the previous save's copy (free again: at most one save
    is in flight), pinned when they come from a GPU, so after the first save a copy allocates
    nothing; dicts, lists and tuples are rebuilt (a state_dict's ``_metadata`` kept); numbers
    and strings are shared.
    """

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor] = []

    def __call__(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        spare, used = iter(self._buffers), []

        def copy_tensor(tensor: torch.Tensor) -> torch.Tensor:
            buffer = next(spare, None)
            if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
                buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=tensor.is_cuda)
            used.append(buffer.copy_(tensor.detach(), non_blocking=tensor.is_cuda))
            return buffer

        with _one_thread():
            copied = _rebuilt(checkpoint, copy_tensor)
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the non-blocking copies from the GPU have landed
        self._buffers = used
        return copied


@contextmanager
def _one_thread() -> Iterator[None]:
    """Copy on one CPU thread: a memory copy gains nothing from more, and on a busy machine it
    waits at their barriers (520 MB: 0.08–0.5 s on one thread, 0.3–2.0 s on two, plans/0017)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _rebuilt(value: Any, copy_tensor: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return copy_tensor(value)
    if isinstance(value, dict):
        rebuilt = type(value)((key, _rebuilt(item, copy_tensor)) for key, item in value.items())
        if hasattr(value, "_metadata"):  # what load_state_dict reads a module's version from
            rebuilt._metadata = copy.deepcopy(value._metadata)
        return rebuilt
    if isinstance(value, list | tuple) and not hasattr(value, "_fields"):
        return type(value)(_rebuilt(item, copy_tensor) for item in value)
    return value


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)


def _replace(partial: Path, path: Path) -> None:
    """Rename ``partial`` to ``path``, dropping the checksum of the file it replaces first (a
    file without one is accepted unverified; one with a stale one would be passed over)."""
    checksums.checksum_path(path).unlink(missing_ok=True)
    os.replace(partial, path)


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


@contextmanager
def _cleaning_up(path: Path, needed_bytes: Callable[[], int]) -> Iterator[None]:
    """Remove the half-written files of a failed write; a full disk becomes OutOfSpace."""
    try:
        yield
    except BaseException as error:
        for leftover in (_partial(path), _partial(checksums.checksum_path(path))):
            leftover.unlink(missing_ok=True)
        if not _out_of_space(error):
            raise
        free = shutil.disk_usage(path.parent).free
        raise OutOfSpace(
            f"No space left to write {path.name} in {path.parent}: a checkpoint needs about "
            f"{needed_bytes() / 1e6:,.0f} MB and {free / 1e6:,.0f} MB are free there. The "
            "checkpoints already written are intact. Free space there (or lower "
            "checkpoint.keep_last, or point run.outputs elsewhere), then run again to continue."
        ) from error


def _out_of_space(error: BaseException | None) -> bool:
    """Whether a full disk caused ``error`` (torch.save re-raises it as a RuntimeError)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            return True
        error = error.__cause__ or error.__context__
    return False
