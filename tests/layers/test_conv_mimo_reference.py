"""layers/shortconv, layers/longconv and layers/mimo against references written here in float64 (numpy): the short
causal depthwise convolution of H3 (Fu et al., arXiv 2212.14052 §3.1; Mamba's and Hawk's Conv1D) tap by tap with
its carried window and segment starts, the long convolution continued from past inputs as one sum over
[past, new], and the MIMO diagonal system of S5 (Smith et al., arXiv 2208.04933 eq. 2-3) as its recurrence, its
kernel and its real state-space form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssmkit.layers.longconv import conv_with_past, fit_length, last_inputs
from ssmkit.layers.shortconv import ShortConv
from tests.conftest import run_steps

F64 = torch.float64


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


# --- layers/shortconv -------------------------------------------------------------------------------------------


def _short_conv_loop(x, w, b, state, resets, silu):
    """y_t = Σ_k w_k x_{t-W+1+k} + b per channel over the window [state, x], the window emptied at a segment start
    (the state before x dropped too); returns y (B, L, H) and the last W-1 inputs (zeros before the latest start)."""
    B, L, H = x.shape
    W = w.shape[1]
    window = np.zeros((B, W - 1, H)) if state is None else state.transpose(0, 2, 1).copy()  # oldest first
    ys = np.zeros((B, L, H))
    for t in range(L):
        if resets is not None:
            window[resets[:, t]] = 0.0
        full = np.concatenate([window, x[:, t:t + 1]], 1)  # (B, W, H)
        y = np.einsum("bkh,hk->bh", full, w) + (0.0 if b is None else b)
        ys[:, t] = y / (1.0 + np.exp(-y)) if silu else y
        window = full[:, 1:]
    return ys, window.transpose(0, 2, 1)


def _moved_conv(H, W, bias, seed):
    torch.manual_seed(seed)
    conv = ShortConv(H, W, bias=bias, dtype=F64)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn_like(p))
    return conv


@pytest.mark.parametrize("W, bias, silu, with_resets", [(3, True, False, False), (4, False, True, True),
                                                        (2, True, True, False), (3, True, False, True)])
def test_short_conv_equals_the_tap_loop(W, bias, silu, with_resets):
    conv = _moved_conv(5, W, bias, seed=W)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 9, 5, generator=g, dtype=F64)
    state = torch.randn(2, 5, W - 1, generator=g, dtype=F64)
    resets = None
    if with_resets:
        resets = torch.zeros(2, 9, dtype=torch.bool)
        resets[0, [0, 4]] = True
        resets[1, [2, 3, 8]] = True
    b = None if conv.bias is None else _np(conv.bias)
    want, last = _short_conv_loop(_np(x), _np(conv.weight), b, _np(state), None if resets is None else _np(resets),
                                  silu)
    act = "silu" if silu else None
    y, st = conv(x, state, resets=resets, activation=act)
    np.testing.assert_allclose(_np(y), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(st), last, rtol=0, atol=0)
    y_only, none = conv(x, state, return_state=False, resets=resets, activation=act)
    np.testing.assert_allclose(_np(y_only), want, rtol=1e-12, atol=1e-12)
    assert none is None
    if not silu and not with_resets:
        ys, h = run_steps(conv, x, state)
        np.testing.assert_allclose(_np(ys), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(_np(h), last, rtol=0, atol=0)


def test_short_conv_options_state_and_repr():
    conv = ShortConv(4, 3, bias=False, dtype=F64)
    assert conv.channels == 4 and conv.width == 3 and conv.bias is None
    assert conv.weight.shape == (4, 3) and conv.weight.dtype == F64
    spec = conv.state_spec()
    assert tuple(spec.shape) == (4, 2) and spec.dtype == F64
    assert "channels=4, width=3, bias=False" in repr(conv)
    assert "bias=True" in repr(ShortConv(2))
    assert ShortConv(2).width == 4
    for bad, name in (({"channels": 0}, "channels"), ({"channels": 3, "width": 0}, "width")):
        with pytest.raises(ValueError, match=name):
            ShortConv(**bad)
    with pytest.raises(ValueError, match="activation"):
        conv(torch.randn(1, 3, 4, dtype=F64), resets=torch.zeros(1, 3, dtype=torch.bool), activation="relu")


def test_short_conv_draws_are_conv1d_uniform():
    """Weight and bias uniform on ±1/√W (nn.Conv1d's depthwise fan-in W): inside the bound, reaching it, mean 0."""
    torch.manual_seed(3)
    conv = ShortConv(4000, 3)
    bound = 1.0 / math.sqrt(3)
    for p in (conv.weight, conv.bias):
        v = _np(p).ravel()
        assert np.abs(v).max() <= bound and np.abs(v).max() > 0.99 * bound
        assert abs(v.mean()) < 0.02 and abs(v.var() - bound**2 / 3) < 0.01
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
    conv.reset_parameters()
    assert float(conv.weight.detach().abs().min()) > 0 and float(conv.bias.detach().abs().min()) > 0


# --- layers/longconv --------------------------------------------------------------------------------------------


def _long_conv_loop(u_all, K):
    """y_t = Σ_{s≤t} K_{t-s} u_s over the whole input (B, T, H) with the kernel (H, ≥T)."""
    B, T, H = u_all.shape
    y = np.zeros((B, T, H))
    for t in range(T):
        for s in range(t + 1):
            y[:, t] += K[:, t - s] * u_all[:, s]
    return y


@pytest.mark.parametrize("backend", ["reference", "fft", "auto"])
@pytest.mark.parametrize("T", [0, 4, None])
def test_conv_with_past_is_one_sum_over_past_and_new(T, backend):
    g = torch.Generator().manual_seed(13)
    u = torch.randn(2, 7, 3, generator=g, dtype=F64)
    K = torch.randn(3, 14, generator=g, dtype=F64)
    past = None if T is None else torch.randn(2, 3, T, generator=g, dtype=F64)
    y, whole = conv_with_past(u, K, past, backend)
    full = _np(u) if past is None else np.concatenate([_np(past).transpose(0, 2, 1), _np(u)], 1)
    np.testing.assert_allclose(_np(whole), full, rtol=0, atol=0)
    np.testing.assert_allclose(_np(y), _long_conv_loop(full, _np(K))[:, full.shape[1] - 7:], rtol=1e-12, atol=1e-12)


def test_an_empty_past_stays_in_the_graph():
    past = torch.zeros(2, 3, 0, dtype=F64, requires_grad=True)
    u = torch.randn(2, 5, 3, dtype=F64, requires_grad=True)
    y, _ = conv_with_past(u, torch.randn(3, 5, dtype=F64), past, "reference")
    g_past, g_u = torch.autograd.grad(y.sum(), (past, u))
    assert g_past.shape == (2, 3, 0) and g_u.shape == u.shape


def _symbolic(fn, *args):
    """``fn`` traced with symbolic sizes (the sizes are SymInts inside, as under torch.export); the trace must not
    guard on them (no branch on the length: one program for every length)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    traced = make_fx(fn, tracing_mode="symbolic")(*args)
    assert [str(g.expr) for g in traced.shape_env.guards] == []
    return traced


@pytest.mark.parametrize("symbolic", [False, True])
def test_fit_length_crops_or_pads_with_zeros(symbolic):
    """The last axis (5 taps; the leading sizes 10 and 11 exceed some L) cropped or padded; a crop is a view of K."""
    K = torch.randn(10, 11, 5, dtype=F64)
    fit = _symbolic(lambda k, u: fit_length(k, u.shape[0]), K, torch.zeros(7)) if symbolic else \
        (lambda k, u: fit_length(k, u.shape[0]))
    for L in (2, 5, 9):
        want = np.zeros((10, 11, L))
        n = min(L, 5)
        want[..., :n] = _np(K)[..., :n]
        got = fit(K, torch.zeros(L))
        np.testing.assert_array_equal(_np(got), want)
        if not symbolic and L <= 5:
            assert got.data_ptr() == K.data_ptr()


@pytest.mark.parametrize("symbolic", [False, True])
def test_last_inputs_are_the_last_w_rows_oldest_first(symbolic):
    g = torch.Generator().manual_seed(17)
    last = _symbolic(lambda u: last_inputs(u, 4), torch.zeros(2, 6, 3)) if symbolic else (lambda u: last_inputs(u, 4))
    for L in (2, 4, 7):
        u = torch.randn(2, L, 3, generator=g, dtype=F64)
        padded = np.concatenate([np.zeros((2, 4, 3)), _np(u)], 1)
        got = last(u)
        np.testing.assert_array_equal(_np(got), padded[:, -4:].transpose(0, 2, 1))
        assert got.is_contiguous()


# --- layers/mimo ------------------------------------------------------------------------------------------------


def _mimo_class():
    from torch import nn

    from ssmkit.layers.mimo import MIMODiagonalLTILayer

    class HandMIMO(MIMODiagonalLTILayer):
        """Ā (M,), B̄ (M, H), C (C, H, M) given by hand (stored as real pairs; no discretisation)."""

        def __init__(self, A_bar, B_bar, C, D, bidirectional):
            super().__init__()
            self.d_model = D.shape[0]
            self.bidirectional = bidirectional
            pairs = (nn.Parameter(torch.view_as_real(t).clone()) for t in (A_bar, B_bar, C))
            self.A_pair, self.B_pair, self.C_pair = pairs
            self.D = nn.Parameter(D)

        def discrete(self):
            return tuple(torch.view_as_complex(p) for p in (self.A_pair, self.B_pair, self.C_pair))

        @property
        def n_modes(self):
            return self.A_pair.shape[0]

    return HandMIMO


def _hand_mimo(bidirectional, seed, dtype=F64, H=3, M=4):
    g = torch.Generator().manual_seed(seed)
    cdt = torch.complex128 if dtype == F64 else torch.complex64
    r = 0.5 + 0.45 * torch.rand(M, generator=g, dtype=F64)
    A = (r * torch.exp(2j * math.pi * torch.rand(M, generator=g, dtype=F64))).to(cdt)
    B = torch.randn(M, H, generator=g, dtype=cdt)
    C = torch.randn(2 if bidirectional else 1, H, M, generator=g, dtype=cdt)
    D = torch.randn(H, generator=g, dtype=F64).to(dtype)
    return _mimo_class()(A, B, C, D, bidirectional)


def _mimo_loop(layer, u, x0=None, k=0, reverse=False):
    """x_t = Ā x_{t-1} + B̄ u_t, Re(C[k] x_t) for every t (arXiv 2208.04933 eq. 2-3), backwards in time if asked;
    returns the outputs without D (B, L, H) and the last state."""
    A, B, C = (_np(t).astype(np.complex128) for t in layer.discrete())
    C = C[k]
    u = _np(u).astype(np.float64)
    x = np.zeros((u.shape[0], A.shape[0]), complex) if x0 is None else _np(x0).astype(np.complex128)
    ys = np.zeros(u.shape)
    steps = range(u.shape[1])
    for t in (reversed(steps) if reverse else steps):
        x = A * x + u[:, t] @ B.T
        ys[:, t] = (x @ C.T).real
    return ys, x


@pytest.mark.parametrize("backend", ["reference", "chunked", "native"])
def test_mimo_forward_and_step_equal_the_recurrence(backend):
    from ssmkit.ops import use_backend

    layer = _hand_mimo(False, 19)
    g = torch.Generator().manual_seed(23)
    u = torch.randn(2, 11, 3, generator=g, dtype=F64)
    x0 = torch.randn(2, 4, generator=g, dtype=torch.complex128)
    ys, last = _mimo_loop(layer, u, x0)
    want = ys + _np(layer.D) * _np(u)
    with use_backend(backend):
        y, h = layer(u, x0)
        y_only, none = layer(u, x0, return_state=False)
    np.testing.assert_allclose(_np(y), want, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(_np(h), last, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(_np(y_only), want, rtol=1e-11, atol=1e-11)
    assert none is None
    ys, h = run_steps(layer, u, x0)
    np.testing.assert_allclose(_np(ys), want, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(_np(h), last, rtol=1e-11, atol=1e-11)


def test_mimo_bidirectional_forward_adds_a_backward_scan():
    """y_t = Re(C[0] x_t) + Re(C[1] z_t) + D u_t, z_t = Ā z_{t+1} + B̄ u_t (both include u_t); no state."""
    layer = _hand_mimo(True, 29)
    u = torch.randn(2, 9, 3, generator=torch.Generator().manual_seed(31), dtype=F64)
    want = _mimo_loop(layer, u)[0] + _mimo_loop(layer, u, k=1, reverse=True)[0] + _np(layer.D) * _np(u)
    y, state = layer(u)
    np.testing.assert_allclose(_np(y), want, rtol=1e-11, atol=1e-11)
    assert state is None


def _mimo_taps(layer, k, L):
    """Re(C[k] diag(Ā^l) B̄) for l < L: (H, H, L)."""
    A, B, C = (_np(t).astype(np.complex128) for t in layer.discrete())
    C = C[k]
    return np.stack([((C * A**l) @ B).real for l in range(L)], -1)


def test_mimo_kernel_is_the_impulse_response():
    layer = _hand_mimo(False, 37)
    K = _mimo_taps(layer, 0, 6)
    K[..., 0] += np.diag(_np(layer.D))
    np.testing.assert_allclose(_np(layer.kernel(6)), K, rtol=1e-12, atol=1e-12)
    bi = _hand_mimo(True, 41)
    K0, K1 = _mimo_taps(bi, 0, 6), _mimo_taps(bi, 1, 7)
    K0[..., 0] += K1[..., 0] + np.diag(_np(bi.D))
    got = _np(bi.kernel(6))
    assert got.shape == (2, 3, 3, 6)
    np.testing.assert_allclose(got[0], K0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[1], K1[..., 1:], rtol=1e-12, atol=1e-12)


def test_mimo_state_space_simulates_the_recurrence():
    """The exported real system (G = 1, 2M states, dt = 1) run here from the layer's state equals the layer."""
    layer = _hand_mimo(False, 43)
    ss = layer.state_space()
    A, B, C, D = (np.asarray(m)[0] for m in (ss.A, ss.B, ss.C, ss.D))
    assert A.shape == (8, 8) and B.shape == (8, 3) and C.shape == (3, 8) and D.shape == (3, 3) and ss.dt == 1.0
    g = torch.Generator().manual_seed(47)
    u = torch.randn(1, 7, 3, generator=g, dtype=F64)
    x0 = torch.randn(1, 4, generator=g, dtype=torch.complex128)
    x = torch.view_as_real(x0).reshape(8).numpy()
    ys = []
    for t in range(7):
        ys.append(C @ x + D @ _np(u)[0, t])
        x = A @ x + B @ _np(u)[0, t]
    np.testing.assert_allclose(np.stack(ys), _np(layer(u, x0)[0])[0], rtol=1e-11, atol=1e-11)


def test_mimo_state_spec_and_the_abstract_methods():
    from ssmkit.layers.mimo import MIMODiagonalLTILayer

    layer = _hand_mimo(False, 53)
    spec = layer.state_spec()
    assert tuple(spec.shape) == (4,) and spec.dtype == torch.complex128 and layer.state_device() == layer.D.device
    single = _hand_mimo(False, 53, dtype=torch.float32)
    assert single.state_spec().dtype == torch.complex64
    u = torch.randn(2, 5, 3)
    np.testing.assert_allclose(_np(single(u)[0]), _mimo_loop(single, u)[0] + _np(single.D) * _np(u), rtol=1e-4,
                               atol=1e-5)
    bare = MIMODiagonalLTILayer()
    with pytest.raises(NotImplementedError, match="discrete"):
        bare.discrete()
    with pytest.raises(NotImplementedError, match="n_modes"):
        bare.n_modes


def test_mimo_step_follows_changed_parameters():
    """step's prepared matrices are rebuilt when a parameter changes (and not kept while a gradient is needed)."""
    layer = _hand_mimo(False, 59)
    u = torch.randn(2, 3, generator=torch.Generator().manual_seed(61), dtype=F64)
    h = layer.initial_state(2)
    with torch.no_grad():
        layer.step(u, h)
        layer.B_pair.mul_(2.0)
        layer.D.add_(1.0)
        y, _ = layer.step(u, h)
    want = _mimo_loop(layer, u[:, None])[0][:, 0] + _np(layer.D) * _np(u)
    np.testing.assert_allclose(_np(y), want, rtol=1e-12, atol=1e-12)
    y, _ = layer.step(u, h)
    (gD,) = torch.autograd.grad(y.sum(), layer.D)
    np.testing.assert_allclose(_np(gD), _np(u).sum(0), rtol=1e-12)
