"""Training randomness as a pure function of (seed, step, rank).

Augmentation, noise and label dropout draw from a generator seeded by the run's seed, the global
step and the process rank, so a run resumed at step k draws exactly what the uninterrupted run
drew at step k, without depending on how the global RNG was consumed before the interruption.
"""

import torch


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator that is the same for the same (seed, step, rank), on every run."""
    return torch.Generator().manual_seed(hash((seed, step, rank)) & 0x7FFF_FFFF_FFFF_FFFF)


def generator_on(device: torch.device, generator: torch.Generator) -> torch.Generator:
    """A generator on ``device`` that follows ``generator``: itself if it is already there, else
    one seeded by a draw from it, so big tensors are drawn where they are used (no CPU draw and
    copy each step) and still repeat exactly for the same (seed, step, rank)."""
    if torch.device(device) == generator.device:
        return generator
    seed = int(torch.randint(2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)
