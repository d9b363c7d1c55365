"""The attempt's ledger record exists from its process's start: pending until the run is known,
then in the run's ledger with the pending records of the same command that were killed."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tinycats.runs import ledger, ledger_keeper

REPO = Path(__file__).resolve().parents[1]
COMMAND = ["tinycats", "fit", "-c", "configs/classifier_sample.yaml"]


@pytest.fixture
def pending(tmp_path, monkeypatch) -> Path:
    """This test's own pending folder (conftest.py keeps each test's record to itself)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.chdir(tmp_path)
    return ledger_keeper.pending_folder()


def left_pending(folder: Path, pid: int, started: float, command: list[str]) -> None:
    record = ledger.Attempt(started, started + 2, command=" ".join(command), cwd=os.getcwd())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ledger_keeper.pending_name(pid)).write_text(json.dumps(record.__dict__))


def test_a_run_takes_the_pending_records_of_its_command_killed_before_they_knew_it(
    pending, tmp_path
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    now = time.time()
    left_pending(pending, dead.pid, now - 30, COMMAND)  # killed while importing
    left_pending(pending, 1, now - 20, [*COMMAND, "--seed_everything=1"])  # another command
    left_pending(pending, alive.pid, now - 10, COMMAND)
    try:
        keeper = ledger_keeper.open_pending(COMMAND, now)
        assert keeper.path.parent == pending
        run = tmp_path / "run"
        ledger_keeper.open_in_run(run, now).close("finished")
    finally:
        alive.kill()
    book = ledger.read_ledger(run)
    assert [a.started for a in book.attempts] == [now - 30, now]
    assert book.outcomes() == ["killed", "finished"]
    assert book.attempts[0].paid_s == pytest.approx(2)
    # Its own record moved; the other command's and the live one's stay.
    left = sorted(p.name for p in pending.glob("*.json"))
    assert left == sorted(ledger_keeper.pending_name(pid) for pid in (1, alive.pid))


def test_a_pending_record_of_a_process_that_exits_by_itself_is_removed(pending) -> None:
    keeper = ledger_keeper.open_pending(COMMAND, time.time())
    assert keeper.path.is_file()
    ledger_keeper.end_of_process(2)  # `tinycats fit --help`, a config error: no attempt of a run
    keeper._at_exit()
    assert not keeper.path.exists()


def test_a_pending_record_of_a_process_stopped_by_ctrl_c_stays_for_the_next_attempt(
    pending,
) -> None:
    keeper = ledger_keeper.open_pending(COMMAND, time.time())
    keeper._at_exit()  # a KeyboardInterrupt while importing: the program closes nothing
    assert keeper.path.is_file()


def test_the_heartbeat_keeps_the_record_of_a_live_attempt_fresh(pending, tmp_path) -> None:
    keeper = ledger_keeper.open_in_run(tmp_path / "run", time.time() - 5)
    try:
        time.sleep(3 * ledger_keeper.HEARTBEAT_S)
        (on_disk,) = ledger.read_ledger(tmp_path / "run").attempts
        assert time.time() - on_disk.updated < 2 * ledger_keeper.HEARTBEAT_S
    finally:
        keeper.close("finished")


@pytest.mark.slow
def test_an_attempt_killed_while_it_imports_is_paid_and_a_refused_one_says_so(tmp_path) -> None:
    """The real program: SIGKILL as soon as its record exists (seconds before it knows its run),
    then the same command trains the run; run again with ``--resume never`` it is refused."""
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    command = [sys.executable, "-m", "tinycats", "fit", "-c", "configs/classifier_sample.yaml"]
    command += ["--data.image_size=32", "--trainer.max_steps=3", f"--run.outputs={tmp_path}"]
    command += ["--trainer.enable_progress_bar=false"]
    first = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
    pending = tmp_path / "tmp" / f"tinycats-{os.getuid()}" / "pending"
    while not list(pending.glob(f"{first.pid}-*.json")):
        assert first.poll() is None, "the program ended before its record existed"
        time.sleep(0.01)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    refused = subprocess.run(
        [*command, "--resume", "never"], cwd=REPO, env=env, capture_output=True
    )
    assert refused.returncode == 2

    (run,) = (tmp_path / "checkpoints").glob("*/*/*")
    book = ledger.read_ledger(run)
    assert book.outcomes() == ["killed", "finished", "refused"]
    killed = book.attempts[0]
    assert killed.resumed_from is None and killed.paid_s > 0
    assert not list(pending.glob("*.json"))
