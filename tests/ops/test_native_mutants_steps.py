"""What a mutation probe of the fused C steps (mamba_step.c, mamba2_step.c, rglru_step.c and their shared conv_step.h,
gated_rows.h, rglru_gates.h) found the other tests would not catch: each test here kills mutants that passed them,
against the step's equations in float64 torch ops written here (independent of the layers' own steps).

The steps take the in-projection's output (Mamba, Mamba-2) and the RG-LRU's two branches by a row stride, and accept
rows a wider buffer apart (unit stride along the last dimension only): every caller passed fresh contiguous rows, so a
kernel that assumed contiguous rows passed every other test (one mutant per kernel).

The RG-LRU step's input multiplier √(1 - a²) near a = 1: the layer tests compare whole steps to a tolerance of the
largest value, where it is a small term, and a float32 kernel forming a - 1 from the rounded a (not the expm1 series
of rglru_gates.h) and a float64 one forming 1 - a² passed them; here each channel's multiplier against the float64
-expm1(2 log a).

Mamba-2's step without the gated norm (rmsnorm=False) with one skip per channel (D_has_hdim) ran in no test nor in the
gate's smoke call: a kernel reading D per head there passed both (the smoke call now runs that combination too)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmkit.ops.native import native_available
from ssmkit.ops.native.mamba2_step import mamba2_step_native
from ssmkit.ops.native.mamba_step import mamba_step_native
from ssmkit.ops.native.rglru_step import rglru_step_native
from tests.conftest import DEVICE, rel_err

F64, F32 = torch.float64, torch.float32
pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu" or not all(native_available(op, dtype) for op in ("mamba_step", "mamba2_step", "rglru_step")
                                    for dtype in (F32, F64)),
    reason="the native backend runs on the CPU where a C compiler builds it",
)


def _conv(st, x, w, b, reset=None):
    """The short conv's step: Σ_k w_k window_k + b over window = [st, x] (st zeroed where reset), and the next state."""
    if reset is not None:
        st = st * ~reset[:, None, None]
    window = torch.cat([st, x[..., None]], -1)  # (B, C, W)
    out = (window * w).sum(-1) + (0 if b is None else b)
    return out, window[..., 1:]


def mamba_reference(xz, cs, cw, cb, Wx, Wdt, dtb, Alog, D, h):
    """arXiv 2312.00752 Algorithm 2 between the projections, in float64 ops."""
    H, N = Alog.shape
    R = Wdt.shape[1]
    xs, z = xz[:, :H], xz[:, H:]
    u, cs_next = _conv(cs, xs, cw, cb)
    u = F.silu(u)
    dlow, B, C = (u @ Wx.T).split([R, N, N], -1)
    dt = F.softplus(dlow @ Wdt.T + dtb)  # (B, H)
    hn = torch.exp(dt[..., None] * -torch.exp(Alog)) * h + (dt * u)[..., None] * B[:, None]
    y = (hn * C[:, None]).sum(-1) + D * u
    return y * F.silu(z), cs_next, hn


