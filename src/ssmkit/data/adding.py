"""The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015, arXiv 1504.00941 §4.1).

Each sequence has two channels: values drawn from U(0, 1) and a marker channel with exactly two 1s.
The target is the sum of the two marked values. Convention used here (recorded in docs/design.md):
one marker uniformly in the first half of the sequence and one uniformly in the second half, as in
Le et al. Always predicting the mean target 1 gives MSE = Var(u1 + u2) = 2/12 = 1/6 ≈ 0.167.
"""

from __future__ import annotations

import dataclasses

import torch

from ssmkit.data.task import GeneratedTask, TaskInfo, check_positive, draw_splits, register_task

TRIVIAL_MSE = 1.0 / 6.0


def adding_problem(
    n: int, length: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` adding-problem sequences.

    Args:
        n: number of sequences (B).
        length: sequence length L (>= 2).
        generator: torch random generator for reproducible draws.
        dtype: floating dtype of the outputs.

    Returns:
        x (B, L, 2): channel 0 the values, channel 1 the markers; y (B, 1): the sum of the marked values.
    """
    if n < 1 or length < 2:
        raise ValueError(f"need n >= 1 and length >= 2; got n={n}, length={length}")
    values = torch.rand(n, length, generator=generator, dtype=dtype)  # (B, L)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, length, (n,), generator=generator)
    markers = torch.zeros(n, length, dtype=dtype)  # (B, L)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    y = (values * markers).sum(dim=1, keepdim=True)  # (B, 1)
    return torch.stack([values, markers], dim=-1), y


@register_task("adding")
@dataclasses.dataclass(frozen=True)
class AddingTask(GeneratedTask):
    """The adding problem as a task: inputs (B, L, 2), target the sum (B, 1), MSE; trivial MSE 1/6.

    Args:
        length: sequence length L.
        n_train: training sequences.
        n_val: validation sequences.
        n_test: test sequences.
        seed: the seed of every split.
    """

    length: int = 200
    n_train: int = 10_000
    n_val: int = 1_000
    n_test: int = 1_000
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()  # the options' kinds
        check_positive(n_train=self.n_train, n_val=self.n_val, n_test=self.n_test)
        if self.length < 2:
            raise ValueError(f"length must be >= 2; got {self.length}")

    def info(self) -> TaskInfo:
        """Float inputs (B, L, 2), one regression target."""
        return TaskInfo(self.name, f"Adding problem (L={self.length})", "generated", "regress", self.length, 2,
                        None, 1, "Hochreiter & Schmidhuber 1997; Le et al. 2015 (arXiv 1504.00941)",
                        "nothing (generated)")

    def generate(self) -> dict[str, torch.Tensor]:
        """Draw the three splits."""
        return draw_splits(self, lambda n, generator: adding_problem(n, self.length, generator))
