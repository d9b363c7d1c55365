"""AttemptDeadline: a deadline that passes stops training after that step, unless the run ends
there anyway (then it is a finished run, not an attempt to continue); and the room it leaves
for what follows a step and for the last checkpoint's background write."""

from types import SimpleNamespace

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from tinycats.runs.deadline import AttemptDeadline


class PassDeadlineAtStep(L.Callback):
    """Moves the deadline into the past as step ``step`` (counted from 1) starts."""

    def __init__(self, deadline: AttemptDeadline, step: int) -> None:
        self.deadline, self.step = deadline, step

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step + 1 == self.step:
            self.deadline.end_at = 0


@pytest.mark.parametrize(
    ("limits", "passed_at", "stopped_early", "steps"),
    [
        ({"max_steps": 4}, 2, True, 2),
        ({"max_steps": 4}, 4, False, 4),  # the last step: the run finishes
        ({"max_epochs": 2, "limit_train_batches": 3}, 3, True, 3),  # an epoch's last step
        ({"max_epochs": 2, "limit_train_batches": 3}, 6, False, 6),  # the last epoch's
    ],
)
def test_the_deadline_stops_after_its_step_unless_that_step_ends_the_run(
    limits, passed_at, stopped_early, steps
) -> None:
    deadline = AttemptDeadline(end_at=float("inf"))
    trainer = L.Trainer(
        **limits,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        callbacks=[PassDeadlineAtStep(deadline, passed_at), deadline],
    )
    trainer.fit(BoringModel())
    assert trainer.global_step == steps
    assert deadline.reached is stopped_early


def steps_until_stopped(
    stretches: list[float], end_at: float, write_seconds: float = 0.0
) -> tuple[int, float]:
    """Run AttemptDeadline over step ends ``stretches`` seconds apart: where it stops."""
    clock = [0.0]
    deadline = AttemptDeadline(end_at, clock=lambda: clock[0])
    writer = SimpleNamespace(write_seconds=write_seconds)
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(broadcast=lambda value: value, checkpoint_io=writer),
        fit_loop=SimpleNamespace(max_steps=-1, max_epochs=None),
        should_stop=False,
    )
    for step, stretch in enumerate(stretches):
        clock[0] += stretch
        deadline.on_train_batch_end(trainer, None, None, None, step)
        if trainer.should_stop:
            return step, clock[0]
    return len(stretches), clock[0]


def test_the_deadline_leaves_room_for_what_follows_a_step() -> None:
    # Steps of 1 s, and a 10 s stretch at step 5 (a validation, a grid and a checkpoint): the
    # attempt must stop while one more such stretch, and the last checkpoint, still fit.
    stretches = [1.0] * 5 + [10.0] + [1.0] * 100
    step, now = steps_until_stopped(stretches, end_at=60.0)
    assert 60.0 - now >= 2 * 10.0
    assert step > 5  # and not before it had to


def test_the_deadline_leaves_room_for_the_background_write_of_the_last_checkpoint() -> None:
    # Saves stall no step (they are written in the background) but take 20 s to write and commit.
    _, now = steps_until_stopped([1.0] * 100, end_at=50.0, write_seconds=20.0)
    assert 50.0 - now >= 20.0


def test_without_long_stretches_the_deadline_stops_near_the_end() -> None:
    _, now = steps_until_stopped([1.0] * 100, end_at=50.0)
    assert 47.0 <= now <= 50.0
