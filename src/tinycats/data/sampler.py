"""A shuffling sampler whose order is a pure function of (seed, epoch)."""

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffle(Sampler[int]):
    """Shuffle anew each epoch (Lightning calls ``set_epoch``), the same way on every run.

    torch's RandomSampler keeps one generator running across epochs; after a mid-epoch resume
    its later epochs come out in another order. Seeding by epoch makes a resumed run replay
    exactly the batches the uninterrupted run saw.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size
