"""Probe of 2026-12-05: the FLOP bounds of ``ssmkit bench cases`` against independent counts of each core op's
arithmetic.

A row's FLOP bound is the time its op's arithmetic takes at the measured GEMM rate; its fraction is that time over
the measured one. Here each op's count is checked two ways, at small pairwise-distinct sizes in float64:

- a loop written here from the op's recurrence, on a float that counts every +, - and * it takes part in
  (:class:`Flop`; a multiply-add is 2, as the GEMM rate counts 2·m·n·k), whose output equals the op's reference (or the
  layer's own forward, from the layer's own discretised matrices); what the bound leaves out (exp, softplus, the
  square root, a skip D u) is computed on plain floats beside it, uncounted;
- ``torch.utils.flop_counter.FlopCounterMode`` on the op's reference where it has matmuls (it counts those alone):
  attention's q kᵀ and p v (the bound takes their causal half), the SSD's y = H C, Δ's low-rank projection in the
  selective scan, and S5's and LRU's B̄ u and C x (complex products, which it counts as one multiply-add each).

Found: *every layer was held to one formula, 6·B·L·H·N forward (a diagonal scan of N/2 complex modes per channel at
12 flops per mode), at its d_model H and the case's N*, 3x that forward+backward, the same per step token. At the
cases' default shape (B 8, L 4 096, H 128, N 64, float32) that is 1.61 GFLOP forward, 4.83 forward+backward and
1.61 for 4 096 steps, for every layer. Per core op now, before -> after (forward; forward+backward 3x, step the
forward's unless said):

- Mamba (selective scan on E = 2H = 256 channels, N 64, Δ from δlow of rank R 8): 6N + 1 + 2R = 401 flops per
  position and channel, 1.61 -> 3.36 GFLOP (2.09x): its rows' FLOP fractions read 2.1x too low.
- Mamba-2 (SSD, 4 heads of P 64, N 64): 5PN + P + 1 = 20 545 per position and head, 1.61 -> 2.69 (1.67x).
- Attention (2 heads of 64, no N): 4·P per causal pair, L(L + 1)/2 pairs: 1.61 -> 34.4 (21.3x; 103 forward+backward).
- RG-LRU (width 128, one state per channel): 6 per position and channel, 1.61 -> 0.025 (64x lower): the old bound
  counted N = 64 states per channel where the RG-LRU keeps one, so it was not a lower bound and its fractions read 64x
  too high.
- The LTI layers, by the recurrence of their own state: a bank of complex modes (S4D, S4, DSS, DLR, Liquid-S4:
  11 flops per mode, the input coefficient B̄ folded into C: 1.61 -> 1.48, 0.92x), of real modes (EMA, Mega's EMA:
  4 per mode, 1.07, 0.67x), GSS's SSM on H/4 channels (0.37, 0.23x), S5 and LRU's one shared system of 32 modes
  (6M + 8HM per step: 1.08, 0.67x), H3's diagonal SSM and its 64-tap shift SSM (1.87, 1.16x; steps 2.01).
  SGConv and Hyena are long convolutions, counted as the cheaper of the direct sum and an FFT convolution (two real
  transforms of 2L points and the spectra's product: 94 flops per position and channel at L 4 096): 1.61 -> 0.39
  (0.24x), forward+backward 4.83 -> 0.81 (0.17x); their steps sum the inputs they see directly: SGConv's 1 024 taps
  7.5 (4.7x), Hyena's every earlier input 17.2 (10.7x, quadratic in L).

Not counted anywhere (so each bound stays below what its op does): transcendental functions, the softmax's max, sum
and division, a skip D u and a gate (5 flops per Mamba channel and position: ~1 % of 401), a flash backward's
recompute. The LTI bound of an SSM layer is its recurrence's also for the FFT path (94 flops per position there
against the recurrence's 352 at N 64: an FFT row may in principle exceed it; none comes near on the CPU).
forward+backward is 3x forward: exact for the contractions (FlopCounterMode below), the same rule for the
elementwise recurrences. ``bench.json`` rows name the op (``flops_model``, the same as ``bytes_model``).
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import ssmkit.layers as layers
import ssmkit.layers.attention as attention_module
from ssmkit.bench import core, limits
from ssmkit.ops import use_backend
from ssmkit.ops.attention import causal_attention_reference
from ssmkit.ops.fftconv import causal_conv_reference
from ssmkit.ops.mimo import mimo_scan_reference
from ssmkit.ops.rglru import rglru
from ssmkit.ops.selective import selective_scan, selective_scan_reference
from ssmkit.ops.ssd import ssd_reference

TOL = 1e-12  # float64 loops against float64 references: the same sums in another order, ~1e-15 relative


class Flop:
    """A float that counts its arithmetic: each +, - and * with a Flop operand adds one to ``Flop.count``. Plain floats
    (the parameters, and what a bound leaves out) combine uncounted; no other operation is defined, so nothing slips
    by uncounted."""

    count = 0
    __slots__ = ("v",)

    def __init__(self, v: float) -> None:
        self.v = float(v)

    @staticmethod
    def _value(o) -> float:
        return o.v if isinstance(o, Flop) else float(o)

    def _new(self, v: float) -> Flop:
        Flop.count += 1
        return Flop(v)

    def __add__(self, o):
        return self._new(self.v + Flop._value(o))

    __radd__ = __add__

    def __sub__(self, o):
        return self._new(self.v - Flop._value(o))

    def __rsub__(self, o):
        return self._new(Flop._value(o) - self.v)

    def __mul__(self, o):
        return self._new(self.v * Flop._value(o))

    __rmul__ = __mul__


def counted(fn, *args):
    """fn(*args) and the flops it counted."""
    Flop.count = 0
    out = fn(*args)
    return out, Flop.count


def values(x) -> torch.Tensor:
    return torch.tensor([[[v.v if isinstance(v, Flop) else v for v in row] for row in mat] for mat in x],
                        dtype=torch.float64)


def test_the_counting_float_counts_each_operation_once():
    (y,), n = counted(lambda: (2.0 * Flop(3.0) + 1.0 - Flop(0.5) * Flop(4.0),))
    assert (y.v, n) == (5.0, 4)
    _, n = counted(lambda: 2.0 * 3.0 + Flop(1.0).v)  # plain floats: uncounted
    assert n == 0
    with pytest.raises(TypeError):
        Flop(1.0) / 2.0


# ----------------------------------------------------------------------------------------------------------------
# LTI: the recurrence of the layer's state


def bank_loop(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor) -> list:
    """y (B, L, H) of a bank of diagonal systems, complex or real, by the folded recurrence x'_t = Ā ⊙ x'_{t-1} + u_t,
    y_t = Re Σ_m C̃_m x'_{t,m} with x' = x / B̄, C̃ = C B̄ (per-channel constants, formed uncounted), from rest."""
    Bsz, L, H = u.shape
    M = A_bar.shape[1]
    C_tilde = C * B_bar  # (H, M)
    real = not A_bar.is_complex()
    a_r, a_i = A_bar.real.tolist(), (None if real else A_bar.imag.tolist())
    c_r, c_i = C_tilde.real.tolist(), (None if real else C_tilde.imag.tolist())
    y = [[[None] * H for _ in range(L)] for _ in range(Bsz)]
    for b in range(Bsz):
        for h in range(H):
            xr, xi = [Flop(0.0)] * M, [Flop(0.0)] * M
            for t in range(L):
                u_t, acc = Flop(u[b, t, h]), 0.0
                for m in range(M):
                    if real:
                        xr[m] = a_r[h][m] * xr[m] + u_t  # 1 mul, 1 add
                        acc = acc + c_r[h][m] * xr[m]  # 1 mul, 1 add
                        continue
                    xr[m], xi[m] = (a_r[h][m] * xr[m] - a_i[h][m] * xi[m] + u_t,  # 2 mul, 2 add
                                    a_r[h][m] * xi[m] + a_i[h][m] * xr[m])  # 2 mul, 1 add
                    acc = acc + (c_r[h][m] * xr[m] - c_i[h][m] * xi[m])  # 2 mul, 2 add: Re(C̃ x')
                y[b][t][h] = acc
    return y


def mimo_loop(u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor) -> list:
    """y (B, L, H) of one system of M complex modes read by every channel: x_t = Ā ⊙ x_{t-1} + B̄ u_t,
    y_t = Re(C x_t)."""
    Bsz, L, H = u.shape
    M = A_bar.shape[0]
    a_r, a_i = A_bar.real.tolist(), A_bar.imag.tolist()
    b_r, b_i, c_r, c_i = B_bar.real.tolist(), B_bar.imag.tolist(), C.real.tolist(), C.imag.tolist()
    y = [[[None] * H for _ in range(L)] for _ in range(Bsz)]
    for b in range(Bsz):
        xr, xi = [Flop(0.0)] * M, [Flop(0.0)] * M
        for t in range(L):
            u_t = [Flop(u[b, t, h]) for h in range(H)]
            for m in range(M):
                xr[m], xi[m] = a_r[m] * xr[m] - a_i[m] * xi[m], a_r[m] * xi[m] + a_i[m] * xr[m]  # 6
                for h in range(H):  # B̄ u_t: a complex-by-real multiply-add, 4
                    xr[m], xi[m] = xr[m] + b_r[m][h] * u_t[h], xi[m] + b_i[m][h] * u_t[h]
            for h in range(H):
                acc = 0.0
                for m in range(M):
                    acc = acc + (c_r[h][m] * xr[m] - c_i[h][m] * xi[m])  # the real part of C x: 4
                y[b][t][h] = acc
    return y


def lti_output(layer, u: torch.Tensor) -> torch.Tensor:
    """The layer's own y - D u (float64, the reference backend)."""
    with torch.no_grad(), use_backend("reference"):
        y, _ = layer(u, return_state=False)
    return y - layer.D * u


