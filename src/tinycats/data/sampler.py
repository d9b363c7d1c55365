"""Batches of indices in an order that is a pure function of (seed, epoch), resumable mid-epoch."""

import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


class EpochBatches(Sampler[list[int]]):
    """Index batches, shuffled anew each epoch (Lightning calls ``set_epoch``), the same on every run.

    torch's RandomSampler keeps one generator running across epochs; after a mid-epoch resume
    its later epochs come out in another order. Seeding by epoch makes a resumed run replay
    exactly the batches the uninterrupted run saw. Yielding whole batches lets the dataset
    gather a batch with one indexing operation, also when the images live on the GPU.

    The sampler and its iterator follow torchdata's ``Stateful`` protocol: the sampler saves its
    epoch, the iterator its position. A ``StatefulDataLoader`` restoring a checkpoint builds its
    iterator before Lightning calls ``set_epoch``, so without the saved epoch a run resumed in
    epoch 1 or later would replay epoch 0's order (plans/0011-exact-resume.md).

    Under DDP each rank takes every ``world_size``-th batch, the list padded from its start to a
    multiple of ``world_size`` (as Lightning's ``DistributedSamplerWrapper`` would share it), so
    the trainer runs with ``use_distributed_sampler=False`` and this state stays in reach.
    ``limit`` ends each epoch after that many batches, where Lightning's ``limit_train_batches``
    ends it: the next epoch then starts its own order, as it does in Lightning's loop.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        shuffle: bool,
        rank: int = 0,
        world_size: int = 1,
        limit: int | None = None,
    ) -> None:
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.limit = limit
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None:  # a checkpoint from before the sampler had state
            log.warning(
                "The checkpoint does not record the sampler's epoch: a run resumed after "
                "its first epoch sees other batches than an uninterrupted run would."
            )
            return
        self.epoch = state["epoch"]

    def batches(self) -> list[list[int]]:
        """This rank's batches of indices in this epoch."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        batches = [batch.tolist() for batch in order.split(self.batch_size)]
        shared = math.ceil(len(batches) / self.world_size)
        padded = (batches * self.world_size)[: shared * self.world_size]
        return padded[self.rank :: self.world_size][: len(self)]

    def __iter__(self) -> "EpochBatchIterator":
        return EpochBatchIterator(self)

    def __len__(self) -> int:
        shared = math.ceil(math.ceil(self.size / self.batch_size) / self.world_size)
        return shared if self.limit is None else min(shared, self.limit)


class EpochBatchIterator(Iterator[list[int]]):
    """One epoch of an ``EpochBatches``, whose position is its state (restored without drawing).

    The epoch's order is drawn at its first batch, not when the iterator is made: Lightning
    makes the iterator of a run resumed between two epochs before it calls ``set_epoch``
    (plans/0011-exact-resume.md), as torch's lazy samplers allow.
    """

    def __init__(self, sampler: EpochBatches) -> None:
        self.sampler = sampler
        self.batches: list[list[int]] | None = None
        self.yielded = 0

    def __next__(self) -> list[int]:
        if self.batches is None:
            self.batches = self.sampler.batches()
        if self.yielded >= len(self.batches):
            raise StopIteration
        self.yielded += 1
        return self.batches[self.yielded - 1]

    def state_dict(self) -> dict[str, Any]:
        return {"yielded": self.yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.yielded = state["yielded"]
        self.batches = None
        if self.yielded >= len(self.sampler):
            # Saved after the epoch's last batch (a step checkpoint on it, or a stop during the
            # validation after it): Lightning counts that epoch as done and goes on with this
            # iterator, without a new iter(), so it must already be the next epoch's.
            self.sampler.set_epoch(self.sampler.epoch + 1)
            self.yielded = 0
