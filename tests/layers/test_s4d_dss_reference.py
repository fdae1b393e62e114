"""S4D and DSS against independent references (probe 29): the published recurrences as float64 NumPy loops over the
layers' own parameters (moved away from their initial values), with the discretisations written here from the
papers' equations — S4D (arXiv 2206.11893 §3.1): ZOH Ā = exp(Δλ), B̄ = (exp(Δλ) - 1)/λ · B, bilinear
Ā = (1 + Δλ/2)/(1 - Δλ/2), B̄ = Δ B/(1 - Δλ/2), y = 2 Re(Σ C x) + D u; DSS (arXiv 2203.14343 §3.2, with the
official code's real part, separate steps and regulariser, notes/core-checked.md §4): DSS-exp
K_l = Re Σ W (e^z - 1)/λ e^{lz}, DSS-softmax K_l = Re Σ (W/λ) e^{lz} / Σ_{k<L} e^{kz} (the row softmax, summed
here term by term) — and the init constants against their closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
from ssmkit.layers import DSS, S4D
from tests.conftest import DEVICE, runnable_backends

F64 = torch.float64


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _complex(pair: torch.Tensor) -> np.ndarray:
    a = _np(pair)
    return a[..., 0] + 1j * a[..., 1]


def _scan(A_bar, B_bar, Cs, D, u, x0):
    """y_t = Re(Σ_n Cs[0]_n x_t,n) (+ Re(Σ Cs[1] z_t) backwards, z_t from the inputs after t) + D u_t,
    x_t = Ā x_{t-1} + B̄ u_t; A_bar, B_bar (H, M), Cs (C, H, M), u (B, L, H), x0 (B, H, M); float64 loop."""
    Bt, L, H = u.shape
    y = np.zeros(u.shape)
    x = x0.copy()
    for t in range(L):
        x = A_bar * x + B_bar * u[:, t, :, None]
        y[:, t] = (Cs[0] * x).sum(-1).real + D * u[:, t]
    if len(Cs) == 2:
        z = np.zeros_like(x0)
        for t in reversed(range(L)):
            y[:, t] += (Cs[1] * z).sum(-1).real  # z holds the inputs after t only
            z = A_bar * z + B_bar * u[:, t, :, None]
    return y, x


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _close(actual: torch.Tensor, expect: np.ndarray, tol: float = 1e-11) -> None:
    err = _rel(_np(actual), expect)
    assert err < tol, err


# ---------------------------------------------------------------------------------------------------------------
# S4D (arXiv 2206.11893)


def _s4d_moved(H=3, d_state=8, discretization="zoh", bidirectional=False, seed=0, dtype=F64):
    torch.manual_seed(seed)
    layer = S4D(H, d_state=d_state, init="lin", discretization=discretization, bidirectional=bidirectional,
                device=DEVICE, dtype=dtype)
    M = d_state // 2
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        layer.log_A_real.copy_(torch.randn(H, M, generator=g, dtype=F64) * 0.7 - 0.5)  # Re λ ≠ -½, per channel
        layer.A_imag.copy_(torch.randn(H, M, generator=g, dtype=F64) * 2.0)  # signs of both kinds
        layer.log_dt.copy_(torch.linspace(-2.5, -0.3, H, dtype=F64))  # Δ ≈ 0.08 … 0.74
        for p in (layer.B, layer.C, layer.D):
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
    return layer


def _s4d_reference(layer):
    """Ā, B̄ (H, M) and 2C (C, H, M) from the paper's equations, computed here in NumPy."""
    lam = -np.exp(_np(layer.log_A_real)) + 1j * _np(layer.A_imag)  # (H, M)
    dt = np.exp(_np(layer.log_dt))[:, None]  # (H, 1)
    B = _complex(layer.B)
    if layer.discretization == "zoh":
        A_bar = np.exp(dt * lam)
        B_bar = (A_bar - 1) / lam * B
    else:
        A_bar = (1 + dt * lam / 2) / (1 - dt * lam / 2)
        B_bar = dt * B / (1 - dt * lam / 2)
    return A_bar, B_bar, 2 * _complex(layer.C)


def _check_forward_and_steps(layer, u, x0, expect, x_end):
    """The layer's forward on every backend and its step, from the state x0, against the loop's y and final state."""
    ut = torch.from_numpy(u).to(DEVICE)
    with torch.no_grad():
        for backend in ("auto", *runnable_backends(layer)):
            with ops.use_backend(backend):
                y, h = layer(ut, torch.from_numpy(x0).to(DEVICE))
            _close(y, expect)
            _close(h, x_end)
        state = torch.from_numpy(x0).to(DEVICE)
        for t in range(u.shape[1]):
            y_t, state = layer.step(ut[:, t], state)
            _close(y_t, expect[:, t])
        _close(state, x_end)


