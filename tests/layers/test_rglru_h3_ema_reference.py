"""RG-LRU, H3 and Mega's EMA against references written here from the papers' equations (probe 31).

- RG-LRU / Hawk (arXiv 2402.19427 §2.4, recurrentgemma's conventions, notes/layers-checked.md): a float64 loop with
  log a_t = -c r_t softplus(-Λ) (recurrentgemma's form of a_t = σ(Λ)^{c r_t}), the block-diagonal gates one head at a
  time, the width-W convolution tap by tap and the tanh GeLU by its formula.
- H3 (arXiv 2212.14052 §3.1): the shift SSM as its N-entry shift register, the diagonal SSM per head from the
  S4D-Lin eigenvalues with the bilinear (or ZOH) Ā, B̄ formed here, the q gate summed over i.
- Mega's EMA (arXiv 2209.10655 eq. 2-3): h_t = α ⊙ β u_t + (1 - α ⊙ δ) ⊙ h_{t-1}, y_t = Σ_n γ_n h_t,n / √N + ω u_t
  step by step, and the anti-causal direction as the same recurrence over the reversed input, delayed one step.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import ssmkit.layers as layers
import ssmkit.ops as ops
from ssmkit.layers.h3 import H3State
from tests.conftest import DEVICE, rel_err, run_steps, runnable_backends

F64 = torch.float64


def perturb(layer: torch.nn.Module, scale: float = 0.3, seed: int = 11) -> None:
    """Move every parameter off its initial value (biases, B = e₁, β = ±1 and zero inits hide index errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=F64).to(p.dtype).to(p.device))


# ------------------------------------------------------------------------------------------------------------------
# RG-LRU


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def rglru_reference(layer, u: torch.Tensor, conv0=None, h0=None, resets=None):
    """The Hawk block step by step in float64: y (B, L, H) and the final (conv (B, D, W-1), h (B, D))."""
    p = {k: v.detach().to(F64).cpu() for k, v in layer.named_parameters()}
    u = u.to(F64).cpu()
    Bsz, L, _ = u.shape
    D, W, G = layer.lru_width, layer.conv_width, layer.n_heads
    P = D // G
    log_a = -torch.nn.functional.softplus(-p["Lambda"])  # log σ(Λ)
    window = torch.zeros(Bsz, D, W, dtype=F64)  # the last W convolution inputs, oldest first (slot 0 drops next)
    if conv0 is not None:
        window[:, :, 1:] = conv0.to(F64).cpu()
    h = torch.zeros(Bsz, D, dtype=F64) if h0 is None else h0.to(F64).cpu().clone()
    ys = []
    for t in range(L):
        start = torch.zeros(Bsz, dtype=torch.bool) if resets is None else resets[:, t].cpu()
        g = gelu_tanh(u[:, t] @ p["in_gate.weight"].T + p["in_gate.bias"])
        z = u[:, t] @ p["in_x.weight"].T + p["in_x.bias"]
        window = torch.cat([window[:, :, 1:], z[:, :, None]], dim=2)
        window[start, :, : W - 1] = 0.0  # a segment start sees no past
        x = (window * p["conv.weight"]).sum(-1) + p["conv.bias"]  # (B, D)
        r = torch.empty(Bsz, D, dtype=F64)
        i = torch.empty(Bsz, D, dtype=F64)
        for head in range(G):
            sl = slice(head * P, (head + 1) * P)
            r[:, sl] = torch.sigmoid(x[:, sl] @ p["gate_a.weight"][head] + p["gate_a.bias"][head])
            i[:, sl] = torch.sigmoid(x[:, sl] @ p["gate_x.weight"][head] + p["gate_x.bias"][head])
        a = torch.exp(layer.c * r * log_a)
        mult = torch.sqrt(1 - a * a)
        a = torch.where(start[:, None], 0.0, a)
        mult = torch.where(start[:, None], 1.0, mult)
        h = a * h + mult * (i * x)
        ys.append((g * h) @ p["out.weight"].T + p["out.bias"])
    return torch.stack(ys, 1), window[:, :, 1:], h


