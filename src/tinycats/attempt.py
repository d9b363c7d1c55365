"""One attempt of a Modal training run, on the container's side, and how it ends.

An attempt finds its run by name, takes the run's lease (one attempt trains a run at a time),
records itself in the run's attempt record (``run_dir.ATTEMPTS``), trains with `tinycats fit`,
and ends the way Modal counts it (plans/0013-modal-outcomes.md): a returned result, a refusal
returned, a failure raised (a retry is spent), or a preemption left as a `KeyboardInterrupt`
(no retry spent).

Neither torch nor modal is imported here: `remote.py` passes in the training command, the
volumes' commits and Modal's cancellation error, so the tests import this module alone.
"""

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tinycats import launch as checks
from tinycats.atomic import no_commit, write_atomically
from tinycats.errors import (
    EXIT_CONTINUE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    TinyCatsError,
    TransientError,
)
from tinycats.runs import ledger, ledger_keeper, run_dir

Train = Callable[[list[str]], dict[str, Any]]


@dataclass(frozen=True)
class Launch:
    """What a launch asks for: the config, the overrides and which run.

    ``date`` picks one run of ``name``; empty means its newest, or a new one dated ``today``
    (the launch's date, so a retry after midnight lands in the same folder). ``start_from`` is
    a checkpoint to start from while the run has none of its own.
    """

    config_text: str
    overrides: tuple[str, ...]
    name: str
    date: str = ""
    start_from: str = ""
    today: str = ""

    def dated(self, date: str) -> "Launch":
        """The same launch, pinned to the run of ``date``."""
        return replace(self, date=date)


@dataclass(frozen=True)
class Storage:
    """Where a run writes (outputs) and reads (data), and how each write is made durable."""

    outputs: str
    data: str
    commit_outputs: Callable[[], None]
    commit_data: Callable[[], None]


@dataclass(frozen=True)
class Container:
    """What the attempt's container is: its storage, GPU string, GPU count and time limit."""

    storage: Storage
    gpu: str
    gpus: int
    timeout_s: int
    started: float = 0.0  # Unix time the container started: the attempt is paid from then
    preemption_minutes: int = 0  # assumed mean time between preemptions (0: config's cadence)

    @classmethod
    def of(
        cls, storage: Storage, settings: checks.Settings, gpus: int, started: float
    ) -> "Container":
        """The container a Runner with these launch settings is."""
        return cls(
            storage, settings.gpu, gpus, settings.timeout_s, started, settings.preemption_minutes
        )


# ## Finding the run


def run_folder(launch: Launch, outputs: str) -> Path:
    """The folder of the launch's run: of its date, else the newest run of its name (the one
    holding the newest checkpoint; else its latest date, not checkpointed yet), else today's."""
    import yaml  # here: the client imports this module, and needs PyYAML only for the checks

    config = yaml.safe_load(launch.config_text)
    model = checks.override_value(list(launch.overrides), "--run.model")
    model = model or (config.get("run") or {}).get("model")
    runs = run_dir.model_runs(outputs, model or run_dir.model_group(config["model"]["class_path"]))
    if launch.date:
        return runs / launch.date / launch.name
    named = run_dir.dated_runs(runs, launch.name)
    newest = run_dir.newest_run(named) or (named[-1] if named else None)
    return newest or runs / (launch.today or dt.date.today().isoformat()) / launch.name


# ## The lease: one attempt trains a run at a time
#
# Volume writes are last-write-wins, so two attempts on one run would overwrite each other's
# checkpoints. The attempt holding the run writes its lease (``run_dir.LEASE``) with a heartbeat
# every HEARTBEAT_S and commits it; another holder takes over only when the heartbeat is older
# than STALE_S (a killed attempt's lease). All retries of one `Runner.fit` call share its holder
# id, so a retry takes over its own call's lease at once.

HEARTBEAT_S = 60
STALE_S = 10 * 60


