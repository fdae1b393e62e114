"""The refusals of ``ssmkit.ops.irregular.check_intervals`` name what was given and where the first bad gap is (a new
user's probe, 2026-12-06: a numpy array was reported as "got float32", and bad values only by the min and max)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmkit import layers
from ssmkit.ops.irregular import check_intervals

CPU = torch.device("cpu")


@pytest.mark.parametrize("given, named", [(np.ones((2, 3), np.float32), "numpy.ndarray"), ([1.0, 2.0], "list"),
                                          (torch.ones(2, 3, dtype=torch.int64), "a tensor of torch.int64")])
def test_a_non_tensor_or_integer_gap_is_named_by_its_type(given, named):
    with pytest.raises(ValueError, match=rf"got {named}"):
        check_intervals(given, (2, 3), CPU)


def test_the_first_bad_gap_is_named_by_batch_item_and_step():
    tau = torch.ones(3, 5, dtype=torch.float64)
    tau[2, 1], tau[1, 4], tau[1, 3] = -0.5, float("nan"), 0.0  # row-major first: item 1, step 3
    with pytest.raises(ValueError, match=r"3 are not, the first 0 at batch item 1, step 3"):
        check_intervals(tau, (3, 5), CPU)
    one = torch.ones(4)
    one[2] = float("inf")
    with pytest.raises(ValueError, match=r"1 is not, the first inf at batch item 2$"):
        check_intervals(one, (4,), CPU, "interval")


def test_a_layer_reports_the_same_place():
    layer = layers.build("s4d", d_model=2, d_state=4).double()
    tau = torch.ones(2, 6, dtype=torch.float64)
    tau[1, 2] = 0.0
    with pytest.raises(ValueError, match=r"the first 0 at batch item 1, step 2"):
        layer(torch.randn(2, 6, 2, dtype=torch.float64), intervals=tau)
