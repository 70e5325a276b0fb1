"""Streaming batches of sequences, correct under DDP.

Sparse4D carries instances from one batch to the next, so slot ``b`` of consecutive batches must hold
consecutive frames of one sequence. The sampler forms *rounds*: ``batch_size`` sequences (all of one
scene when ``same_scene_in_batch``) that advance together, one frame per batch. A round lasts as long
as its longest sequence; a shorter sequence, or a round filled up because a scene had fewer sequences
than slots, restarts its sequence (flagged as a first frame, with fresh augmentation).

Rounds, not frames, are dealt to ranks (balanced by length), so ranks see disjoint data. Every rank
must run the same number of steps, so ranks with less work repeat their own rounds; the epoch length
is the longest rank's. The world size and rank come from torch.distributed when it is initialised
(all nodes included), else 1 and 0.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch.distributed as dist

from sparse4d.data.dataset import SampleKey, SequenceSpan
from sparse4d.errors import DataError


def process_group_rank() -> tuple[int, int]:
    """(world_size, rank) of the default process group, or (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class StreamingBatchSampler:
    """Yields lists of `SampleKey` (one per slot) for `DataLoader(batch_sampler=...)`."""

    def __init__(self, sequences: Sequence[SequenceSpan], batch_size: int, *, shuffle: bool = True,
                 same_scene_in_batch: bool = True, seed: int = 0, world_size: int | None = None,
                 rank: int | None = None) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}", key="dataset.batch_size")
        if not sequences:
            raise DataError("no sequences to sample from")
        default_world, default_rank = process_group_rank()
        self.world_size = default_world if world_size is None else world_size
        self.rank = default_rank if rank is None else rank
        if not 0 <= self.rank < self.world_size:
            raise DataError(f"rank {self.rank} is outside world size {self.world_size}")
        self.sequences = list(sequences)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.same_scene_in_batch = same_scene_in_batch
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rounds(self) -> list[list[int]]:
        order = list(range(len(self.sequences)))
        if self.shuffle:
            order = [int(i) for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(order))]
        groups: dict[str, list[int]] = {}
        for number in order:
            scene = self.sequences[number].scene if self.same_scene_in_batch else ""
            groups.setdefault(scene, []).append(number)
        rounds = []
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                rounds.append([chunk[slot % len(chunk)] for slot in range(self.batch_size)])
        return rounds

    def _rank_rounds(self) -> tuple[list[list[int]], int]:
        """This rank's rounds and the common number of steps of every rank."""
        rounds = self._rounds()
        if len(rounds) < self.world_size:
            raise DataError(
                f"{len(rounds)} batch round(s) of {self.batch_size} sequence(s) cannot feed {self.world_size} ranks "
                "without sharing data", key="dataset.sequences.split_num",
                hint="lower sequences.split_num (shorter sequences), lower batch_size or use fewer GPUs")
        loads = [0] * self.world_size
        mine = []
        for members in rounds:
            length = max(len(self.sequences[number]) for number in members)
            target = loads.index(min(loads))
            loads[target] += length
            if target == self.rank:
                mine.append(members)
        return mine, max(loads)

    def __len__(self) -> int:
        return self._rank_rounds()[1]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        rounds, steps = self._rank_rounds()
        emitted, repetition = 0, 0
        while emitted < steps:
            for round_number, members in enumerate(rounds):
                length = max(len(self.sequences[number]) for number in members)
                for step in range(length):
                    if emitted == steps:
                        return
                    batch = []
                    for number in members:
                        span = self.sequences[number]
                        restart, offset = divmod(step, len(span))
                        aug_seed = (self.seed, self.epoch, number, repetition, restart)
                        batch.append(SampleKey(span.start + offset, offset == 0, aug_seed))
                    yield batch
                    emitted += 1
            repetition += 1
