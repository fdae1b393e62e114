"""S4 (arXiv 2111.00396) at irregular sampling times: ``forward(x, state, intervals=)`` and ``step(x_t, state,
interval=)`` run the bilinear DPLR recurrence with each step's own Δ_t = Δ τ_t (:mod:`ssmkit.ops.irregular_dplr`).

The oracle is written here in numpy, independent of the Woodbury code: the dense N × N matrix A = diag([Λ, Λ̄]) −
Σ_i P_f,i P_f,i* of the full conjugate-pair system read from the layer's raw parameters, each step's
Ā_t = (I − Δ_t A/2)⁻¹(I + Δ_t A/2) and B̄_t = (I − Δ_t A/2)⁻¹ Δ_t B_f by ``numpy.linalg.solve``, and C_true from
(I − Ā^{l_max})ᵀ C_true = C̃ by ``numpy.linalg.matrix_power`` and a dense solve. Also: a constant gap c against the
regular (FFT) layer with log Δ shifted by log c (and C̃ re-attuned to that Δ, so that C_true is the same), the
state's continuation between the irregular forward, its steps and the regular forward, the op's chunked path and
gradients (``torch.autograd.gradcheck``), autocast, and Liquid-S4's refusal.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
from ssmkit.ops.irregular_dplr import (
    dplr_irregular_scan,
    dplr_irregular_scan_chunked,
    dplr_irregular_scan_reference,
)
from tests.conftest import DEVICE, H, make_layer, rel_err, variants

B, L = 2, 11
F64 = torch.float64


def _gaps(length: int = L, seed: int = 0, low: float = 0.05, high: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (low + (high - low) * torch.rand(B, length, generator=g, dtype=F64)).to(DEVICE)


def _input(length: int = L, seed: int = 1, dtype=F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, length, H, generator=g, dtype=F64).to(DEVICE, dtype)


def _half_state(layer, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    M = layer.d_state // 2
    z = torch.randn(B, H, M, 2, generator=g, dtype=F64)
    return torch.view_as_complex(z).to(DEVICE)  # (B, H, N/2)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _pairs(p: torch.Tensor) -> np.ndarray:
    """A stored (..., 2) real pair tensor as a complex numpy array."""
    a = _np(p)
    return a[..., 0] + 1j * a[..., 1]


def _dense_system(layer) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A (H, N, N), B_f (H, N) complex of the full conjugate-pair system, Δ (H,) and D (H,), from the raw parameters
    (channel h uses copy h mod n_ssm)."""
    G = layer.log_A_real.shape[0]
    rep = H // G
    lam = np.tile(-np.exp(_np(layer.log_A_real)) + 1j * _np(layer.A_imag), (rep, 1))  # (H, M)
    P = np.tile(_pairs(layer.P), (1, rep, 1))  # (r, H, M)
    Bh = np.tile(_pairs(layer.B), (rep, 1))  # (H, M)
    lam_f, P_f = np.concatenate([lam, lam.conj()], -1), np.concatenate([P, P.conj()], -1)  # (H, N), (r, H, N)
    A = np.stack([np.diag(lam_f[h]) - sum(np.outer(P_f[i, h], P_f[i, h].conj()) for i in range(P.shape[0]))
                  for h in range(H)])  # (H, N, N)
    return A, np.concatenate([Bh, Bh.conj()], -1), np.exp(_np(layer.log_dt)), _np(layer.D)


