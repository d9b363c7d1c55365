"""A seeded, stratified train/val/test split that is identical on every run and retry."""

import torch


def stratified_split(
    targets: list[int] | tuple[int, ...], fractions: tuple[float, float, float], seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Split indices per class by ``fractions`` (train, val, test); every class with at least
    three images gets at least one validation and one test image."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(targets):
        by_class.setdefault(target, []).append(index)
    train, val, test = [], [], []
    for target in sorted(by_class):
        members = by_class[target]
        order = [members[i] for i in torch.randperm(len(members), generator=generator)]
        n_val, n_test = (_share(len(order), fraction) for fraction in fractions[1:])
        val += order[:n_val]
        test += order[n_val : n_val + n_test]
        train += order[n_val + n_test :]
    return sorted(train), sorted(val), sorted(test)


def _share(count: int, fraction: float) -> int:
    """How many of ``count`` items a held-out fraction gets (at least one when there are three)."""
    share = round(count * fraction)
    return max(share, 1) if fraction > 0 and count >= 3 else share