def _check_bidirectional_forward(layer, A_bar, B_bar, Cs, seed):
    """A bidirectional layer's forward on every backend equals the two-sided scan of (Ā, B̄, C_causal, C_anti-causal),
    and returns no state."""
    assert Cs.shape == (2, 3, 4)
    u = np.random.default_rng(seed).standard_normal((2, 13, 3))
    expect, _ = _scan(A_bar, B_bar, Cs, _np(layer.D), u, np.zeros((2, 3, 4), complex))
    ut = torch.from_numpy(u).to(DEVICE)
    with torch.no_grad():
        for backend in ("auto", *runnable_backends(layer)):
            with ops.use_backend(backend):
                y, h = layer(ut)
            assert h is None
            _close(y, expect)


def _check_state_space(layer, A_bar, B_bar, Cs, seed):
    """The exported bank (3 systems of 8 real states, dt 1) simulated equals the scan of (Ā, B̄, C); returns it."""
    u = np.random.default_rng(seed).standard_normal((2, 10, 3))
    expect, _ = _scan(A_bar, B_bar, Cs, _np(layer.D), u, np.zeros((2, 3, 4), complex))
    ss = layer.state_space()
    assert ss.nsystems == 3 and ss.nstates == 8 and ss.dt == 1.0  # time in samples
    _close(ss.simulate(torch.from_numpy(u)), expect)
    return ss


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s4d_forward_step_and_state_are_the_papers_recurrence(discretization):
    layer = _s4d_moved(discretization=discretization)
    A_bar, B_bar, Cs = _s4d_reference(layer)
    rng = np.random.default_rng(1)
    u = rng.standard_normal((2, 11, 3))
    x0 = rng.standard_normal((2, 3, 4)) + 1j * rng.standard_normal((2, 3, 4))
    expect, x_end = _scan(A_bar, B_bar, Cs, _np(layer.D), u, x0)
    _check_forward_and_steps(layer, u, x0, expect, x_end)
    with torch.no_grad():
        K = layer.kernel(11)  # K_l = 2 Re Σ C B̄ Ā^l + D δ_l
    l = np.arange(11)
    K_ref = (Cs[0][..., None] * B_bar[..., None] * A_bar[..., None] ** l).sum(1).real
    K_ref[:, 0] += _np(layer.D)
    _close(K, K_ref)


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s4d_discrete_matrices_by_the_papers_formulas(discretization):
    layer = _s4d_moved(discretization=discretization)
    A_bar, B_bar, C = layer.discrete()
    A_ref, B_ref, C_ref = _s4d_reference(layer)
    _close(A_bar, A_ref, 1e-13)
    _close(B_bar, B_ref, 1e-13)
    _close(C, C_ref, 1e-15)


def test_s4d_bidirectional_adds_the_anti_causal_part_with_its_own_C():
    layer = _s4d_moved(bidirectional=True)
    A_bar, B_bar, Cs = _s4d_reference(layer)
    _check_bidirectional_forward(layer, A_bar, B_bar, Cs, seed=2)
    with torch.no_grad():
        K = layer.kernel(13)
    assert K.shape == (2, 3, 13)
    l = np.arange(13)
    K_ref = (Cs[..., None] * B_bar[..., None] * A_bar[..., None] ** l).sum(2).real  # (2, H, L)
    K_ref[0, :, 0] += _np(layer.D)  # the skip on the causal kernel only
    _close(K, K_ref)


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s4d_state_space_is_the_papers_system(discretization):
    layer = _s4d_moved(discretization=discretization)
    A_bar, B_bar, Cs = _s4d_reference(layer)
    ss = _check_state_space(layer, A_bar, B_bar, Cs, seed=3)
    poles = np.sort_complex(np.linalg.eigvals(np.asarray(ss.A)[0]))
    assert _rel(poles, np.sort_complex(np.concatenate([A_bar[0], A_bar[0].conj()]))) < 1e-12