def build64(name: str, **options) -> layers.SequenceLayer:
    torch.manual_seed(0)
    return layers.build(name, **options).double()


@pytest.mark.parametrize("name,options", [
    ("s4d", {"d_model": 3, "d_state": 8}), ("dss", {"d_model": 3, "d_state": 6}),
    ("dlr", {"d_model": 2, "d_state": 10}), ("ema", {"d_model": 3, "d_state": 5}),
])
def test_a_bank_bound_is_the_count_of_the_layers_folded_recurrence(name, options):
    """Complex modes 11 flops per batch row, step, channel and mode; EMA's real modes 4. The loop runs the layer's own
    Ā, B̄, C and reproduces its forward."""
    layer = build64(name, **options)
    B, L = 2, 5
    u = torch.randn(B, L, layer.d_model, dtype=torch.float64)
    A_bar, B_bar, C = layer.discrete()
    y, n = counted(bank_loop, u, A_bar, B_bar, C[0])
    torch.testing.assert_close(values(y), lti_output(layer, u), rtol=TOL, atol=TOL)
    assert limits.layer_flops(layer, "forward", B, L, 99) == ("lti", n)
    assert limits.layer_flops(layer, "step", B, L, 99) == ("lti", n)  # L tokens, one step each
    per = 4 if name == "ema" else 11
    assert n == per * B * L * layer.d_model * layer.n_modes


