"""S4D's and DSS's CPU fast path runs nothing on torch's thread pool outside its C kernels (issue 16, contention).

Beside a busy process every parallel region may wait milliseconds for a worker the scheduler has not run, whatever the
op's own size (docs/benchmarks.md, 2026-12-04: nine such ops per call were S4D's slow mode). Which aten ops open one
is torch's choice: measured on torch 2.13, its transcendental unary ops from 4 096 values (complex exp, expm1, exp,
log, tanh, sin, sqrt ...; 2 048 stayed serial), the others from its grain of 32 768. A structural check, not a
timing: the layer's forward+backward at (H, M) = 128 x 32 = 4 096 parameter values and B·L·H = 65 536, recorded with
a dispatch mode, may only allocate or view at those sizes.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import ssmkit.layers as layers
from ssmkit.ops import discretize
from ssmkit.ops.native import native_available
from tests.conftest import DEVICE

TRANSCENDENTAL = {"exp", "expm1", "exp2", "log", "log1p", "log2", "sin", "cos", "tan", "tanh", "sinh", "cosh", "sqrt",
                  "rsqrt", "pow", "erf", "atan", "atan2", "sigmoid", "softplus", "cumprod", "cumsum", "angle", "abs"}
TRANSCENDENTAL_FROM = 4096
ANY_FROM = 32768
NOT_COMPUTE = {"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided", "view", "_unsafe_view",
               "select", "slice", "t", "transpose", "as_strided", "view_as_real", "view_as_complex", "detach", "alias",
               "unsqueeze", "squeeze", "expand", "permute", "reshape", "_reshape_alias", "lift_fresh", "real", "imag",
               "resolve_conj", "_conj"}


class _Record(TorchDispatchMode):
    """Every aten op of a call with the largest number of values among its tensor inputs and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [t.numel() for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        self.ops.append((func.overloadpacket.__name__, max(sizes, default=0)))
        return out


def pool_ops(ops: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The recorded ops torch would run on its pool (the rule of the module's docstring)."""
    return [(name, n) for name, n in ops if name not in NOT_COMPUTE and (
        n >= ANY_FROM or (name.rstrip("_") in TRANSCENDENTAL and n >= TRANSCENDENTAL_FROM))]


def test_the_rule_sees_the_ops_that_were_the_slow_mode():
    """The rule flags the parameter-side ops the C code replaced, at the sizes of the test below."""
    a, powers = torch.randn(128, 32), torch.randn(128, 32, 18)
    g = torch.zeros(2, 7, 32, 128)
    with _Record() as rec:
        torch.exp(a)
        torch.exp(torch.complex(a, a))
        torch.cumprod(powers, -1)
        g.sum(0)
        g.fill_(0)
        torch.exp(a[:32])  # 1 024 values: serial
        a * a
    assert [name for name, _ in pool_ops(rec.ops)] == ["exp", "exp", "cumprod", "sum", "fill_"]


@pytest.mark.parametrize("c_discretisation", [True, False], ids=["c", "torch_ops"])
@pytest.mark.parametrize("name", ["s4d", "dss"])
def test_forward_and_backward_open_no_parallel_region_outside_the_kernels(name, c_discretisation, monkeypatch):
    if torch.device(DEVICE).type != "cpu" or not (native_available("ssm_scan") and native_available("zoh")):
        pytest.skip("the CPU fast path: the C kernels (a C compiler)")
    if not c_discretisation:  # the torch path of the discretisation, as before 2026-12-04: the rule must see it
        monkeypatch.setattr(discretize, "_native_here", lambda *a: False)
    torch.manual_seed(0)
    layer = layers.build(name, d_model=128, d_state=64)
    x, g = torch.randn(2, 256, 128), torch.randn(2, 256, 128)

    def forward_backward():
        y, h = layer(x)  # the default call: the final state too
        torch.autograd.backward(y, g)

    forward_backward()  # the first call builds and checks the kernels
    with _Record() as rec:
        forward_backward()
    assert len(rec.ops) > 20
    found = {op for op, _ in pool_ops(rec.ops)}
    assert found == set() if c_discretisation else {"exp", "expm1", "cumprod"} <= found, found
