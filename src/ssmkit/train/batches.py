"""Training batches as a pure function of (seed, step, rank): the order that makes a resumed run exact.

A run that restarts from a checkpoint at optimizer step s must see the batches the uninterrupted run saw from s
on. Here the batch of step s is computed, not iterated to: epoch e = ⌊s·G / n⌋ shuffles the n samples with a
generator seeded by (seed, e), and step s takes the G = world_size × batch_size samples after position s·G (wrapping
into the next epoch's order), of which rank r takes its ``batch_size``. So the stream restarts at any step, on any
rank, without saving a data-loader state; the last incomplete part of an epoch is used, not dropped.

A ``transform`` that draws random numbers (an augmentation) runs inside :func:`seeded_rngs`: torch's CPU generator,
numpy's and Python's global generators are seeded from (seed, step, rank) for the call and restored after it. So the
augmentation of step s is a function of (seed, s, rank) too (the ranks of a data-parallel run augment differently),
and building batches never moves the global streams that dropout draws from. Without it a resumed run was not exact:
Lightning fetches the batch of step s + 1 before step s's checkpoint is written, so the RNG state saved in the
checkpoint already held the draws of that batch's augmentation, which the resumed run drew again, and numpy's and
Python's states were not saved at all (probe 17).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ssmkit.layers.checks import check_positive_int


_TRAIN, _EVAL = 0x7472, 0x6576  # keep the training and the evaluation transforms' seeds apart


@contextlib.contextmanager
def seeded_rngs(*key: int) -> Iterator[None]:
    """Run a block with torch's CPU generator and numpy's and Python's global generators seeded from ``key``, then
    restore the three states they had before. CUDA generators are neither seeded nor moved (``torch.manual_seed``
    would reseed them: dropout on a GPU would then repeat its masks every step).

    The three seeds are the 16 bytes of a BLAKE2b hash of the key, so different keys give unrelated streams.

    Args:
        key: ints naming the block's place, e.g. (tag, seed, step, rank).
    """
    words = hashlib.blake2b(",".join(str(int(k)) for k in key).encode(), digest_size=16).digest()
    cpu = torch.default_generator
    states = cpu.get_state(), np.random.get_state(), random.getstate()
    cpu.manual_seed(int.from_bytes(words[:8], "little"))
    np.random.seed(int.from_bytes(words[8:12], "little"))
    random.seed(int.from_bytes(words[12:], "little"))
    try:
        yield
    finally:
        cpu.set_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def _transformed(transform: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]],
                 batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``transform(batch)``, refused (ValueError) where it drops the intervals of an (inputs, targets, intervals) batch:
    the model then ran the split as regularly sampled without a word (a transform written for (inputs, targets)
    batches, ``lambda b: (b[0] / 255, b[1])``). A transform that forms the intervals of a two-tensor batch is kept."""
    out = transform(batch)
    if len(batch) == 3 and (not isinstance(out, (tuple, list)) or len(out) != 3):
        got = len(out) if isinstance(out, (tuple, list)) else type(out).__name__
        raise ValueError(f"the transform was given an (inputs, targets, intervals) batch and returned {got} tensors: "
                         "it must return all three (without the intervals the model would run the batch as regularly "
                         "sampled)")
    return out


def _check_tensors(tensors: Sequence[torch.Tensor]) -> int:
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise ValueError("tensors must be a non-empty sequence of tensors (inputs, targets, ...)")
    n = tensors[0].shape[0]
    if n == 0 or any(t.shape[0] != n for t in tensors):
        raise ValueError(f"every tensor must hold the same number n >= 1 of samples on axis 0; got {[t.shape[0] for t in tensors]}")
    return n


class StepBatches:
    """An endless iterable of training batches, batch s = a function of (seed, s, rank) (module docstring).

    Args:
        tensors: (n, ...) tensors sampled together (inputs and targets).
        batch_size: samples per rank and step.
        seed: the shuffling seed.
        start_step: the first step to yield (a resumed run's global step).
        rank, world_size: this process's place in data-parallel training.
        shuffle: shuffle each epoch (False: the samples in order, for tests).
        transform: applied to each batch (e.g. integer pixels to scaled floats, an augmentation), or None; it runs
            inside :func:`seeded_rngs` keyed by (seed, step, rank), so its random draws are a function of the step.
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        batch_size: int,
        seed: int = 0,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        transform: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]] | None = None,
    ) -> None:
        self.n = _check_tensors(tensors)
        check_positive_int(batch_size, "batch_size")
        check_positive_int(world_size, "world_size")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size = {world_size}); got {rank!r}")
        if not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"start_step must be an int >= 0; got {start_step!r}")
        self.tensors = tuple(tensors)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.transform = transform
        self._order: tuple[int, torch.Tensor] | None = None

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order = torch.randperm(self.n, generator=g)
            else:
                order = torch.arange(self.n)
            self._order = (epoch, order)
        return self._order[1]

    def indices(self, step: int) -> torch.Tensor:
        """The sample indices of this rank at optimizer step ``step``: (batch_size,) int64."""
        G = self.batch_size * self.world_size
        first = step * G + self.rank * self.batch_size
        positions = torch.arange(first, first + self.batch_size)
        epochs = positions // self.n
        out = torch.empty(self.batch_size, dtype=torch.long)
        for e in epochs.unique().tolist():
            where = epochs == e
            out[where] = self._epoch_order(e)[positions[where] % self.n]
        return out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        step = self.start_step
        while True:
            idx = self.indices(step)
            batch = tuple(t[idx] for t in self.tensors)
            if self.transform is not None:
                with seeded_rngs(_TRAIN, self.seed, step, self.rank):
                    batch = _transformed(self.transform, batch)
            yield batch
            step += 1


class EvalBatches:
    """A finite iterable of evaluation batches with a length (one data loader to Lightning, not a list of them).

    Args:
        batches: the batches, tuples of tensors.
    """

    def __init__(self, batches: list[tuple[torch.Tensor, ...]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return iter(self.batches)


def eval_batches(
    tensors: Sequence[torch.Tensor],
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    transform: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]] | None = None,
) -> EvalBatches:
    """The evaluation batches of this rank: rank r takes samples r, r + world_size, ... in order (so every rank has
    work when n >= world_size, and each sample is scored once).

    Args:
        tensors: (n, ...) tensors.
        batch_size: samples per batch.
        rank, world_size: this process's place in data-parallel evaluation.
        transform: applied to each batch, or None; batch i of rank r runs inside :func:`seeded_rngs` keyed by
            (r, world_size, i), so even a random transform gives the same batches every time.

    Returns:
        the batches (tuples of tensors) as :class:`EvalBatches`; each sample is in exactly one rank's batches.
    """
    n = _check_tensors(tensors)
    check_positive_int(batch_size, "batch_size")
    if n < world_size:
        raise ValueError(f"an evaluation split needs at least world_size = {world_size} samples; got {n}")
    mine = torch.arange(rank, n, world_size)
    batches = [tuple(t[mine[s:s + batch_size]] for t in tensors) for s in range(0, len(mine), batch_size)]
    if transform is not None:
        done = []
        for i, b in enumerate(batches):
            with seeded_rngs(_EVAL, rank, world_size, i):
                done.append(_transformed(transform, b))
        batches = done
    return EvalBatches(batches)
