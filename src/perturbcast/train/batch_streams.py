"""Where training batches come from, for :func:`~perturbcast.train.lightning.train_network`:
``_Stream`` (fresh batches from a closure and a numpy RNG, whose state resumable checkpoints
save), ``_Draws`` (batch numbers for a map-style dataset of batches: DataLoader workers, no
RNG state) and ``_Fixed`` (the validation batches)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import IterableDataset

Batch = dict[str, Tensor]


class _Stream(IterableDataset):
    """``n`` fresh batches per epoch; remembers the sampler RNG state before recent draws."""

    def __init__(self, make: Callable[[], Batch], n: int, rng=None) -> None:
        self.make, self.n, self.rng = make, n, rng
        self.first = n  # batches in the next epoch (fewer when resumed mid-epoch)
        self.drawn = 0  # batches drawn so far, over all epochs
        self.states: dict[int, dict] = {}

    def state_before(self, draw: int) -> dict | None:
        """Sampler RNG state before batch ``draw`` (Lightning fetches a batch ahead)."""
        if self.rng is None:
            return None
        return self.states.get(draw, self.rng.bit_generator.state)

    def __iter__(self):
        n, self.first = self.first, self.n
        for _ in range(n):
            if self.rng is not None:
                self.states[self.drawn] = copy.deepcopy(self.rng.bit_generator.state)
                self.states.pop(self.drawn - 8, None)
            self.drawn += 1
            yield self.make()


class _Draws(torch.utils.data.Sampler):
    """Batch numbers for a map-style dataset of batches: ``n`` per epoch, continuing from the
    last (``drawn``); runs in the main process, so DataLoader workers fetch batches by number
    and a resumed run continues at its step (batches depend on their number only)."""

    rng = None  # no sampler RNG state to save: the batch number says everything

    def __init__(self, n: int) -> None:
        self.n, self.first, self.drawn = n, n, 0

    def state_before(self, draw: int) -> None:
        return None

    def __len__(self) -> int:
        return self.first

    def __iter__(self):  # a generator: an iterator made and dropped unused (as a DataLoader
        start, count = self.drawn, self.first  # with workers does) draws nothing
        self.drawn, self.first = start + count, self.n
        yield from range(start, start + count)


class _Fixed(IterableDataset):
    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)
