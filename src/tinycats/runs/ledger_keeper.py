"""RecordKeeper: one attempt's ledger record, on disk from its process's start to its exit.

``tinycats fit`` knows its run only once Lightning is imported and the config parsed, seconds in
which a kill would leave no trace. So the program opens the record at once, pending, in a folder
of this machine (``pending_folder``); when the run is known the AttemptClock moves it into the
run's ledger and takes along the records that earlier attempts of the same command, in the same
folder, left pending when they were killed. A launcher that knows the run (the Modal attempt)
opens the record in the run's ledger itself, and names that folder to a subprocess in
``LEDGER_ENV``.

A heartbeat thread rewrites the record every ``HEARTBEAT_S`` s: a killed attempt was paid up to
its last beat. One that ended is paid until its last exit handler (plans/0018-ledger.md).
This module is plain Python (no torch): the program and the Modal launch side use it first.
"""

import atexit
import contextlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from tinycats.errors import EXIT_CONTINUE, EXIT_INTERRUPTED, EXIT_USAGE
from tinycats.runs import ledger
from tinycats.runs.run_dir import LEDGER

HEARTBEAT_S = 0.25  # a record is a few hundred bytes: rewriting it costs well under a millisecond
LEDGER_ENV = "TINYCATS_ATTEMPT_LEDGER"  # the run's ledger folder, from a launcher that knows it

_current: "RecordKeeper | None" = None  # the record this process keeps, until it is closed
# How an attempt ended, from the status its process exits with when nothing closed it before.
OUTCOME_OF_STATUS = {
    0: "finished",
    EXIT_USAGE: "refused",
    EXIT_CONTINUE: "continue",
    EXIT_INTERRUPTED: "interrupted",
}


class RecordKeeper:
    """Keeps ``record`` as ``<folder>/<name>`` (``folder`` None: in memory only) and beats."""

    def __init__(self, record: ledger.Attempt, folder: Path | None, name: str = "") -> None:
        self.record = record
        self.lock = threading.Lock()  # held by whoever changes the record
        self._writing = threading.Lock()  # one write at a time, each of the newest record
        self._folder, self._name = folder, name or ledger.record_name(record)
        self._stopped = threading.Event()
        if folder is not None:
            self._beat_once()  # on disk before the caller goes on
            threading.Thread(target=self._beat, name="ledger-heartbeat", daemon=True).start()
            atexit.register(self._at_exit)

    @property
    def path(self) -> Path | None:
        return None if self._folder is None else self._folder / self._name

    def move_to(self, run_dir: Path) -> None:
        """Go on keeping the record in ``run_dir``'s ledger, with the pending records of this
        command that were killed before they knew the run (they count as killed attempts)."""
        with self.lock:
            pending = self.path if self._folder == pending_folder() else None
            self._folder, self._name = Path(run_dir) / LEDGER, ledger.record_name(self.record)
        self.write()
        if pending is not None:
            pending.unlink(missing_ok=True)
            for orphan, record in killed_while_pending(self.record):
                ledger.write_attempt(run_dir, record)
                orphan.unlink(missing_ok=True)

    def close(self, outcome: str) -> None:
        """End the record with ``outcome``; it stays paid until the process exits."""
        global _current
        self.stop()
        with self.lock:
            self.record.ended, self.record.outcome = time.time(), outcome
        self.write()
        if _current is self:
            _current = None

    def stop(self) -> None:
        """Stop the heartbeat, the record left as it is."""
        self._stopped.set()

    def write(self, beat: bool = False) -> None:
        with self._writing:
            with self.lock:  # the training thread waits for the copy, not for the disk
                if beat and self.record.ended is None:
                    self.record.updated = time.time()
                text, path = ledger.record_text(self.record), self.path
            if path is not None:
                ledger.write_record(path, text)

    def _beat(self) -> None:
        while not self._stopped.wait(HEARTBEAT_S):
            self._beat_once()

    def _beat_once(self) -> None:
        with contextlib.suppress(OSError):  # the folder is gone or full: the next beat tries again
            self.write(beat=True)

    def _at_exit(self) -> None:
        """An attempt that ended is paid until its process exits (its summary, the loggers' and
        loaders' own exit work). A pending one that ended by itself (``--help``, a config error)
        was no attempt of a run; one stopped by Ctrl-C stays, for the next attempt to take."""
        self.stop()
        path = self.path
        if path is None or not path.parent.is_dir():  # a test's temporary run, removed
            return
        if self._folder == pending_folder():
            if self.record.ended is not None:
                path.unlink(missing_ok=True)
        elif self.record.ended is not None:
            with self.lock:
                self.record.ended = self.record.updated = time.time()
            self.write()


