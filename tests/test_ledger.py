"""The ledger: paid time, lost work and goodput per run, and the ``tinycats runs`` table."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tinycats.cli import run_cli
from tinycats.commands.runs import run_row
from tinycats.errors import TinyCatsError
from tinycats.runs import ledger
from tinycats.runs.attempt_clock import AttemptClock
from tinycats.runs.run_dir import LEDGER, RunDir, all_runs

REPO = Path(__file__).resolve().parents[1]


def attempt(started, paid, resumed_from, reached, training_s, ended=True, **kw):
    end = started + paid
    return ledger.Attempt(
        started=started,
        updated=end,
        ended=end if ended else None,
        resumed_from=resumed_from,
        reached=reached,
        training_s=training_s,
        **kw,
    )


def test_an_attempt_killed_without_a_word_is_paid_and_its_unsaved_steps_are_lost():
    book = ledger.Ledger(
        [
            attempt(0, 100, 0, 50, training_s=80, ended=False),  # killed at step 50
            attempt(200, 60, 40, 80, training_s=40, outcome="finished"),  # resumed from 40
        ]
    )
    assert book.outcomes() == ["killed", "finished"]
    assert [steps for steps, _ in book.lost()] == [10, 0]
    assert book.paid_s == 160
    # 10 of the first attempt's 50 steps (1.6 s each) were trained again: 16 s not productive.
    assert book.productive_s == pytest.approx(80 - 16 + 40)
    assert book.goodput == pytest.approx(104 / 160)
    assert book.summary()["lost_s"] == pytest.approx(16.0)


def test_redone_steps_cost_their_own_measured_time_not_the_mean():
    # 40 steps of 1 s saved at steps 20 and 40, then 10 slow ones of 3 s: the 10 steps redone
    # from the save at 40 lost 30 s, not 10 x 1.4 s.
    killed = attempt(0, 80, 0, 50, training_s=70, ended=False, saves=[[20, 20.0], [40, 40.0]])
    book = ledger.Ledger([killed, attempt(100, 10, 40, 41, training_s=1)])
    assert book.lost() == [(10, pytest.approx(30.0)), (0, 0.0)]
    assert book.productive_s == pytest.approx(70 - 30 + 1)
    # Resumed from a step it has no save of: the steps after it at the attempt's mean step time.
    assert killed.training_s_after(45) == pytest.approx(5 * 70 / 50)


def test_cost_adds_each_attempts_paid_hours_at_its_own_price():
    book = ledger.Ledger(
        [
            attempt(0, 3600, 0, 10, 3000, usd_per_hour=0.8),
            attempt(4000, 1800, 10, 20, 1500, usd_per_hour=4.0),
        ]
    )
    assert book.cost_usd == pytest.approx(0.8 + 2.0)
    assert ledger.Ledger([attempt(0, 10, 0, 1, 5)]).cost_usd is None  # local: no price


def test_records_survive_a_round_trip_and_a_torn_record_is_skipped(tmp_path):
    first = attempt(1.5, 10, 0, 4, 8, gpu="L4", usd_per_hour=0.8)
    ledger.write_attempt(tmp_path, first)
    (tmp_path / LEDGER / "0000000000.000000.json").write_text('{"started": 0.0, "upd')
    assert ledger.read_ledger(tmp_path).attempts == [first]


@pytest.mark.parametrize(
    ("newest", "finished", "state"),
    [
        (dict(ended=False), False, "training"),
        (dict(ended=False, stale=True), False, "waiting for a retry"),
        (dict(outcome="interrupted"), False, "waiting for a retry"),
        (dict(outcome="refused"), False, "refused"),
        (dict(outcome="continue"), False, "continuing"),
        (dict(outcome="finished"), True, "finished"),
    ],
)
def test_the_state_a_run_is_in(tmp_path, newest, finished, state):
    stale = newest.pop("stale", False)
    now = time.time() - (ledger.STALE_S + 1 if stale else 0)
    run = tmp_path / "checkpoints/classifier/2026-01-01/a"
    ledger.write_attempt(run, attempt(now - 50, 40, 0, 8, 30, **newest))
    if finished:
        RunDir(run).write_summary({"global_step": 8})
    row = run_row(RunDir(run), tmp_path)
    assert row["state"] == state
    assert row["run"] == "classifier/2026-01-01/a"


@pytest.mark.slow
def test_a_run_killed_and_resumed_accounts_for_both_attempts(tmp_path):
    """The real CLI: SIGKILL after a checkpoint, then a rerun; the ledger holds both attempts."""
    args = [sys.executable, "-m", "tinycats", "fit", "-c", "tests/configs/classifier_tiny.yaml"]
    args += [f"--run.outputs={tmp_path}", "--trainer.max_steps=16", "--run.name=kill"]
    run = tmp_path / "checkpoints/classifier"
    first = subprocess.Popen(args, cwd=REPO, start_new_session=True)
    while not list(run.glob("*/kill/step=00000006.ckpt")):
        assert first.poll() is None, "the run ended before its third checkpoint"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    subprocess.run(args, cwd=REPO, check=True, capture_output=True)
    run_dir = next(run.glob("*/kill"))
    book = ledger.read_ledger(run_dir)
    assert book.outcomes() == ["killed", "finished"]
    assert book.attempts[1].resumed_from >= 6
    killed, resumed = book.attempts
    assert book.lost()[0][0] == max(0, killed.reached - resumed.resumed_from)
    assert resumed.resumed_from in [step for step, _ in killed.saves]  # its time is exact
    assert killed.paid_s > 0 and killed.training_s > 0
    assert 0 < book.goodput < 1
    assert RunDir(run_dir).summary()["ledger"]["attempts"] == 2


def test_the_estimate_says_the_time_left_and_the_whole_runs_cost(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(ledger.PRICE_ENV, "3.6")  # a dollar per 1,000 s
    started = time.time() - 110
    monkeypatch.setenv(ledger.STARTED_ENV, str(started))
    clock = AttemptClock(tmp_path, estimate_every_s=0)
    clock.close("finished")  # stops the heartbeat: the test sets the record
    clock.keeper.record = attempt(
        started, 110, 0, 20, 50, total_steps=120, startup_s=10, usd_per_hour=3.6
    )
    trainer = SimpleNamespace(is_global_zero=True)
    with caplog.at_level(logging.INFO, logger="tinycats"):
        clock._maybe_estimate(trainer)
    # 100 s for 20 steps after start-up: 100 steps left take 500 s; 110 + 500 s at $3.6/h.
    assert "Step 20 of 120" in caplog.text
    assert "about 8 min 20 s left" in caplog.text
    assert "the whole run ≈ $0.61" in caplog.text


def test_a_config_refused_at_start_closes_its_attempt_as_refused(tmp_path):
    with pytest.raises(TinyCatsError):
        run_cli(
            [
                "fit",
                "-c",
                str(REPO / "tests/configs/classifier_tiny.yaml"),
                f"--run.outputs={tmp_path}",
                "--model.init_args.backbone=resnet_unknown",
            ]
        )
    (run,) = all_runs(tmp_path)
    assert ledger.read_ledger(run.path).outcomes() == ["refused"]
    assert run_row(run, tmp_path)["state"] == "refused"
