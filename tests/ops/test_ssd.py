"""Tests of ssmkit.ops.ssd: the SSD scan of Mamba-2, H_t = exp(Δ_t A) H_{t-1} + Δ_t x_t B_tᵀ, y_t = H_t C_t.

The chunked algorithm is compared with the step-by-step oracle (outputs, final state, every gradient, float64), with
a direct float64 evaluation of the quadratic form y = (𝓛 ∘ C Bᵀ)(Δ x) (independent of both), with values computed
by hand, in float32 against a float64 oracle under strong decay, and for the size of what autograd saves.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssmkit.ops import use_backend
from ssmkit.ops.ssd import segment_sums, ssd, ssd_chunked, ssd_reference, ssd_step
from ssmkit.ops.native import native_available
from ssmkit.ops.triton_gate import triton_available
from tests.conftest import DEVICE, rel_err

TOL64 = 1e-12  # float64: the same sums in another order; observed ~1e-15


def make_inputs(Bsz=2, L=37, H=6, P=3, G=2, N=5, dtype=torch.float64, decay=1.0, seed=0):
    """Random SSD inputs: Δ = softplus(noise) (0.1-3), A in [-3.5·decay, -0.5·decay], h0 ~ N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(Bsz, L, H, P, generator=g, dtype=torch.float64)
    dt = F.softplus(torch.randn(Bsz, L, H, generator=g, dtype=torch.float64))
    A = -(torch.rand(H, generator=g, dtype=torch.float64) * 3 + 0.5) * decay
    B = torch.randn(Bsz, L, G, N, generator=g, dtype=torch.float64)
    C = torch.randn(Bsz, L, G, N, generator=g, dtype=torch.float64)
    h0 = torch.randn(Bsz, H, P, N, generator=g, dtype=torch.float64)
    return [t.to(device=DEVICE, dtype=dtype) for t in (x, dt, A, B, C, h0)]


def quadratic_form(x, dt, A, B, C, h0):
    """y_t = Σ_{s≤t} exp(Σ_{k=s+1}^{t} Δ_k A) (C_t·B_s) Δ_s x_s + exp(Σ_{k≤t} Δ_k A) H0 C_t, and the final state
    H = Σ_s exp(Σ_{k>s} Δ_k A) Δ_s x_s B_sᵀ + exp(Σ_k Δ_k A) H0: the quadratic ("attention") form of arXiv
    2405.21060 §3, one head at a time in float64 with every decay summed explicitly."""
    Bsz, L, H, P = x.shape
    G = B.shape[2]
    R = H // G
    y = torch.zeros(Bsz, L, H, P, dtype=torch.float64)
    h_last = torch.zeros(h0.shape, dtype=torch.float64)
    x, dt, A, B, C, h0 = (t.double().cpu() for t in (x, dt, A, B, C, h0))
    for h in range(H):
        g = h // R
        a = dt[:, :, h] * A[h]  # (B, L)
        Lmat = torch.zeros(Bsz, L, L, dtype=torch.float64)
        for t in range(L):
            for s in range(t + 1):
                Lmat[:, t, s] = torch.exp(a[:, s + 1 : t + 1].sum(-1))
        scores = Lmat * torch.einsum("btn,bsn->bts", C[:, :, g], B[:, :, g])  # (B, L, L)
        xdt = x[:, :, h] * dt[:, :, h, None]  # (B, L, P)
        from_start = torch.exp(torch.cumsum(a, dim=1))  # (B, L)
        y[:, :, h] = scores @ xdt + from_start[..., None] * torch.einsum("bpn,btn->btp", h0[:, h], C[:, :, g])
        to_end = torch.stack([torch.exp(a[:, s + 1 :].sum(-1)) for s in range(L)], dim=1)  # (B, L)
        h_last[:, h] = torch.einsum("bs,bsp,bsn->bpn", to_end, xdt, B[:, :, g]) + from_start[:, -1, None, None] * h0[:, h]
    return y, h_last


