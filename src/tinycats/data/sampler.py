"""Batches of indices in an order that is a pure function of (seed, epoch)."""

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochBatches(Sampler[list[int]]):
    """Index batches, shuffled anew each epoch (Lightning calls ``set_epoch``), the same on every run.

    torch's RandomSampler keeps one generator running across epochs; after a mid-epoch resume
    its later epochs come out in another order. Seeding by epoch makes a resumed run replay
    exactly the batches the uninterrupted run saw. Yielding whole batches lets the dataset
    gather a batch with one indexing operation, also when the images live on the GPU.
    """

    def __init__(self, size: int, batch_size: int, seed: int, shuffle: bool) -> None:
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        return (batch.tolist() for batch in order.split(self.batch_size))

    def __len__(self) -> int:
        return math.ceil(self.size / self.batch_size)