def _bilinear(A: np.ndarray, B_f: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Ā = (I − ΔA/2)⁻¹(I + ΔA/2), B̄ = (I − ΔA/2)⁻¹ Δ B_f for one channel, dense."""
    eye = np.eye(A.shape[0])
    left = eye - step * A / 2
    return np.linalg.solve(left, eye + step * A / 2), np.linalg.solve(left, step * B_f)


def _c_true(layer, A: np.ndarray, B_f: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """C_true (H, N) over the full state: (I − Ā^{l_max})ᵀ C_true = C̃_f, dense."""
    Ct = _pairs(layer.C_tilde)[0]  # (H, M)
    Ct_f = np.concatenate([Ct, Ct.conj()], -1)  # (H, N)
    out = []
    for h in range(H):
        A_bar = _bilinear(A[h], B_f[h], dt[h])[0]
        out.append(np.linalg.solve((np.eye(A.shape[1]) - np.linalg.matrix_power(A_bar, layer.l_max)).T, Ct_f[h]))
    return np.stack(out)


def _oracle(layer, x: torch.Tensor, tau: torch.Tensor, state: torch.Tensor | None):
    """y (B, L, H) and the final half state (B, H, N/2) of the dense per-step bilinear recurrence."""
    A, B_f, dt, D = _dense_system(layer)
    C_f = _c_true(layer, A, B_f, dt)  # (H, N)
    u, gaps = _np(x), _np(tau)
    M = layer.d_state // 2
    ys = np.zeros(u.shape)
    finals = np.zeros((u.shape[0], H, M), complex)
    for b in range(u.shape[0]):
        for h in range(H):
            s = np.zeros(2 * M, complex) if state is None else np.concatenate([_np(state[b, h]), _np(state[b, h]).conj()])
            for t in range(u.shape[1]):
                A_bar, B_bar = _bilinear(A[h], B_f[h], dt[h] * gaps[b, t])
                s = A_bar @ s + B_bar * u[b, t, h]
                ys[b, t, h] = (C_f[h] @ s).real + D[h] * u[b, t, h]
            finals[b, h] = s[:M]
    return ys, finals


def _close(got: torch.Tensor, want: np.ndarray, tol: float) -> bool:
    return np.abs(_np(got) - want).max() <= tol * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("opts", variants("s4"), ids=[o["init"] for o in variants("s4")])
def test_forward_and_steps_are_the_dense_per_step_bilinear_recurrence(opts):
    layer = make_layer("s4", opts)
    x, tau, h0 = _input(), _gaps(), _half_state(layer)
    y_ref, h_ref = _oracle(layer, x, tau, h0)
    for backend in ("auto", "reference"):
        with ops.use_backend(backend):
            y, h = layer(x, h0, intervals=tau)
        assert _close(y, y_ref, 1e-10) and _close(h, h_ref, 1e-10), backend
    state, ys = h0, []
    for t in range(L):
        y_t, state = layer.step(x[:, t], state, interval=tau[:, t])
        ys.append(y_t)
    assert _close(torch.stack(ys, 1), y_ref, 1e-10) and _close(state, h_ref, 1e-10)


@pytest.mark.parametrize("c", [0.37, 2.5])
@pytest.mark.parametrize("opts", variants("s4")[:2], ids=["legs", "legt"])
def test_a_constant_gap_is_the_regular_layer_with_log_dt_shifted_by_log_c(opts, c):
    """A gap c everywhere = the regular (FFT) S4 with Δ·c, its C̃ re-attuned to Ā(cΔ) so that C_true is the same:
    C̃' = (I − Ā(cΔ)^{l_max})ᵀ C_true (dense numpy), with and without an initial state."""
    layer = make_layer("s4", opts)
    A, B_f, dt, _ = _dense_system(layer)
    C_f = _c_true(layer, A, B_f, dt)  # (H, N)
    M = layer.d_state // 2
    shifted = make_layer("s4", opts)
    shifted.load_state_dict(layer.state_dict())
    attuned = np.stack([(np.eye(2 * M) - np.linalg.matrix_power(_bilinear(A[h], B_f[h], c * dt[h])[0],
                                                                layer.l_max)).T @ C_f[h] for h in range(H)])
    with torch.no_grad():
        shifted.log_dt.add_(math.log(c))
        half = torch.from_numpy(np.ascontiguousarray(attuned[:, :M]))
        shifted.C_tilde.copy_(torch.view_as_real(half)[None].to(DEVICE))
    x, h0 = _input(length=20), _half_state(layer)
    gaps = torch.full((B, 20), c, dtype=F64, device=DEVICE)
    for start in (None, h0):
        y, h = layer(x, start, intervals=gaps)
        y_reg, h_reg = shifted(x, start)  # the convolution (FFT) path
        assert rel_err(y, y_reg) < 1e-10 and rel_err(h, h_reg) < 1e-10
    assert (layer(x)[0] - y).abs().max() > 1e-3  # the gap changes the answer


def test_the_state_continues_between_the_irregular_forward_its_steps_and_the_regular_forward():
    """One state convention: an irregular forward continued by irregular steps, by the regular forward (gaps 1 from
    there on), and a regular forward continued by an irregular one, all against the oracle over the whole sequence."""
    layer = make_layer("s4")
    x, tau = _input(length=16), _gaps(length=16, seed=4)
    k = 6
    mixed = torch.cat([tau[:, :k], torch.ones(B, 16 - k, dtype=F64, device=DEVICE)], dim=1)
    y_ref, h_ref = _oracle(layer, x, mixed, None)
    ya, ha = layer(x[:, :k], intervals=tau[:, :k])
    yb, hb = layer(x[:, k:], ha)  # regular FFT forward from the irregular forward's state
    assert _close(torch.cat([ya, yb], 1), y_ref, 1e-10) and _close(hb, h_ref, 1e-10)
    state, ys = ha, []
    for t in range(k, 16):
        y_t, state = layer.step(x[:, t], state, interval=tau[:, t])
        ys.append(y_t)
    y_all, h_all = layer(x, intervals=tau)
    assert rel_err(torch.stack(ys, 1), y_all[:, k:]) < 1e-10 and rel_err(state, h_all) < 1e-10
    back = torch.cat([torch.ones(B, k, dtype=F64, device=DEVICE), tau[:, k:]], dim=1)
    y_ref2, h_ref2 = _oracle(layer, x, back, None)
    yc, hc = layer(x[:, :k])  # regular, then irregular
    yd, hd = layer(x[:, k:], hc, intervals=tau[:, k:])
    assert _close(torch.cat([yc, yd], 1), y_ref2, 1e-10) and _close(hd, h_ref2, 1e-10)


def test_float32_layer_keeps_its_state_dtype_and_follows_the_float64_one():
    layer64 = make_layer("s4")
    layer32 = make_layer("s4", dtype=torch.float32)
    layer32.load_state_dict(layer64.state_dict())
    x, tau = _input(length=64), _gaps(length=64, seed=6)
    y64, h64 = layer64(x, intervals=tau)
    y32, h32 = layer32(x.float(), intervals=tau.float())
    assert y32.dtype == torch.float32 and h32.dtype == torch.complex64
    assert rel_err(y32.double(), y64) < 1e-6 and rel_err(h32.to(torch.complex128), h64) < 1e-6
    y_t, s = layer32.step(x[:, 0].float(), layer32.initial_state(B), interval=tau[:, 0].float())
    assert y_t.dtype == torch.float32 and s.dtype == torch.complex64


def test_under_autocast_the_core_runs_in_float32_and_unit_gaps_give_the_regular_layer():
    if DEVICE.type != "cpu":
        pytest.skip("bf16 autocast on the CPU")
    layer = make_layer("s4", dtype=torch.float32)
    x, ones = _input(length=16, dtype=torch.float32), torch.ones(B, 16, device=DEVICE)
    y32 = layer(x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_one = layer(x, intervals=ones)[0]
        s, steps = layer.initial_state(B), []
        for t in range(16):
            y_t, s = layer.step(x[:, t], s, interval=ones[:, t])
            steps.append(y_t)
    assert y_one.dtype == torch.float32
    assert rel_err(y_one, y32) < 1e-5 and rel_err(torch.stack(steps, 1), y32) < 1e-5


def _op_system(seed: int = 3, r: int = 2, M: int = 3):
    """A random stable DPLR system for the op: Λ (H, M), P (r, H, M), B, C (H, M) complex128, Δ (H,)."""
    g = torch.Generator().manual_seed(seed)
    cn = lambda *s: torch.complex(torch.randn(*s, generator=g, dtype=F64), torch.randn(*s, generator=g, dtype=F64))  # noqa: E731
    Lambda = torch.complex(-0.1 - torch.rand(H, M, generator=g, dtype=F64), 3 * torch.randn(H, M, generator=g, dtype=F64))
    dt = 0.05 + 0.3 * torch.rand(H, generator=g, dtype=F64)
    return [t.to(DEVICE) for t in (Lambda, 0.5 * cn(r, H, M), cn(H, M), cn(H, M), dt)]


@pytest.mark.parametrize("chunk", [1, 4, None])
def test_the_chunked_op_equals_the_loop_with_its_gradients(chunk):
    Lambda, P, Bv, C, dt = _op_system()
    u, tau = _input(length=10).requires_grad_(), _gaps(length=10, seed=8).requires_grad_()
    D = torch.randn(H, dtype=F64, device=DEVICE)
    x0 = torch.randn(B, H, 3, dtype=torch.complex128, device=DEVICE)
    y_ref, h_ref = dplr_irregular_scan_reference(u, Lambda, P, Bv, C, dt, tau, D, x0)
    y, h = dplr_irregular_scan_chunked(u, Lambda, P, Bv, C, dt, tau, D, x0, chunk_size=chunk)
    assert rel_err(y, y_ref) < 1e-13 and rel_err(h, h_ref) < 1e-13
    w = torch.randn_like(y)
    g_ref = torch.autograd.grad((y_ref * w).sum() + h_ref.abs().sum(), [u, tau])
    g = torch.autograd.grad((y * w).sum() + h.abs().sum(), [u, tau])
    assert all(rel_err(a, b) < 1e-12 for a, b in zip(g, g_ref))
    assert dplr_irregular_scan(u, Lambda, P, Bv, C, dt, tau, D, x0, return_state=False)[1] is None


def test_the_op_gradients_pass_gradcheck():
    Lambda, P, Bv, C, dt = _op_system(seed=5, r=1, M=2)
    u, tau = _input(length=4)[:1], _gaps(length=4, seed=9)[:1]

    def f(u, tau, Lambda, P, Bv, C, dt):
        y, h = dplr_irregular_scan(u, Lambda, P, Bv, C, dt, tau, backend="chunked")
        return y, torch.view_as_real(h)

    inputs = [t.detach().requires_grad_() for t in (u, tau, Lambda, P, Bv, C, dt)]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


def test_a_forced_fft_backend_and_bad_shapes_are_refused_by_name():
    Lambda, P, Bv, C, dt = _op_system()
    u, tau = _input(), _gaps()
    with pytest.raises(RuntimeError, match="'fft' was forced.*only the backends"):
        dplr_irregular_scan(u, Lambda, P, Bv, C, dt, tau, backend="fft")
    with pytest.raises(ValueError, match=r"intervals must be \(2, 11\)"):
        dplr_irregular_scan(u, Lambda, P, Bv, C, dt, tau[:, :5])
    with pytest.raises(ValueError, match=r"state must be \(B, H, N/2\)"):
        dplr_irregular_scan(u, Lambda, P, Bv, C, dt, tau, state=torch.zeros(B, H, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="C must be"):
        dplr_irregular_scan(u, Lambda, P, Bv, C[:, :2], dt, tau)


def test_every_continuous_time_lti_layer_takes_intervals_and_liquid_s4_refuses_them():
    lti = [n for n in layers.available() if layers.layer_class(n).capabilities.state_space]
    assert "s4" in lti and all(layers.layer_class(n).takes_intervals for n in lti)
    liquid = make_layer("liquid_s4")
    assert not liquid.takes_intervals
    with pytest.raises(ValueError, match="LiquidS4 does not take sampling intervals"):
        liquid(_input(), intervals=_gaps())
    with pytest.raises(ValueError, match="LiquidS4 does not take sampling intervals"):
        liquid.step(_input()[:, 0], liquid.initial_state(B), interval=_gaps()[:, 0])