@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("L,chunk_size", [(37, 8), (37, None), (16, 16), (5, 64), (9, 1), (12, 4)])
@pytest.mark.parametrize("G", [1, 2, 6])
def test_chunked_equals_reference_with_every_gradient(G, L, chunk_size, with_h0):
    x, dt, A, B, C, h0 = make_inputs(L=L, G=G)
    h0 = h0 if with_h0 else None
    inputs = [t.requires_grad_() for t in (x, dt, A, B, C) + ((h0,) if with_h0 else ())]
    y_ref, h_ref = ssd_reference(x, dt, A, B, C, h0)
    y, h = ssd_chunked(x, dt, A, B, C, h0, chunk_size=chunk_size)
    assert y.shape == (2, L, 6, 3) and h.shape == (2, 6, 3, 5)
    assert rel_err(y, y_ref) < TOL64 and rel_err(h, h_ref) < TOL64

    def objective(y, h):
        return (y * torch.cos(y)).sum() + h.square().sum()

    grads_ref = torch.autograd.grad(objective(y_ref, h_ref), inputs)
    grads = torch.autograd.grad(objective(y, h), inputs)
    for name, a, b in zip(("x", "dt", "A", "B", "C", "h0"), grads, grads_ref):
        assert rel_err(a, b) < 1e-11, name  # gradients sum more terms; observed ~1e-15


@pytest.mark.parametrize("with_h0", [False, True])
def test_chunked_and_loop_equal_the_quadratic_form(with_h0):
    # the independent float64 oracle: the attention-like form summed term by term (no recurrence, no chunks)
    x, dt, A, B, C, h0 = make_inputs(L=21, G=2)
    h0 = h0 if with_h0 else torch.zeros_like(h0)
    y_q, h_q = quadratic_form(x, dt, A, B, C, h0)
    for y, h in (ssd_chunked(x, dt, A, B, C, h0, chunk_size=8), ssd_reference(x, dt, A, B, C, h0)):
        assert rel_err(y, y_q) < TOL64 and rel_err(h, h_q) < TOL64


def test_hand_computed_values():
    # One head, P = N = 1, A = -2, Δ = 0.5 (decay e^{-1} per step), h0 = 0.5:
    # H_0 = e^{-1}·0.5 + 0.5·1·2 ≈ 1.18394, y_0 = 3 H_0; H_1 = e^{-1} H_0 + 0.5·(-1)·4 ≈ -1.56445, y_1 = -H_1.
    x = torch.tensor([1.0, -1.0], dtype=torch.float64).view(1, 2, 1, 1)
    dt = torch.tensor([0.5, 0.5], dtype=torch.float64).view(1, 2, 1)
    A = torch.tensor([-2.0], dtype=torch.float64)
    B = torch.tensor([2.0, 4.0], dtype=torch.float64).view(1, 2, 1, 1)
    C = torch.tensor([3.0, -1.0], dtype=torch.float64).view(1, 2, 1, 1)
    h0 = torch.tensor([0.5], dtype=torch.float64).view(1, 1, 1, 1)
    H0 = math.exp(-1) * 0.5 + 0.5 * 1.0 * 2.0
    H1 = math.exp(-1) * H0 + 0.5 * -1.0 * 4.0
    for impl in (ssd_reference, lambda *a: ssd_chunked(*a, chunk_size=1), ssd_chunked):
        y, h = impl(x, dt, A, B, C, h0)
        assert torch.allclose(y.flatten(), torch.tensor([3 * H0, -H1], dtype=torch.float64), rtol=1e-14, atol=0)
        assert abs(float(h) - H1) < 1e-14


def test_float32_under_strong_decay_is_accurate():
    # Long chunks of strong decay: Σ a over a chunk reaches ~-670, so log decays formed as differences of running
    # sums lose ~|Σ a|·eps absolute (measured: 2.8e-6 relative error in y); segment sums keep the float32 chunked
    # path near the loop's accuracy (measured 1.2e-7, the float32 loop 4e-8).
    x, dt, A, B, C, h0 = make_inputs(Bsz=1, L=256, H=2, P=2, G=1, N=3, decay=4.0, seed=3)
    y64, h64 = ssd_reference(x, dt, A, B, C, h0)
    y_loop, h_loop = ssd_reference(*(t.float() for t in (x, dt, A, B, C, h0)))
    y, h = ssd_chunked(*(t.float() for t in (x, dt, A, B, C, h0)), chunk_size=256)
    assert float((dt * A).sum(1).min()) < -500  # the premise: strong decay within one chunk
    err, err_loop = rel_err(y, y64), rel_err(y_loop, y64)
    assert err < 1e-6 and err < 10 * err_loop  # float32 sums of <= 256 terms
    assert rel_err(h, h64) < 2e-6


