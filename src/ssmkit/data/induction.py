"""Induction heads (Olsson et al. 2022, arXiv 2209.11895; the synthetic task of Gu & Dao 2023, arXiv 2312.00752
§3.1 and appendix E.1): recall the token that followed a trigger, and extrapolate to longer sequences.

Generator (ours; the Mamba generator's exact settings were not released): with a vocabulary of V ids, id V − 1
is the trigger and 0 .. V − 2 are ordinary tokens. A sequence of length L holds uniform ordinary tokens, the
trigger once at a uniform position p in [0, L − 3] followed by the answer token at p + 1, and the trigger again
at the last position L − 1. The target at the last position is the answer (−100 elsewhere), so the loss and the
accuracy are on the answer only (the H3/Hyena generator also trains on every next-token position; that adds
only unpredictable targets). The Mamba setting: train at L = 256 with V = 16, test at longer L.
"""

from __future__ import annotations

import dataclasses
import numbers

import torch

from ssmkit.data.task import (
    IGNORE_INDEX, GeneratedTask, TaskInfo, check_positive, compact_ids, register_task, split_generator,
)


def induction_heads_data(
    n: int, length: int, vocab_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` induction-head sequences (trigger ``vocab_size − 1`` at p and at L − 1; answer at p + 1).

    Args:
        n: number of sequences (B).
        length: sequence length L (>= 3).
        vocab_size: ids V (>= 3): V − 1 is the trigger, 0 .. V − 2 ordinary tokens.
        generator: torch random generator for reproducible draws.

    Returns:
        x (B, L) int64; y (B, L) int64: the answer at the last position, −100 elsewhere.
    """
    check_positive(n=n)
    if length < 3:
        raise ValueError(f"length must be >= 3 (trigger, answer, trigger); got {length}")
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be >= 3 (a trigger and two ordinary tokens); got {vocab_size}")
    trigger = vocab_size - 1
    x = torch.randint(0, trigger, (n, length), generator=generator)  # (B, L)
    p = torch.randint(0, length - 2, (n,), generator=generator)  # (B,)
    rows = torch.arange(n)
    x[rows, p] = trigger
    x[:, -1] = trigger
    y = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)  # (B, L)
    y[:, -1] = x[rows, p + 1]
    return x, y


def _lengths(value: object) -> tuple[int, ...]:
    """``test_lengths`` as a tuple of distinct ints; one int is one length (``--task_options.test_lengths 1024``).

    Args:
        value: an int or an iterable of ints (numpy ints become ints: the cache key is JSON).
    """
    def whole(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if whole(value):
        return (int(value),)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):  # tuple("1024") would be four lengths
        raise ValueError(f"test_lengths must be an int or a list of ints; got {value!r}")
    lengths = tuple(value)
    if not all(whole(v) for v in lengths):
        raise ValueError(f"test_lengths must be an int or a list of ints; got {value!r}")
    lengths = tuple(int(v) for v in lengths)
    if len(set(lengths)) != len(lengths):  # two "test@L" splits of one name: the second replaced the first
        raise ValueError(f"test_lengths must not repeat a length; got {value!r}")
    return lengths


@register_task("induction_heads")
@dataclasses.dataclass(frozen=True)
class InductionHeadsTask(GeneratedTask):
    """Induction heads: train and validate at ``train_length``; one test split per ``test_lengths`` entry.

    The splits are "train", "val", "test@<L>" for each test length, and "test" (the longest test length).

    Args:
        train_length: training and validation sequence length (Mamba: 256).
        test_lengths: longer lengths for the length-extrapolation test splits (distinct; one int is one length).
        vocab_size: ids V (Mamba: 16), the trigger included.
        n_train: training sequences.
        n_val: validation sequences.
        n_test: sequences in each test split.
        seed: the seed of every split.
    """

    train_length: int = 256
    test_lengths: tuple[int, ...] = (512, 1024, 4096)
    vocab_size: int = 16
    n_train: int = 10_000
    n_val: int = 1_000
    n_test: int = 500
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()  # the options' kinds
        check_positive(n_train=self.n_train, n_val=self.n_val, n_test=self.n_test)
        object.__setattr__(self, "test_lengths", _lengths(self.test_lengths))
        if not self.test_lengths:
            raise ValueError("test_lengths must name at least one length")
        for length in (self.train_length, *self.test_lengths):
            induction_heads_data(1, length, self.vocab_size)  # validates the sizes

    def info(self) -> TaskInfo:
        """Token inputs (B, L) with L = train_length for training (longer in the test splits)."""
        tests = ", ".join(str(n) for n in self.test_lengths)
        return TaskInfo(self.name, f"Induction heads (train {self.train_length}, test {tests})", "generated",
                        "tokens", self.train_length, None, self.vocab_size, self.vocab_size,
                        "Olsson et al. 2022; Gu & Dao 2023 (arXiv 2312.00752 §3.1)", "nothing (generated)")

    def generate(self) -> dict[str, torch.Tensor]:
        """Draw train, val and one test split per test length."""
        out = {}
        parts = [("train", self.n_train, self.train_length), ("val", self.n_val, self.train_length)]
        parts += [(f"test@{n}", self.n_test, n) for n in self.test_lengths]
        for i, (split, n, length) in enumerate(parts):
            x, y = induction_heads_data(n, length, self.vocab_size, split_generator(self.seed, i))
            out[f"{split}_x"], out[f"{split}_y"] = compact_ids(x), compact_ids(y)
        longest = f"test@{max(self.test_lengths)}"
        out["test_x"], out["test_y"] = out[f"{longest}_x"], out[f"{longest}_y"]
        return out
