"""The learning-rate schedule both models train with: linear warm-up, then a cosine decay."""

import itertools

import pytest
import torch

from tinycats.models.optim import warmup_cosine


def _learning_rates(total: int, warmup_fraction: float, final: float) -> list[float]:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = warmup_cosine(optimizer, total, warmup_fraction, final_lr_fraction=final)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return [*rates, optimizer.param_groups[0]["lr"]]


def test_warms_up_linearly_then_decays_by_a_cosine_to_the_final_fraction() -> None:
    rates = _learning_rates(total=100, warmup_fraction=0.1, final=0.01)
    assert rates[:11] == pytest.approx([(step + 1) / 11 for step in range(10)] + [1.0])
    assert rates[55] == pytest.approx(0.01 + 0.99 * 0.5, abs=1e-6)  # halfway down the cosine
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    assert rates[-1] == pytest.approx(0.01)


def test_without_warm_up_the_cosine_starts_at_the_peak() -> None:
    rates = _learning_rates(total=20, warmup_fraction=0.0, final=0.1)
    assert rates[0] == 1.0 and rates[-1] == pytest.approx(0.1)
