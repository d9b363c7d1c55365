"""One Modal attempt's own rules (src/tinycats/attempt.py, torch- and Modal-free): the run's
folder, the lease, the attempt record and the checkpoint cadence, quickly and without training.
How an attempt ends under Modal's own code is in test_modal_outcomes.py."""

import os

from tinycats import attempt
from tinycats.attempt import Launch

# A config whose run folder is known without importing a model: run.model names it.
CONFIG = "run: {model: classifier}\nmodel: {class_path: tinycats.models.CatClassifier}\n"
RUN_DATE = "2026-01-02"


def no_op() -> None:
    pass


def test_a_launch_without_a_date_continues_the_newest_run_of_its_name(tmp_path) -> None:
    runs = tmp_path / "checkpoints/classifier"
    for date in ("2026-01-02", "2026-01-03", "2025-12-31"):
        (runs / date / "tiny").mkdir(parents=True)
    (runs / "2026-01-04" / "other").mkdir(parents=True)
    undated = Launch(CONFIG, (), "tiny", "", "", "2026-01-09")
    assert attempt.run_folder(undated, str(tmp_path)) == runs / "2026-01-03/tiny"
    assert attempt.run_folder(undated.dated(RUN_DATE), str(tmp_path)) == runs / RUN_DATE / "tiny"
    new = Launch(CONFIG, (), "new", "", "", "2026-01-09")
    assert attempt.run_folder(new, str(tmp_path)) == runs / "2026-01-09/new"


def test_the_newest_run_of_a_name_is_the_one_holding_the_newest_checkpoint(tmp_path) -> None:
    runs = tmp_path / "checkpoints/classifier"
    for date, mtime_s in (("2026-01-02", 200), ("2026-01-03", 100)):
        checkpoint = runs / date / "tiny" / "step=00000002.ckpt"
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(b"ckpt")
        os.utime(checkpoint, ns=(mtime_s * 10**9, mtime_s * 10**9))
    (runs / "2026-01-04" / "tiny").mkdir(parents=True)  # begun later, never checkpointed
    undated = Launch(CONFIG, (), "tiny", "", "", "2026-01-09")
    assert attempt.run_folder(undated, str(tmp_path)) == runs / "2026-01-02/tiny"


def test_a_held_run_is_left_alone_until_its_heartbeat_is_stale(tmp_path) -> None:
    run, clock = tmp_path / "run", [0.0]
    mine = attempt.Lease(run, "call-1", no_op, lambda: clock[0])
    mine.beat()
    theirs = attempt.Lease(run, "call-2", no_op, lambda: clock[0])
    assert theirs.other_holder() == "call-1" and mine.other_holder() is None
    clock[0] = attempt.STALE_S - 1
    assert theirs.other_holder() == "call-1"
    clock[0] = attempt.STALE_S  # a killed attempt's lease: taken over
    assert theirs.other_holder() is None


def test_a_killed_attempt_is_counted(tmp_path) -> None:
    run = tmp_path / "run"
    attempt.AttemptRecord(run, "L4", no_op).end("failed")
    attempt.AttemptRecord(run, "L4", no_op)  # killed: started, never ended
    assert attempt.attempts_started(run) == 2


def test_on_modal_the_checkpoint_cadence_follows_young_daly_unless_the_run_sets_one() -> None:
    job = Launch(CONFIG, (), "tiny", RUN_DATE)
    assert attempt.cadence(job, 360) == ["--checkpoint.mean_minutes_between_preemptions=360"]
    assert attempt.cadence(job, 0) == []
    timed = Launch(CONFIG, ("--checkpoint.every_minutes=30",), "tiny", RUN_DATE)
    assert attempt.cadence(timed, 360) == []
    configured = Launch(CONFIG + "checkpoint: {every_minutes: 30}\n", (), "tiny", RUN_DATE)
    assert attempt.cadence(configured, 360) == []