RGLRU_OPTIONS = [
    {"lru_width": 6, "n_heads": 3, "conv_width": 4, "c": 8.0},
    {"lru_width": 4, "n_heads": 1, "conv_width": 2, "c": 2.5, "init": "paper"},
    {"lru_width": 5, "n_heads": 5, "conv_width": 1},
]


def rglru_layer(options: dict, d_model: int = 3) -> layers.RGLRU:
    torch.manual_seed(5)
    layer = layers.RGLRU(d_model, device=DEVICE, dtype=F64, **options)
    perturb(layer)
    return layer


@pytest.mark.parametrize("options", RGLRU_OPTIONS)
def test_rglru_equals_the_reference_loop(options):
    layer = rglru_layer(options)
    D, W = layer.lru_width, layer.conv_width
    g = torch.Generator().manual_seed(1)
    u = torch.randn(2, 13, 3, generator=g, dtype=F64).to(DEVICE)
    conv0 = torch.randn(2, D, W - 1, generator=g, dtype=F64).to(DEVICE)
    h0 = torch.randn(2, D, generator=g, dtype=F64).to(DEVICE)
    resets = torch.zeros(2, 13, dtype=torch.bool, device=DEVICE)
    resets[0, [0, 6]] = True
    resets[1, 11] = True
    for res in (None, resets):
        y_ref, conv_ref, h_ref = rglru_reference(layer, u, conv0, h0, res)
        with torch.no_grad():
            for backend in ("auto", *runnable_backends(layer)):
                with ops.use_backend(backend):
                    y, state = layer(u, layers.RGLRUState(conv0, h0), resets=res)
                    y_only, none = layer(u, layers.RGLRUState(conv0, h0), return_state=False, resets=res)
                assert rel_err(y, y_ref) < 1e-12 and none is None and rel_err(y_only, y_ref) < 1e-12, backend
                assert state.conv.shape == (2, D, W - 1) and rel_err(state.conv, conv_ref) < 1e-12, backend
                assert rel_err(state.h, h_ref) < 1e-12, backend
            state, ys = layers.RGLRUState(conv0, h0), []
            for t in range(13):
                y_t, state = layer.step(u[:, t], state, None if res is None else res[:, t])
                ys.append(y_t)
        assert rel_err(torch.stack(ys, 1), y_ref) < 1e-12
        assert rel_err(state.conv, conv_ref) < 1e-12 and rel_err(state.h, h_ref) < 1e-12


# ------------------------------------------------------------------------------------------------------------------
# H3


def h3_reference(layer, x: torch.Tensor, shift0=None, ssm0=None):
    """H3 step by step in float64: y (B, L, d_model), the last N-1 keys (B, d_model, N-1) and the diagonal states
    (B, P, P, H, N/2)."""
    p = {k: v.detach().to(F64).cpu() for k, v in layer.named_parameters()}
    x = x.to(F64).cpu()
    Bsz, L, d = x.shape
    P, Hh, N = layer.head_dim, layer.n_heads, layer.d_state
    M = N // 2
    # shift SSM: x'_k = S x_k-1 + B k, out = C x'_k: the input j steps back reaches the output through Σ_m B_m C_{m+j}
    w = torch.zeros(d, N, dtype=F64)
    for j in range(N):
        for m in range(N - j):
            w[:, j] += p["B"][:, m] * p["C"][:, m + j]
    lam = torch.complex(-torch.exp(p["ssm.log_A_real"]), p["ssm.A_imag"])  # (H, M)
    dt = torch.exp(p["ssm.log_dt"])[:, None]
    Bc = torch.complex(p["ssm.B"][..., 0], p["ssm.B"][..., 1])
    if layer.discretization == "bilinear":
        A_bar = (1 + dt * lam / 2) / (1 - dt * lam / 2)
        B_bar = dt * Bc / (1 - dt * lam / 2)
    else:
        A_bar = torch.exp(dt * lam)
        B_bar = (torch.exp(dt * lam) - 1) / lam * Bc
    C = torch.complex(p["ssm.C"][0, ..., 0], p["ssm.C"][0, ..., 1])  # (H, M)
    hist = torch.zeros(Bsz, d, N - 1, dtype=F64) if shift0 is None else shift0.to(F64).cpu().clone()
    s = torch.zeros(Bsz, P, P, Hh, M, dtype=torch.complex128) if ssm0 is None else ssm0.to(torch.complex128).cpu().clone()
    ys = []
    for t in range(L):
        proj = x[:, t] @ p["in_proj.weight"].T + p["in_proj.bias"]
        q, k, v = proj[:, :d], proj[:, d: 2 * d], proj[:, 2 * d:]
        past = torch.cat([hist, k[:, :, None]], dim=2)  # (B, d, N): k_{t-N+1} .. k_t
        k_shift = sum(w[:, j] * past[:, :, N - 1 - j] for j in range(N)) + p["D_k"] * k
        hist = past[:, :, 1:]
        o = torch.zeros(Bsz, d, dtype=F64)
        for h in range(Hh):
            for i in range(P):
                for j in range(P):
                    z = k_shift[:, h * P + i] * v[:, h * P + j]  # (B,)
                    s[:, i, j, h] = A_bar[h] * s[:, i, j, h] + B_bar[h] * z[:, None]
                    out = 2 * (C[h] * s[:, i, j, h]).sum(-1).real + p["ssm.D"][h] * z
                    o[:, j * Hh + h] += q[:, h * P + i] * out
        ys.append(o @ p["out_proj.weight"].T + p["out_proj.bias"])
    return torch.stack(ys, 1), hist, s