def open_pending(command: list[str], started: float) -> RecordKeeper:
    """Open this process's record before its run is known (the program, as it starts).

    The attempt started at ``started`` unless a launcher said when (``ledger.STARTED_ENV``); the
    program says so to what follows in the process, and to the DDP ranks it starts, the same
    way. (Not the process's start in ``/proc``: that is its fork, which a shell may have made
    long before it ran the program in the same process.)
    """
    global _current
    os.environ.setdefault(ledger.STARTED_ENV, repr(started))
    started = attempt_started()
    record = ledger.Attempt(started=started, updated=time.time(), command=" ".join(command))
    record.cwd = os.getcwd()
    if folder := os.environ.get(LEDGER_ENV):  # the launcher knows the run: there from the start
        _current = RecordKeeper(record, Path(folder))
    else:
        _current = RecordKeeper(record, pending_folder(), pending_name(os.getpid()))
    return _current


def open_in_run(
    run_dir: Path, started: float, gpu: str = "", usd_per_hour: float | None = None
) -> RecordKeeper:
    """The attempt's record in ``run_dir``'s ledger: the one this process opened before it
    trained (the program's, the launcher's), moved there, or a new one."""
    global _current
    keeper = _current
    fresh = keeper is not None and keeper.record.resumed_from is None
    if keeper is None or not fresh or keeper.record.started != started or keeper.path is None:
        record = ledger.Attempt(started, time.time(), gpu=gpu, usd_per_hour=usd_per_hour)
        keeper = RecordKeeper(record, Path(run_dir) / LEDGER)
    else:
        with keeper.lock:
            keeper.record.gpu, keeper.record.usd_per_hour = gpu, usd_per_hour
        keeper.move_to(run_dir)
    _current = keeper
    return keeper


def close_open(outcome: str) -> None:
    """End this process's record with ``outcome`` unless training ended it already."""
    if _current is not None and _current.record.ended is None:
        _current.close(outcome)


def end_of_process(status: int) -> None:
    """Close the record still open when the program exits by itself, as its exit status says
    (a run refused after its record opened, before it trained)."""
    close_open(OUTCOME_OF_STATUS.get(status, "failed"))


def hand_over() -> str:
    """Stop keeping this process's record, left open, for a subprocess to keep on (the
    launcher's DDP attempt): the folder it is in, for ``LEDGER_ENV``."""
    global _current
    keeper, _current = _current, None
    if keeper is None or keeper.path is None:
        return ""
    keeper.stop()
    return str(keeper.path.parent)


def attempt_started() -> float:
    """Unix time the attempt started, as its launcher (the program, a Modal container) said; now
    where none did (a fit called inside a process)."""
    return float(os.environ.get(ledger.STARTED_ENV) or time.time())


def pending_folder() -> Path:
    """Where records wait for their run: this machine's temporary folder, one per user."""
    return Path(tempfile.gettempdir()) / f"tinycats-{os.getuid()}" / "pending"


def pending_name(pid: int) -> str:
    """A pending record's file name: the process's id and its start in clock ticks since boot,
    which together name one process (a later one may reuse the id, not both)."""
    return f"{pid}-{start_ticks(pid) or 0}.json"


def killed_while_pending(mine: ledger.Attempt) -> list[tuple[Path, ledger.Attempt]]:
    """The pending records of the same command in the same folder whose processes are gone."""
    found = []
    for path in pending_folder().glob("*-*.json"):
        try:
            record = ledger.Attempt.from_json(json.loads(path.read_text()))
            pid, ticks = (int(part) for part in path.stem.split("-"))
        except (OSError, ValueError, TypeError):
            continue
        same = (record.command, record.cwd) == (mine.command, mine.cwd)
        if same and record.started < mine.started and not process_alive(pid, ticks):
            found.append((path, record))
    return found


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc``); None if gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int, ticks: int) -> bool:
    """Whether ``pid`` is still the process that started at ``ticks`` (not a reused id)."""
    if not Path("/proc/self/stat").exists():  # not Linux: nothing is known to be gone
        return True
    return start_ticks(pid) == ticks
