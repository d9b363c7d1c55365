"""The ledger: what each attempt of a run cost, and what of it was useful training.

Every attempt (a ``tinycats fit`` process, a Modal container) keeps one JSON record in the
run's ``ledger/`` folder, rewritten atomically as it goes: when it started, the seconds spent
starting up, training, validating, between steps (sample grids) and waiting for checkpoint
saves, the steps it resumed from and reached, and how it ended. An attempt killed without a
word leaves its last record with no end: its time up to that record is paid, and the steps it
trained past the checkpoint the next attempt resumed from are lost work.

    goodput = productive training time / paid time

Productive training time is training time less the time of steps that were trained again.
This module is plain Python (no torch): the Modal launch side and ``tinycats runs`` read it.
"""

import itertools
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tinycats.atomic import write_atomically
from tinycats.runs.run_dir import LEDGER

TRACKED_SAVES = 16  # the newest checkpoints an attempt's record keeps its training time at
STALE_S = 120.0  # a newer record than this says the attempt is alive (volumes commit every few s)

# What a launcher (the Modal layer) tells the attempt it starts, through the environment, so
# that a DDP subprocess sees it too.
STARTED_ENV = "TINYCATS_ATTEMPT_STARTED"  # Unix time the attempt (container) started
GPU_ENV = "TINYCATS_ATTEMPT_GPU"  # e.g. "L4" or "H100:4"; empty locally
PRICE_ENV = "TINYCATS_ATTEMPT_USD_PER_HOUR"  # the attempt's price per hour, all GPUs together


def attempt_environment(started: float, gpu: str, usd_per_hour: float | None) -> dict[str, str]:
    """What a launcher puts in the environment of the attempt it starts."""
    price = "" if usd_per_hour is None else str(usd_per_hour)
    return {STARTED_ENV: repr(started), GPU_ENV: gpu, PRICE_ENV: price}


@dataclass
class Attempt:
    """One attempt's record. Times are Unix seconds; durations are seconds."""

    started: float
    updated: float
    ended: float | None = None
    outcome: str = "training"  # until it ends: finished, continue, interrupted, failed, refused
    gpu: str = ""
    usd_per_hour: float | None = None
    startup_s: float = 0.0  # attempt start → first training step
    training_s: float = 0.0  # inside training steps
    validation_s: float = 0.0
    between_steps_s: float = 0.0  # sample grids, logging: between steps, outside the rest
    checkpoint_stall_s: float = 0.0  # the training thread waiting for checkpoint saves
    resumed_from: int | None = None  # global step training started at (None: never got there)
    reached: int | None = None  # global step last trained
    total_steps: int | None = None  # the run's planned steps, when known
    # [global step, this attempt's training seconds then] at each of its newest checkpoints (at
    # most TRACKED_SAVES): the next attempt resumes from one, so the time of the steps it trains
    # again is known exactly, not as a mean.
    saves: list[list[float]] = field(default_factory=list)
    command: str = ""  # the command line and folder it ran in (a pending record is matched by them)
    cwd: str = ""

    @property
    def paid_s(self) -> float:
        return (self.ended or self.updated) - self.started

    @property
    def steps(self) -> int:
        return 0 if self.resumed_from is None else self.reached - self.resumed_from

    @property
    def step_s(self) -> float:
        """Mean seconds of one training step in this attempt."""
        return self.training_s / self.steps if self.steps > 0 else 0.0

    def training_s_after(self, step: int) -> float:
        """Training seconds this attempt spent on the steps after global step ``step``."""
        if self.resumed_from is None or step >= self.reached:
            return 0.0
        if step <= self.resumed_from:
            return self.training_s
        saved = {int(saved_step): seconds for saved_step, seconds in self.saves}
        if step in saved:
            return self.training_s - saved[step]
        return (self.reached - step) * self.step_s  # no save recorded there: at its mean step time

    @property
    def cost_usd(self) -> float | None:
        if self.usd_per_hour is None:
            return None
        return self.paid_s / 3600 * self.usd_per_hour

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Attempt":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass
class Ledger:
    """The attempts of one run, oldest first, and what they add up to."""

    attempts: list[Attempt] = field(default_factory=list)

    @property
    def paid_s(self) -> float:
        return sum(attempt.paid_s for attempt in self.attempts)

    def outcomes(self) -> list[str]:
        """How each attempt ended; one with no end that a later attempt followed was killed."""
        newest = len(self.attempts) - 1
        return [
            "killed" if attempt.ended is None and i < newest else attempt.outcome
            for i, attempt in enumerate(self.attempts)
        ]

    def lost(self) -> list[tuple[int, float]]:
        """Per attempt, the steps it trained that the next attempt trained again, and their seconds."""
        trained = [a for a in self.attempts if a.resumed_from is not None]
        next_start = {id(a): b.resumed_from for a, b in itertools.pairwise(trained)}
        return [
            (max(0, a.reached - next_start[id(a)]), a.training_s_after(next_start[id(a)]))
            if id(a) in next_start
            else (0, 0.0)
            for a in self.attempts
        ]

    @property
    def productive_s(self) -> float:
        return sum(a.training_s for a in self.attempts) - sum(s for _, s in self.lost())

    @property
    def goodput(self) -> float | None:
        return self.productive_s / self.paid_s if self.paid_s > 0 else None

    @property
    def cost_usd(self) -> float | None:
        costs = [attempt.cost_usd for attempt in self.attempts]
        return None if all(cost is None for cost in costs) else sum(c or 0.0 for c in costs)

    def summary(self) -> dict[str, Any]:
        """The figures a run's summary, its end message and ``tinycats runs`` show."""
        lost = self.lost()
        return {
            "attempts": len(self.attempts),
            "paid_s": round(self.paid_s, 1),
            "productive_s": round(self.productive_s, 1),
            "goodput": None if self.goodput is None else round(self.goodput, 4),
            "lost_steps": sum(steps for steps, _ in lost),
            "lost_s": round(sum(seconds for _, seconds in lost), 1),
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 4),
        }