@pytest.mark.parametrize("name,options", [("s5", {"d_model": 3, "d_state": 16}), ("lru", {"d_model": 4, "d_state": 6})])
def test_a_shared_systems_bound_is_the_count_of_its_recurrence(name, options):
    """S5 and LRU: one system of M modes, 6·M + 8·H·M per step and batch row; the loop reproduces the layer."""
    layer = build64(name, **options)
    B, L, H, M = 2, 4, layer.d_model, layer.n_modes
    u = torch.randn(B, L, H, dtype=torch.float64)
    A_bar, B_bar, C = layer.discrete()
    y, n = counted(mimo_loop, u, A_bar, B_bar, C[0])
    torch.testing.assert_close(values(y), lti_output(layer, u), rtol=TOL, atol=TOL)
    assert n == B * L * (6 * M + 8 * H * M)
    assert limits.layer_flops(layer, "forward", B, L, 99) == ("lti", n)


def test_flop_counter_sees_the_shared_systems_products_as_one_multiply_add_per_complex_entry():
    """mimo_scan_reference forms B̄ u_t and C x_t as complex matmuls (2·B·H·M each per step to FlopCounterMode); the
    bound counts 4 real flops for each complex-by-real or real-part product: twice that, beside Ā ⊙ x's 6·M."""
    torch.manual_seed(0)
    B, L, H, M = 2, 5, 3, 4
    u = torch.randn(B, L, H, dtype=torch.float64)
    A_bar = 0.9 * torch.exp(1j * torch.rand(M, dtype=torch.float64))
    B_bar, C = torch.randn(M, H, dtype=torch.complex128), torch.randn(H, M, dtype=torch.complex128)
    with FlopCounterMode(display=False) as counter:
        mimo_scan_reference(u, A_bar, B_bar, C, return_state=False)
    assert counter.get_total_flops() == 4 * B * L * H * M
    assert limits.lti_flops("forward", B, L, H, M, shared=True) == 2 * counter.get_total_flops() + B * L * 6 * M