class Lease:
    """The lease of ``run`` for ``holder``, made durable by ``commit``."""

    def __init__(
        self, run: Path, holder: str, commit: Callable[[], None], clock: Callable[[], float]
    ) -> None:
        self.path, self.holder, self.commit, self.clock = (
            run_dir.RunDir(run).lease,
            holder,
            commit,
            clock,
        )

    def other_holder(self) -> str | None:
        """Who else holds the run now (a fresh heartbeat), or None."""
        try:
            held = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        fresh = self.clock() - float(held.get("heartbeat", 0)) < STALE_S
        return held.get("holder") if fresh and held.get("holder") != self.holder else None

    def beat(self) -> None:
        """Write this holder's heartbeat and commit it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lease = json.dumps({"holder": self.holder, "heartbeat": self.clock()})
        write_atomically(self.path, lambda partial: partial.write_text(lease))
        self.commit()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Beat now and every HEARTBEAT_S until the block ends, then give the lease up."""
        stop = threading.Event()

        def beating() -> None:
            while not stop.wait(HEARTBEAT_S):
                self.beat()

        self.beat()
        beater = threading.Thread(target=beating, name="tinycats-lease", daemon=True)
        beater.start()
        try:
            yield
        finally:
            stop.set()
            beater.join()
            self.path.unlink(missing_ok=True)
            self.commit()


def wait_while_held(launch: Launch, outputs: str, reload: Callable[[], None]) -> None:
    """Wait while any attempt holds the launch's run (the driver waits so, on a CPU)."""
    reload()
    while Lease(run_folder(launch, outputs), "", no_commit, time.time).other_holder():
        time.sleep(HEARTBEAT_S)
        reload()


def progress(launch: Launch, outputs: str) -> tuple:
    """What the run's checkpoints are now: a call that changed them moved the run forward."""
    run = run_folder(launch, outputs)
    return tuple(sorted((path.name, path.stat().st_mtime_ns) for path in run.glob("*.ckpt")))


# ## The attempt record (``run_dir.ATTEMPTS``): one line when an attempt starts, one when it ends
#
# The start line is committed before training, so a killed attempt is counted too.


