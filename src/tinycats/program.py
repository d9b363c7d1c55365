"""The ``tinycats`` program: the CLI, ended without the interpreter's teardown.

After the last exit handler, tearing down the modules that torch and Lightning import keeps the
process alive another 1–2 s, in C, where no ledger can see it (plans/0019-quick-exit.md). Locally
every command waits for it; on a GPU it is paid time after the run's last record. So the
program's first exit handler ends the process with ``os._exit``: registered before torch is
imported, it runs after every other (``atexit`` runs them last-in, first-out), once the loaders'
workers are joined, the logs flushed and the ledger's record ended.

For ``fit`` it also opens the attempt's ledger record at once, before the imports and the config
that name its run (runs/ledger_keeper.py). Only the program does this: ``tinycats.cli.main``
called in a process (tests, a Modal function) returns as any function does.
"""

import atexit
import contextlib
import os
import signal
import sys
import time


class _Status:
    """The exit status the process ends with; None: by SIGINT (an uncaught Ctrl-C)."""

    code: int | None = 1


def main() -> None:
    """Entry point of the ``tinycats`` console script and of ``python -m tinycats``."""
    started = time.time()  # the attempt's start: before this program imports anything more
    status, records = _Status(), None
    atexit.register(_exit_now, status)
    try:
        if sys.argv[1:2] == ["fit"] and "LOCAL_RANK" not in os.environ:  # not a DDP rank's
            from tinycats.runs import ledger_keeper as records

            records.open_pending(sys.argv, started)
        from tinycats import cli  # torch and Lightning register their exit handlers after ours

        cli.main()
        status.code = 0
    except SystemExit as stop:
        status.code = exit_status(stop.code)
        raise
    except KeyboardInterrupt:
        status.code = None  # ended by the signal, as Python does and a shell expects
        raise
    finally:
        if records is not None and status.code is not None:
            records.end_of_process(status.code)


def exit_status(code: object) -> int:
    """The status Python exits with for ``SystemExit(code)``."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _exit_now(status: _Status) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed, or a pipe whose reader is gone
            stream.flush()
    if status.code is None:  # as Python ends a process Ctrl-C stopped, without its teardown
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status.code or 0)