H3_OPTIONS = [
    {"d_state": 6, "head_dim": 1},
    {"d_state": 4, "head_dim": 2, "discretization": "zoh"},
    {"d_state": 2, "head_dim": 4},
]


@pytest.mark.parametrize("options", H3_OPTIONS)
def test_h3_equals_the_reference_loop_from_a_state(options):
    torch.manual_seed(6)
    layer = layers.H3(4, device=DEVICE, dtype=F64, **options)
    perturb(layer, 0.2)
    N, P, Hh = layer.d_state, layer.head_dim, layer.n_heads
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 9, 4, generator=g, dtype=F64).to(DEVICE)
    shift0 = torch.randn(2, 4, N - 1, generator=g, dtype=F64).to(DEVICE)
    ssm0 = torch.randn(2, P, P, Hh, N // 2, generator=g, dtype=torch.complex128).to(DEVICE)
    y_ref, hist_ref, s_ref = h3_reference(layer, x, shift0, ssm0)
    y0_ref, _, _ = h3_reference(layer, x)
    with torch.no_grad():
        for backend in ("auto", "reference", "chunked", "fft"):  # S4D's backends (the module docstring)
            with ops.use_backend(backend):
                y, state = layer(x, H3State(shift0, ssm0))
                y_only, none = layer(x, H3State(shift0, ssm0), return_state=False)
                y0, _ = layer(x)
            assert rel_err(y, y_ref) < 1e-10 and rel_err(y_only, y_ref) < 1e-10 and none is None, backend
            assert rel_err(y0, y0_ref) < 1e-10, backend
            assert state.shift.shape == (2, 4, N - 1) and rel_err(state.shift, hist_ref) < 1e-12, backend
            assert state.ssm.shape == (2, P, P, Hh, N // 2) and rel_err(state.ssm, s_ref) < 1e-10, backend
        ys, state = run_steps(layer, x, H3State(shift0, ssm0))
    assert rel_err(ys, y_ref) < 1e-10
    assert rel_err(state.shift, hist_ref) < 1e-12 and rel_err(state.ssm, s_ref) < 1e-10


# ------------------------------------------------------------------------------------------------------------------
# Mega's EMA


def ema_reference(layer, u: torch.Tensor, h0=None):
    """Eq. 2-3 step by step in float64 (plus the anti-causal direction, delayed one step): y (B, L, H), h (B, H, N)."""
    p = {k: v.detach().to(F64).cpu() for k, v in layer.named_parameters()}
    u = u.to(F64).cpu()
    Bsz, L, Hc = u.shape
    N = layer.d_state
    alpha, delta = torch.sigmoid(p["logit_alpha"]), torch.sigmoid(p["logit_delta"])  # (C, H, N)
    beta, gamma, omega = p["beta"], p["gamma"], p["D"]
    h = torch.zeros(Bsz, Hc, N, dtype=F64) if h0 is None else h0.to(F64).cpu().clone()
    y = torch.zeros(Bsz, L, Hc, dtype=F64)
    for t in range(L):
        h = alpha[0] * beta[0] * u[:, t, :, None] + (1 - alpha[0] * delta[0]) * h
        y[:, t] = (gamma[0] * h).sum(-1) / math.sqrt(N) + omega * u[:, t]
    if layer.bidirectional:
        g = torch.zeros(Bsz, Hc, N, dtype=F64)  # g_t = Σ_{s>t} B̄₁ Ā₁^{s-t-1} u_s
        for t in range(L - 1, -1, -1):
            y[:, t] += (gamma[1] * g).sum(-1) / math.sqrt(N)
            g = alpha[1] * beta[1] * u[:, t, :, None] + (1 - alpha[1] * delta[1]) * g
    return y, h


@pytest.mark.parametrize("d_state", [1, 5])
def test_ema_equals_the_recurrence_of_the_paper(d_state):
    torch.manual_seed(7)
    layer = layers.EMA(3, d_state, device=DEVICE, dtype=F64)
    perturb(layer, 0.5)
    g = torch.Generator().manual_seed(3)
    u = torch.randn(2, 17, 3, generator=g, dtype=F64).to(DEVICE)
    h0 = torch.randn(2, 3, d_state, generator=g, dtype=F64).to(DEVICE)
    y_ref, h_ref = ema_reference(layer, u, h0)
    with torch.no_grad():
        for backend in ("auto", "reference", "chunked", "fft"):  # no "native": the C kernel takes complex modes
            with ops.use_backend(backend):
                y, h = layer(u, h0)
            assert rel_err(y, y_ref) < 1e-12 and rel_err(h, h_ref) < 1e-12, backend
        ys, state = run_steps(layer, u, h0)
    assert rel_err(ys, y_ref) < 1e-12 and rel_err(state, h_ref) < 1e-12


@pytest.mark.parametrize("d_state", [1, 4])
def test_bidirectional_ema_equals_two_recurrences(d_state):
    torch.manual_seed(8)
    layer = layers.EMA(3, d_state, bidirectional=True, device=DEVICE, dtype=F64)
    perturb(layer, 0.5)
    u = torch.randn(2, 15, 3, generator=torch.Generator().manual_seed(4), dtype=F64).to(DEVICE)
    y_ref, _ = ema_reference(layer, u)
    with torch.no_grad():
        for backend in ("auto", "reference", "chunked", "fft"):
            with ops.use_backend(backend):
                y, none = layer(u)
            assert rel_err(y, y_ref) < 1e-12 and none is None, backend
    A_bar, B_bar, C = layer.discrete()  # the causal direction's alone
    assert A_bar.shape == B_bar.shape == (3, d_state) and C.shape == (1, 3, d_state)
    torch.testing.assert_close(C[0], layer.gamma[0] / math.sqrt(d_state))


# ------------------------------------------------------------------------------------------------------------------
# RG-LRU: options and checks


def test_rglru_a_ring_of_one_radius_is_allowed():
    # 0 < a_min <= a_max < 1: a_min = a_max is a ring of one radius, every a = σ(Λ) equal to it, for both inits.
    for init, a in (("ring", 0.95), ("paper", 0.95 ** (1 / 8))):
        layer = layers.RGLRU(2, lru_width=6, init=init, a_min=0.95, a_max=0.95, dtype=F64)
        torch.testing.assert_close(torch.sigmoid(layer.Lambda.detach()), torch.full((6,), a, dtype=F64),
                                   rtol=1e-14, atol=0)


@pytest.mark.parametrize("init", ["ring", "paper"])
def test_rglru_init_laws_away_from_the_defaults(init):
    # ring: a² ~ U[a_min², a_max²]; paper: a^c ~ U[a_min, a_max] (a = σ(Λ)), here on a wide range [0.2, 0.6] with
    # c = 3, where a wrong power of either end moves the law far (at the defaults 0.999² and 0.999³ differ by 0.1 %).
    torch.manual_seed(9)
    layer = layers.RGLRU(1, lru_width=4000, n_heads=4000, init=init, a_min=0.2, a_max=0.6, c=3.0, dtype=F64)
    a = torch.sigmoid(layer.Lambda.detach())
    v, low, high = (a**2, 0.04, 0.36) if init == "ring" else (a**3, 0.2, 0.6)
    assert float(v.min()) >= low - 1e-12 and float(v.max()) <= high + 1e-12
    assert stats.kstest(v.numpy(), "uniform", args=(low, high - low)).pvalue > 1e-3


def test_rglru_options_are_checked_by_name():
    with pytest.raises(ValueError, match="d_model must be a positive int"):
        layers.RGLRU(0)
    with pytest.raises(ValueError, match="lru_width must be a positive int"):
        layers.RGLRU(3, lru_width=0)
    with pytest.raises(ValueError, match="n_heads must be a positive int"):
        layers.RGLRU(3, n_heads=0)
    with pytest.raises(ValueError, match="lr must be"):
        layers.RGLRU(3, lr=-1.0)
    for bad in (True, "0.9", float("nan"), 0.0, 1.0):
        with pytest.raises(ValueError, match=r"a_min must be a float in \(0, 1\)"):
            layers.RGLRU(3, a_min=bad)
    for bad in (True, float("inf"), -2.0):
        with pytest.raises(ValueError, match="c must be a finite float > 0"):
            layers.RGLRU(3, c=bad)


def test_rglru_keeps_its_options():
    layer = layers.RGLRU(3, lru_width=6, n_heads=3, conv_width=2, c=4.0, init="paper", a_min=0.5, a_max=0.6,
                         out_init_scale=0.5, lr=1e-3)
    assert (layer.d_model, layer.lru_width, layer.n_heads, layer.conv_width, layer.c, layer.init) == (
        3, 6, 3, 2, 4.0, "paper")
    assert (layer.a_min, layer.a_max, layer.out_init_scale, layer.lr) == (0.5, 0.6, 0.5, 1e-3)
    assert "n_heads=3" in repr(layer) and "conv_width=2" in repr(layer) and "init='paper'" in repr(layer)
    assert "width=6, n_blocks=3" in repr(layer.gate_a)
    assert layer.lr == 1e-3 and set(layers.optim_marks(layer)) == {"Lambda"}


def test_rglru_forward_and_step_check_their_inputs():
    layer = layers.RGLRU(3, lru_width=4, n_heads=2, dtype=F64)
    x = torch.randn(2, 5, 3, dtype=F64)
    with pytest.raises(ValueError, match="x must be"):
        layer(torch.randn(2, 5, 4, dtype=F64))
    good = layer.initial_state(2)
    with pytest.raises(ValueError, match="state"):
        layer(x, type(good)(good.conv[:, :, :2], good.h))
    with pytest.raises(ValueError, match=r"x_t must be \(B, 3\)"):
        layer.step(torch.randn(2, 4, dtype=F64), good)
    with pytest.raises(ValueError, match="state"):
        layer.step(x[:, 0], type(good)(good.conv, good.h[:, :3]))


def test_rglru_resets_errors_say_what_they_got():
    layer = layers.RGLRU(3, dtype=F64)
    x = torch.randn(2, 7, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"\(B, L\) = \(2, 7\) bool tensor .*; got list"):
        layer(x, resets=[True] * 7)
    with pytest.raises(ValueError, match=r"; got \(2, 6\) torch.bool"):
        layer(x, resets=torch.zeros(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B,\) = \(2,\) bool tensor .*; got \(2,\) torch.float64"):
        layer.step(x[:, 0], layer.initial_state(2), torch.zeros(2, dtype=F64))


def test_zoo_flags_follow_the_papers():
    # RG-LRU's gates depend on the input (LTV), and 0 < a_t < 1 for every input; H3 and the EMA are LTI recurrences
    # (gates multiply their input and output only), stable by their parametrisations.
    assert layers.RGLRU.zoo.time_varying and layers.RGLRU.zoo.stable_by_construction
    assert not layers.H3.zoo.time_varying and layers.H3.zoo.stable_by_construction
    assert not layers.EMA.zoo.time_varying and layers.EMA.zoo.stable_by_construction


def test_h3_keeps_its_options_and_backends():
    layer = layers.H3(6, d_state=4, head_dim=2, init="inv", discretization="zoh", dt_min=0.01, dt_max=0.2, lr=None)
    assert (layer.d_model, layer.d_state, layer.head_dim, layer.n_heads) == (6, 4, 2, 3)
    assert (layer.init, layer.discretization, layer.dt_min, layer.dt_max, layer.lr) == ("inv", "zoh", 0.01, 0.2, None)
    assert "d_model=6, d_state=4, head_dim=2, init='inv', discretization='zoh'" in repr(layer)
    assert layers.H3.backends == ("reference", "chunked", "fft")
    assert layers.EMA.backends == ("reference", "chunked", "fft", "native")
    assert set(layers.RGLRU.backends) == {"reference", "chunked", "native"}


def test_h3_options_are_checked_by_name():
    for bad in (-3, 2.5, True):
        with pytest.raises(ValueError, match="d_model must be a positive int"):
            layers.H3(bad)
    for bad in (0, 5, -2):
        with pytest.raises(ValueError, match=r"d_state must be an even int.*shift SSM"):
            layers.H3(4, d_state=bad)
    with pytest.raises(ValueError, match="head_dim must be a positive int"):
        layers.H3(4, head_dim=-2)
    with pytest.raises(ValueError, match="lr must be"):
        layers.H3(4, lr=-1.0)


def test_ema_state_space_realises_the_recurrence():
    # (A, B, C, D) per channel simulated here, x_{t+1} = A x_t + B u_t, y_t = C x_t + D u_t from x_0 = 0, gives the
    # paper's recurrence; A = diag(1 - αδ), and the transfer function at z = 1 is Σ_n γ_n αβ/(αδ √N) + ω.
    torch.manual_seed(12)
    layer = layers.EMA(3, 4, dtype=F64)
    perturb(layer, 0.5)
    ss = layer.state_space()
    A, B, C, D = (torch.from_numpy(m.copy()) for m in (ss.A, ss.B, ss.C, ss.D))
    u = torch.randn(2, 12, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    x = torch.zeros(2, 3, 4, 1, dtype=F64)
    y = torch.zeros(2, 12, 3, dtype=F64)
    for t in range(12):
        y[:, t] = (C @ x)[..., 0, 0] + D[:, 0, 0] * u[:, t]
        x = A @ x + B * u[:, t, :, None, None]
    y_ref, _ = ema_reference(layer, u)
    assert rel_err(y, y_ref) < 1e-12
    assert ss.dt == 1.0  # discrete time: one step per sample, as every layer's realisation
    alpha, delta = torch.sigmoid(layer.logit_alpha[0].detach()), torch.sigmoid(layer.logit_delta[0].detach())
    torch.testing.assert_close(A, torch.diag_embed(1 - alpha * delta), rtol=1e-15, atol=0)
    dc = (layer.gamma[0] * alpha * layer.beta[0] / (alpha * delta)).detach().sum(-1) / 2 + layer.D.detach()
    torch.testing.assert_close(D[:, 0, 0] + (C @ torch.linalg.solve(torch.eye(4, dtype=F64) - A, B))[:, 0, 0], dc)


def test_ema_options_are_checked_and_kept():
    layer = layers.EMA(5, 3, lr=1e-3, bidirectional=True)
    assert (layer.d_model, layer.d_state, layer.lr, layer.bidirectional, layer.n_modes) == (5, 3, 1e-3, True, 3)
    assert "d_model=5, d_state=3, bidirectional=True" in repr(layer)
    assert set(layers.optim_marks(layer)) == {"logit_alpha", "logit_delta", "beta"}
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="d_model must be a positive int"):
            layers.EMA(bad)
    with pytest.raises(ValueError, match="d_state must be a positive int"):
        layers.EMA(3, -2)
    with pytest.raises(ValueError, match="bidirectional must be"):
        layers.EMA(3, bidirectional=1)


def test_ema_half_weights_are_refused_where_they_compute():
    # float32/float64 parameters only: discrete() and kernel() refuse float16 weights by name; state_space() analyses
    # them in float64 (the protocol's rule).
    layer = layers.EMA(3, 2).half()
    for call in (layer.discrete, lambda: layer.kernel(4)):
        with pytest.raises(ValueError, match="parameters are torch.float16"):
            call()
    assert layer.state_space().A.dtype == "float64"