@pytest.mark.parametrize("limit,calls_made", [(60, 2), (13, 10), (2, 20)])
def test_batched_products_past_the_gemm_limit_are_sliced_to_the_same_values(monkeypatch, limit, calls_made):
    # cuBLAS failed past 65535 matrices per batched GEMM on an H200 (ssd_chunked at L = 2^20); the intra-chunk product
    # (B·G·R·nc = 2·2·3·10 = 120 matrices here) is then sliced: by batch rows (60 = one row per call), by chunks within
    # a row (13: 2 chunks of G·R = 6 matrices per call), one chunk per call at the least (2 < G·R) -- same values
    # and gradients
    from ssmkit.ops import ssd as ssd_module

    inputs = make_inputs(Bsz=2, L=37, H=6, P=3, G=2)
    leaves = [t.clone().requires_grad_() for t in inputs]
    want = ssd_chunked(*leaves, chunk_size=4)  # nc = 10
    grads_want = torch.autograd.grad(want[0].square().sum() + want[1].sum(), leaves)
    calls = []
    einsum = torch.einsum
    monkeypatch.setattr(ssd_module, "gemm_batch_limit", lambda device: limit)
    monkeypatch.setattr(ssd_module.torch, "einsum",
                        lambda eq, *ops: (calls.append((eq, ops[0].shape)), einsum(eq, *ops))[1])
    got = ssd_chunked(*leaves, chunk_size=4)
    monkeypatch.undo()
    grads = torch.autograd.grad(got[0].square().sum() + got[1].sum(), leaves)
    sliced = [shape for eq, shape in calls if eq == "bgrcts,bcsgrp->bctgrp"]
    assert all(shape[0] * shape[1] * shape[2] * shape[3] <= max(limit, 6) for shape in sliced)
    assert sum(shape[0] * shape[3] for shape in sliced) == 2 * 10  # each (row, chunk) once
    assert len(sliced) == calls_made
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_want))
    assert ssd_module.gemm_batch_limit(torch.device("cpu")) is None
    assert ssd_module.gemm_batch_limit(torch.device("cuda", 0)) == 65535


def test_segment_sums():
    a = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    S = segment_sums(a)
    inf = float("-inf")
    assert torch.equal(S, torch.tensor([[0.0, inf, inf], [2.0, 0.0, inf], [6.0, 4.0, 0.0]], dtype=torch.float64))