def test_s4d_step_sees_a_parameter_change():
    layer = _s4d_moved()
    u = torch.randn(2, 3, dtype=F64, device=DEVICE)
    state = layer.initial_state(2)
    with torch.no_grad():
        layer.step(u, state)  # fills the step cache
        layer.log_dt.add_(0.4)
        y, h = layer.step(u, state)
    A_bar, B_bar, Cs = _s4d_reference(layer)
    expect, x_end = _scan(A_bar, B_bar, Cs, _np(layer.D), _np(u)[:, None], np.zeros((2, 3, 4), complex))
    _close(y, expect[:, 0])
    _close(h, x_end)


def test_diagonal_state_is_complex_of_the_parameters_precision_and_real_for_real_modes():
    assert layers.build("s4d", d_model=2, d_state=4).initial_state(3).dtype == torch.complex64
    h = layers.build("s4d", d_model=2, d_state=6, dtype=F64).initial_state(3)
    assert h.dtype == torch.complex128 and tuple(h.shape) == (3, 2, 3)
    h = layers.build("dss", d_model=2, d_state=6, dtype=F64).initial_state(1)
    assert h.dtype == torch.complex128 and tuple(h.shape) == (1, 2, 3)
    ema = layers.build("ema", d_model=2, dtype=F64)  # Mega's EMA: real modes, a real state
    assert ema.initial_state(1).dtype == F64