def fir_loop(u: torch.Tensor, K: torch.Tensor, taps: int) -> list:
    """y (B, L, H) of the causal convolution with the first ``taps`` taps of K (H, L): a multiply-add per tap seen."""
    Bsz, L, H = u.shape
    k = K.tolist()
    y = [[[None] * H for _ in range(L)] for _ in range(Bsz)]
    for b in range(Bsz):
        for h in range(H):
            for t in range(L):
                acc = 0.0
                for j in range(min(t + 1, taps)):
                    acc = acc + k[h][j] * Flop(u[b, t - j, h])
                y[b][t][h] = acc
    return y


def test_a_convolutions_direct_count_reproduces_sgconvs_forward():
    """SGConv's K_len = 4 taps (l_max 4, kernel_dim 2) over L = 7: 2 flops per tap an output sees. At this L the direct
    sum is cheaper than the FFT convolution, so it is the forward bound too; a step counts it always."""
    layer = build64("sgconv", d_model=3, l_max=4, kernel_dim=2)
    B, L = 2, 7
    assert layer.kernel_length == 4
    u = torch.randn(B, L, 3, dtype=torch.float64)
    K = layer.kernel(L)  # (H, L), the skip on tap 0, zero beyond K_len
    assert torch.equal(K[:, 4:], torch.zeros_like(K[:, 4:]))
    y, n = counted(fir_loop, u, K, layer.kernel_length)
    torch.testing.assert_close(values(y), causal_conv_reference(u, K), rtol=TOL, atol=TOL)
    with torch.no_grad():
        torch.testing.assert_close(values(y), layer(u, return_state=False)[0], rtol=TOL, atol=TOL)
    assert n == 2 * B * 3 * (1 + 2 + 3 + 4 * 4)
    for mode in ("forward", "step"):
        assert limits.layer_flops(layer, mode, B, L, 99) == ("lti", n)
    assert limits.layer_flops(layer, "forward_backward", B, L, 99) == ("lti", 3 * n)


def rfft_2(x):
    return [(x[0] + x[1], 0.0), (x[0] - x[1], 0.0)]


def rfft_4(x):
    a0, a1, a2, a3 = x[0] + x[2], x[0] - x[2], x[1] + x[3], x[1] - x[3]
    return [(a0 + a2, 0.0), (a1, 0.0 - a3.v), (a0 - a2, 0.0)]  # X1's imaginary part: a sign flip, no flop


def rfft_8(x):
    """The 8-point real DFT with 20 additions and 2 multiplications (w = e^{-iπ/4})."""
    s = math.sqrt(0.5)
    a = [x[0] + x[4], x[0] - x[4], x[2] + x[6], x[2] - x[6], x[1] + x[5], x[1] - x[5], x[3] + x[7], x[3] - x[7]]
    b0, b1, b2, b3 = a[0] + a[2], a[0] - a[2], a[4] + a[6], a[4] - a[6]
    d0, d1 = (a[5] - a[7]) * s, (a[5] + a[7]) * s
    e0, e1 = a[3] + d1, a[3] - d1
    return [(b0 + b2, 0.0), (a[1] + d0, 0.0 - e0.v), (b1, 0.0 - b3.v), (a[1] - d0, e1), (b0 - b2, 0.0)]


@pytest.mark.parametrize("n,transform", [(2, rfft_2), (4, rfft_4), (8, rfft_8)])
def test_the_real_fft_count_is_that_of_hand_written_transforms(n, transform):
    """2·n·log2 n - 4·n + 6: 2, 6 and 22 flops at n = 2, 4, 8, each the count of a transform that equals torch's."""
    x = torch.randn(n, dtype=torch.float64)
    X, count = counted(transform, [Flop(v) for v in x.tolist()])
    got = torch.tensor([complex(Flop._value(re), Flop._value(im)) for re, im in X], dtype=torch.complex128)
    torch.testing.assert_close(got, torch.fft.rfft(x), rtol=TOL, atol=TOL)
    assert limits.rfft_flops(n) == count == {2: 2, 4: 6, 8: 22}[n]


