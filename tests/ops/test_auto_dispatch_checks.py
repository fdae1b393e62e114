"""``"auto"`` asks the native and Triton gates about the op's main input before any check has run: a non-tensor (or
a tensor of the wrong rank) must still reach the portable path's ValueError naming it. ``mimo_scan`` and
``selective_scan`` raised AttributeError ('list' object has no attribute 'device') and ``ssm_scan`` AttributeError or
IndexError from their gates until 2026-12-02 (found by a test of mimo's checks)."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops.backend import use_backend
from ssmkit.ops.cauchy import cauchy
from ssmkit.ops.conv import causal_conv1d
from ssmkit.ops.mimo import mimo_scan
from ssmkit.ops.recurrence import linear_recurrence
from ssmkit.ops.scan import ssm_scan
from ssmkit.ops.selective import selective_scan
from ssmkit.ops.ssd import ssd

C64 = torch.complex64
BAD = [[1.0, 2.0]]  # a nested list: what a user passes by mistake


def cases():
    c = lambda *s: torch.rand(*s, dtype=C64)  # noqa: E731
    r = torch.rand
    return {
        "ssm_scan": (lambda u: ssm_scan(u, c(3, 4), c(3, 4), c(3, 4)), "u must be a torch.Tensor; got list"),
        "ssm_scan rank 1": (lambda u: ssm_scan(r(5), c(3, 4), c(3, 4), c(3, 4)), r"u must be \(B, L, H\)"),
        "mimo_scan": (lambda u: mimo_scan(r(2, 5, 3), u, c(4, 3), c(3, 4)), "A_bar must be a torch.Tensor; got list"),
        "selective_scan": (lambda u: selective_scan(u, r(2, 5, 3), r(3, 4), r(2, 5, 4), r(2, 5, 4)),
                           "u must be a torch.Tensor; got list"),
        "ssd": (lambda u: ssd(u, r(2, 5, 3), r(3), r(2, 5, 1, 4), r(2, 5, 1, 4)), "x must be a torch.Tensor; got list"),
        "linear_recurrence": (lambda u: linear_recurrence(r(2, 5, 3), u), "b must be a torch.Tensor; got list"),
        "causal_conv1d": (lambda u: causal_conv1d(u, r(3, 4)), "x must be a torch.Tensor; got list"),
        "cauchy": (lambda u: cauchy(u, c(3, 5), c(3, 4)), r"v must be a complex torch.Tensor \(\.\.\., N\); got list"),
    }


@pytest.mark.parametrize("name", list(cases()))
def test_auto_reaches_the_check_that_names_a_bad_main_input(name):
    call, message = cases()[name]
    with use_backend("auto"), pytest.raises(ValueError, match=message):
        call(BAD)
