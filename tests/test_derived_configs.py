"""The kill harness trains what we ship: every file in configs/ has a derived config that
differs from it only in sizes, made smaller, and in what this offline machine forces."""

import pytest

from benchmarks import chaos, derived_configs
from benchmarks.derived_configs import EXTRAS, OFFLINE, SHIPPED, SHRUNK, SIZES


def test_every_shipped_config_has_a_derived_config_the_harness_runs() -> None:
    shipped = sorted(path.stem for path in SHIPPED.glob("*.yaml"))
    assert shipped == sorted(SHRUNK)
    assert set(derived_configs.names()) <= set(chaos.CONFIGS)


@pytest.mark.parametrize("name", sorted(SHRUNK))
def test_a_derived_config_only_shrinks_sizes(name: str) -> None:
    shipped, derived = derived_configs.shipped(name), derived_configs.derived(name)
    changed = derived_configs.changed_keys(shipped, derived)
    assert changed - OFFLINE.keys() <= SIZES, changed - OFFLINE.keys() - SIZES
    for key in changed & SIZES:
        before, after = (
            derived_configs.value_at(shipped, key),
            derived_configs.value_at(derived, key),
        )
        assert before is not None and 0 < after < before, (key, before, after)


@pytest.mark.parametrize("name", sorted(EXTRAS))
def test_an_extra_case_adds_only_what_it_names(name: str) -> None:
    base, extra = EXTRAS[name]
    changed = derived_configs.changed_keys(
        derived_configs.derived(base), derived_configs.derived(name)
    )
    assert changed == set(extra)
