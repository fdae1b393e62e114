"""Mutation round of 2026-12-07 over four modules that had never been mutation-tested: layers/mamba.py,
layers/mamba2.py, ops/ssd.py (its Python paths) and layers/rglru.py.

99 hand mutants (swapped projections and gates, dropped terms, signs and softplus placements, changed inits and
floors, skipped checks, states and resets ignored, wrong group and head orders, fused steps that bypass a hooked
module) were run against the modules' own test files; the tests below kill the survivors that can be killed, each
against an independent reference (the float64 loop of tests/layers/test_mamba2.py written from the paper's equations,
the SSD recurrence or quadratic form, the layer's unhooked output, the documented argument contract). Each test's
docstring names the mutants it kills. The equivalent survivors are listed in the round's report.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ssmkit.layers as layers
from ssmkit.ops import ssd as ssd_module
from ssmkit.ops import use_backend
from ssmkit.ops.native import native_available
from ssmkit.ops.ssd import ssd, ssd_chunked, ssd_reference
from tests.conftest import DEVICE, H, rel_err, run_steps
from tests.layers.test_mamba2 import mixer_loop
from tests.layers.test_rglru import random_block

F64 = torch.float64


# ------------------------------------------------------------------------------------------------------------------
# layers/mamba2.py


def test_mamba2_without_norm_adds_the_per_channel_skip_in_channel_order():
    """Kills MB8 (without the norm, the per-channel D (E,) read as (P, E/P) transposed, so channel p of head h took
    D[p·E/P + h] instead of D[h·P + p]): y_h = H C + D_{h,p} x_{h,p} by the float64 loop, with distinct D per channel,
    on both backends and by steps."""
    torch.manual_seed(3)
    layer = layers.build("mamba2", d_model=H, d_state=3, headdim=2, rmsnorm=False, D_has_hdim=True, chunk_size=4,
                         device=DEVICE, dtype=F64)
    with torch.no_grad():
        layer.D.copy_(torch.linspace(-2.0, 3.0, layer.d_inner, dtype=F64))  # (E,): six distinct skips
    u = torch.randn(2, 9, H, device=DEVICE, dtype=F64)
    want = mixer_loop(layer, u)
    with torch.no_grad():
        for backend in ("chunked", "reference"):
            with use_backend(backend):
                y, _ = layer(u)
            assert rel_err(y, want) < 1e-12, backend
        y_steps, _ = run_steps(layer, u)
    assert rel_err(y_steps, want) < 1e-12


def test_mamba2_takes_a_zero_floor_on_the_initial_step():
    """Kills MB13 (dt_init_floor = 0 refused): the documented range is a finite float >= 0, and a zero floor clamps
    nothing, so Δ₀ = softplus(dt_bias) stays in [dt_min, dt_max]."""
    torch.manual_seed(0)
    layer = layers.build("mamba2", d_model=8, headdim=2, d_state=2, dt_min=1e-3, dt_max=1e-2, dt_init_floor=0.0,
                         dtype=F64)
    dt = F.softplus(layer.dt_bias.detach())
    assert float(dt.min()) >= 1e-3 * (1 - 1e-12) and float(dt.max()) <= 1e-2 * (1 + 1e-12)


def test_mamba2_chunk_size_reaches_the_chunked_scan_and_can_be_reassigned(monkeypatch):
    """Kills MB19 (the layer's chunk_size not passed to the scan: the chunked path ran at its default T = 64, which
    ``chunk_size`` and its assignment document as the T used): the chunks seen by ``segment_sums`` have T =
    chunk_size, then the newly assigned one, and the output stays the float64 loop's."""
    seen = []
    segment = ssd_module.segment_sums
    monkeypatch.setattr(ssd_module, "segment_sums", lambda a: seen.append(a.shape[-1]) or segment(a))
    torch.manual_seed(1)
    layer = layers.build("mamba2", d_model=H, d_state=3, headdim=2, chunk_size=8, device=DEVICE, dtype=F64)
    u = torch.randn(1, 21, H, device=DEVICE, dtype=F64)
    want = mixer_loop(layer, u)
    with torch.no_grad(), use_backend("chunked"):
        y8, _ = layer(u)
        layer.chunk_size = 5
        y5, _ = layer(u)
    assert seen == [8, 5]
    assert rel_err(y8, want) < 1e-12 and rel_err(y5, want) < 1e-12


