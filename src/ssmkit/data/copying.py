"""Copying (Arjovsky et al. 2016, arXiv 1511.06464 §4.1) and selective copying (Gu & Dao 2023, arXiv 2312.00752
§3.1 and appendix E.1).

Convention (the S4 repository's copying generator, state-spaces/s4): an alphabet of ``A`` ids where 0 is the
blank (noise) token, ``A − 1`` the marker and ``1 .. A − 2`` the data symbols. The input is

    copying:            M data tokens, then ``delay`` blanks, then M markers          (length delay + 2M)
    selective copying:  M data tokens at random sorted positions among ``length − M`` slots (the rest blanks),
                        then M markers                                               (length ``length``)

and the target is the M data tokens in order at the M marker positions (loss there only; −100 elsewhere).
Arjovsky et al. scored every position (blank targets before the copy); we score the last M only, as S4 does.
The Mamba authors did not release their selective-copying generator (state-spaces/mamba issue 343); our
default "Mamba setting" is input length 4096, M = 16 tokens to copy, a vocabulary of 16 ids (blank and marker
included, so 14 data symbols), which is our reading of the paper and is labelled as such.
"""

from __future__ import annotations

import dataclasses
import torch

from ssmkit.data.task import (
    IGNORE_INDEX, GeneratedTask, TaskInfo, check_positive, compact_ids, draw_splits, register_task,
)


