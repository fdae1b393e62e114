"""``torch.nn.Dropout`` whose training forward is :func:`ssmkit.ops.dropout.dropout` (a counter-based mask in C on
the CPU, ~10x torch's there; torch's own dropout elsewhere). An ``nn.Dropout`` subclass, so code that finds dropout
modules by type, or sets ``p`` or calls ``eval()``, treats it as one."""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.ops.dropout import dropout


class Dropout(nn.Dropout):
    """Dropout with probability ``p`` in training mode, the identity in eval mode (arXiv 1207.0580). ``inplace`` is
    not offered: the C path writes a new tensor."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