def test_mamba2_step_calls_a_hooked_norm_as_the_forward_does():
    """Kills MB20 (the fused C step taken with a hooked gated norm: the hook ran in forward, not in step): a hook
    doubling the norm's output doubles the (bias-free) layer's output, by forward and by steps."""
    torch.manual_seed(2)
    layer = layers.build("mamba2", d_model=H, d_state=3, headdim=2, chunk_size=4, device=DEVICE, dtype=F64)
    u = torch.randn(2, 7, H, device=DEVICE, dtype=F64)
    with torch.no_grad():
        y_plain, _ = layer(u)
        layer.norm.register_forward_hook(lambda module, args, out: 2 * out)
        y_forward, _ = layer(u)
        y_steps, _ = run_steps(layer, u)
    assert rel_err(y_forward, 2 * y_plain) < 1e-12
    assert rel_err(y_steps, 2 * y_plain) < 1e-12


def test_mamba2_keeps_a_listed_init_range_as_the_tuple_it_means():
    """Kills MB22 (an A_init_range list, as JSON and YAML configurations hold it, kept as a list): the option reads
    back as the tuple, so the printed layer lists it only where it differs from the default (1.0, 16.0)."""
    default = layers.build("mamba2", d_model=H, headdim=2, d_state=2, A_init_range=[1.0, 16.0])
    ranged = layers.build("mamba2", d_model=H, headdim=2, d_state=2, A_init_range=[2.0, 3.0])
    assert default.A_init_range == (1.0, 16.0) and type(default.A_init_range) is tuple
    assert "A_init_range" not in default.extra_repr()
    assert ranged.extra_repr().endswith("A_init_range=(2.0, 3.0)")
    assert bool(((ranged.A_log.exp() >= 2 - 1e-6) & (ranged.A_log.exp() <= 3 + 1e-6)).all())


# ------------------------------------------------------------------------------------------------------------------
# ops/ssd.py


