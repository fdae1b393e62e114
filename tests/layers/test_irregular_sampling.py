"""Irregularly sampled sequences: ``forward(..., intervals=)`` and ``step(..., interval=)`` of the layers that declare
``takes_intervals`` (S5, arXiv 2208.04933, and the others of :mod:`ssmkit.layers.irregular`), and their path through
Block and SequenceModel.

Parametrised over ``ssmkit.layers.available()``: a layer that declares ``takes_intervals`` is checked against the
exact samples of its continuous-time system (scipy's matrix exponential of the augmented system with the input held
over each gap; for the layers defined in discrete time, LRU, EMA and DLR, the system whose unit-step hold is their
recurrence, from numpy's principal logarithm of their eigenvalues), its own step loop, the regular forward (all
intervals 1), chunking, causality and gradients; every other layer is refused by Block with a ValueError. The
selective layers (Mamba, Mamba-2, RG-LRU) are checked against loops written here from their papers.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
from ssmkit.models import Block, SequenceModel
from tests.conftest import DEVICE, H, leaves, make_layer, rel_err, runnable_backends, state_err, variants

NAMES = layers.available()
TAKERS = [name for name in NAMES if layers.layer_class(name).takes_intervals]
CASES = [(name, opts) for name in TAKERS for opts in variants(name)]
IDS = [f"{name}-{i}" for name in TAKERS for i in range(len(variants(name)))]
# the layers whose continuous-time system the scipy oracle samples (LTI: ``continuous()``); the selective ones
# (Mamba: Δ_t scaled by the gap) are checked against the regular layer, their step loop, chunks and gradients
LTI_CASES = [(n, o) for n, o in CASES if hasattr(layers.layer_class(n), "continuous")]
LTI_IDS = [i for i, (n, o) in zip(IDS, CASES) if hasattr(layers.layer_class(n), "continuous")]
B, L = 2, 13


def _size(state) -> torch.Tensor:
    """Σ |entries| of a state (a tensor or a tuple of them): a scalar that reads every part of it."""
    return sum(t.abs().sum() for t in leaves(state))


def _backends(layer) -> tuple[str, ...]:
    """The layer's runnable backends with intervals: all but ``"fft"`` (the sampled system is time-varying)."""
    return tuple(b for b in ("auto", *runnable_backends(type(layer))) if b != "fft")