class AttemptRecord:
    """This attempt's lines in the run's attempt record."""

    def __init__(self, run: Path, gpu: str, commit: Callable[[], None]) -> None:
        self.path, self.commit, self.id = (
            run_dir.RunDir(run).attempts,
            commit,
            uuid.uuid4().hex[:12],
        )
        self._append({"attempt": self.id, "started": _now(), "gpu": gpu})

    def end(self, outcome: str) -> None:
        """Record how the attempt ended (finished, continue, refused, preempted, failed)."""
        self._append({"attempt": self.id, "ended": _now(), "outcome": outcome})

    def _append(self, line: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as attempts:
            attempts.write(json.dumps(line) + "\n")
        self.commit()


def attempts_started(run: Path) -> int:
    """How many attempts the run has started, ended or not."""
    path = run_dir.RunDir(run).attempts
    lines = path.read_text().splitlines() if path.is_file() else []
    return sum("started" in json.loads(line) for line in lines if line.strip())


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# ## The attempt


def run_attempt(
    launch: Launch,
    holder: str,
    box: Container,
    train: Train,
    cancelled: type[BaseException],
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Train one attempt of the launch's run and return its result, or raise as Modal counts.

    Returns ``status`` finished, continue, refused or busy (another attempt holds the run).
    A preemption or a stop by signal leaves as ``KeyboardInterrupt`` (Modal retries it without
    spending a retry), ``modal app stop`` as ``cancelled``, after a checkpoint; anything else a
    retry may fix is raised.
    """
    end_at = clock() + checks.attempt_end_s(box.timeout_s)
    tail, record, seen = StderrTail(sys.stderr), None, Signals()
    try:
        with contextlib.redirect_stderr(tail), stop_signals_seen(seen):
            run = run_folder(launch, box.storage.outputs)
            lease = Lease(run, holder, box.storage.commit_outputs, clock)
            if other := lease.other_holder():
                return refuse_busy(run, other)
            record = AttemptRecord(run, box.gpu, box.storage.commit_outputs)
            price, started = checks.gpu_dollars_per_hour(box.gpu), box.started or clock()
            os.environ.update(ledger.attempt_environment(started, box.gpu, price))
            ledger_keeper.open_in_run(run, started, box.gpu, price)  # paid from the start
            with lease.held():
                summary = train_run(launch, run, box, end_at, train)
    except BaseException as failure:
        refusal = refusal_for(failure, tail.text)
        preempted = stopped(failure) or seen.interrupted or seen.cancelled
        outcome = "refused" if refusal else "preempted" if preempted else "failed"
        if record is not None:
            record.end(outcome)
        ledger_keeper.close_open("interrupted" if outcome == "preempted" else outcome)
        if refusal is not None:
            return refuse(refusal)
        said = f"{type(failure).__name__}: {failure}"
        if outcome == "preempted":
            say(f"this attempt was stopped ({said}); Modal runs it again, spending no retry")
            raise (cancelled() if seen.cancelled else KeyboardInterrupt()) from failure
        say(f"this attempt failed ({said}). Modal retries it, from the last checkpoint.")
        raise
    record.end(summary["status"])
    return with_run_facts(summary, run)


def train_run(launch: Launch, run: Path, box: Container, end_at: float, train: Train) -> dict:
    """Run `tinycats fit` on the run for this attempt, ending by ``end_at``; its summary."""
    # A start checkpoint is only for a run that has none of its own: a retry continues.
    resume = "auto"
    if launch.start_from and not any(run.glob("*.ckpt")):
        resume = str(Path(box.storage.outputs) / launch.start_from)  # absolute stays absolute
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "launch.yaml"
        config.write_text(launch.config_text)
        args = [
            *("fit", "-c", str(config), *cadence(launch, box.preemption_minutes)),
            *launch.overrides,
            *("--resume", resume, "--ckpt_path=null"),
            *("--run.outputs", box.storage.outputs, "--run.name", run.name),
            *("--run.date", run.parent.name, "--data.root", box.storage.data),
            *("--stop_at", str(end_at)),
        ]
        if box.gpus > 1:
            return fit_in_subprocess(args, run, box.storage)
        return train(args)


def cadence(launch: Launch, preemption_minutes: int) -> list[str]:
    """The Young–Daly checkpoint cadence on Modal, unless the run sets a time cadence itself."""
    own = ("every_minutes", "mean_minutes_between_preemptions")
    text = launch.config_text + " ".join(launch.overrides)
    if not preemption_minutes or any(key in text for key in own):
        return []
    return [f"--checkpoint.mean_minutes_between_preemptions={preemption_minutes}"]


def stopped(failure: BaseException) -> bool:
    """Whether ``failure`` is a stop by signal (the CLI's exit after a clean stop, or an interrupt)."""
    return isinstance(failure, KeyboardInterrupt) or (
        isinstance(failure, SystemExit) and failure.code == EXIT_INTERRUPTED
    )


@dataclass
class Signals:
    """Which stop signals reached this attempt: a preemption (SIGINT) or `modal app stop`."""

    interrupted: bool = False
    cancelled: bool = False


@contextlib.contextmanager
def stop_signals_seen(seen: Signals) -> Iterator[None]:
    """Note the stop signals of this attempt. Modal's cancellation (SIGUSR1) becomes the
    preemption signal (SIGINT), which the checkpoint callback answers with a stop at a step and
    last.ckpt; a SIGINT outside training (Lightning then exits 1) still ends as a preemption."""

    def interrupted(signum: int, frame: Any) -> None:
        seen.interrupted = True
        raise KeyboardInterrupt

    def cancelled(signum: int, frame: Any) -> None:
        seen.cancelled = True
        os.kill(os.getpid(), signal.SIGINT)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1)}
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGUSR1, cancelled)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def refusal_for(failure: BaseException, stderr: str) -> str | None:
    """Why ``failure`` would happen again on every retry, or None when a retry may fix it."""
    if isinstance(failure, SystemExit) and failure.code in (0, None):
        return (
            "the tinycats command printed and exited without training (--help or "
            "--print_config); run it locally: tinycats fit -c CONFIG --print_config"
        )
    if isinstance(failure, SystemExit) and failure.code == EXIT_USAGE:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        first = max((i for i, line in enumerate(lines) if "error:" in line), default=len(lines))
        said = " ".join(lines[first : first + 4]) or "its message is in the log above"
        return (
            f"the tinycats command rejected the config or the overrides: {said} "
            "(`tinycats fit --help` lists the options)"
        )
    if isinstance(failure, TinyCatsError) and not isinstance(failure, TransientError):
        return str(failure)  # a config error, a missing file the user named, out of memory
    return None


def refuse(error: str) -> dict[str, Any]:
    """Say loudly in the container's log that a call is refused, and return the refusal."""
    say(f"REFUSED, not retried: {error}", loud=True)
    return {"status": "refused", "error": error}