def test_a_long_convolution_takes_the_fft_count_where_it_is_cheaper():
    """Hyena's O = order - 1 long convolutions per channel see every earlier input: L(L + 1) flops each directly, more
    than the FFT's 2·r(2L) + 3·2L - 4 from L ~ 20 on."""
    layer = layers.build("hyena", d_model=4, order=3)
    channels = 2 * 4
    for L in (5, 60):
        direct, n = L * (L + 1), 2 * L
        fft = 2 * limits.rfft_flops(n) + 3 * n - 4
        assert (direct < fft) == (L == 5)
        assert limits.layer_flops(layer, "forward", 3, L, 99) == ("lti", 3 * channels * min(direct, fft))
        assert limits.layer_flops(layer, "step", 3, L, 99) == ("lti", 3 * channels * direct)


# the LTI layers whose bound is read from a part of the layer: (options, the parts at B 2, L 6)
def _parts(mode, B, L, name):
    return {
        "s4": limits.lti_flops(mode, B, L, 4, 5),  # (H, N/2) complex modes
        "liquid_s4": limits.lti_flops(mode, B, L, 4, 5),  # S4's modes; the input products left out
        "gss": limits.lti_flops(mode, B, L, 2, 3),  # its SSM on H_s = max(⌈H/4⌉, 2) = 2 channels of 3 modes
        "mega": limits.lti_flops(mode, B, L, 4, 6, complex_modes=False),  # its EMA: H channels of N real modes
        # the diagonal SSM on P·P·(H/P) = 2·2·2 channels of N/2 modes, and the shift SSM's N = 6 taps per channel
        "h3": limits.lti_flops(mode, B, L, 8, 3) + limits.conv_flops(mode, B, L, 4, taps=6),
        "hyena": limits.conv_flops(mode, B, L, 8),  # O = 2 long convolutions per channel, every earlier input
    }[name]


PART_OPTIONS = {"s4": {"d_state": 10}, "liquid_s4": {"d_state": 10}, "gss": {"d_state": 6}, "mega": {"d_state": 6},
                "h3": {"d_state": 6, "head_dim": 2}, "hyena": {"order": 3}}


@pytest.mark.parametrize("name", sorted(PART_OPTIONS))
def test_lti_layers_bound_the_part_that_runs_the_lti_op(name):
    layer = layers.build(name, d_model=4, **PART_OPTIONS[name])
    for mode in limits.MODES:
        assert limits.layer_flops(layer, mode, 2, 6, 99) == ("lti", _parts(mode, 2, 6, name))


def test_gss_mega_and_h3_bound_their_ssm_by_the_count_of_its_recurrence():
    """The part's own discretised matrices in the counted loop: GSS's SSM, Mega's EMA, H3's diagonal SSM (one run per
    pair of its head's P·P outer-product channels: P² copies of its H/P channels)."""
    B, L = 2, 4
    for name, options, ssm, copies in (("gss", {"d_model": 8, "d_state": 6}, "ssm", 1),
                                       ("mega", {"d_model": 3, "d_state": 4}, "ema", 1),
                                       ("h3", {"d_model": 4, "d_state": 6, "head_dim": 2}, "ssm", 4)):
        layer = build64(name, **options)
        part = getattr(layer, ssm)
        u = torch.randn(B * copies, L, part.d_model, dtype=torch.float64)
        A_bar, B_bar, C = part.discrete()
        y, n = counted(bank_loop, u, A_bar, B_bar, C[0])
        torch.testing.assert_close(values(y), lti_output(part, u), rtol=TOL, atol=TOL)
        shift = limits.conv_flops("step", B, L, 4, taps=6) if name == "h3" else 0
        assert limits.layer_flops(layer, "step", B, L, 99) == ("lti", n + shift)


def test_every_lti_layer_has_a_flop_model_and_an_undeclared_one_is_refused():
    for name in layers.available():
        if limits.core_op(layers.layer_class(name)) == "lti":
            layer = core.build_for_bench(name, 16, 16, 8)
            assert limits.layer_flops(layer, "forward", 1, 8, 16)[1] > 0

    class Plain(layers.SequenceLayer):
        zoo = layers.layer_class("s4d").zoo

    with pytest.raises(ValueError, match="Plain runs the LTI op but has no FLOP model in lti_layer_flops .*: its FLOP "
                                         "bound is unknown"):
        limits.layer_flops(Plain(), "forward", 1, 1, 1)


# ----------------------------------------------------------------------------------------------------------------
# the time-varying ops


