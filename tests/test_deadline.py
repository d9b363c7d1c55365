"""AttemptDeadline: a deadline that passes stops training after that step, unless the run ends
there anyway (then it is a finished run, not an attempt to continue)."""

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
