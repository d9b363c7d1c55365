"""CI's share of the kill harness: a few randomized kills must end bit-equal (benchmarks/chaos.py)."""

import random
from pathlib import Path

import pytest

from benchmarks import chaos

pytestmark = pytest.mark.slow


def test_randomly_killed_runs_end_with_the_uninterrupted_state(pets_sample: Path, capsys) -> None:
    seed = random.randrange(2**31)
    code = chaos.main(["--quick", "--seed", str(seed), "--photos", str(pets_sample)])
    printed = capsys.readouterr().out
    assert code == 0, f"replay: python -m benchmarks.chaos --quick --seed {seed}\n{printed[-4000:]}"