def test_the_selective_bound_is_the_count_of_its_recurrence():
    """6·N + 1 per position and channel: Δ A_n, Δ u, exp(Δ A_n) h + (Δ u) B_n, Σ C_n h_n; softplus, exp and the bias
    add are computed uncounted."""
    torch.manual_seed(0)
    B, L, E, N, G = 2, 5, 4, 3, 2
    u, delta = torch.randn(B, L, E, dtype=torch.float64), torch.randn(B, L, E, dtype=torch.float64)
    A, bias = -torch.rand(E, N, dtype=torch.float64), torch.randn(E, dtype=torch.float64)
    Bm, Cm = torch.randn(B, L, G, N, dtype=torch.float64), torch.randn(B, L, G, N, dtype=torch.float64)
    dt = F.softplus(delta + bias).tolist()  # left out

    def loop():
        y = [[[None] * E for _ in range(L)] for _ in range(B)]
        for b in range(B):
            for e in range(E):
                g, h = e // (E // G), [Flop(0.0)] * N
                for t in range(L):
                    dt_t = Flop(dt[b][t][e])
                    x, acc = dt_t * Flop(u[b, t, e]), 0.0  # Δ u
                    for n in range(N):
                        A_bar = math.exp((dt_t * A[e, n].item()).v)  # Δ A_n counted, exp not
                        h[n] = A_bar * h[n] + x * Bm[b, t, g, n].item()
                        acc = acc + Cm[b, t, g, n].item() * h[n]
                    y[b][t][e] = acc
        return y

    y, n = counted(loop)
    want, _ = selective_scan_reference(u, delta, A, Bm, Cm, delta_bias=bias, delta_softplus=True, return_state=False)
    torch.testing.assert_close(values(y), want, rtol=TOL, atol=TOL)
    assert n == limits.selective_flops("forward", B, L, E, N) == B * L * E * (6 * N + 1)


def test_the_selective_bound_adds_the_projection_the_scan_forms_delta_by():
    """With δlow (R per position) and W_Δ, the scan forms Δ = W_Δ δ: FlopCounterMode sees that product alone (the
    reference's recurrence is elementwise), 2·B·L·E·R."""
    torch.manual_seed(0)
    B, L, E, N, R = 2, 5, 6, 3, 2
    u, z, low = torch.randn(B, L, E), torch.randn(B, L, E), torch.randn(B, L, R)
    args = (-torch.rand(E, N), torch.randn(B, L, N), torch.randn(B, L, N), torch.randn(E), z, torch.randn(E), True)
    selective_scan(u, low, *args, backend="reference", delta_proj=torch.randn(E, R))  # not counted: the first call
    # also runs the native kernel's one-time smoke check (auto's gate is evaluated under an explicit backend too)
    with FlopCounterMode(display=False) as counter:
        selective_scan(u, low, *args, backend="reference", delta_proj=torch.randn(E, R))
    with FlopCounterMode(display=False) as none:
        selective_scan(u, torch.randn(B, L, E), *args, backend="reference")
    assert none.get_total_flops() == 0 and counter.get_total_flops() == 2 * B * L * E * R
    assert limits.selective_flops("forward", B, L, E, N, delta_width=R) - limits.selective_flops(
        "forward", B, L, E, N) == counter.get_total_flops()


def test_the_ssd_bound_is_the_count_of_its_recurrence_and_flop_counter_sees_its_contraction():
    """5·P·N + P + 1 per position and head; FlopCounterMode counts y = H C (2·P·N) in ssd_reference, and 3x that for
    forward+backward (the 3x rule, exact for the contraction)."""
    torch.manual_seed(0)
    B, L, H, P, N, G = 2, 4, 4, 3, 5, 2
    x, dt = torch.randn(B, L, H, P, dtype=torch.float64), torch.rand(B, L, H, dtype=torch.float64)
    A = -torch.rand(H, dtype=torch.float64)
    Bm, Cm = torch.randn(B, L, G, N, dtype=torch.float64), torch.randn(B, L, G, N, dtype=torch.float64)

    def loop():
        y = torch.zeros(B, L, H, P, dtype=torch.float64)
        for b in range(B):
            for h in range(H):
                g, S = h // (H // G), [[Flop(0.0)] * N for _ in range(P)]
                for t in range(L):
                    dt_t = Flop(dt[b, t, h])
                    decay = math.exp((dt_t * A[h].item()).v)  # Δ A counted, exp not
                    for p in range(P):
                        xd, acc = Flop(x[b, t, h, p]) * dt_t, 0.0
                        for n in range(N):
                            S[p][n] = decay * S[p][n] + xd * Bm[b, t, g, n].item()
                            acc = acc + S[p][n] * Cm[b, t, g, n].item()
                        y[b, t, h, p] = acc.v
        return y

    y, n = counted(loop)
    torch.testing.assert_close(y, ssd_reference(x, dt, A, Bm, Cm)[0], rtol=TOL, atol=TOL)
    assert n == limits.ssd_flops("forward", B, L, H, P, N) == B * L * H * (5 * P * N + P + 1)
    inputs = [t.clone().requires_grad_() for t in (x, dt, A, Bm, Cm)]
    with FlopCounterMode(display=False) as forward:
        y, _ = ssd_reference(*inputs)
    with FlopCounterMode(display=False) as both:
        y, _ = ssd_reference(*inputs)
        y.backward(torch.ones_like(y))
    assert forward.get_total_flops() == 2 * B * L * H * P * N
    assert both.get_total_flops() == 3 * forward.get_total_flops()