def read_ledger(run_dir: Path) -> Ledger:
    """A run's ledger; an unreadable record (cut short by a kill) is left out."""
    attempts = []
    for path in sorted((Path(run_dir) / LEDGER).glob("*.json")):
        try:
            attempts.append(Attempt.from_json(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return Ledger(sorted(attempts, key=lambda attempt: attempt.started))


def write_attempt(run_dir: Path, attempt: Attempt) -> None:
    """Write an attempt's record into the run's ledger (the keeper of a live one rewrites it)."""
    write_record(Path(run_dir) / LEDGER / record_name(attempt), record_text(attempt))


def record_name(attempt: Attempt) -> str:
    return f"{attempt.started:017.6f}.json"


def record_text(attempt: Attempt) -> str:
    return json.dumps(asdict(attempt), sort_keys=True)


def write_record(path: Path, text: str) -> None:
    """Write a record atomically: a kill leaves the previous version whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda partial: partial.write_text(text))


def state_of(ledger: Ledger, finished: bool, now: float | None = None) -> str:
    """What a run is doing: finished, refused, training, or waiting for a retry."""
    if finished:
        return "finished"
    if not ledger.attempts:
        return "not started"
    newest = ledger.attempts[-1]
    if newest.outcome == "refused":
        return "refused"
    fresh = (now or time.time()) - newest.updated < STALE_S
    if newest.ended is None and fresh:
        return "training"
    return "waiting for a retry" if newest.outcome != "continue" else "continuing"


def format_duration(seconds: float) -> str:
    """``1 h 02 min``, ``3 min 05 s`` or ``42 s``."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def describe(figures: dict[str, Any]) -> str:
    """One line for logs and end-of-run messages: goodput, lost work, paid time and cost."""
    goodput = figures["goodput"]
    parts = [
        f"goodput {goodput:.1%}" if goodput is not None else "goodput n/a",
        f"{figures['attempts']} attempt(s)",
        f"{figures['lost_steps']} step(s) redone ({format_duration(figures['lost_s'])})",
        f"{format_duration(figures['paid_s'])} paid",
    ]
    if figures["cost_usd"] is not None:
        parts.append(f"${figures['cost_usd']:.2f}")
    return ", ".join(parts)


def table(rows: Iterable[dict[str, Any]]) -> str:
    """Rows of ``tinycats runs`` as an aligned text table."""
    rows = list(rows)
    if not rows:
        return "No runs found."
    columns = list(rows[0])
    cells = [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)
