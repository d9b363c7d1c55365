"""Training randomness as a pure function of (seed, step, rank).

Augmentation, noise and label dropout draw from a generator seeded by the run's seed, the global
step and the process rank, so a run resumed at step k draws exactly what the uninterrupted run
drew at step k, without depending on how the global RNG was consumed before the interruption.
"""

import torch


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator that is the same for the same (seed, step, rank), on every run."""
    return torch.Generator().manual_seed(hash((seed, step, rank)) & 0x7FFF_FFFF_FFFF_FFFF)