def _intervals(batch: int = B, length: int = L, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Gaps between 0.05 and 3 nominal periods: short, regular and long ones."""
    g = torch.Generator().manual_seed(seed)
    return (0.05 + 2.95 * torch.rand(batch, length, generator=g, dtype=torch.float64)).to(DEVICE, dtype)


def _input(seed: int = 1, dtype=torch.float64, length: int = L) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, length, H, generator=g, dtype=torch.float64).to(DEVICE, dtype)


def _bank(e: np.ndarray, Bin: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """H SISO systems of M modes each, e, Bin, C (H, M), as one system with H·M modes: e (H·M,), B_c (H·M, H),
    C_c (H, H·M) (block diagonal)."""
    Hn, M = e.shape
    B_c, C_c = np.zeros((Hn * M, Hn), complex), np.zeros((Hn, Hn * M), complex)
    for h in range(Hn):
        B_c[h * M:(h + 1) * M, h] = Bin[h]
        C_c[h, h * M:(h + 1) * M] = C[h]
    return e.reshape(-1), B_c, C_c


def _unit_hold(Lam_bar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A discrete-time recurrence x_t = Λ̄ x_{t-1} + B̄ u_t read as the unit-step ZOH of dx/ds = e x + B_c u: e = log Λ̄
    on numpy's principal branch (Im in (−π, π]) and the factor e/(Λ̄ − 1) that B_c = e/(Λ̄ − 1) B̄ applies (the
    ZOH over one period, (e^e − 1)/e B_c, gives B̄ back)."""
    e = np.log(Lam_bar.astype(complex))
    return e, e / (Lam_bar - 1)


def _continuous_system(layer) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The layer as one continuous-time system in nominal time s, dx/ds = diag(e) x + B_c u, y = Re(C_c x) + D u:
    e (n,) the modes' eigenvalues times their steps Δ, B_c (n, H), C_c (H, n) (factor 2 of conjugate pairs in C_c),
    D (H,), read from the layer's parameters (``continuous()`` and C; for the layers defined in discrete time, LRU,
    EMA and DLR, from their ``discrete()`` matrices and numpy's principal logarithm, not from ``continuous()``). A new
    layer that declares ``takes_intervals`` needs its branch here (the test fails until it has one)."""
    D = layer.D.detach().cpu().numpy()
    name = type(layer).__name__
    if name in ("LRU", "EMA", "DLR"):
        A_bar, B_bar, C = (t.detach().cpu().numpy() for t in layer.discrete())  # LRU (M,), (M, H), (1, H, M)
        e, hold = _unit_hold(A_bar)
        if name == "LRU":  # one MIMO system, y = Re(C x)
            return e, hold[:, None] * B_bar, C[0], D
        return (*_bank(e, hold * B_bar, C[0]), D)  # a bank (H, M): EMA real modes, DLR B̄ = 1; y = Re(C x)
    Lam, Bin, dt = (t.detach().cpu().numpy() for t in layer.continuous())
    if type(layer).__name__ == "S5":  # one MIMO system: Λ (M,), B̃ (M, H), Δ (M,)
        C = torch.view_as_complex(layer.C[0].detach().cpu().contiguous()).numpy()
        return dt * Lam, dt[:, None] * Bin, (2 * C if layer.conj_sym else C), D
    if type(layer).__name__ in ("S4D", "DSS"):  # H SISO systems: Λ, B (H, M), Δ (H,); output 2 Re(C x) / Re(W x)
        if type(layer).__name__ == "S4D":
            C = 2 * torch.view_as_complex(layer.C[0].detach().cpu().contiguous()).numpy()  # (H, M)
        else:  # DSS's state is read out by W̃ (its discrete output vectors)
            C = layer.discrete()[2][0].detach().cpu().numpy()  # (H, M)
        return (*_bank(dt[:, None] * Lam, dt[:, None] * Bin, C), D)
    raise AssertionError(f"no continuous-time oracle for {type(layer).__name__}: add its branch")


def _exact_samples(layer, x: torch.Tensor, intervals: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """y (B, L, H) and the final state of the layer's continuous system (:func:`_continuous_system`), the input held
    over each gap, sampled at the cumulative gaps: x_t = e^{A τ} x_{t-1} + ∫_0^τ e^{A s} ds B u_t from the matrix
    exponential of [[A, B], [0, 0]] τ (the zero-order hold, independent of ssmkit's discretisation)."""
    e, B_c, C_c, D = _continuous_system(layer)
    n = e.shape[0]
    aug = np.zeros((n + H, n + H), complex)
    aug[:n, :n], aug[:n, n:] = np.diag(e), B_c
    u, tau = x.detach().cpu().numpy(), intervals.detach().cpu().numpy()
    ys, finals = np.zeros(u.shape), []
    for b in range(u.shape[0]):
        state = np.zeros(n, complex)
        for t in range(u.shape[1]):
            E = scipy.linalg.expm(aug * tau[b, t])
            state = E[:n, :n] @ state + E[:n, n:] @ u[b, t]
            ys[b, t] = (C_c @ state).real + D * u[b, t]
        finals.append(state)
    return ys, np.stack(finals)


def _flat_state(h: torch.Tensor) -> np.ndarray:
    """The layer's state (B, M) or (B, H, M) as (B, n) in the order of :func:`_continuous_system`."""
    return h.detach().cpu().reshape(h.shape[0], -1).numpy()


@pytest.mark.parametrize("name, opts", [(n, o) for n, o in LTI_CASES if o.get("discretization", "zoh") == "zoh"],
                         ids=[i for i, (n, o) in zip(LTI_IDS, LTI_CASES) if o.get("discretization", "zoh") == "zoh"])
def test_zoh_forward_is_the_exact_sampling_of_the_continuous_system(name, opts):
    layer = make_layer(name, opts)
    x, tau = _input(), _intervals()
    y, h = layer(x, intervals=tau)
    y_ref, h_ref = _exact_samples(layer, x, tau)
    assert np.abs(y.detach().cpu().numpy() - y_ref).max() < 1e-10 * max(1.0, np.abs(y_ref).max())
    assert np.abs(_flat_state(h) - h_ref).max() < 1e-10 * max(1.0, np.abs(h_ref).max())


@pytest.mark.parametrize("name, opts", LTI_CASES, ids=LTI_IDS)
def test_bilinear_and_zoh_steps_follow_the_per_step_rules(name, opts):
    """Each step's Ā_t, B̄_t from the rule's closed form in numpy, with z = τ_t e (e: the modes' ΔΛ): ZOH e^z,
    (e^z - 1)/e · B_c; bilinear (1 + z/2)/(1 - z/2), τ/(1 - z/2) · B_c."""
    layer = make_layer(name, opts)
    x, tau = _input(), _intervals(seed=3)
    y = layer(x, intervals=tau)[0].detach().cpu().numpy()
    e, B_c, C_c, D = _continuous_system(layer)
    u, taus = x.cpu().numpy(), tau.cpu().numpy()
    for b in range(B):
        state = np.zeros(e.shape, complex)
        for t in range(L):
            z = taus[b, t] * e
            if getattr(layer, "discretization", "zoh") == "zoh":  # (DSS: e^z, ZOH-like)
                A_bar, B_bar = np.exp(z), ((np.exp(z) - 1) / e)[:, None] * B_c
            else:
                A_bar, B_bar = (1 + z / 2) / (1 - z / 2), (taus[b, t] / (1 - z / 2))[:, None] * B_c
            state = A_bar * state + B_bar @ u[b, t]
            expected = (C_c @ state).real + D * u[b, t]
            assert np.abs(y[b, t] - expected).max() < 1e-10 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("opts", variants("mamba"))
def test_mamba_scales_each_steps_delta_by_its_gap(opts):
    """Mamba with intervals against a loop written here from arXiv 2312.00752 Algorithm 2 with Δ_t τ_t:
    h_t = exp(τ_t Δ_t A) h_{t-1} + τ_t Δ_t B_t x_t, y_t = (C_t · h_t + D x_t) SiLU(z_t), out = W_out y."""
    layer = make_layer("mamba", opts)
    x, tau = _input(), _intervals(seed=15)
    out = layer(x, intervals=tau)[0]
    with torch.no_grad():
        xs, z = layer.in_proj(x).chunk(2, dim=-1)  # (B, L, H_in) each
        xc = layer.conv1d(xs, None, False, activation="silu")[0]
        delta_low, Bt, Ct = layer.x_proj(xc).split([layer.rank, layer.d_state, layer.d_state], dim=-1)
        delta = torch.nn.functional.softplus(layer.dt_proj(delta_low) + layer.dt_bias) * tau[..., None]  # (B, L, H_in)
        A = -torch.exp(layer.A_log)  # (H_in, N)
        h = torch.zeros(B, *A.shape, dtype=x.dtype, device=DEVICE)
        ys = []
        for t in range(L):
            h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * xc[:, t])[..., None] * Bt[:, t, None, :]
            y_t = (h * Ct[:, t, None, :]).sum(-1) + layer.D * xc[:, t]
            ys.append(y_t * torch.nn.functional.silu(z[:, t]))
        expected = layer.out_proj(torch.stack(ys, dim=1))
    assert rel_err(out, expected) < 1e-12


@pytest.mark.parametrize("opts", variants("mamba2"))
def test_mamba2_scales_each_steps_delta_by_its_gap(opts):
    """Mamba-2 with intervals against a loop written here from arXiv 2405.21060 §7 with Δ_t τ_t per head:
    H_t = exp(τ_t Δ_t A) H_{t-1} + τ_t Δ_t x_t B_tᵀ, y_t = H_t C_t (+ D x_t and the gated norm, the layer's own)."""
    layer = make_layer("mamba2", opts)
    x, tau = _input(), _intervals(seed=17)
    out = layer(x, intervals=tau)[0]
    E, G, N, nh, P = layer.d_inner, layer.ngroups, layer.d_state, layer.nheads, layer.headdim
    with torch.no_grad():
        z, xBC, dt = layer.in_proj(x).split([E, E + 2 * G * N, nh], dim=-1)
        xBC = layer.conv(xBC, None, False, activation="silu")[0]
        xf, Bt, Ct = xBC.split([E, G * N, G * N], dim=-1)
        xs, Bt, Ct = xf.unflatten(-1, (nh, P)), Bt.unflatten(-1, (G, N)), Ct.unflatten(-1, (G, N))
        delta = torch.nn.functional.softplus(dt + layer.dt_bias) * tau[..., None]  # (B, L, nh)
        A = -torch.exp(layer.A_log)  # (nh,)
        group = torch.arange(nh, device=DEVICE) // (nh // G)  # the group of each head
        state = torch.zeros(B, nh, P, N, dtype=x.dtype, device=DEVICE)
        ys = []
        for t in range(L):
            decay = torch.exp(delta[:, t] * A)[..., None, None]  # (B, nh, 1, 1)
            inflow = (delta[:, t, :, None] * xs[:, t])[..., None] * Bt[:, t, group, None, :]  # (B, nh, P, N)
            state = decay * state + inflow
            ys.append((state * Ct[:, t, group, None, :]).sum(-1))  # (B, nh, P)
        y = torch.stack(ys, dim=1)  # (B, L, nh, P)
        expected = layer.out_proj(layer._gate_and_norm(y, xf, z))
    assert rel_err(out, expected) < 1e-12


@pytest.mark.parametrize("opts", variants("rglru"))
def test_rglru_holds_each_gate_over_its_gap(opts):
    """RG-LRU with intervals and a segment reset against a loop written here from arXiv 2402.19427 §2.4, each step
    the unit-step ZOH of its own gate over its gap: a_t = σ(Λ)^{c r_t}, h_t = a_t^τ h_{t-1} + (1 − a_t^τ)/(1 − a_t)
    √(1 − a_t²) i_t x_t (a reset: h_t = i_t x_t), y = W_out(GeLU(W_y u) ⊙ h); forward and its step loop."""
    layer = make_layer("rglru", opts)
    x, tau = _input(), _intervals(seed=19)
    resets = torch.zeros(B, L, dtype=torch.bool, device=DEVICE)
    resets[1, 4] = True
    out = layer(x, None, True, resets, intervals=tau)[0]
    with torch.no_grad():
        g = torch.nn.functional.gelu(layer.in_gate(x), approximate="tanh")  # (B, L, D)
        v = layer.conv(layer.in_x(x), None, False, resets)[0]  # (B, L, D)
        r, i = torch.sigmoid(layer.gate_a(v)), torch.sigmoid(layer.gate_x(v))
        a = torch.sigmoid(layer.Lambda) ** (layer.c * r)  # (B, L, D)
        h, hs = torch.zeros(B, layer.lru_width, dtype=x.dtype, device=DEVICE), []
        for t in range(L):
            decay = a[:, t] ** tau[:, t, None]
            gain = (1 - decay) / (1 - a[:, t]) * torch.sqrt(1 - a[:, t] ** 2)
            start = resets[:, t, None]
            h = torch.where(start, 0.0, decay) * h + torch.where(start, 1.0, gain) * i[:, t] * v[:, t]
            hs.append(h)
        expected = layer.out(torch.stack(hs, dim=1) * g)
    assert rel_err(out, expected) < 1e-12
    state, ys = layer.initial_state(B), []
    for t in range(L):
        y_t, state = layer.step(x[:, t], state, resets[:, t], interval=tau[:, t])
        ys.append(y_t)
    assert rel_err(torch.stack(ys, dim=1), expected) < 1e-12


def test_lru_reads_a_phase_past_pi_on_the_principal_branch():
    """One LRU mode λ = e^{−0.1 + i 3π/2} (phase stored past π): a gap τ = 0.5 from x = 1 with input 1 gives, by hand,
    λ^τ = e^{−0.05} e^{−iπ/4} (principal log −0.1 − iπ/2, not e^{i 3π/4}) and the input gain (λ^τ − 1)/(λ − 1) γ B."""
    layer = layers.build("lru", d_model=1, d_state=2, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        layer.log_nu.fill_(np.log(0.1))
        layer.log_theta.fill_(np.log(1.5 * np.pi))
        layer.log_gamma.fill_(np.log(0.7))
        layer.B.copy_(torch.tensor([[[0.3, -0.4]]], dtype=torch.float64))
        layer.C.copy_(torch.tensor([[[[1.0, 0.0]]]]))
        layer.D.fill_(0.0)
    lam, half = np.exp(-0.1) * -1j, np.exp(-0.05) * np.exp(-1j * np.pi / 4)
    want = half * 1.0 + (half - 1) / (lam - 1) * 0.7 * (0.3 - 0.4j)
    one = torch.ones(1, dtype=torch.float64, device=DEVICE)
    y, x = layer.step(one[:, None], torch.ones(1, 1, dtype=torch.complex128, device=DEVICE), interval=0.5 * one)
    assert abs(x.item() - want) < 1e-15 and abs(y.item() - want.real) < 1e-15


def test_ema_after_a_gap_by_hand_and_at_saturated_logits():
    """Mega's EMA with α = δ = ½ (q = ¾), β = 1: a gap τ = 2 from h = 1 with input 1 gives q² + (1 − q²) β/δ = 0.5625 +
    0.875 (steady state β/δ = 2); a gap of 400 forgets the state (2 within 1e-12). And at logits of 25 (q = 1 − αδ
    ≈ 2.8e-11, which 1 − σσ forms with 4e-6 relative error in double) z = log q to 1e-13 of mpmath's."""
    mpmath = pytest.importorskip("mpmath")
    layer = layers.build("ema", d_model=1, d_state=1, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        layer.logit_alpha.fill_(0.0)
        layer.logit_delta.fill_(0.0)
        layer.beta.fill_(1.0)
        layer.gamma.fill_(1.0)
        layer.D.fill_(0.0)
    one = torch.ones(1, 1, dtype=torch.float64, device=DEVICE)
    y, h = layer.step(one, one[..., None], interval=2.0 * one[0])
    assert abs(h.item() - 1.4375) < 1e-15 and abs(y.item() - 1.4375) < 1e-15
    assert abs(layer.step(one, one[..., None], interval=400.0 * one[0])[1].item() - 2.0) < 1e-12
    with torch.no_grad():
        layer.logit_alpha.fill_(25.0)
        layer.logit_delta.fill_(25.0)
    mpmath.mp.dps = 40
    sigma = 1 / (1 + mpmath.exp(-25))
    want = float(mpmath.log(1 - sigma * sigma))
    assert abs(layer.continuous()[0].real.item() - want) < 1e-13 * abs(want)


def test_dlr_refuses_a_mode_at_one_with_intervals():
    """A DLR mode with a = 0 and b = 0 is λ = 1 (an undamped integrator): the regular layer runs, intervals are
    refused by name (the ZOH sampler's (e^{τz} − 1)/z is 0/0 there)."""
    layer = make_layer("dlr")  # "omega": b_0 = 0
    with torch.no_grad():
        layer.A_sqrt_neg_real[0] = 0.0
    x, tau = _input(), _intervals()
    assert torch.isfinite(layer(x)[0]).all()
    with pytest.raises(ValueError, match="eigenvalue exactly 1"):
        layer(x, intervals=tau)
    with pytest.raises(ValueError, match="eigenvalue exactly 1"):
        layer.step(x[:, 0], layer.initial_state(B), interval=tau[:, 0])


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_unit_intervals_give_the_regular_forward_and_a_constant_the_rescaled_step(name, opts, dtype):
    layer = make_layer(name, opts, dtype=dtype)
    x = _input(dtype=dtype)
    y, h = layer(x)
    y1, h1 = layer(x, intervals=torch.ones(B, L, device=DEVICE, dtype=dtype))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert rel_err(y1, y) < tol and state_err(h1, h) < tol
    if "step_rescale" in layer.__init__.__code__.co_varnames:  # S5: c everywhere = the layer with step_rescale × c
        rescaled = layers.build(name, d_model=H, device=DEVICE, dtype=dtype,
                                **{**opts, "step_rescale": opts.get("step_rescale", 1.0) * 0.37})
        rescaled.load_state_dict(layer.state_dict())
        yc, hc = layer(x, intervals=torch.full((B, L), 0.37, device=DEVICE, dtype=dtype))
        assert rel_err(yc, rescaled(x)[0]) < tol and state_err(hc, rescaled(x)[1]) < tol


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
def test_step_with_each_interval_equals_forward_on_every_backend(name, opts):
    layer = make_layer(name, opts)
    x, tau = _input(), _intervals(seed=5)
    state = layer.initial_state(B)
    ys = []
    for t in range(L):
        y_t, state = layer.step(x[:, t], state, interval=tau[:, t])
        ys.append(y_t)
    y_steps = torch.stack(ys, dim=1)
    for backend in _backends(layer):
        with ops.use_backend(backend):
            y, h = layer(x, intervals=tau)
        assert rel_err(y, y_steps) < 1e-10, backend
        assert state_err(h, state) < 1e-10, backend


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
def test_chunked_calls_equal_one_call_with_gradients(name, opts):
    layer = make_layer(name, opts)
    x, tau = _input().requires_grad_(), _intervals(seed=7).requires_grad_()
    y, h = layer(x, intervals=tau)
    k = 6
    ya, ha = layer(x[:, :k], intervals=tau[:, :k])
    yb, hb = layer(x[:, k:], ha, intervals=tau[:, k:])
    y2 = torch.cat([ya, yb], dim=1)
    assert rel_err(y2, y) < 1e-10 and state_err(hb, h) < 1e-10
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum() + _size(h), [x, tau, *layer.parameters()])
    grads2 = torch.autograd.grad((y2 * w).sum() + _size(hb), [x, tau, *layer.parameters()])
    for g, g2 in zip(grads, grads2):
        assert rel_err(g2, g) < 1e-9


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
def test_output_at_t_reads_no_later_input_or_interval(name, opts):
    layer = make_layer(name, opts)
    x, tau = _input(), _intervals(seed=9)
    y = layer(x, intervals=tau)[0]
    t = 7
    x2, tau2 = x.clone(), tau.clone()
    x2[:, t + 1:] += 1.0
    tau2[:, t + 1:] *= 2.5
    y2 = layer(x2, intervals=tau2)[0]
    assert torch.equal(y2[:, : t + 1], y[:, : t + 1])
    assert (y2[:, t + 1:] - y[:, t + 1:]).abs().max() > 1e-3


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
def test_gradients_of_every_backend_equal_the_loop_and_finite_differences(name, opts):
    layer = make_layer(name, opts)
    x, tau = _input(length=7).requires_grad_(), _intervals(length=7, seed=11).requires_grad_()
    params = [p for p in layer.parameters() if p.requires_grad]

    def grads(backend):
        with ops.use_backend(backend):
            y, h = layer(x, intervals=tau)
        loss = (y * torch.linspace(-1, 1, y.numel(), device=DEVICE, dtype=y.dtype).view_as(y)).sum() + _size(h)
        return torch.autograd.grad(loss, [x, tau, *params])

    reference = grads("reference")
    for backend in _backends(layer):
        for g, g_ref in zip(grads(backend), reference):
            assert rel_err(g, g_ref) < 1e-9, backend
    # the interval's gradient against a central difference of the loss (independent of autograd)
    eps = 1e-6
    with torch.no_grad():
        def loss_at(t):
            y, h = layer(x, intervals=t)
            return ((y * torch.linspace(-1, 1, y.numel(), device=DEVICE, dtype=y.dtype).view_as(y)).sum()
                    + _size(h)).item()
        bump = torch.zeros_like(tau)
        bump[1, 3] = eps
        fd = (loss_at(tau + bump) - loss_at(tau - bump)) / (2 * eps)
    assert abs(reference[1][1, 3].item() - fd) < 1e-6 * max(1.0, abs(fd))


@pytest.mark.parametrize("name", [n for n in TAKERS if "fft" in layers.layer_class(n).backends])
def test_a_forced_fft_backend_is_refused_with_intervals(name):
    layer = make_layer(name)
    with ops.use_backend("fft"), pytest.raises(RuntimeError, match="'fft' was forced.*only the backends"):
        layer(_input(), intervals=_intervals())


@pytest.mark.parametrize("name", TAKERS)
def test_float32_layer_follows_the_float64_one(name):
    layer64 = make_layer(name, variants(name)[0])
    layer32 = make_layer(name, variants(name)[0], dtype=torch.float32)
    layer32.load_state_dict(layer64.state_dict())
    x, tau = _input(length=200), _intervals(length=200)
    y64 = layer64(x, intervals=tau)[0]
    y32 = layer32(x.float(), intervals=tau.float())[0]
    assert y32.dtype == torch.float32
    assert rel_err(y32.double(), y64) < 1e-5


@pytest.mark.parametrize("bad, match", [
    (torch.ones(B, L + 1), r"shape \(2, 13\)"),
    (torch.ones(B, L, 1), r"shape \(2, 13\)"),
    (torch.ones(B, L, dtype=torch.int64), "real floating"),
    (torch.ones(B, L, dtype=torch.complex128), "real floating"),
    ([[1.0] * L] * B, "real floating"),
    (torch.zeros(B, L), "finite and > 0"),
    (-torch.ones(B, L), "finite and > 0"),
    (torch.full((B, L), float("nan")), "finite and > 0"),
    (torch.full((B, L), float("inf")), "finite and > 0"),
])
def test_bad_intervals_are_refused_by_name(bad, match):
    layer = make_layer("s5", variants("s5")[0])
    if isinstance(bad, torch.Tensor):
        bad = bad.to(DEVICE)
    with pytest.raises(ValueError, match=match):
        layer(_input(), intervals=bad)
    with pytest.raises(ValueError, match="interval"):
        layer.step(_input()[:, 0], layer.initial_state(B), interval=torch.ones(B, 2, device=DEVICE))
    with pytest.raises(ValueError, match="finite and > 0"):
        layer.step(_input()[:, 0], layer.initial_state(B), interval=torch.zeros(B, device=DEVICE))


@pytest.mark.parametrize("name", [n for n in TAKERS if layers.layer_class(n).anticausal])
def test_a_bidirectional_layer_refuses_intervals(name):
    layer = make_layer(name, {**variants(name)[0], "bidirectional": True})
    with pytest.raises(ValueError, match="bidirectional"):
        layer(_input(), intervals=_intervals())
    with pytest.raises(ValueError, match="bidirectional"):
        Block(layer).to(torch.float64)(_input(), intervals=_intervals(), mask=torch.ones(B, L, dtype=torch.bool, device=DEVICE))


@pytest.mark.parametrize("name", [n for n in NAMES if not layers.layer_class(n).takes_intervals])
def test_blocks_of_other_layers_refuse_intervals_naming_those_that_take_them(name):
    block = Block(make_layer(name))
    with pytest.raises(ValueError, match=r"does not take sampling intervals.*" + "|".join(TAKERS)):
        block(_input(), intervals=_intervals())
    if block.layer.supports("step"):
        with pytest.raises(ValueError, match="does not take sampling intervals"):
            block.step(_input()[:, 0], block.initial_state(B), interval=torch.ones(B, device=DEVICE, dtype=torch.float64))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_model_forward_with_intervals_equals_its_step_loop(checkpointing):
    torch.manual_seed(0)
    model = SequenceModel(d_input=2, d_model=H, n_layers=2, layer="s5", layer_options=variants("s5")[0],
                          d_output=4, head="regress", pool=None, dropout=0.0).to(DEVICE, torch.float64)
    model.activation_checkpointing = checkpointing
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, L, 2, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    tau = _intervals(seed=13)
    out, states = model(x, intervals=tau)
    state, outs = model.initial_state(B), []
    for t in range(L):
        o, state = model.step(x[:, t], state, interval=tau[:, t])
        outs.append(o)
    assert rel_err(torch.stack(outs, dim=1), out) < 1e-10
    for a, b in zip(states, state):
        assert rel_err(a, b) < 1e-10
    regular = model(x)[0]
    assert (regular - out).abs().max() > 1e-3  # the intervals change the answer
    grad = torch.autograd.grad(out.square().sum(), x)[0]
    model.activation_checkpointing = not checkpointing
    grad2 = torch.autograd.grad(model(x, intervals=tau)[0].square().sum(), x)[0]
    assert rel_err(grad2, grad) < 1e-12


def test_a_hybrid_model_with_a_layer_without_intervals_is_refused():
    model = SequenceModel(d_input=2, d_model=H, n_layers=3, layer=["s5", "s4d", "liquid_s4"],
                          layer_options={"s5": variants("s5")[0], "s4d": {"d_state": 4},
                                         "liquid_s4": variants("liquid_s4")[0]},
                          d_output=4, head="regress", pool=None).to(DEVICE, torch.float64)
    x = torch.randn(B, L, 2, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="LiquidS4 does not take sampling intervals"):
        model(x, intervals=_intervals())


@pytest.mark.parametrize("name", TAKERS)
def test_under_autocast_unit_intervals_give_the_regular_layer(name):
    """Under bf16 autocast a mixer's projections run in bf16 and its SSM core in float32, with or without intervals
    (the intervals' handling once entered float32 around the whole layer: Mamba 8e-3 from its regular output)."""
    if DEVICE.type != "cpu":
        pytest.skip("bf16 autocast on the CPU")
    layer = make_layer(name, dtype=torch.float32)
    x = _input(dtype=torch.float32, length=16)
    ones = torch.ones(B, 16, device=DEVICE)
    y32 = layer(x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_reg, y_one = layer(x)[0], layer(x, intervals=ones)[0]
        s, steps = layer.initial_state(B), []
        for t in range(16):
            y_t, s = layer.step(x[:, t], s, interval=ones[:, t])
            steps.append(y_t)
    if layers.layer_class(name).capabilities.state_space:  # an LTI core: float32 throughout
        assert rel_err(y_one, y_reg) < 1e-5 and rel_err(torch.stack(steps, 1), y_reg) < 1e-5
    else:  # the bf16 projections' rounding is in both, and far from the float32 layer
        gap = (y_reg - y32).abs().max()
        assert gap > 1e-4 and (y_one - y_reg).abs().max() < 0.1 * gap
