"""S4 against an independent reference (probe 33): the paper's equations as dense float64 NumPy matrices over the
full conjugate-pair state, formed here from the layer's parameters moved away from their initial values.

arXiv 2111.00396 §3.1-3.3: A = diag(Λ_f) - Σ_i P_f,i P_f,i* with Λ_f = [Λ, Λ̄], P_f,i = [P_i, P̄_i] (rank r);
bilinear Ā = (I - Δ/2 A)⁻¹(I + Δ/2 A), B̄ = (I - Δ/2 A)⁻¹ Δ B_f; x_l = Ā x_{l-1} + B̄ u_l, y_l = C_fᵀ x_l + D u_l
(real); the trainable C̃ stands for (I - Ā^{l_max})ᵀ C (notes/core-checked.md §3: the transpose in the y = Cᵀx
convention), so C is recovered here by a dense solve; the kernel K_l = C_fᵀ Ā^l B̄ + D δ_l. The bidirectional layer
adds a second C̃ whose kernel acts at lags -1, -2, … (a backward recurrence run here). Channel h uses the copy
h mod n_ssm of (Λ, P, B). Checked: forward on every backend (from a random state and from zeros, shorter and longer
than l_max), ``step``, the final state, ``kernel``, the exported realisation (the real basis z = [Re x, Im x]) and the
law of the initial C."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ssmkit.layers.s4 as s4_module
import ssmkit.ops as ops
from ssmkit.layers import S4
from ssmkit.ops.hippo import nplr
from tests.conftest import DEVICE, run_steps, runnable_backends

F64 = torch.float64


def _np(t: torch.Tensor) -> np.ndarray:
    """t as a float64 (complex128) NumPy array."""
    return t.detach().cpu().to(torch.complex128 if t.is_complex() else F64).numpy()


def _complex(pair: torch.Tensor) -> np.ndarray:
    a = _np(pair)
    return a[..., 0] + 1j * a[..., 1]


def _full(x: np.ndarray) -> np.ndarray:
    """The half (..., M) of a conjugate-symmetric vector -> the full (..., 2M) vector [x, x̄]."""
    return np.concatenate([x, x.conj()], -1)


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _close(actual, expect: np.ndarray, tol: float = 1e-10) -> None:
    got = _np(actual) if isinstance(actual, torch.Tensor) else np.asarray(actual)
    assert got.shape == expect.shape, (got.shape, expect.shape)
    err = _rel(got, expect)
    assert err < tol, err


def _moved(H=6, d_state=14, l_max=12, init="legt", n_ssm=2, bidirectional=False, seed=0, dtype=F64) -> S4:
    """An S4 layer with every parameter moved off its init (seeded): Re Λ ≠ -½ per mode, P, B, C̃, D random, Δ spread."""
    torch.manual_seed(seed)
    layer = S4(H, d_state=d_state, l_max=l_max, init=init, n_ssm=n_ssm, bidirectional=bidirectional,
               device=DEVICE, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in (layer.log_A_real, layer.A_imag, layer.P, layer.B, layer.C_tilde, layer.D):
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * (0.5 if p is layer.log_A_real else 1.0))
        layer.A_imag.mul_(3.0)  # oscillating modes of both signs
        layer.P.mul_(0.6)
        layer.log_dt.copy_(torch.linspace(-2.3, -0.4, H, dtype=F64)[torch.randperm(H, generator=g)])  # Δ ≈ 0.1 … 0.67
    return layer


def _reference(layer: S4):
    """Ā (H, N, N), B̄ (H, N) of the full state by dense solves, and C_true (C, H, N) from C̃, complex128, in NumPy."""
    H, M = layer.d_model, layer.d_state // 2
    copy = np.arange(H) % layer.log_A_real.shape[0]  # channel h uses copy h mod n_ssm
    lam = (-np.exp(_np(layer.log_A_real)) + 1j * _np(layer.A_imag))[copy]  # (H, M)
    P = _complex(layer.P)[:, copy]  # (r, H, M)
    B = _complex(layer.B)[copy]  # (H, M)
    dt = np.exp(_np(layer.log_dt))  # (H,)
    eye = np.eye(2 * M)
    A_bar, B_bar = [], []
    for h in range(H):
        A = np.diag(_full(lam[h])).astype(complex)
        for i in range(P.shape[0]):
            p = _full(P[i, h])
            A -= np.outer(p, p.conj())
        left = eye - dt[h] / 2 * A
        A_bar.append(np.linalg.solve(left, eye + dt[h] / 2 * A))
        B_bar.append(np.linalg.solve(left, dt[h] * _full(B[h])))
    A_bar, B_bar = np.stack(A_bar), np.stack(B_bar)
    C_t = _full(_complex(layer.C_tilde))  # (C, H, N)
    C_true = np.zeros_like(C_t)
    for h in range(H):
        attune = eye - np.linalg.matrix_power(A_bar[h], layer.l_max)
        for c in range(C_t.shape[0]):
            C_true[c, h] = np.linalg.solve(attune.T, C_t[c, h])
    return A_bar, B_bar, C_true


def _recurrence(A_bar, B_bar, C_true, D, u, s):
    """y (B, L, H) and the final half state (B, H, M): x_l = Ā x_{l-1} + B̄ u_l from x_{-1} = [s, s̄],
    y_l = Re C_fᵀ x_l + D u_l, plus Re C_1ᵀ z_l with z_l = Σ_{k>l} Ā^{k-l-1} B̄ u_k when C_true has two rows."""
    Bt, L, H = u.shape
    M = A_bar.shape[-1] // 2
    x = _full(s)  # (B, H, N)
    y = np.zeros(u.shape)
    for t in range(L):
        x = np.einsum("hnm,bhm->bhn", A_bar, x) + B_bar * u[:, t, :, None]
        y[:, t] = (C_true[0] * x).sum(-1).real + D * u[:, t]
    if C_true.shape[0] == 2:
        z = np.zeros((Bt, H, 2 * M), dtype=complex)
        for t in reversed(range(L)):
            y[:, t] += (C_true[1] * z).sum(-1).real
            z = np.einsum("hnm,bhm->bhn", A_bar, z) + B_bar * u[:, t, :, None]
    return y, x[..., :M]


def _kernel(A_bar, B_bar, C_true, D, L):
    """K (C, H, L): K_l = Re C_cᵀ Ā^l B̄, with D added on the causal tap 0."""
    K = np.zeros((C_true.shape[0], A_bar.shape[0], L))
    x = B_bar.copy()
    for l in range(L):
        K[:, :, l] = (C_true * x[None]).sum(-1).real
        x = np.einsum("hnm,hm->hn", A_bar, x)
    K[0, :, 0] += D
    return K


def _inputs(layer: S4, L: int, batch: int = 5, seed: int = 1):
    """u (batch, L, H) and a complex state s (batch, H, M), float64/complex128 NumPy."""
    rng = np.random.default_rng(seed)
    M = layer.d_state // 2
    u = rng.standard_normal((batch, L, layer.d_model))
    s = rng.standard_normal((batch, layer.d_model, M)) + 1j * rng.standard_normal((batch, layer.d_model, M))
    return u, s


# ---------------------------------------------------------------------------------------------------------------
# Forward, step, final state, kernel


@pytest.mark.parametrize("init, n_ssm", [("legt", 2), ("legs", None), ("lagt", 3), ("fout", 1)])
@pytest.mark.parametrize("L", [11, 40])  # shorter than l_max = 12, and beyond it (C̃ attuned to 48 = 12·2²)
def test_forward_step_and_state_are_the_dense_recurrence(init, n_ssm, L):
    layer = _moved(init=init, n_ssm=n_ssm)
    A_bar, B_bar, C_true = _reference(layer)
    D = _np(layer.D)
    u, s = _inputs(layer, L)
    expect, x_end = _recurrence(A_bar, B_bar, C_true, D, u, s)
    zero_expect, zero_end = _recurrence(A_bar, B_bar, C_true, D, u, np.zeros_like(s))
    ut, st = torch.from_numpy(u).to(DEVICE), torch.from_numpy(s).to(DEVICE)
    for backend in ("auto", *runnable_backends(layer)):
        with ops.use_backend(backend):
            for grad in (False, True):  # the cached plan (no gradient) and the differentiable one
                with torch.set_grad_enabled(grad):
                    y, h = layer(ut, st)
                    _close(y, expect)
                    _close(h, x_end)
                    y0, h0 = layer(ut)
                    _close(y0, zero_expect)
                    _close(h0, zero_end)
            with torch.no_grad():
                y_again, none = layer(ut, st, return_state=False)
            assert none is None
            _close(y_again, expect)
    with torch.no_grad():
        state = st
        for t in range(L):
            y_t, state = layer.step(ut[:, t], state)
            _close(y_t, expect[:, t])
        _close(state, x_end)
    _close(layer.kernel(L), _kernel(A_bar, B_bar, C_true, D, L)[0])


@pytest.mark.parametrize("L", [9, 30])
def test_bidirectional_forward_and_kernel(L):
    layer = _moved(bidirectional=True, init="legs", n_ssm=3)
    A_bar, B_bar, C_true = _reference(layer)
    assert C_true.shape[0] == 2
    D = _np(layer.D)
    u, _ = _inputs(layer, L, batch=3)
    expect, _ = _recurrence(A_bar, B_bar, C_true, D, u, np.zeros((3, layer.d_model, layer.d_state // 2), dtype=complex))
    ut = torch.from_numpy(u).to(DEVICE)
    for backend in ("auto", *runnable_backends(layer)):
        with ops.use_backend(backend):
            for grad in (False, True):
                with torch.set_grad_enabled(grad):
                    y, h = layer(ut)
                assert h is None
                _close(y, expect)
    _close(layer.kernel(L), _kernel(A_bar, B_bar, C_true, D, L))


def test_a_float32_layer_follows_the_reference():
    layer = _moved(dtype=torch.float32, init="legs")
    A_bar, B_bar, C_true = _reference(layer)
    u, s = _inputs(layer, 40)
    u = u.astype(np.float32).astype(np.float64)
    s = s.astype(np.complex64).astype(np.complex128)
    expect, x_end = _recurrence(A_bar, B_bar, C_true, _np(layer.D), u, s)
    with torch.no_grad():
        y, h = layer(torch.from_numpy(u).float().to(DEVICE), torch.from_numpy(s).to(torch.complex64).to(DEVICE))
    assert y.dtype == torch.float32 and h.dtype == torch.complex64
    _close(y, expect, 1e-5)
    _close(h, x_end, 1e-5)


# ---------------------------------------------------------------------------------------------------------------
# The exported realisation


@pytest.mark.parametrize("init", ["legt", "legs"])
def test_state_space_is_the_dense_system_in_the_real_basis(init):
    # x_f = T z with z = [Re x, Im x] (half state), T = [[I, iI], [I, -iI]]: Ā_z = T⁻¹ Ā T, B̄_z = T⁻¹ B̄,
    # output row c = C_fᵀ T (real); control convention (StateSpace.from_ssm): A = Ā_z, B = B̄_z, C = c Ā_z, D + c B̄_z.
    layer = _moved(init=init)
    A_bar, B_bar, C_true = _reference(layer)
    M = layer.d_state // 2
    eye = np.eye(M)
    T = np.block([[eye, 1j * eye], [eye, -1j * eye]])
    T_inv = np.linalg.inv(T)
    A_z = np.einsum("nm,hmk,kj->hnj", T_inv, A_bar, T)
    B_z = np.einsum("nm,hm->hn", T_inv, B_bar)
    c = np.einsum("hn,nm->hm", C_true[0], T)
    assert np.abs(A_z.imag).max() < 1e-12 and np.abs(c.imag).max() < 1e-12
    A_z, B_z, c = A_z.real, B_z.real, c.real
    ss = layer.state_space()
    assert ss.dt == 1.0
    _close(ss.A, A_z, 1e-11)
    _close(ss.B, B_z[..., None], 1e-11)
    _close(ss.C, np.einsum("hn,hnm->hm", c, A_z)[:, None, :], 1e-11)
    _close(ss.D, (_np(layer.D) + (c * B_z).sum(-1))[:, None, None], 1e-11)


# ---------------------------------------------------------------------------------------------------------------
# Initialisation


def test_initial_c_is_standard_complex_normal_and_d_standard_normal():
    # reset_parameters draws C ~ CN(0, 1) and stores C̃ = (I - Ā^{l_max})ᵀ C; with a short l_max and large steps,
    # Ā^{l_max} is far from 0, so a wrong conversion shows in the law of the C recovered here.
    torch.manual_seed(3)
    H = 3000
    layer = S4(H, d_state=4, l_max=2, init="legs", dt_min=0.5, dt_max=1.0, device=DEVICE, dtype=F64)
    _, _, C_true = _reference(layer)
    C = C_true[0, :, :2]  # (H, M): the kept half
    assert abs(float((np.abs(C) ** 2).mean()) - 1.0) < 0.06  # E|C|² = 1 (std of the mean ≈ 0.013)
    assert abs(float(C.real.var() - C.imag.var())) < 0.06  # real and imaginary parts N(0, ½) each
    assert abs(complex((C ** 2).mean())) < 0.06  # circular: E C² = 0
    D = _np(layer.D)
    assert abs(float(D.mean())) < 0.07 and abs(float(D.var()) - 1.0) < 0.1  # D ~ N(0, 1)


@pytest.mark.parametrize("init, rank", [("legs", 1), ("legt", 2), ("lagt", 1), ("fout", 1)])
@pytest.mark.parametrize("B_clip", [None, 0.3])
def test_initial_ssm_is_the_nplr_of_the_hippo_matrix(init, rank, B_clip):
    # Λ, P, B from the NPLR (ops/hippo, tested there): -Re λ clamped to >= 1e-4 (the official inv_transform), Im B
    # clipped to ±B_clip here by hand from the unclipped B̃, every copy the same; Δ log-uniform on [dt_min, dt_max].
    torch.manual_seed(0)
    layer = S4(6, d_state=10, l_max=8, init=init, n_ssm=3, B_clip=B_clip, dt_min=0.02, dt_max=0.05,
               device=DEVICE, dtype=F64)
    ref = nplr(init, 10, None)
    neg_real = np.maximum(-_np(ref.Lambda).real, 1e-4)
    B = _np(ref.B)
    if B_clip is not None:
        B = B.real + 1j * np.clip(B.imag, -B_clip, B_clip)
        assert init == "fout" or np.abs(_np(ref.B).imag).max() > B_clip  # the clip is active (FouT's B̃ is real)
    assert layer.P.shape == (rank, 3, 5, 2)
    for g in range(3):
        _close(np.exp(_np(layer.log_A_real[g])), neg_real, 1e-14)
        _close(_np(layer.A_imag[g]), _np(ref.Lambda).imag, 1e-14)
        _close(_complex(layer.P[:, g]), _np(ref.P), 1e-14)
        _close(_complex(layer.B[g]), B, 1e-14)
    dt = np.exp(_np(layer.log_dt))
    assert dt.shape == (6,) and dt.min() >= 0.02 and dt.max() <= 0.05 and dt.max() > dt.min()


# ---------------------------------------------------------------------------------------------------------------
# Options


def test_options_are_kept_shown_and_declared():
    layer = S4(6, d_state=10, l_max=7, init="lagt", dt_min=0.01, dt_max=0.2, n_ssm=3, lr=0.02, bidirectional=True,
               B_clip=1.5, device=DEVICE, dtype=F64)
    kept = {"d_model": 6, "d_state": 10, "l_max": 7, "init": "lagt", "dt_min": 0.01, "dt_max": 0.2, "n_ssm": 3,
            "lr": 0.02, "bidirectional": True, "B_clip": 1.5}
    for name, value in kept.items():
        assert getattr(layer, name) == value, name
    assert repr(layer) == ("S4(d_model=6, d_state=10, l_max=7, init='lagt', n_ssm=3, bidirectional=True, dt_min=0.01, "
                           "dt_max=0.2, lr=0.02, B_clip=1.5)")
    assert S4.backends == ("reference", "fft")
    caps = S4.capabilities
    assert caps.kernel and caps.state_space and caps.step
    assert S4.zoo.paper == "arXiv 2111.00396" and S4.zoo.structure == "DPLR"
    assert S4.zoo.time_varying is False and S4.zoo.stable_by_construction is True


@pytest.mark.parametrize("name, value, message", [
    ("d_model", 0, "d_model"), ("d_model", 2.0, "d_model"),
    ("d_state", 5, "d_state"), ("d_state", 0, "d_state"),
    ("l_max", 0, "l_max"), ("l_max", 3.0, "l_max"),
    ("init", "legendre", "init"),
    ("dt_min", 0.0, "dt_min"), ("dt_max", float("nan"), "dt_max"),
    ("n_ssm", 0, "n_ssm"), ("n_ssm", True, "n_ssm"), ("n_ssm", 2.0, "n_ssm"), ("n_ssm", 4, "n_ssm"),
    ("lr", -1.0, "lr"),
    ("bidirectional", 1, "bidirectional"),
    ("B_clip", 0.0, "B_clip"), ("B_clip", -1.0, "B_clip"), ("B_clip", float("inf"), "B_clip"),
    ("B_clip", True, "B_clip"), ("B_clip", "2", "B_clip"),
])
def test_a_bad_option_is_refused_by_name(name, value, message):
    opts = {"d_model": 6, "d_state": 4, "l_max": 8, name: value}
    with pytest.raises(ValueError, match=message):
        S4(**opts, device=DEVICE, dtype=F64)


@pytest.mark.parametrize("name, value", [("n_ssm", 6), ("n_ssm", None), ("B_clip", 3), ("dt_min", 0.1)])
def test_a_good_option_on_the_boundary_is_accepted(name, value):
    layer = S4(**{"d_model": 6, "d_state": 4, "l_max": 8, name: value}, device=DEVICE, dtype=F64)
    assert getattr(layer, name) == value


# ---------------------------------------------------------------------------------------------------------------
# Which algorithm serves each backend


def _spy(monkeypatch, calls: list) -> None:
    """Record (what, backend) for each DPLR kernel, convolution and step-loop forward that the layer runs."""
    for name in ("dplr_kernel", "causal_conv", "bidirectional_conv"):
        real = getattr(s4_module, name)

        def spy(*args, backend, _real=real, _name=name):
            calls.append((_name, backend))
            return _real(*args, backend=backend)

        monkeypatch.setattr(s4_module, name, spy)
    by_steps = S4._forward_by_steps

    def steps(self, *args):
        calls.append(("steps", None))
        return by_steps(self, *args)

    monkeypatch.setattr(S4, "_forward_by_steps", steps)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_each_backend_runs_its_own_algorithm(monkeypatch, bidirectional):
    # "fft"/"auto": Cauchy kernel + FFT convolution; "reference": the step loop (the oracle) for a causal layer, the
    # dense-power kernel and the loop convolution for a two-sided one; kernel() follows the backend in force.
    layer = _moved(bidirectional=bidirectional, init="legs")
    calls: list = []
    _spy(monkeypatch, calls)
    x = torch.from_numpy(_inputs(layer, 10)[0]).to(DEVICE)
    conv = "bidirectional_conv" if bidirectional else "causal_conv"
    with torch.no_grad():
        for backend in ("auto", "fft", "reference"):
            fft = "reference" if backend == "reference" else "fft"
            for L in (9, 10):
                calls.clear()
                with ops.use_backend(backend):
                    layer(x[:, :L], return_state=False)
                steps = backend == "reference" and not bidirectional
                assert calls == ([("steps", None)] if steps else [("dplr_kernel", fft), (conv, fft)]), (backend, calls)
                calls.clear()
                with ops.use_backend(backend):
                    layer.kernel(L)
                assert calls == [("dplr_kernel", fft)], (backend, calls)


def test_the_reference_forward_is_the_step_loop_to_the_bit():
    layer = _moved(init="legt")
    u, s = _inputs(layer, 13)
    ut, st = torch.from_numpy(u).to(DEVICE), torch.from_numpy(s).to(DEVICE)
    with torch.no_grad(), ops.use_backend("reference"):
        y, h = layer(ut, st)
        ys, state = run_steps(layer, ut, st)
    assert torch.equal(y, ys) and torch.equal(h, state)