def _compacted(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids x and targets y in the smallest integer dtype that holds them (:func:`compact_ids`)."""
    return compact_ids(x), compact_ids(y)


def copying_data(
    n: int, delay: int, n_tokens: int, vocab_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` copying sequences: M data tokens, ``delay`` blanks (0), M markers (``vocab_size − 1``).

    Args:
        n: number of sequences (B).
        delay: blanks between the data and the markers.
        n_tokens: data tokens to copy (M).
        vocab_size: ids in the alphabet (A >= 3): 0 blank, A − 1 marker, 1 .. A − 2 data.
        generator: torch random generator for reproducible draws.

    Returns:
        x (B, L) int64 with L = delay + 2M; y (B, L) int64: the data tokens at the last M positions, −100 elsewhere.
    """
    _check(n, n_tokens, vocab_size)
    if delay < 0:
        raise ValueError(f"delay must be >= 0; got {delay}")
    tokens = torch.randint(1, vocab_size - 1, (n, n_tokens), generator=generator)  # (B, M)
    blanks = torch.zeros(n, delay, dtype=torch.long)
    markers = torch.full((n, n_tokens), vocab_size - 1, dtype=torch.long)
    x = torch.cat([tokens, blanks, markers], dim=1)  # (B, L)
    return x, _answers(tokens, x.shape[1])


def selective_copying_data(
    n: int, length: int, n_tokens: int, vocab_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` selective-copying sequences: M data tokens scattered (in order) among ``length − 2M`` blanks,
    then M markers.

    Args:
        n: number of sequences (B).
        length: total input length L (>= 3M: the first L − M slots hold the data and blanks).
        n_tokens: data tokens to copy (M).
        vocab_size: ids in the alphabet (A >= 3): 0 blank, A − 1 marker, 1 .. A − 2 data.
        generator: torch random generator for reproducible draws.

    Returns:
        x (B, L) int64; y (B, L) int64: the data tokens in order at the last M positions, −100 elsewhere.
    """
    _check(n, n_tokens, vocab_size)
    slots = length - n_tokens
    if slots < 2 * n_tokens:
        raise ValueError(f"length must be >= 3 * n_tokens = {3 * n_tokens}; got {length}")
    tokens = torch.randint(1, vocab_size - 1, (n, n_tokens), generator=generator)  # (B, M)
    scores = torch.rand(n, slots, generator=generator)  # (B, L - M)
    positions = scores.argsort(dim=1)[:, :n_tokens].sort(dim=1).values  # (B, M) distinct, increasing
    x = torch.zeros(n, length, dtype=torch.long)  # (B, L)
    x.scatter_(1, positions, tokens)
    x[:, slots:] = vocab_size - 1
    return x, _answers(tokens, length)


def _check(n: int, n_tokens: int, vocab_size: int) -> None:
    check_positive(n=n, n_tokens=n_tokens)
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be >= 3 (blank, marker and a data symbol); got {vocab_size}")


def _answers(tokens: torch.Tensor, length: int) -> torch.Tensor:
    y = torch.full((tokens.shape[0], length), IGNORE_INDEX, dtype=torch.long)  # (B, L)
    y[:, length - tokens.shape[1]:] = tokens
    return y


@register_task("copying")
@dataclasses.dataclass(frozen=True)
class CopyingTask(GeneratedTask):
    """Copying with the S4 defaults (delay 100, M = 10, A = 10; loss on the last M positions).

    Args:
        delay: blanks between the data and the markers.
        n_tokens: data tokens to copy (M).
        vocab_size: alphabet size A (0 blank, A − 1 marker).
        n_train: training sequences (S4 draws 10,000 fresh ones per epoch; here a fixed set).
        n_val: validation sequences.
        n_test: test sequences.
        seed: the seed of every split.
    """

    delay: int = 100
    n_tokens: int = 10
    vocab_size: int = 10
    n_train: int = 10_000
    n_val: int = 1_000
    n_test: int = 1_000
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()  # the options' kinds
        check_positive(n_tokens=self.n_tokens, n_train=self.n_train, n_val=self.n_val, n_test=self.n_test)
        copying_data(1, self.delay, self.n_tokens, self.vocab_size)  # validates delay and vocab_size

    def info(self) -> TaskInfo:
        """Token inputs (B, delay + 2M), per-position targets over the alphabet."""
        return TaskInfo(self.name, f"Copying (delay {self.delay}, {self.n_tokens} tokens)", "generated", "tokens",
                        self.delay + 2 * self.n_tokens, None, self.vocab_size, self.vocab_size,
                        "Arjovsky et al. 2016 (arXiv 1511.06464), S4 convention", "nothing (generated)")

    def generate(self) -> dict[str, torch.Tensor]:
        """Draw the three splits."""
        return draw_splits(self, lambda n, generator: _compacted(
            *copying_data(n, self.delay, self.n_tokens, self.vocab_size, generator)))


@register_task("selective_copying")
@dataclasses.dataclass(frozen=True)
class SelectiveCopyingTask(GeneratedTask):
    """Selective copying, our reading of the Mamba setting (L = 4096, M = 16, vocabulary 16).

    Args:
        length: total input length L (data region L − M, then M markers).
        n_tokens: data tokens to copy (M).
        vocab_size: alphabet size A (0 blank, A − 1 marker, A − 2 data symbols).
        n_train: training sequences.
        n_val: validation sequences.
        n_test: test sequences.
        seed: the seed of every split.
    """

    length: int = 4096
    n_tokens: int = 16
    vocab_size: int = 16
    n_train: int = 10_000
    n_val: int = 1_000
    n_test: int = 1_000
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()  # the options' kinds
        check_positive(n_train=self.n_train, n_val=self.n_val, n_test=self.n_test)
        selective_copying_data(1, self.length, self.n_tokens, self.vocab_size)  # validates the sizes

    def info(self) -> TaskInfo:
        """Token inputs (B, L), per-position targets over the alphabet."""
        return TaskInfo(self.name, f"Selective copying (our Mamba setting: L={self.length}, {self.n_tokens} tokens, "
                        f"vocab {self.vocab_size})", "generated", "tokens", self.length, None, self.vocab_size,
                        self.vocab_size, "Gu & Dao 2023 (arXiv 2312.00752 §3.1), generator not released",
                        "nothing (generated)")

    def generate(self) -> dict[str, torch.Tensor]:
        """Draw the three splits."""
        return draw_splits(self, lambda n, generator: _compacted(
            *selective_copying_data(n, self.length, self.n_tokens, self.vocab_size, generator)))
