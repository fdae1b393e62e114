"""Mutation round of 2026-12-07 (second round) over ``ssmkit.bench.limits``, ``ssmkit.analysis.nonlinear``,
``ssmkit.analysis.reduction`` and ``ssmkit.ops.recurrence``: a test for each hand mutant that changed behaviour and
survived the existing tests, against an independent reference (a hand count of bytes, a float64 loop):

- ``lti_bytes`` refusing ``state=0`` (a step whose state only grows) and accepting a negative ``cache``;
- ``NonlinearSystem`` accepting a step that adds a tensor to the state (only a tensor whose shape grows was
  refused);
- ``_gate_logs`` padding the gates shifted by -1 at the wrong end: read only by the third-order adjoint scan (and a
  symbolic length), so only a third derivative through the log-gate chunk products sees it.
"""

from __future__ import annotations

import pytest
import torch

from ssmkit.bench import limits


def test_lti_step_bytes_of_a_state_that_only_grows_count_its_inputs_outputs_and_cache():
    # state=0 (no fixed-size state, only a growing cache) is a legal state size: B = 2, L = 3, H = 4, s = 4, 4 reals
    # per cache entry. Token t reads u and writes y (2·H = 8 reals), reads the t entries held and writes one (4·(t + 1)):
    # 12 + 16 + 20 = 48 reals per row, 2 rows of 4 bytes.
    expected = 4 * 2 * sum(2 * 4 + 4 * (t + 1) for t in range(3))
    assert expected == 384
    assert limits.lti_bytes("step", 2, 3, 4, 8, 4, state=0, cache=4) == expected


def test_lti_step_bytes_refuse_a_negative_cache():
    with pytest.raises(ValueError, match=r"cache must be an int >= 0; got -1"):
        limits.lti_bytes("step", 1, 4, 2, 2, 4, cache=-1)


@pytest.mark.parametrize("L", [11, 12, 3])
def test_chunk_products_from_log_gates_give_the_loops_states_and_three_orders_of_derivatives(L):
    # log_a given: each chunk's product is exp(Σ log a_t) over views of log_a, and the adjoint scans (first order:
    # gates shifted by +1, padding before the start; second order: shifted by -1; third order: the logs written out
    # shifted by +1 then -1, _gate_logs) cut their chunks at other offsets.
    # Reference: the plain float64 loop differentiated by autograd. T = 4: L = 11 pads one step, 12 none, 3 one chunk.
    from ssmkit.ops.recurrence import linear_recurrence_chunked, linear_recurrence_reference

    g = torch.Generator().manual_seed(5)
    a0 = 0.3 + 0.6 * torch.rand(2, L, 3, generator=g, dtype=torch.float64)
    b0, h00, w = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((2, L, 3), (2, 3), (2, L, 3)))

    def derivatives(path):
        a, b, h0 = (x.clone().requires_grad_() for x in (a0, b0, h00))
        h = path(a, b, h0)[0]
        loss = (h * w).sum() + (h ** 2).sum()
        grads = torch.autograd.grad(loss, (a, b, h0), create_graph=True)
        second = torch.autograd.grad(sum((gr * gr).sum() for gr in grads), (a, b, h0), create_graph=True)
        third = torch.autograd.grad(sum((gr * gr).sum() for gr in second), (a, b, h0))
        return (h.detach(), *(gr.detach() for gr in grads + second), *third)

    got = derivatives(lambda a, b, h0: linear_recurrence_chunked(a, b, h0, chunk_size=4, log_a=a.detach().log()))
    want = derivatives(linear_recurrence_reference)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-11)


class _GrowsByATensor(torch.nn.Module):
    """A step that adds a tensor to its state (a cache kept as a list of per-token tensors): state [x] becomes
    [x', u], so no state vector of fixed size exists."""

    n_inputs = 1

    def initial_state(self, batch_size: int) -> list[torch.Tensor]:
        return [torch.zeros(batch_size, 1)]

    def step(self, u: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = 0.5 * state[0] + u
        return x, [x, *state[1:], u]


def test_a_state_that_grows_by_a_tensor_is_refused():
    from ssmkit.analysis import NonlinearSystem

    with pytest.raises(ValueError, match=r"needs a state of fixed size; the state grows with time"):
        NonlinearSystem(_GrowsByATensor())