def refuse_busy(run: Path, holder: str) -> dict[str, Any]:
    """The result of an attempt that found the run held by another live attempt."""
    say(f"{run} is being trained by attempt {holder}; this one leaves it alone", loud=True)
    return {"status": "busy", "error": f"{run} is held by {holder}", "run_dir": str(run)}


def say(message: str, loud: bool = False) -> None:
    """Print a message for the container's log (standard error)."""
    line = f"tinycats: {message}"
    print(f"\n{'=' * 78}\n{line}\n{'=' * 78}" if loud else line, file=sys.stderr, flush=True)


def with_run_facts(summary: dict[str, Any], run: Path) -> dict[str, Any]:
    """The summary, with the attempts taken and what the run's folder holds (for fetching)."""
    files = [path for path in run.rglob("*") if path.is_file() and path.name != run_dir.LEASE]
    return {
        **summary,
        "attempts": attempts_started(run),
        "run_bytes": sum(path.stat().st_size for path in files),
        "run_files": sorted({path.relative_to(run).parts[0] for path in files}),
    }


class StderrTail:
    """Standard error that also keeps its last few thousand characters, to quote in a refusal."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.text = stream, ""

    def write(self, text: str) -> int:
        self.text = (self.text + text)[-4000:]
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding: the real stream's
        return getattr(self.stream, name)


def warm_up_cuda(torch: Any) -> None:
    """Create the CUDA context and load cuBLAS and cuDNN now, so the first step does not wait."""
    images = torch.randn(8, 3, 64, 64, device="cuda")
    conv = torch.nn.Conv2d(3, 16, kernel_size=3, padding=1).cuda()
    (conv(images).flatten(1) @ torch.ones(16 * 64 * 64, 8, device="cuda")).sum().item()
    del images, conv
    torch.cuda.empty_cache()


# ## Waiting for an attempt (the driver, on a CPU)


def await_result(call: Any, until: float, poll_s: float) -> dict[str, Any] | None:
    """The result of a spawned ``call``, ``failed`` when it raised, or None once ``until`` passed.

    `FunctionCall.get(timeout=)` raises the builtin TimeoutError while the call runs
    (`modal/_functions.py`, `poll_function`); Modal's own errors, a `FunctionTimeoutError`
    included, are not that one. A remote `SystemExit` is re-raised by the client as it was.
    """
    while time.time() < until:
        try:
            return call.get(timeout=poll_s)
        except TimeoutError:
            continue
        except (Exception, SystemExit) as err:  # the call's retries are spent
            return {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    return None


# ## Several GPUs in one container
#
# Lightning's DDP launcher starts the other ranks by re-running the current command line, which
# in a Modal container is Modal's; so the run goes through `python -m tinycats fit ...` in a
# subprocess. It cannot call this container's volume commit: Modal commits in the background,
# and this process commits once more when the subprocess exits, whatever its status. Its exit
# status says how the attempt ended; a stop by signal leaves as the single-GPU path does.


def fit_in_subprocess(args: list[str], run: Path, storage: Storage) -> dict[str, Any]:
    """Run `python -m tinycats` with ``args`` in a subprocess and return the run's summary."""
    # The child must import the same tinycats as this process, wherever the image put it.
    package_root = str(Path(sys.modules["tinycats"].__file__).parent.parent)
    paths = [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    env[ledger_keeper.LEDGER_ENV] = ledger_keeper.hand_over()  # the child keeps the record on
    child = subprocess.Popen([sys.executable, "-m", "tinycats", *args], env=env)
    try:
        returncode = child.wait()
    except KeyboardInterrupt:  # Modal's preemption signal: let rank 0 stop at a checkpoint
        child.terminate()
        child.wait(timeout=25)  # within Modal's 30 s grace period
        raise
    finally:
        storage.commit_outputs()
        storage.commit_data()
    if returncode == EXIT_USAGE:
        raise SystemExit(EXIT_USAGE)  # refused; the child printed why
    if returncode == EXIT_INTERRUPTED:
        raise SystemExit(EXIT_INTERRUPTED)  # stopped by a signal at a checkpoint
    if returncode == EXIT_CONTINUE:
        return {"status": "continue", "run_dir": str(run)}
    if returncode != 0:
        raise RuntimeError(f"`tinycats fit` exited with status {returncode}; Modal retries it.")
    return json.loads(run_dir.RunDir(run).summary_path.read_text())
