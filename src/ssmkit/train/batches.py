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


def is_lengths(t: object) -> bool:
    """Whether ``t`` is a batch's lengths: an integer tensor (bool aside). Intervals are real floating tensors (the
    model and :func:`ssmkit.ops.irregular.check_intervals` refuse integer ones), so the kind tells them apart.

    Args:
        t: a batch's third or fourth entry.
    """
    return (isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex()
            and t.dtype != torch.bool)


def unpack_batch(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                         torch.Tensor | None]:
    """(inputs, targets, intervals or None, lengths or None) of a batch. The forms, positional, the kind telling the
    optional entries apart (:func:`is_lengths`):

        (inputs, targets)
        (inputs, targets, intervals)             intervals (B, L) real > 0: irregular sampling
        (inputs, targets, lengths)               lengths (B,) integers in [1, L]: right-padded sequences
        (inputs, targets, intervals, lengths)

    Intervals go to ``SequenceModel.forward(..., intervals=)`` (the time from each sample's predecessor in nominal
    sampling periods), lengths to ``forward(..., lengths=)`` (the steps after each length are padding, left out of
    the model's pooling, bidirectional layers and batch norms) and to the objective (per-step targets after a length
    are not scored: :func:`ssmkit.train.objective.summed_loss_and_metric`).

    Args:
        batch: the batch's tensors.

    Returns:
        (x, y, intervals, lengths), each of the last two None where the batch lacks it.
    """
    n = len(batch)
    if n == 2:
        return batch[0], batch[1], None, None
    if n == 3:
        return (batch[0], batch[1], None, batch[2]) if is_lengths(batch[2]) else (batch[0], batch[1], batch[2], None)
    if n == 4 and is_lengths(batch[3]) and not is_lengths(batch[2]):
        return batch[0], batch[1], batch[2], batch[3]
    kinds = ", ".join(str(getattr(t, "dtype", type(t).__name__)) for t in batch)
    raise ValueError("a batch must be (inputs, targets, lengths), (inputs, targets, intervals, lengths), "
                     f"(inputs, targets) or (inputs, targets, intervals); got {n} tensors ({kinds}): intervals are "
                     "real, lengths integers, and lengths come last")


def _form(batch: Sequence[torch.Tensor]) -> str:
    """The batch's form in words, e.g. "(inputs, targets, intervals)"."""
    _, _, intervals, lengths = unpack_batch(batch)
    return "(" + ", ".join(["inputs", "targets"] + ["intervals"] * (intervals is not None)
                           + ["lengths"] * (lengths is not None)) + ")"


def _transformed(transform: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]],
                 batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``transform(batch)``, refused (ValueError) where it drops the intervals or lengths of a batch that has them:
    the model then ran the split as regularly sampled, or read its padding, without a word (a transform written for
    (inputs, targets) batches, ``lambda b: (b[0] / 255, b[1])``). A transform that forms the intervals of a two-tensor
    batch is kept."""
    out = transform(batch)
    if len(batch) >= 3 and (not isinstance(out, (tuple, list)) or len(out) != len(batch)):
        got = len(out) if isinstance(out, (tuple, list)) else type(out).__name__
        _, _, intervals, lengths = unpack_batch(batch)
        lost = " and ".join(what for what, t in (("intervals", intervals), ("lengths", lengths)) if t is not None)
        effect = ("run the batch as regularly sampled" if lengths is None else "read the padding"
                  if intervals is None else "run the batch as regularly sampled and read its padding")
        raise ValueError(f"the transform was given an {_form(batch)} batch and returned {got} tensors: it must return "
                         f"all {('three', 'four')[len(batch) - 3]} (without the {lost} the model would {effect})")
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
                order = torch.randperm(self.n, generator=g, device="cpu")
            else:
                order = torch.arange(self.n, device="cpu")
            self._order = (epoch, order)
        return self._order[1]

    def indices(self, step: int) -> torch.Tensor:
        """The sample indices of this rank at optimizer step ``step``: (batch_size,) int64."""
        G = self.batch_size * self.world_size
        first = step * G + self.rank * self.batch_size
        positions = torch.arange(first, first + self.batch_size, device="cpu")
        epochs = positions // self.n
        out = torch.empty(self.batch_size, dtype=torch.long, device="cpu")
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
    mine = torch.arange(rank, n, world_size, device="cpu")
    batches = [tuple(t[mine[s:s + batch_size]] for t in tensors) for s in range(0, len(mine), batch_size)]
    if transform is not None:
        done = []
        for i, b in enumerate(batches):
            with seeded_rngs(_EVAL, rank, world_size, i):
                done.append(_transformed(transform, b))
        batches = done
    return EvalBatches(batches)
