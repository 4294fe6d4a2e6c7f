"""A resumable sampler over global sample indices (the mixture's items are pure functions of the index)."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler


class GlobalIndexSampler(Sampler[int]):
    """Yields ``start + rank + k * world_size`` for k < num_samples.

    Epoch e of E samples per rank starts at ``start = e * E * world_size``; resuming after s samples per
    rank passes ``start = s * world_size`` and gets the same order the uninterrupted run would have.
    """

    def __init__(self, num_samples: int, start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if num_samples < 0 or start < 0 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler arguments num_samples={num_samples} start={start} rank={rank}/{world_size}")
        self.num_samples, self.start, self.rank, self.world_size = num_samples, start, rank, world_size

    def __iter__(self) -> Iterator[int]:
        for k in range(self.num_samples):
            yield self.start + self.rank + k * self.world_size

    def __len__(self) -> int:
        return self.num_samples