def test_autograd_saves_no_tensor_of_the_full_state_sequence():
    # Never (B, L, H, P, N): the largest saved tensors are the decay masks (B, H, L, T) and the chunk states.
    Bsz, L, H, P, G, N, T = 2, 64, 4, 8, 1, 16, 8
    inputs = [t.requires_grad_() for t in make_inputs(Bsz, L, H, P, G, N, dtype=torch.float32)]
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, h = ssd_chunked(*inputs, chunk_size=T)
    (y.sum() + h.sum()).backward()
    assert max(sizes) <= max(Bsz * H * L * T, Bsz * L * H * P * N // T)  # 8192 here, against 65536 for the full one
    assert all(t.grad is not None for t in inputs)


def test_dispatch_and_bad_inputs():
    x, dt, A, B, C, h0 = make_inputs(L=10)
    y_ref, _ = ssd_reference(x, dt, A, B, C, h0)
    with use_backend("reference"):
        assert torch.equal(ssd(x, dt, A, B, C, h0)[0], y_ref)
    assert rel_err(ssd(x, dt, A, B, C, h0, chunk_size=3)[0], y_ref) < TOL64
    for backend in ("fft", "triton") if not triton_available(DEVICE, "ssd", x.dtype) else ("fft",):  # test_triton.py: where it runs
        with pytest.raises(RuntimeError, match=f"ssd: backend '{backend}' was forced"):
            ssd(x, dt, A, B, C, backend=backend)
    with pytest.raises(ValueError, match=r"x must be \(B, L, H, P\)"):
        ssd(x[:, :0], dt, A, B, C)
    with pytest.raises(ValueError, match=r"dt must be \(B, L, H\)"):
        ssd(x, dt[:, 1:], A, B, C)
    with pytest.raises(ValueError, match=r"A must be \(H,\)"):
        ssd(x, dt, A[:2], B, C)
    with pytest.raises(ValueError, match="G dividing the H = 6 heads"):
        ssd(x, dt, A, torch.randn(2, 10, 4, 5, dtype=torch.float64), C)
    with pytest.raises(ValueError, match="C must have B's shape"):
        ssd(x, dt, A, B, C[..., :2])
    with pytest.raises(ValueError, match=r"h0 must be \(B, H, P, N\) = \(2, 6, 3, 5\)"):
        ssd(x, dt, A, B, C, h0[:1])
    with pytest.raises(ValueError, match="dt must have x's dtype"):
        ssd(x, dt.float(), A, B, C)
    with pytest.raises(ValueError, match="must be real float32 or float64"):
        ssd(x.to(torch.complex128), dt, A, B, C)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        ssd_chunked(x, dt, A, B, C, chunk_size=0)


def test_step_continues_the_scan():
    x, dt, A, B, C, h0 = make_inputs(L=7)
    y, h = ssd_chunked(x, dt, A, B, C, h0, chunk_size=4)
    y_t, h_next = ssd_step(x[:, 6], dt[:, 6], A, B[:, 6], C[:, 6], ssd_chunked(x[:, :6], dt[:, :6], A, B[:, :6], C[:, :6], h0)[1])
    assert rel_err(y_t, y[:, 6]) < TOL64 and rel_err(h_next, h) < TOL64


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_both_paths_check_their_inputs(backend):
    # every check is reached by the reference too, and each names the argument it rejects
    x, dt, A, B, C, h0 = make_inputs(L=10)  # B, C (2, 10, 2, 5): G = 2 groups of the H = 6 heads, P = 3, N = 5

    def raises(match, *args):
        with pytest.raises(ValueError, match=match):
            ssd(*args, backend=backend)

    raises(r"B must be \(B, L, G, N\) with \(B, L\) = \(2, 10\) and G dividing", x, dt, A, B[..., :1, :].expand(2, 10, 4, 5), C)
    raises("C must have B's shape", x, dt, A, B, C[..., :4])
    empty = torch.zeros(2, 10, 0, 5, dtype=torch.float64, device=x.device)
    raises("G dividing the H = 6 heads", x, dt, A, empty, empty)  # G = 0: no group (not a division by zero)
    raises(r"x must be \(B, L, H, P\) with B, L >= 1; got shape \(0, 10, 6, 3\)", x[:0], dt[:0], A, B[:0], C[:0])
    dev = x.device  # the messages name the inputs' device (cuda:0, not the test's "cuda")
    raises(f"dt must be on x's device {dev}; got meta", x, dt.to("meta"), A, B, C)  # meta: a second device
    raises(f"C must be on x's device {dev}; got meta", x, dt, A, B, C.to("meta"))
    raises(rf"h0 must have x's dtype torch.float64 and device {dev}; got torch.float32 on {dev}", x, dt, A, B, C,
           h0.float())
    raises(f"h0 must have x's dtype torch.float64 and device {dev}; got torch.float64 on meta", x, dt, A, B, C,
           h0.to("meta"))
    raises(r"h0 must be \(B, H, P, N\) = \(2, 6, 3, 5\); got list", x, dt, A, B, C, h0.tolist())


def test_chunk_length_is_at_most_L_and_64_by_default(monkeypatch):
    # the chunk length T = min(chunk_size, L), chunk_size 64 when None (the docstring), seen through the segment sums
    # of each chunk (their last axis is T) and the count of chunk states in the recurrence over chunks (⌈L/T⌉)
    import ssmkit.ops.ssd as ssd_module

    seen = []
    segment, recurrence = ssd_module.segment_sums, ssd_module.linear_recurrence
    monkeypatch.setattr(ssd_module, "segment_sums", lambda a: seen.append(("T", a.shape[-1])) or segment(a))
    monkeypatch.setattr(ssd_module, "linear_recurrence", lambda a, b, h0: seen.append(("nc", a.shape[1])) or recurrence(a, b, h0))
    for L, chunk_size, want in ((5, None, [("T", 5), ("nc", 1)]), (130, None, [("T", 64), ("nc", 3)]),
                                (7, 3, [("T", 3), ("nc", 3)]), (7, 100, [("T", 7), ("nc", 1)])):
        seen.clear()
        x, dt, A, B, C, h0 = make_inputs(Bsz=1, L=L, H=2, P=1, G=1, N=2)
        y, h = ssd(x, dt, A, B, C, h0, chunk_size=chunk_size, backend="chunked")
        assert seen == want, (L, chunk_size)
        y_ref, h_ref = ssd_reference(x, dt, A, B, C, h0)
        assert rel_err(y, y_ref) < TOL64 and rel_err(h, h_ref) < TOL64


def test_dispatch_passes_the_chunk_size_on():
    # ssd(chunk_size=...) reaches the chunked path (its check of the value) and is checked on the native path (which
    # keeps its own recompute chunk); the reference takes no chunk size
    x, dt, A, B, C, h0 = make_inputs(L=6)
    for backend in ("chunked", "auto", *(("native",) if native_available("ssd", x.dtype) else ())):
        with pytest.raises(ValueError, match="chunk_size must be a positive int; got 0"):
            ssd(x, dt, A, B, C, h0, chunk_size=0, backend=backend)
    y, h = ssd(x, dt, A, B, C, h0, chunk_size=0, backend="reference")
    y_q, h_q = quadratic_form(x, dt, A, B, C, h0)
    assert rel_err(y, y_q) < TOL64 and rel_err(h, h_q) < TOL64


def test_step_checks_its_inputs_and_its_state():
    # the state h must be (B, H, P, N) in x_t's dtype: a batch-1, P = 1 or float32 state used to broadcast or promote
    # silently into a (2, 6, 3, 5) float64 result
    x, dt, A, B, C, h0 = make_inputs(L=1)  # x_t (2, 6, 3), dt_t (2, 6), B_t, C_t (2, 2, 5), h (2, 6, 3, 5)
    x_t, dt_t, B_t, C_t = x[:, 0], dt[:, 0], B[:, 0], C[:, 0]

    def raises(match, *args):
        with pytest.raises(ValueError, match=match):
            ssd_step(*args)

    want = rf"h must be \(B, H, P, N\) = \(2, 6, 3, 5\) in x_t's dtype torch.float64 on {x_t.device}; got "
    raises(want + rf"\(1, 6, 3, 5\) torch.float64 on {x_t.device}", x_t, dt_t, A, B_t, C_t, h0[:1])
    raises(want + rf"\(2, 6, 1, 5\) torch.float64 on {x_t.device}", x_t, dt_t, A, B_t, C_t, h0[:, :, :1])
    raises(want + rf"\(2, 6, 3, 5\) torch.float32 on {x_t.device}", x_t, dt_t, A, B_t, C_t, h0.float())
    raises(want + "NoneType", x_t, dt_t, A, B_t, C_t, None)
    raises(r"x_t must be a tensor \(B, H, P\); got \(2, 6\)", x_t[..., 0], dt_t, A, B_t, C_t, h0)
    raises(r"dt_t must be a tensor \(B, H\); got list", x_t, dt_t.tolist(), A, B_t, C_t, h0)
    raises(r"C must have B's shape", x_t, dt_t, A, B_t, C_t[..., :4], h0)
    raises("G dividing the H = 6 heads", x_t, dt_t, A, B_t[:, :1].expand(2, 4, 5), C_t[:, :1].expand(2, 4, 5), h0)
    # and a good state gives the recurrence's step: H = exp(Δ A) H_{-1} + Δ x Bᵀ, y = H C, by hand per head
    y, h = ssd_step(x_t, dt_t, A, B_t, C_t, h0)
    for head in range(6):
        g = head // 3
        H = torch.exp(dt_t[:, head] * A[head])[:, None, None] * h0[:, head] + (dt_t[:, head, None] * x_t[:, head])[:, :, None] * B_t[:, g, None, :]
        assert rel_err(h[:, head], H) < TOL64 and rel_err(y[:, head], (H * C_t[:, g, None, :]).sum(-1)) < TOL64


def test_auto_takes_the_kernel_for_inference_and_the_chunked_path_for_training(monkeypatch):
    # where the SSD kernel runs (here said to), "auto" takes it only when no gradient is wanted: its backward re-runs
    # the chunked path, which made a training call slower than the chunked path alone on an H200
    import ssmkit.ops.native.gate as native_gate
    import ssmkit.ops.ssd as ssd_module
    import ssmkit.ops.triton_gate as gate

    monkeypatch.setattr(native_gate, "prefer_native", lambda op, t: False)  # as on CUDA, where the C kernel never runs
    ran = []
    table = dict(ssd_module._SSD)
    for name in ("chunked", "triton"):
        monkeypatch.setitem(ssd_module._SSD, name, lambda *a, _n=name, **k: ran.append(_n) or table["chunked"](*a, **k))
    monkeypatch.setattr(gate, "prefer_triton", lambda t, op: op == "ssd")
    x, dt, A, B, C, h0 = make_inputs()
    ssd_module.ssd(x, dt, A, B, C, h0, backend="auto")
    with torch.no_grad():
        ssd_module.ssd(x, dt.requires_grad_(), A, B, C, h0, backend="auto")
    ssd_module.ssd(x, dt, A, B, C, h0, backend="auto")  # dt requires grad, grad mode on
    ssd_module.ssd(x, dt.detach(), A, B, C, h0.requires_grad_(), backend="auto")
    assert ran == ["triton", "triton", "chunked", "chunked"]