@pytest.mark.parametrize("window", [None, 3])
def test_the_attention_bound_is_the_causal_part_of_the_references_products(window):
    """FlopCounterMode counts q kᵀ and p v over the whole L × L (4·B·A·L²·P) and 3x that with the backward; the bound
    takes the pairs a query sees, L(L + 1)/2 (or Σ min(i + 1, W)), counted here by a loop."""
    torch.manual_seed(0)
    B, A, L, P = 2, 3, 7, 4
    q, k, v = (torch.randn(B, A, L, P, dtype=torch.float64, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False) as forward:
        o = causal_attention_reference(q, k, v, window)
    with FlopCounterMode(display=False) as both:
        o = causal_attention_reference(q, k, v, window)
        o.backward(torch.ones_like(o))
    pairs = sum(1 for i in range(L) for j in range(L) if j <= i and (window is None or j > i - window))
    assert pairs == (28 if window is None else 18)
    assert forward.get_total_flops() == 4 * B * A * L * L * P and both.get_total_flops() == 3 * 4 * B * A * L * L * P
    assert limits.attention_flops("forward", B, L, A, P, window) == forward.get_total_flops() * pairs / L**2
    assert limits.attention_flops("forward_backward", B, L, A, P, window) == both.get_total_flops() * pairs / L**2


@pytest.mark.parametrize("window", [None, 3])
def test_the_attention_step_bound_is_what_the_layers_steps_compute(monkeypatch, window):
    """Each step's attention (one query over the keys it sees), counted by FlopCounterMode on the reference given the
    arguments the layer's step passes to the op (the step's fused path is invisible to FlopCounterMode), summed over
    the steps: exactly the bound (one query: no masked-out work)."""
    torch.manual_seed(0)
    layer, B, L = layers.build("attention", d_model=12, head_dim=4, window=window), 2, 6
    total, original = [], attention_module.causal_attention

    def counting(q, k, v, window=None, **kwargs):
        with FlopCounterMode(display=False) as counter:
            o = causal_attention_reference(q, k, v, window)
        total.append(counter.get_total_flops())
        out = original(q, k, v, window, **kwargs)
        torch.testing.assert_close(o, out)  # the counted reference computes the step's attention
        return out

    monkeypatch.setattr(attention_module, "causal_attention", counting)
    state = layer.initial_state(B)
    with torch.no_grad():
        for _ in range(L):
            _, state = layer.step(torch.randn(B, 12), state)
    assert len(total) == L
    assert limits.layer_flops(layer, "step", B, L, 99) == ("attention", sum(total))
    assert sum(total) == 4 * B * 3 * 4 * limits.causal_pairs(L, window)


def test_the_rglru_bound_is_the_count_of_its_gate_algebra_and_recurrence():
    """6 per position and channel: r·(-c softplus(-Λ)), 2 log a, i x times √(1 - a²), a h + (·); softplus(-Λ) (per
    channel), exp, expm1 and the square root uncounted."""
    torch.manual_seed(0)
    B, L, D, c = 2, 5, 3, 8.0
    x = torch.randn(B, L, D, dtype=torch.float64)
    r, i = torch.rand(B, L, D, dtype=torch.float64), torch.rand(B, L, D, dtype=torch.float64)
    Lam = torch.randn(D, dtype=torch.float64)
    k = (-c * F.softplus(-Lam)).tolist()

    def loop():
        y = [[[None] * D for _ in range(L)] for _ in range(B)]
        for b in range(B):
            for d in range(D):
                h = Flop(0.0)
                for t in range(L):
                    log_a = Flop(r[b, t, d]) * k[d]
                    a = math.exp(log_a.v)
                    multiplier = math.sqrt(-math.expm1((log_a * 2.0).v))
                    h = a * h + (Flop(i[b, t, d]) * x[b, t, d].item()) * multiplier
                    y[b][t][d] = h
        return y

    y, n = counted(loop)
    torch.testing.assert_close(values(y), rglru(x, r, i, Lam, c, backend="reference")[0], rtol=TOL, atol=TOL)
    assert n == limits.rglru_flops("forward", B, L, D) == 6 * B * L * D


@pytest.mark.parametrize("name,options,flops", [
    # E = 2·40, N 6, R = ⌈40/16⌉ = 3
    ("mamba", {"d_model": 40, "d_state": 6}, lambda m, B, L: limits.selective_flops(m, B, L, 80, 6, delta_width=3)),
    ("mamba2", {"d_model": 32, "d_state": 6, "headdim": 16, "ngroups": 2},
     lambda m, B, L: limits.ssd_flops(m, B, L, 4, 16, 6)),  # E/P = 64/16 heads
    ("attention", {"d_model": 12, "n_heads": 2, "head_dim": 8, "window": 3},
     lambda m, B, L: limits.attention_flops(m, B, L, 2, 8, window=3)),
    ("rglru", {"d_model": 8, "lru_width": 12}, lambda m, B, L: limits.rglru_flops(m, B, L, 12)),
])
def test_layer_flops_reads_the_op_sizes_from_the_layer(name, options, flops):
    layer = layers.build(name, **options)
    for mode in limits.MODES:
        assert limits.layer_flops(layer, mode, 2, 9, 5) == (limits.core_op(type(layer)), flops(mode, 2, 9))
    if name == "mamba":  # a wrapped dt_proj is called by the layer, which hands the scan Δ whole: no projection
        layer.dt_proj = torch.nn.Sequential(layer.dt_proj)
        assert limits.layer_flops(layer, "forward", 2, 9, 5)[1] == limits.selective_flops("forward", 2, 9, 80, 6)


# ----------------------------------------------------------------------------------------------------------------
# the numbers of the module docstring

DEFAULT = (8, 4096, 128, 64)  # B, L, H, N
OLD = 6 * 8 * 4096 * 128 * 64  # the former bound, every layer, forward and step (3x forward+backward)
AFTER = {  # forward GFLOP at the default shape, and the ratio to the old bound
    "mamba": (3.364, 2.09), "mamba2": (2.693, 1.67), "attention": (34.37, 21.3), "rglru": (0.02517, 0.0156),
    "s4d": (1.476, 0.917), "s4": (1.476, 0.917), "dss": (1.476, 0.917), "dlr": (1.476, 0.917),
    "liquid_s4": (1.476, 0.917), "ema": (1.074, 0.667), "mega": (1.074, 0.667), "gss": (0.3691, 0.229),
    "s5": (1.080, 0.671), "lru": (1.080, 0.671), "h3": (1.871, 1.16), "sgconv": (0.3943, 0.245),
    "hyena": (0.3943, 0.245),
}


def test_the_documented_numbers_at_the_cases_default_shape():
    B, L, H, N = DEFAULT
    assert sorted(AFTER) == sorted(layers.available())
    for name, (gflop, ratio) in AFTER.items():
        layer = core.build_for_bench(name, H, N, L)  # as the forward rows time it (l_max = L)
        f = limits.layer_flops(layer, "forward", B, L, N)[1]
        assert (f / 1e9, f / OLD) == (pytest.approx(gflop, rel=5e-4), pytest.approx(ratio, rel=3e-3)), name
    steps = {name: limits.layer_flops(core.build_for_bench(name, H, N, None), "step", B, L, N)[1] / 1e9
             for name in ("h3", "sgconv", "hyena")}  # a step case's layer keeps its default l_max
    assert steps == {"h3": pytest.approx(2.009, rel=5e-4), "sgconv": pytest.approx(7.517, rel=5e-4),
                     "hyena": pytest.approx(17.18, rel=5e-4)}
    fb = limits.layer_flops(core.build_for_bench("sgconv", H, N, L), "forward_backward", B, L, N)[1]
    assert fb / 1e9 == pytest.approx(0.8137, rel=5e-4)
    assert inspect.signature(limits.layer_flops).parameters.keys() == {"layer", "mode", "batch", "length", "d_state"}
