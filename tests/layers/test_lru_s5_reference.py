"""LRU and S5 against independent references (probe 28): the published recurrences as float64 NumPy loops over the
layers' own parameters (moved away from their initial values), ZOH by scipy's ``expm`` of the augmented matrix, the
init laws against their closed forms, and HiPPO-LegS's normal part built by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

import ssmkit.layers as layers


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _complex(pair: torch.Tensor) -> np.ndarray:
    a = _np(pair)
    return a[..., 0] + 1j * a[..., 1]


def _scan(A_bar, B_bar, Cs, D, u, x0, scale):
    """y_t = scale·Re(C[0] x_t) (+ scale·Re(C[1] z_t) backwards) + D u_t, x_t = Ā x_{t-1} + B̄ u_t; float64 loop."""
    Bt, L, _ = u.shape
    y = np.zeros(u.shape)
    x = x0.copy()
    for t in range(L):
        x = A_bar * x + u[:, t] @ B_bar.T
        y[:, t] = scale * (x @ Cs[0].T).real + D * u[:, t]
    if len(Cs) == 2:
        z = np.zeros_like(x0)
        for t in reversed(range(L)):
            z = A_bar * z + u[:, t] @ B_bar.T
            y[:, t] += scale * (z @ Cs[1].T).real
    return y, x


# ---------------------------------------------------------------------------------------------------------------
# LRU (arXiv 2303.06349 eq. 1, §3.3-3.4)


def _lru_moved(H=3, d_state=6, bidirectional=False, seed=0):
    torch.manual_seed(seed)
    layer = layers.build("lru", d_model=H, d_state=d_state, bidirectional=bidirectional, dtype=torch.float64)
    M = d_state // 2
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        layer.log_nu.copy_(torch.linspace(-3.0, 0.5, M, dtype=torch.float64))
        layer.log_theta.copy_(torch.linspace(-1.5, 1.2, M, dtype=torch.float64))
        layer.log_gamma.copy_(torch.linspace(-0.7, 0.3, M, dtype=torch.float64))  # γ not tied to λ
        for p in (layer.B, layer.C, layer.D):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return layer


def _lru_reference_matrices(layer):
    nu, theta = np.exp(_np(layer.log_nu)), np.exp(_np(layer.log_theta))
    lam = np.exp(-nu) * (np.cos(theta) + 1j * np.sin(theta))  # λ = exp(-exp(ν) + i exp(θ))
    B_bar = np.exp(_np(layer.log_gamma))[:, None] * _complex(layer.B)  # γ ⊙ B (M, H)
    return lam, B_bar, _complex(layer.C)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lru_forward_is_the_papers_recurrence(bidirectional):
    layer = _lru_moved(bidirectional=bidirectional)
    lam, B_bar, Cs = _lru_reference_matrices(layer)
    assert tuple(layer.C.shape) == (2 if bidirectional else 1, 3, 3, 2)  # one C per direction
    rng = np.random.default_rng(1)
    u = rng.standard_normal((2, 9, 3))
    x0 = np.zeros((2, 3), complex) if bidirectional else rng.standard_normal((2, 3)) + 1j * rng.standard_normal((2, 3))
    expect, x_end = _scan(lam, B_bar, Cs, _np(layer.D), u, x0, 1.0)
    with torch.no_grad():
        state = None if bidirectional else torch.from_numpy(x0)
        y, h = layer(torch.from_numpy(u), state)
    assert np.abs(_np(y) - expect).max() < 1e-12 * np.abs(expect).max()
    if not bidirectional:
        assert np.abs(_np(h) - x_end).max() < 1e-12 * np.abs(x_end).max()
        with torch.no_grad():  # step by step from the same state
            s = torch.from_numpy(x0)
            for t in range(9):
                y_t, s = layer.step(torch.from_numpy(u[:, t]), s)
                assert np.abs(_np(y_t) - expect[:, t]).max() < 1e-12 * np.abs(expect).max()


def test_lru_eigenvalues_and_discrete_are_the_closed_forms():
    layer = _lru_moved()
    lam, B_bar, Cs = _lru_reference_matrices(layer)
    with torch.no_grad():
        A, B, C = layer.discrete()
        assert np.abs(_np(layer.eigenvalues()) - lam).max() < 1e-15
    assert np.abs(_np(A) - lam).max() < 1e-15
    assert np.abs(_np(B) - B_bar).max() < 1e-14
    assert np.array_equal(_np(C), Cs)
    assert layer.n_modes == 3 and _np(A).shape == (3,)


def test_lru_init_draws_follow_the_closed_form_laws():
    """|λ|² ~ U[r_min², r_max²], arg λ = exp(θ) ~ U[0, max_phase) (Kolmogorov-Smirnov), γ = √(1 - |λ|²)."""
    torch.manual_seed(28)
    r_min, r_max, max_phase = 0.3, 0.95, 2.5
    layer = layers.build("lru", d_model=2, d_state=4000, r_min=r_min, r_max=r_max, max_phase=max_phase,
                         dtype=torch.float64)
    rate = np.exp(_np(layer.log_nu))
    r2 = np.exp(-2 * rate)  # |λ|² from ν by hand
    phase = np.exp(_np(layer.log_theta))
    assert scipy.stats.kstest(r2, "uniform", args=(r_min**2, r_max**2 - r_min**2)).pvalue > 1e-3
    assert scipy.stats.kstest(phase, "uniform", args=(0.0, max_phase)).pvalue > 1e-3
    assert r2.min() >= r_min**2 and r2.max() <= r_max**2 and phase.max() < max_phase
    assert np.abs(np.exp(_np(layer.log_gamma)) - np.sqrt(1 - r2)).max() < 1e-12


def test_lru_default_init_is_the_unit_disc():
    """Defaults r_min = 0, r_max = 1, max_phase = 6.28: |λ|² ~ U[0, 1], phases ~ U[0, 6.28)."""
    torch.manual_seed(29)
    layer = layers.build("lru", d_model=2, d_state=4000, dtype=torch.float64)
    r2 = np.exp(-2 * np.exp(_np(layer.log_nu)))
    assert scipy.stats.kstest(r2, "uniform", args=(0.0, 1.0)).pvalue > 1e-3
    assert scipy.stats.kstest(np.exp(_np(layer.log_theta)), "uniform", args=(0.0, 6.28)).pvalue > 1e-3


def test_lru_rate_floor_is_one_in_a_million():
    layer = _lru_moved()
    with torch.no_grad():
        layer.log_nu.copy_(torch.tensor([-30.0, math.log(1e-6), math.log(2e-6)], dtype=torch.float64))
        mod = _np(layer.eigenvalues()).__abs__()
    assert np.abs(mod - np.exp(-np.array([1e-6, 1e-6, 2e-6]))).max() < 1e-15


def test_zoo_flags_follow_the_papers():
    """LRU: time-invariant, stable for every parameter value (|λ| = exp(-exp ν) < 1); S5: time-invariant, stable
    only with clip_eigs (Re Λ is stored as is)."""
    lru, s5 = layers.layer_class("lru").zoo, layers.layer_class("s5").zoo
    assert (lru.time_varying, lru.stable_by_construction) == (False, True)
    assert (s5.time_varying, s5.stable_by_construction) == (False, False)
    s5_layer = _s5_moved()
    with torch.no_grad():
        s5_layer.A_real.fill_(0.2)
    assert not s5_layer.state_space().is_stable()  # so S5 is not stable by construction


def test_lru_validation_and_repr():
    for bad in (dict(r_min=0.5, r_max=0.4), dict(r_max=1.01), dict(r_min=-0.1), dict(max_phase=-1.0),
                dict(r_max=True), dict(max_phase="1"), dict(r_min=float("inf")), dict(bidirectional=1),
                dict(lr=-1e-3), dict(lr=float("nan")), dict(d_model=0), dict(d_model=2.0)):
        with pytest.raises(ValueError):
            layers.build("lru", **{"d_model": 2, **bad})
    for good in (dict(r_min=0.0, r_max=1e-9), dict(r_min=0.5, r_max=0.5, max_phase=1e-9), dict(r_min=0.0, r_max=1.0)):
        layers.build("lru", d_model=2, d_state=4, **good)  # the bounds themselves are allowed
    opts = dict(d_model=2, d_state=4, r_min=0.1, r_max=0.7, max_phase=0.5, lr=3e-5, bidirectional=True)
    layer = layers.build("lru", **opts)
    assert all(getattr(layer, k) == v for k, v in opts.items())  # the options are kept under their names
    assert repr(layer).endswith(
        "(d_model=2, d_state=4, r_min=0.1, r_max=0.7, max_phase=0.5, bidirectional=True, lr=3e-05)"
    )  # the main options, then every other one that differs from its default


# ---------------------------------------------------------------------------------------------------------------
# S5 (arXiv 2208.04933 eq. 2-3, 6; §3.2, §4.3)


def _legs_normal_half(n: int) -> np.ndarray:
    """The Im < 0 eigenvalues of the normal part of HiPPO-LegS (n × n), built by hand, ascending in Im."""
    k = np.arange(n)
    A = -np.sqrt(2 * k[:, None] + 1) * np.sqrt(2 * k[None, :] + 1)
    A = np.tril(A, -1) - np.diag(k + 1.0)
    p = np.sqrt(k + 0.5)
    ev = np.linalg.eigvals(A + np.outer(p, p))
    half = ev[ev.imag < 0]
    return half[np.argsort(half.imag)]  # ascending in Im (the official order)


def _s5_moved(H=3, d_state=8, blocks=2, seed=0, **opts):
    torch.manual_seed(seed)
    layer = layers.build("s5", d_model=H, d_state=d_state, blocks=blocks, dtype=torch.float64, **opts)
    M = layer.n_modes
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        layer.A_real.copy_(-torch.linspace(0.05, 2.0, M, dtype=torch.float64))
        layer.A_imag.copy_(torch.linspace(-3.0, 1.5, M, dtype=torch.float64))
        layer.log_dt.copy_(torch.linspace(-2.5, 0.3, M, dtype=torch.float64))
        for p in (layer.B, layer.C, layer.D):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return layer


def _s5_reference_matrices(layer, step_rescale=1.0):
    Lam = _np(layer.A_real) + 1j * _np(layer.A_imag)
    if layer.clip_eigs:
        Lam = np.minimum(Lam.real, -1e-4) + 1j * Lam.imag
    dt = step_rescale * np.exp(_np(layer.log_dt))
    B = _complex(layer.B)
    if layer.discretization == "zoh":  # Van Loan: expm([[ΔΛ, Δ], [0, 0]]) = [[Λ̄, B̄/B̃], [0, 1]]
        A_bar, g = np.empty_like(Lam), np.empty_like(Lam)
        for m in range(len(Lam)):
            E = scipy.linalg.expm(np.array([[dt[m] * Lam[m], dt[m]], [0.0, 0.0]]))
            A_bar[m], g[m] = E[0, 0], E[0, 1]
    else:
        A_bar = (1 + dt * Lam / 2) / (1 - dt * Lam / 2)
        g = dt / (1 - dt * Lam / 2)
    return A_bar, g[:, None] * B, _complex(layer.C)


@pytest.mark.parametrize(
    "opts",
    [
        dict(),
        dict(discretization="bilinear"),
        dict(conj_sym=False, d_state=8, blocks=2),
        dict(bidirectional=True, clip_eigs=True),
        dict(step_rescale=0.37, discretization="bilinear"),
        dict(step_rescale=2.5),
    ],
    ids=["zoh", "bilinear", "no-conj-sym", "bidir-clip", "rescale-bilinear", "rescale-zoh"],
)
def test_s5_forward_is_the_papers_recurrence(opts):
    layer = _s5_moved(**opts)
    if layer.clip_eigs:
        with torch.no_grad():
            layer.A_real[::2] = 0.4  # unstable modes that the clip must bring to -1e-4
    A_bar, B_bar, Cs = _s5_reference_matrices(layer, opts.get("step_rescale", 1.0))
    scale = 2.0 if layer.conj_sym else 1.0
    rng = np.random.default_rng(2)
    M = layer.n_modes
    assert tuple(layer.C.shape) == (2 if layer.bidirectional else 1, 3, M, 2)  # one C̃ per direction
    u = rng.standard_normal((2, 11, 3))
    x0 = np.zeros((2, M), complex) if layer.bidirectional else rng.standard_normal((2, M)) + 1j * rng.standard_normal((2, M))
    expect, x_end = _scan(A_bar, B_bar, Cs, _np(layer.D), u, x0, scale)
    with torch.no_grad():
        A, B, C = layer.discrete()
        y, h = layer(torch.from_numpy(u), None if layer.bidirectional else torch.from_numpy(x0))
    assert np.abs(_np(A) - A_bar).max() < 1e-13
    assert np.abs(_np(B) - B_bar).max() < 1e-13 * np.abs(B_bar).max()
    assert np.abs(_np(C) - scale * Cs).max() == 0.0
    assert np.abs(_np(y) - expect).max() < 1e-12 * np.abs(expect).max()
    if not layer.bidirectional:
        assert np.abs(_np(h) - x_end).max() < 1e-12 * np.abs(x_end).max()


def test_s5_continuous_clips_only_the_real_part_above_the_bound():
    layer = _s5_moved(clip_eigs=True)
    with torch.no_grad():
        layer.A_real.copy_(torch.tensor([0.3, -1e-4, -5e-5, -0.2], dtype=torch.float64))
        Lam, B, dt = layer.continuous()
    assert np.array_equal(_np(Lam).real, [-1e-4, -1e-4, -1e-4, -0.2])
    assert np.array_equal(_np(Lam).imag, _np(layer.A_imag))
    assert np.array_equal(_np(B), _complex(layer.B))
    assert np.abs(_np(dt) - np.exp(_np(layer.log_dt))).max() < 1e-15


@pytest.mark.parametrize("conj_sym", [True, False])
def test_s5_init_eigenvalues_are_hand_built_legs_blocks(conj_sym):
    P, J = 24, 3
    layer = layers.build("s5", d_model=2, d_state=P, blocks=J, conj_sym=conj_sym, dtype=torch.float64)
    lam = _np(layer.A_real) + 1j * _np(layer.A_imag)
    if conj_sym:  # M = P/2: blocks of P/J = 8, each keeps its 4 Im < 0 eigenvalues
        half = _legs_normal_half(P // J)
        expect = np.tile(half, J)
    else:  # M = P/2 from blocks of P/(2J) = 4 with both halves of every pair
        half = _legs_normal_half(P // (2 * J))
        expect = np.tile(np.concatenate([half, half.conj()]), J)
    assert lam.shape == (P // 2,)
    assert np.abs(lam - expect).max() < 1e-10
    assert np.abs(lam.real + 0.5).max() < 1e-12


def test_s5_init_draws_follow_the_closed_form_laws():
    """B real (P, H) truncated normal var 1/P, B̃ = V* B; C̃ parts of variance 1/P (trunc_standard_normal, default),
    1/(P·H) (lecun_normal) and ½ (complex_normal); log Δ ~ U[log dt_min, log dt_max]."""
    torch.manual_seed(30)
    P, H = 64, 40
    layer = layers.build("s5", d_model=H, d_state=P, blocks=4, dt_min=2e-3, dt_max=0.5, dtype=torch.float64)
    from ssmkit.ops.hippo import s5_eigen

    _, V = s5_eigen(P, 4)
    V = _np(V)  # (P, M)
    B = 2 * (V @ _complex(layer.B)).real  # B = V B̃ + conj(V B̃) for a real B
    assert np.abs(V.conj().T @ B - _complex(layer.B)).max() < 1e-12
    # frozen laws' cdfs: scipy 1.18.1's kstest called special.ndtr with the args of a named "norm" (TypeError)
    truncnorm = scipy.stats.truncnorm(-2, 2).cdf
    assert scipy.stats.kstest(B.ravel() * math.sqrt(P) * 0.87962566103423978, truncnorm).pvalue > 1e-3
    C = _complex(layer.C[0])  # (H, M)
    assert abs(np.mean(C.real**2) * P - 1) < 0.1 and abs(np.mean(C.imag**2) * P - 1) < 0.1  # 1280 draws each
    logdt = _np(layer.log_dt)
    assert scipy.stats.kstest(logdt, "uniform", args=(math.log(2e-3), math.log(0.5 / 2e-3))).pvalue > 1e-3
    torch.manual_seed(31)
    lecun = _complex(layers.build("s5", d_model=H, d_state=P, blocks=4, C_init="lecun_normal", bidirectional=True,
                                  dtype=torch.float64).C)
    for c in range(2):  # both directions drawn, each part of variance 1/(P H)
        assert abs(np.mean(lecun[c].real ** 2) * P * H - 1) < 0.15
        assert abs(np.mean(lecun[c].imag ** 2) * P * H - 1) < 0.15
    assert np.abs(lecun[0] - lecun[1]).min() > 0
    torch.manual_seed(32)
    cn = _np(layers.build("s5", d_model=H, d_state=P, blocks=4, C_init="complex_normal", bidirectional=True,
                          dtype=torch.float64).C)
    for c in range(2):
        assert scipy.stats.kstest(cn[c].ravel(), scipy.stats.norm(0.0, math.sqrt(0.5)).cdf).pvalue > 1e-3


def test_s5_default_dt_range_and_blocks():
    """Defaults dt_min = 1e-3, dt_max = 1e-1 (log-uniform) and J = 8 blocks."""
    torch.manual_seed(33)
    layer = layers.build("s5", d_model=2, d_state=2048, dtype=torch.float64)
    logdt = _np(layer.log_dt)
    assert scipy.stats.kstest(logdt, "uniform", args=(math.log(1e-3), math.log(100.0))).pvalue > 1e-3
    lam = _np(layer.A_real) + 1j * _np(layer.A_imag)
    assert np.abs(lam - np.tile(_legs_normal_half(256), 8)).max() < 1e-9


def test_s5_validation_and_repr():
    for bad in (dict(step_rescale=-1.0), dict(step_rescale=float("inf")), dict(step_rescale=True),
                dict(d_state=0), dict(d_state=True), dict(d_state=16.0), dict(bidirectional=1), dict(conj_sym=0),
                dict(clip_eigs="no"), dict(lr=-1e-3), dict(d_model=0), dict(dt_min=0.2, dt_max=0.1),
                dict(dt_min=0.0)):
        with pytest.raises(ValueError, match=next((k for k in bad if k != "dt_max"), "")):  # named by the check
            layers.build("s5", **{"d_model": 2, "blocks": 1, **bad})
    layers.build("s5", d_model=2, d_state=2, blocks=1, step_rescale=1e-9)
    layers.build("s5", d_model=2, d_state=4, blocks=1, conj_sym=False)
    opts = dict(d_model=2, d_state=8, blocks=2, discretization="bilinear", C_init="lecun_normal", dt_min=0.01,
                dt_max=0.2, conj_sym=False, clip_eigs=True, step_rescale=0.5, lr=3e-5, bidirectional=True)
    layer = layers.build("s5", **opts)
    assert all(getattr(layer, k) == v for k, v in opts.items())  # the options are kept under their names
    assert repr(layer).endswith(
        "(d_model=2, d_state=8, blocks=2, discretization='bilinear', conj_sym=False, bidirectional=True, "
        "C_init='lecun_normal', dt_min=0.01, dt_max=0.2, clip_eigs=True, step_rescale=0.5, lr=3e-05)"
    )  # the main options, then every other one that differs from its default


@pytest.mark.parametrize("name,methods", [("lru", ("eigenvalues", "discrete")), ("s5", ("continuous", "discrete"))])
def test_half_precision_weights_are_refused_by_name(name, methods):
    """Each public matrix method refuses float16 weights with a ValueError (as forward does), not a dtype error
    deep inside torch."""
    layer = layers.build(name, d_model=2, d_state=4, **({"blocks": 1} if name == "s5" else {})).half()
    for method in methods:
        with pytest.raises(ValueError, match="float32 or float64"):
            getattr(layer, method)()


@pytest.mark.parametrize("r", [0.0, 1.0])
def test_lru_refuses_a_ring_of_radius_zero_or_one_that_no_finite_parameter_reaches(r):
    """|λ| = 0 needs ν = +inf (the backward gave ∂/∂ν = -exp(ν) λ = inf·0 = NaN) and |λ| = 1 needs ν = -inf and
    γ = 0 (an input scale of 0 with a zero gradient: a layer deaf to its input for ever); r_min = r_max = r drew them."""
    with pytest.raises(ValueError, match="r_max > 0 and r_min < 1"):
        layers.build("lru", d_model=2, d_state=4, r_min=r, r_max=r)
    torch.manual_seed(0)  # just inside the bounds every parameter is finite and the input reaches the state
    for r_min, r_max in ((0.0, 1e-3), (0.999, 1.0)):
        layer = layers.build("lru", d_model=2, d_state=4, r_min=r_min, r_max=r_max, dtype=torch.float64)
        y, _ = layer(torch.randn(1, 5, 2, dtype=torch.float64))
        y.sum().backward()
        for p in (layer.log_nu, layer.log_theta, layer.log_gamma):
            assert bool(torch.isfinite(p).all()) and bool(torch.isfinite(p.grad).all())
        assert float(layer.log_gamma.detach().exp().min()) > 0