def mamba2_reference(zx, cs, cw, cb, dtb, Alog, D, ssm, G):
    """arXiv 2405.21060 §7's step without the norm (y ⊙ SiLU(z)), in float64 ops; D (H) per head or (E) per channel."""
    Bsz, H, P, N = ssm.shape
    E = H * P
    C = E + 2 * G * N
    z, xbc, dtr = zx[:, :E], zx[:, E:E + C], zx[:, E + C:]
    u, cs_next = _conv(cs, xbc, cw, cb)
    x, B, Cm = F.silu(u).split([E, G * N, G * N], -1)
    dt = F.softplus(dtr + dtb)  # (B, H)
    a = torch.exp(-dt * torch.exp(Alog))
    Bh = B.view(Bsz, G, 1, N).expand(Bsz, G, H // G, N).reshape(Bsz, H, N)  # head hh in group hh // (H / G)
    Ch = Cm.view(Bsz, G, 1, N).expand(Bsz, G, H // G, N).reshape(Bsz, H, N)
    xh = x.view(Bsz, H, P)
    hn = a[..., None, None] * ssm + (dt[..., None] * xh)[..., None] * Bh[:, :, None]
    y = (hn * Ch[:, :, None]).sum(-1).reshape(Bsz, E) + x * (D.repeat_interleave(P) if D.numel() == H else D)
    return y * F.silu(z), cs_next, hn


def rglru_reference(g, z, cs, cw, cb, Wa, ba, Wx, bx, Lam, c, h, reset):
    """arXiv 2402.19427 §2.4's step between the projections, in float64 ops (block-diagonal gates)."""
    Bsz, D = z.shape
    G, K = Wa.shape[:2]
    v, cs_next = _conv(cs, z, cw, cb, reset)
    vb = v.view(Bsz, G, K)
    r = torch.sigmoid(torch.einsum("bgi,gij->bgj", vb, Wa).reshape(Bsz, D) + ba.reshape(D))
    i = torch.sigmoid(torch.einsum("bgi,gij->bgj", vb, Wx).reshape(Bsz, D) + bx.reshape(D))
    la = -c * r * F.softplus(-Lam)
    a, m = torch.exp(la), torch.sqrt(-torch.expm1(2 * la))
    if reset is not None:
        a, m = a * ~reset[:, None], torch.where(reset[:, None], torch.ones_like(m), m)
    hn = a * h + m * (i * v)
    return hn * g, cs_next, hn


def _rand(g, *shape, dtype=F64):
    return torch.randn(*shape, generator=g, dtype=F64).to(dtype)


def _check(got, want, tol):
    for a, b in zip(got, want):
        assert a.shape == b.shape and rel_err(a, b) < tol, (a.shape, rel_err(a, b))


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_mamba_step_reads_rows_a_wider_buffer_apart(dtype):
    # xz (B, 2H): rows 2H + 7 apart in a wider buffer (unit stride along H), as the wrapper accepts them
    g = torch.Generator().manual_seed(0)
    Bsz, H, N, R, W = 3, 10, 4, 2, 4
    xz = _rand(g, Bsz, 2 * H + 7, dtype=dtype)[:, 3:3 + 2 * H]
    args = [xz, _rand(g, Bsz, H, W - 1, dtype=dtype), 0.5 * _rand(g, H, W, dtype=dtype), _rand(g, H, dtype=dtype),
            0.4 * _rand(g, R + 2 * N, H, dtype=dtype), 0.5 * _rand(g, H, R, dtype=dtype), _rand(g, H, dtype=dtype),
            0.3 * _rand(g, H, N, dtype=dtype), _rand(g, H, dtype=dtype), _rand(g, Bsz, H, N, dtype=dtype)]
    assert not xz.is_contiguous() and xz.stride() == (2 * H + 7, 1)
    got = mamba_step_native(*args)
    want = mamba_reference(*(t.double() for t in args))
    _check(got, want, 1e-12 if dtype == F64 else 2e-6)


@pytest.mark.parametrize("per_channel", [False, True], ids=["D-per-head", "D-per-channel"])
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_mamba2_step_reads_rows_a_wider_buffer_apart(dtype, per_channel):
    # zxbcdt (B, 2E + 2GN + H): rows 5 values further apart than its width; two groups of two heads of 3; without the
    # norm (y ⊙ SiLU(z)), with one skip per head or per channel (D_has_hdim: no other test ran it without the norm)
    g = torch.Generator().manual_seed(1)
    Bsz, H, P, N, G, W = 3, 4, 3, 2, 2, 3
    E = H * P
    C = E + 2 * G * N
    zx = _rand(g, Bsz, E + C + H + 5, dtype=dtype)[:, 2:2 + E + C + H]
    cs, cw, cb = _rand(g, Bsz, C, W - 1, dtype=dtype), 0.5 * _rand(g, C, W, dtype=dtype), _rand(g, C, dtype=dtype)
    dtb, Alog, D, ssm = _rand(g, H, dtype=dtype), 0.3 * _rand(g, H, dtype=dtype), \
        _rand(g, E if per_channel else H, dtype=dtype), _rand(g, Bsz, H, P, N, dtype=dtype)
    assert not zx.is_contiguous() and zx.stride(-1) == 1
    got = mamba2_step_native(zx, cs, cw, cb, dtb, Alog, D, None, 0.0, False, ssm, G)
    want = mamba2_reference(*(t.double() for t in (zx, cs, cw, cb, dtb, Alog, D, ssm)), G)
    _check(got, want, 1e-12 if dtype == F64 else 2e-6)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_rglru_step_reads_rows_of_wider_buffers(dtype):
    # g and z (B, D): rows D + 3 and D + 6 apart (unit stride along D); one row starts a segment
    gen = torch.Generator().manual_seed(2)
    Bsz, D, G, W = 3, 12, 3, 4
    K = D // G
    g = _rand(gen, Bsz, D + 3, dtype=dtype)[:, 1:1 + D]
    z = _rand(gen, Bsz, D + 6, dtype=dtype)[:, 4:4 + D]
    rest = [_rand(gen, Bsz, D, W - 1, dtype=dtype), 0.5 * _rand(gen, D, W, dtype=dtype), _rand(gen, D, dtype=dtype),
            0.4 * _rand(gen, G, K, K, dtype=dtype), _rand(gen, G, K, dtype=dtype), 0.4 * _rand(gen, G, K, K, dtype=dtype),
            _rand(gen, G, K, dtype=dtype), 2 * _rand(gen, D, dtype=dtype)]
    h = _rand(gen, Bsz, D, dtype=dtype)
    reset = torch.tensor([False, True, False])
    assert not (g.is_contiguous() or z.is_contiguous())
    got = rglru_step_native(g, z, *rest, 8.0, h, reset)
    want = rglru_reference(g.double(), z.double(), *(t.double() for t in rest), 8.0, h.double(), reset)
    _check(got, want, 1e-12 if dtype == F64 else 2e-6)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_rglru_step_input_multiplier_near_a_equal_1_per_element(dtype):
    # one step from h = 0 with v = z (a 1-tap conv of weight 1), r = σ(0) = 1/2 and i = 1/2 (zero gate weights), g = 1:
    # out = √(1 - a²) / 2 with log a = -c r softplus(-Λ) from -1e-9 to -3 across the channels, each within rounding of
    # the float64 -expm1(2 log a) (1 - a² formed from a rounded a lost up to all its digits near a = 1; float32's
    # expm1 series for |log a| < 1/4 must be the series to its last term)
    D, c = 64, 8.0
    t = torch.logspace(-9, 0.5, D, dtype=F64)  # -log a
    Lam = (-torch.log(torch.expm1(t / (c / 2)))).to(dtype)  # softplus(-Λ) = t / (c r)
    zeros = lambda *s: torch.zeros(*s, dtype=dtype)  # noqa: E731
    args = [torch.ones(2, D, dtype=dtype), torch.ones(2, D, dtype=dtype), zeros(2, D, 0), torch.ones(D, 1, dtype=dtype),
            zeros(D), zeros(1, D, D), zeros(1, D), zeros(1, D, D), zeros(1, D), Lam, c, zeros(2, D)]
    reset = torch.tensor([False, True])
    out, _, h = rglru_step_native(*args, reset)
    want = torch.sqrt(-torch.expm1(-2 * (c / 2) * F.softplus(-Lam.double()))) / 2
    err = ((out[0].double() - want) / want).abs().max().item()
    assert err < (1e-13 if dtype == F64 else 1e-6), err
    assert torch.equal(out[1], torch.full((D,), 0.5, dtype=dtype))  # a segment start: the multiplier 1
    assert torch.equal(out, h)


def test_the_mamba2_step_smoke_call_runs_both_skips_without_the_norm(monkeypatch):
    # the gate's smoke call decides whether "auto" (a Mamba2 step without gradients) runs the kernel; it ran the
    # per-channel skip (D_has_hdim) only inside the gated norm, and a mutant reading D per head on the unnormed path
    # (rmsnorm=False) passed it. Its kernel calls must now cover the norm and no norm, each with both kinds of D
    import ssmkit.ops.native.mamba2_step as kernel
    from ssmkit.ops.native import gate

    real, seen = kernel.mamba2_step_native, set()

    def spy(zxbcdt, conv_state, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, *rest):
        seen.add((norm_weight is not None, D.shape[0] != A_log.shape[0]))  # (normed, one skip per channel)
        return real(zxbcdt, conv_state, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, *rest)

    monkeypatch.setattr(kernel, "mamba2_step_native", spy)
    gate._smoke("mamba2_step", F32)
    assert seen == {(True, False), (True, True), (False, False), (False, True)}, seen