@pytest.mark.parametrize("init", ["legs", "inv", "lin", "real"])
def test_s4d_init_constants(init):
    """λ per the paper's closed forms at d_state 10 (M = 5, copied to every channel), B = 1 except legs,
    C = 2·C-parameter on discrete(), D and log Δ of their stated shapes and ranges."""
    N, H = 10, 6
    torch.manual_seed(0)
    layer = S4D(H, d_state=N, init=init, dt_min=2e-3, dt_max=5e-2, dtype=F64)
    n = np.arange(N // 2)
    lam = -np.exp(_np(layer.log_A_real)) + 1j * _np(layer.A_imag)
    if init == "inv":
        ref = -0.5 - 1j * (N / math.pi) * (N / (2 * n + 1) - 1)
    elif init == "lin":
        ref = -0.5 - 1j * math.pi * n
    elif init == "real":
        ref = -(n + 1.0) + 0j
    if init != "legs":
        assert _rel(lam, np.broadcast_to(ref, (H, N // 2))) < 1e-13
        assert np.array_equal(_complex(layer.B), np.ones((H, N // 2), complex))
    else:  # the kept Im < 0 half of the normal part of LegS(N), -½ + iω
        assert np.allclose(lam.real, -0.5, atol=1e-12) and bool((lam.imag < 0).all())
        assert np.array_equal(_complex(layer.B), np.broadcast_to(_complex(layer.B)[0], (H, N // 2)))
        assert not np.allclose(_complex(layer.B), 1.0)
    dt = np.exp(_np(layer.log_dt))
    assert dt.shape == (H,) and bool((dt >= 2e-3 * (1 - 1e-12)).all() and (dt <= 5e-2 * (1 + 1e-12)).all())
    assert np.unique(dt).size == H  # one draw per channel
    assert layer.C.shape == (1, H, N // 2, 2) and layer.D.shape == (H,)


def test_s4d_defaults_are_the_papers():
    layer = S4D(2)
    assert (layer.d_state, layer.init, layer.discretization) == (64, "legs", "zoh")
    assert (layer.dt_min, layer.dt_max, layer.lr, layer.bidirectional) == (1e-3, 1e-1, 1e-3, False)
    assert layer.n_modes == 32 and layer.log_A_real.shape == (2, 32)
    assert S4D(2, lr=0.25).lr == 0.25 and S4D(2, lr=None).lr is None


def test_s4d_zoo_entry():
    zoo = S4D.zoo
    assert zoo.paper == "arXiv 2206.11893" and zoo.time_varying is False and zoo.stable_by_construction is True


# ---------------------------------------------------------------------------------------------------------------
# DSS (arXiv 2203.14343, notes/core-checked.md §4)


def _dss_moved(version="exp", separate_dt=True, bidirectional=False, l_max=None, H=3, d_state=8, seed=0,
               growing=False):
    torch.manual_seed(seed)
    if version == "softmax" and l_max is None:
        l_max = 12
    layer = DSS(H, d_state=d_state, version=version, l_max=l_max, separate_dt=separate_dt,
                bidirectional=bidirectional, device=DEVICE, dtype=F64)
    M = d_state // 2
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        re = -torch.rand(M, generator=g, dtype=F64) * 1.5 - 0.1
        if growing:
            re[0] = 0.3  # DSS-softmax: a growing mode (Re λ > 0)
        if version == "exp":
            layer.log_A_real.copy_(torch.log(-re))
        else:
            layer.A_real.copy_(re)
        layer.A_imag.copy_(torch.randn(M, generator=g, dtype=F64) * 2.0)
        layer.log_dt.copy_(torch.rand(layer.log_dt.shape, generator=g, dtype=F64) * 2.0 - 2.5)  # Δ_re ≠ Δ_im
        for p in (layer.W, layer.D):
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
    return layer


def _dss_parts(layer):
    re = -np.exp(_np(layer.log_A_real)) if layer.version == "exp" else _np(layer.A_real)
    lam = re + 1j * _np(layer.A_imag)  # (M,)
    dt = np.exp(_np(layer.log_dt))
    dt_re, dt_im = dt[:, :1], dt[:, -1:]  # one column when the steps are tied
    z = dt_re * lam.real + 1j * dt_im * lam.imag  # (H, M)
    return lam, z, _complex(layer.W)  # W (C, H, M)


def _dss_reference(layer):
    """Ā = e^z, B̄ = 1, W̃ (C, H, M) the factor in front of e^{lz} of the paper's kernel."""
    lam, z, W = _dss_parts(layer)
    if layer.version == "exp":
        W_tilde = W * (np.exp(z) - 1) / lam
    else:  # W (e^z - 1)/(λ (e^{Lz} - 1)), the reciprocal regularised as in the official code
        x = lam * (np.exp(layer.l_max * z) - 1)
        W_tilde = W * (np.exp(z) - 1) * x.conj() / (np.abs(x) ** 2 + 1e-7)
    return np.exp(z), np.ones_like(z), W_tilde


@pytest.mark.parametrize("version,separate_dt,growing", [
    ("exp", True, False), ("exp", False, False), ("softmax", True, False), ("softmax", True, True),
    ("softmax", False, True),
], ids=["exp", "exp-tied", "softmax", "softmax-growing", "softmax-tied-growing"])
def test_dss_forward_step_and_state_are_the_papers_recurrence(version, separate_dt, growing):
    layer = _dss_moved(version, separate_dt, growing=growing)
    assert layer.log_dt.shape == (3, 2 if separate_dt else 1)
    A_bar, B_bar, Ws = _dss_reference(layer)
    rng = np.random.default_rng(4)
    u = rng.standard_normal((2, 17, 3))  # beyond l_max = 12 for softmax: the same LTI system continues
    x0 = rng.standard_normal((2, 3, 4)) + 1j * rng.standard_normal((2, 3, 4))
    expect, x_end = _scan(A_bar, B_bar, Ws, _np(layer.D), u, x0)
    _check_forward_and_steps(layer, u, x0, expect, x_end)
    with torch.no_grad():
        A, B, W_tilde = layer.discrete()
    _close(A, A_bar, 1e-14)
    assert torch.equal(B, torch.ones_like(B))
    _close(W_tilde, Ws, 1e-12)


@pytest.mark.parametrize("separate_dt", [True, False])
def test_dss_exp_kernel_is_the_papers_sum(separate_dt):
    layer = _dss_moved("exp", separate_dt)
    lam, z, W = _dss_parts(layer)
    l = np.arange(15)
    K = (W[0][..., None] * ((np.exp(z) - 1) / lam)[..., None] * np.exp(z[..., None] * l)).sum(1).real
    K[:, 0] += _np(layer.D)
    with torch.no_grad():
        _close(layer.kernel(15), K)


@pytest.mark.parametrize("growing", [False, True])
def test_dss_softmax_kernel_is_the_row_softmax(growing):
    """K_l = Re Σ_n (W_n/λ_n) e^{l z_n} / Σ_{k<L} e^{k z_n} for l < L = l_max (DSS-softmax, Prop. 1; the
    normaliser summed term by term, not by its geometric closed form)."""
    L = 12
    layer = _dss_moved("softmax", l_max=L, growing=growing)
    lam, z, W = _dss_parts(layer)
    l = np.arange(L)
    powers = np.exp(z[..., None] * l)  # (H, M, L)
    softmax = powers / powers.sum(-1, keepdims=True)
    K = ((W[0] / lam)[..., None] * softmax).sum(1).real
    K[:, 0] += _np(layer.D)
    with torch.no_grad():
        _close(layer.kernel(L), K, 1e-6)  # the official regulariser 1e-7 on |λ(e^{Lz} - 1)|² ~ 1e-1 … 1e1


def test_dss_softmax_with_a_different_l_max_is_a_different_system():
    a = _dss_moved("softmax", l_max=12)
    b = _dss_moved("softmax", l_max=20)
    _, _, Wa = _dss_reference(a)
    _, _, Wb = _dss_reference(b)
    with torch.no_grad():
        _close(a.discrete()[2], Wa, 1e-12)
        _close(b.discrete()[2], Wb, 1e-12)
    assert _rel(Wa, Wb) > 1e-3


@pytest.mark.parametrize("version", ["exp", "softmax"])
def test_dss_bidirectional_adds_the_anti_causal_part_with_its_own_W(version):
    layer = _dss_moved(version, bidirectional=True)
    A_bar, B_bar, Ws = _dss_reference(layer)
    _check_bidirectional_forward(layer, A_bar, B_bar, Ws, seed=5)


@pytest.mark.parametrize("version", ["exp", "softmax"])
def test_dss_state_space_is_the_papers_system(version):
    layer = _dss_moved(version, growing=version == "softmax")
    A_bar, B_bar, Ws = _dss_reference(layer)
    _check_state_space(layer, A_bar, B_bar, Ws, seed=6)


def test_dss_init_constants():
    """Λ shared by the channels (the Im > 0 half of the skew part of LegS(2M), minus ½: Re λ = -½), the same for
    both versions; both steps from one draw per channel in [dt_min, dt_max]; W (C, H, M, 2), D (H,)."""
    torch.manual_seed(0)
    exp = DSS(5, d_state=12, dt_min=3e-3, dt_max=2e-2, dtype=F64)
    torch.manual_seed(0)
    soft = DSS(5, d_state=12, version="softmax", l_max=30, dtype=F64)
    tied = DSS(5, d_state=12, separate_dt=False, dtype=F64, bidirectional=True)
    assert np.allclose(-np.exp(_np(exp.log_A_real)), -0.5, atol=1e-12)
    assert np.allclose(_np(soft.A_real), -0.5, atol=1e-12)
    assert np.array_equal(_np(exp.A_imag), _np(soft.A_imag)) and bool((exp.A_imag > 0).all())
    assert exp.A_imag.shape == (6,)
    dt = np.exp(_np(exp.log_dt))
    assert dt.shape == (5, 2) and np.array_equal(dt[:, 0], dt[:, 1]) and np.unique(dt[:, 0]).size == 5
    assert bool((dt >= 3e-3 * (1 - 1e-12)).all() and (dt <= 2e-2 * (1 + 1e-12)).all())
    assert tied.log_dt.shape == (5, 1) and tied.W.shape == (2, 5, 6, 2) and exp.W.shape == (1, 5, 6, 2)
    assert exp.D.shape == (5,)


def test_dss_defaults_are_the_papers():
    layer = DSS(2)
    assert (layer.d_state, layer.version, layer.l_max, layer.separate_dt) == (64, "exp", None, True)
    assert (layer.dt_min, layer.dt_max, layer.lr, layer.bidirectional) == (1e-3, 1e-1, 1e-3, False)
    assert layer.n_modes == 32 and layer.log_dt.shape == (2, 2)
    assert DSS(2, lr=0.25).lr == 0.25 and DSS(2, lr=None).lr is None


def test_dss_zoo_entry():
    zoo = DSS.zoo
    assert zoo.paper == "arXiv 2203.14343" and zoo.time_varying is False and zoo.stable_by_construction is False


def test_dss_checks_name_the_option():
    with pytest.raises(ValueError, match="l_max"):
        DSS(2, version="softmax")
    with pytest.raises(ValueError, match="l_max"):
        DSS(2, version="exp", l_max=0)
    assert DSS(2, version="exp", l_max=7).l_max == 7
    with pytest.raises(ValueError, match="separate_dt"):
        DSS(2, separate_dt=1)
    with pytest.raises(ValueError, match="bidirectional"):
        DSS(2, bidirectional="yes")
    with pytest.raises(ValueError, match=r"version must be one of \('exp', 'softmax'\); got 'softplus'"):
        DSS(2, version="softplus")


@pytest.mark.parametrize("cls", [S4D, DSS])
@pytest.mark.parametrize("option,value,message", [
    ("d_model", 0, "d_model must be a positive int"),
    ("d_model", 2.0, "d_model must be a positive int"),
    ("d_state", 5, "d_state must be an even int"),
    ("d_state", 0, "d_state must be an even int"),
    ("dt_min", 0.0, "dt_min and dt_max must satisfy 0 < dt_min"),
    ("dt_max", float("inf"), "dt_max must be a finite float > 0"),
    ("dt_min", 0.5, "dt_min and dt_max must satisfy"),  # dt_max 0.1 < dt_min
    ("lr", -1e-3, "lr must be a finite float >= 0"),
    ("bidirectional", 1, "bidirectional must be True or False"),
], ids=lambda v: str(v))
def test_checks_name_the_option(cls, option, value, message):
    options = {"d_model": 2, option: value}
    d_model = options.pop("d_model")
    with pytest.raises(ValueError, match=message):
        cls(d_model, **options)


def test_s4d_checks_name_the_init_and_discretization():
    with pytest.raises(ValueError, match=r"init must be one of \('legs', 'inv', 'lin', 'real'\); got 'fout'"):
        S4D(2, init="fout")
    with pytest.raises(ValueError, match=r"discretization must be one of \('zoh', 'bilinear'\); got 'foh'"):
        S4D(2, discretization="foh")
    assert S4D(2, dt_min=0.01, dt_max=0.01).dt_min == 0.01  # one step size: dt_min = dt_max is allowed


@pytest.mark.parametrize("L_re_z", [19.2, 51.2, 76.8])
def test_dss_softmax_float32_growing_mode_keeps_its_kernel(L_re_z):
    """A growing mode (Re z > 0) in float32: the kernel against the official code's row softmax with its max shift,
    e^{(l - L + 1) z} / Σ_k e^{(k - L + 1) z}, in float64. |λ(e^{Lz} - 1)|² overflows float32 once L·Re(z) > 44:
    that made W̃ exactly 0 and the mode's part of the kernel (up to 0.05 here) vanish, while the docstring promises
    the state finite up to L·Re(z) < 88."""
    L, dt = 64, 0.1
    torch.manual_seed(0)
    layer = DSS(1, d_state=4, version="softmax", l_max=L, dt_min=dt, dt_max=dt, device=DEVICE)
    with torch.no_grad():
        layer.A_real.copy_(torch.tensor([L_re_z / L / dt, -0.5]))  # Re z = L_re_z / L for the first mode
        layer.D.zero_()
    lam, z, W = _dss_parts(layer)
    l = np.arange(L)
    shifted = np.exp(z[..., None] * (l - (L - 1)))  # (H, M, L): the official max shift for Re z > 0
    softmax = shifted / shifted.sum(-1, keepdims=True)
    K = ((W[0] / lam)[..., None] * softmax).sum(1).real
    K_layer = layer.kernel(L)
    assert bool(torch.isfinite(K_layer).all())
    _close(K_layer, K, 1e-4)  # float32 rounding of e^{lz} over 64 steps
    x = torch.zeros(1, L, 1, device=DEVICE)
    x[0, 0] = 1
    with torch.no_grad():
        y, _ = layer(x)
    _close(y[0, :, 0], K[0], 1e-4)
    layer.A_real.grad = None
    layer.kernel(L).square().sum().backward()
    assert bool(torch.isfinite(layer.A_real.grad).all()) and float(layer.W.grad.abs().max()) > 0


@pytest.mark.parametrize("backend,two_sided_calls", [("reference", 1), ("fft", 1), ("auto", None), ("chunked", 0),
                                                     ("native", 0)])
def test_bidirectional_forward_takes_the_documented_path(monkeypatch, backend, two_sided_calls):
    """DiagonalLTILayer._two_sided: one two-sided convolution (reference loop or FFT), or two causal scans under
    "chunked" and "native", and under "auto" where the C kernel runs (else the FFT convolution); the values are the
    same either way (tested above), the cost is not."""
    import ssmkit.layers.diagonal as diagonal
    from ssmkit.ops.native import native_available

    layer = _s4d_moved(bidirectional=True)
    if backend not in ("auto", *runnable_backends(layer)):
        pytest.skip(f"backend {backend} does not run here")
    if two_sided_calls is None:
        two_sided_calls = 0 if DEVICE.type == "cpu" and native_available("ssm_scan", F64) else 1
    calls = []
    original = diagonal.diagonal_ssm_bidirectional

    def spy(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return original(*args, **kwargs)

    monkeypatch.setattr(diagonal, "diagonal_ssm_bidirectional", spy)
    with torch.no_grad(), ops.use_backend(backend):
        layer(torch.randn(2, 9, 3, dtype=F64, device=DEVICE))
    assert len(calls) == two_sided_calls