def _ssd_inputs(Bsz=2, L=11, Hh=4, P=2, G=2, N=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(Bsz, L, Hh, P, generator=g, dtype=F64)
    dt = F.softplus(torch.randn(Bsz, L, Hh, generator=g, dtype=F64))
    A = -(torch.rand(Hh, generator=g, dtype=F64) * 2 + 0.5)
    B = torch.randn(Bsz, L, G, N, generator=g, dtype=F64)
    C = torch.randn(Bsz, L, G, N, generator=g, dtype=F64)
    h0 = torch.randn(Bsz, Hh, P, N, generator=g, dtype=F64)
    return [t.to(DEVICE) for t in (x, dt, A, B, C, h0)]


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_ssd_refuses_a_decay_that_is_not_one_per_head(backend):
    """Kills SS23 (A checked by its number of entries only: an (H, 1) or (1, H) A passed, and broadcast against
    dt (B, L, H) into another shape): A must be (H,)."""
    x, dt, A, B, C, h0 = _ssd_inputs()
    for bad in (A[:, None], A[None, :]):
        with pytest.raises(ValueError, match=r"A must be \(H,\) = \(4,\)"):
            ssd(x, dt, bad, B, C, h0, backend=backend)


def test_ssd_batched_products_sliced_by_several_rows_per_call(monkeypatch):
    """Kills SS21 (the slices of batch rows miscounted when a call takes several whole rows): at a GEMM limit of two
    rows' matrices (B·G·R·nc = 4·2·2·3 = 48 matrices, limit 24), two calls of two rows each, the same values as
    one call, and both equal the step-by-step recurrence."""
    inputs = _ssd_inputs(Bsz=4, L=11, Hh=4, G=2)
    want = ssd_chunked(*inputs, chunk_size=4)  # nc = 3
    calls = []
    einsum = torch.einsum
    monkeypatch.setattr(ssd_module, "gemm_batch_limit", lambda device: 24)
    monkeypatch.setattr(ssd_module.torch, "einsum",
                        lambda eq, *ops: (calls.append((eq, ops[0].shape[0])), einsum(eq, *ops))[1])
    got = ssd_chunked(*inputs, chunk_size=4)
    monkeypatch.undo()
    assert [rows for eq, rows in calls if eq == "bgrcts,bcsgrp->bctgrp"] == [2, 2]
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    y_ref, h_ref = ssd_reference(*inputs)
    assert rel_err(got[0], y_ref) < 1e-12 and rel_err(got[1], h_ref) < 1e-12


# ------------------------------------------------------------------------------------------------------------------
# layers/rglru.py


def _rglru(seed: int = 4):
    return random_block(seed, lru_width=4, n_heads=2)  # nonzero biases and a stronger conv: every term shows


def test_rglru_step_calls_a_hooked_recurrence_gate_as_the_forward_does():
    """Kills RG21 (the fused C step taken with a hooked W_a: the hook ran in forward, not in step): a hook shifting
    the recurrence gate's pre-activation by -2 changes the output, and steps give the forward's output and state."""
    layer = _rglru()
    u = torch.randn(2, 9, H, device=DEVICE, dtype=F64)
    with torch.no_grad():
        y_plain, _ = layer(u)
        layer.gate_a.register_forward_hook(lambda module, args, out: out - 2.0)
        y, h = layer(u)
        y_steps, h_steps = run_steps(layer, u)
    assert rel_err(y, y_plain) > 1e-3  # the premise: the hook matters
    assert rel_err(y_steps, y) < 1e-12
    assert rel_err(h_steps.h, h.h) < 1e-12 and rel_err(h_steps.conv, h.conv) < 1e-12


def test_rglru_step_gradients_equal_the_forwards():
    """Kills RG23 (the step's gate branch GeLU(W_y u) detached: no gradient reached W_y through ``step``): the
    gradients of Σ y² over a step loop equal those over the forward, parameter by parameter and for the input."""
    layer = _rglru(seed=6)
    u = torch.randn(2, 6, H, device=DEVICE, dtype=F64, requires_grad=True)
    names, params = zip(*layer.named_parameters())
    y, _ = layer(u)
    want = torch.autograd.grad(y.square().sum(), (u, *params))
    y_steps, _ = run_steps(layer, u)
    got = torch.autograd.grad(y_steps.square().sum(), (u, *params))
    assert rel_err(y_steps, y) < 1e-12
    for name, a, b in zip(("input", *names), got, want):
        assert rel_err(a, b) < 1e-10, name


# ------------------------------------------------------------------------------------------------------------------
# the fused steps of all three mixers


@pytest.mark.skipif(DEVICE.type != "cpu" or not native_available("linear_recurrence", F64),
                    reason="the native kernels do not build here")
@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("op", ["mamba_step", "mamba2_step", "rglru_step"])
def test_each_fused_step_passes_its_smoke_call_where_the_kernels_build(op, dtype):
    """Kills MA26, MB31 and RG26 (the layers' ``_step_native`` handing the kernel a halved b_Δ, one group instead of
    G, the gate branch and the conv input swapped): the gate's smoke call compares ``_step_native`` with
    ``_step_torch`` and, on a mismatch, marks the kernel unusable, so every step silently took the PyTorch path and
    tests/layers/test_native_steps.py skipped. Where the native kernels build, each fused step must be usable."""
    assert native_available(op, dtype)


def test_mamba2_reset_parameters_redraws_every_parameter():
    """Kills MB28 (the gated norm's weight left out of ``reset_parameters``, the documented only re-init path): after
    every parameter is changed, a reset from a seed equals a layer built from that seed, the norm weight w = 1."""
    torch.manual_seed(7)
    fresh = layers.build("mamba2", d_model=H, d_state=3, headdim=2, dtype=F64)
    torch.manual_seed(8)
    layer = layers.build("mamba2", d_model=H, d_state=3, headdim=2, dtype=F64)
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(3.0).add_(0.5)
    torch.manual_seed(7)
    layer.reset_parameters()
    for (name, a), b in zip(layer.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), name
    assert torch.equal(layer.norm.weight.detach(), torch.ones(layer.d_inner, dtype=F64))
