"""Multi-query associative recall, MQAR (Arora et al. 2023, "Zoology", arXiv 2312.04927 §3), in the paper's setting.

Generator (re-derived from the paper and the Zoology description): with vocabulary V and ``num_kv_pairs`` = D,

1. draw D distinct keys from [1, V/2) and D distinct values from [V/2, V) per example;
2. write the pairs first: k_1 v_1 k_2 v_2 … (2D tokens);
3. draw D distinct gaps g_i in {0, …, S − 1}, S = (L − 2D) // 2, with P(g) ∝ (g + 1)^(a − 1), a = 0.01
   (a power law: queries tend to come soon after the context);
4. place key k_i at position 2D + 2 g_i of a length-(L + 1) sequence and its value right after it; every other
   position is 0 (the paper's ``random_non_queries=False``);
5. inputs are positions 0 .. L − 1, targets positions 1 .. L, with −100 except where the input is a queried key:
   the model sees k_i and must output v_i at that same position.

Paper grid: V = 8192; L = 64, 128, 256, 512 with D = 4, 8, 16, 64 pairs; 100,000 train / 3,000 test.
"""

from __future__ import annotations

import dataclasses

import torch

from ssmkit.data.task import (
    IGNORE_INDEX, GeneratedTask, TaskInfo, check_positive, compact_ids, draw_splits, register_task,
)

POWER_A = 0.01  # Zoology's power-law exponent a


def mqar_data(
    n: int, length: int, num_kv_pairs: int, vocab_size: int, power_a: float = POWER_A,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` MQAR sequences (see the module docstring for the steps).

    Args:
        n: number of sequences (B).
        length: input length L (even, 4·D <= L < V).
        num_kv_pairs: key-value pairs D, each queried once.
        vocab_size: V (even is usual): keys from [1, V/2), values from [V/2, V).
        power_a: the exponent a of the gap distribution P(g) ∝ (g + 1)^(a − 1).
        generator: torch random generator for reproducible draws.

    Returns:
        x (B, L) int64; y (B, L) int64: the value v_i where x holds the queried key k_i, −100 elsewhere.
    """
    check_positive(n=n, num_kv_pairs=num_kv_pairs)
    if length % 2 or 4 * num_kv_pairs > length:
        raise ValueError(f"length must be even and >= 4 * num_kv_pairs = {4 * num_kv_pairs}; got {length}")
    if vocab_size <= length:
        raise ValueError(f"vocab_size must be > length = {length}; got {vocab_size}")
    half = vocab_size // 2  # V > L >= 4D gives half - 1 >= 2D - 1 >= D keys and V - half >= D values
    D = num_kv_pairs
    keys = torch.rand(n, half - 1, generator=generator).argsort(dim=1)[:, :D] + 1  # (B, D) distinct
    values = torch.rand(n, vocab_size - half, generator=generator).argsort(dim=1)[:, :D] + half  # (B, D)
    space = (length - 2 * D) // 2
    p = (torch.arange(space, dtype=torch.float64) + 1.0) ** (power_a - 1.0)  # (S,)
    gaps = torch.multinomial(p.expand(n, space), D, replacement=False, generator=generator)  # (B, D)
    seq = torch.zeros(n, length + 1, dtype=torch.long)  # (B, L + 1)
    labels = torch.full((n, length + 1), IGNORE_INDEX, dtype=torch.long)
    seq[:, 0:2 * D:2], seq[:, 1:2 * D:2] = keys, values
    where = 2 * D + 2 * gaps  # (B, D) query positions
    seq.scatter_(1, where, keys)
    seq.scatter_(1, where + 1, values)
    labels.scatter_(1, where + 1, values)
    return seq[:, :-1], labels[:, 1:]


@register_task("mqar")
@dataclasses.dataclass(frozen=True)
class MQARTask(GeneratedTask):
    """MQAR in the Zoology paper setting (defaults: L = 256, D = 16, V = 8192, 100,000 train / 3,000 test).

    Args:
        length: input length L (the paper: 64, 128, 256, 512 with D = 4, 8, 16, 64).
        num_kv_pairs: key-value pairs D.
        vocab_size: V.
        n_train: training sequences.
        n_val: validation sequences (the paper has none; drawn like the test set).
        n_test: test sequences.
        seed: the seed of every split.
    """

    length: int = 256
    num_kv_pairs: int = 16
    vocab_size: int = 8192
    n_train: int = 100_000
    n_val: int = 3_000
    n_test: int = 3_000
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()  # the options' kinds
        check_positive(n_train=self.n_train, n_val=self.n_val, n_test=self.n_test)
        mqar_data(1, self.length, self.num_kv_pairs, self.vocab_size)  # validates the sizes

    def info(self) -> TaskInfo:
        """Token inputs (B, L), per-position targets (values) over the vocabulary."""
        return TaskInfo(self.name, f"MQAR (Zoology setting: L={self.length}, {self.num_kv_pairs} pairs, "
                        f"vocab {self.vocab_size})", "generated", "tokens", self.length, None, self.vocab_size,
                        self.vocab_size, "Arora et al. 2023, Zoology (arXiv 2312.04927)", "nothing (generated)")

    def generate(self) -> dict[str, torch.Tensor]:
        """Draw the three splits (:func:`~ssmkit.data.task.draw_splits`: split i from ``split_generator(seed, i)``)."""
        return draw_splits(self, lambda n, generator: tuple(map(compact_ids, mqar_data(
            n, self.length, self.num_kv_pairs, self.vocab_size, generator=generator))))
