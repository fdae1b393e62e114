"""Probe of 2026-12-05 (an ML researcher sweeping hyperparameters): silent wrong answers at unusual but legal
constructor settings, each number against an independent float64 reference written here from the equations of
/work/shared/REFERENCE.md §1 (plain loops over time, direct sums of closed-form kernels).

Findings (fixed):

1. *Mamba-2's ``A_init_range`` could not come from a configuration file.* The constructor took only a tuple, and JSON
   and YAML hold a pair as a list: ``SequenceModel.from_config`` of a saved ``SequenceModelConfig`` (``save`` / ``load``,
   JSON or YAML) of a Mamba-2 model with ``A_init_range=(2.0, 3.0)`` raised "A_init_range must be a tuple", and an
   experiment file with ``layer_options: {A_init_range: [2, 3]}`` could not be built at all: the option was out of
   reach of every configuration. Now a list of two numbers is taken and kept as a tuple
   (``ssmkit.layers.mamba2``). Reference: the model built from the Python tuple, same weights (outputs equal exactly).
2. *Mega's biases were weight-decayed.* ``param_groups`` keeps "norm weights and every bias" out of weight decay
   (docs/design.md) by the parameter's name ``bias``; Mega's biases carry the paper's symbols ``b_v``, ``b_mx``
   (b_φ, b_z, b_γ and X' W_h's), ``b_h`` and the offsets ``mu`` of Q and K, so they trained with the global weight
   decay (0.1 in the test, for 0) -- and ``decay_norms_and_biases`` changed nothing for them. A layer now lists such
   names in ``bias_parameters`` (Mega: those four), which ``param_groups`` reads (``ssmkit.train.optim``). Reference:
   the rule as documented, parameter by parameter.

Checked and right (a test each below): S4D with one conjugate pair (d_state 2) and three, every init and both
discretisations at dt_min = dt_max, against the kernel from the closed-form eigenvalues (the LegS ones from the
2×2 / 6×6 HiPPO matrix by numpy); Mamba at d_model 1 (d_state 1, d_conv 1, dt_rank 1) and Mamba-2 with one channel
per head and one group per head at a prime width (and one head of all channels), against float64 loops; S5 with
blocks of two states (one mode each: Λ = -½ - i√3/2 everywhere), bilinear, with ``step_rescale`` against its loop
and against Δ moved by log(step_rescale); LRU with r_min = r_max (|λ| = r, γ = √(1 - r²)) against its loop; RG-LRU
with a_min = a_max (a = a_min for ``"ring"``, a^c = a_min for ``"paper"``); attention with window 1 (each position
its own value) and a window of at least L (the full causal attention); Mega with chunks of one (softmax: O = V,
whatever Q, K and the bias; Laplace: the weight f(q·k + b_rel)) against the whole of eq. 6-15 written here; SGConv
at l_max = kernel_dim = 1, bidirectional (three taps: lag -1, 0 and the skip); dropout > 0 in eval mode (a model
equals the same weights without dropout, forward and step, in a hybrid pattern); constructor options that barely do
not divide, refused by name.

Noticed and left alone (reported): ``SequenceModel``'s final norm of a pre-norm stack is a LayerNorm whatever
``norm`` is (``norm="rms"`` or ``"batch"`` gets a final LayerNorm; Mamba's and S4's own code use the blocks' norm
there) -- a tested decision (docs/design.md, lead's round 2026-12-03), not documented in the class's docstring. A
config saved with a tuple option and loaded back compares unequal to the original (a list), though both build the
same model. Mega's ``rel_bias`` and scale ``kappa`` stay weight-decayed (neither is an additive bias of an affine
map); Hyena's ``filter_bias`` is a skip (it multiplies x ⊙ v), decayed like every layer's D.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ssmkit.layers as layers
from ssmkit.models import SequenceModel, SequenceModelConfig
from ssmkit.ops import use_backend
from ssmkit.train import param_groups
from tests.conftest import rel_err, run_steps, runnable_backends

F64 = torch.float64
TOL = 1e-10


def perturb(layer: torch.nn.Module, scale: float = 0.3, seed: int = 7) -> torch.nn.Module:
    """Every parameter moved off its initial value (zeros, ones and log(1..N) hide index errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=F64).to(p.dtype))
    return layer


def all_paths(layer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The layer's output on every backend it runs here, and step by step."""
    out = {}
    for backend in ("auto",) + runnable_backends(layer):
        with use_backend(backend):
            out[backend] = layer(x)[0]
    if layer.supports("step") and not getattr(layer, "bidirectional", False):
        out["step"] = run_steps(layer, x)[0]
    return out


def assert_all_paths(layer, x: torch.Tensor, y_ref: torch.Tensor, tol: float = TOL) -> None:
    for path, y in all_paths(layer, x).items():
        assert rel_err(y, y_ref) < tol, (path, rel_err(y, y_ref))


def causal_sum(K: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """y_t = Σ_{j<=t} K[h, j] u_{t-j}: K (H, L) real, u (B, L, H) -> (B, L, H)."""
    L = u.shape[1]
    return torch.stack([sum(K[:, j] * u[:, t - j] for j in range(t + 1)) for t in range(L)], dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# S4D: one conjugate pair, every init, Δ fixed by dt_min = dt_max


def legs_normal_eigenvalues(N: int) -> np.ndarray:
    """The N/2 eigenvalues with Im < 0 of the normal part A + P Pᵀ of HiPPO-LegS(N), P_n = √(n + ½) (REFERENCE §1)."""
    n = np.arange(N)
    A = -np.sqrt(np.outer(2 * n + 1, 2 * n + 1)) * (n[:, None] > n[None, :]) - np.diag(n + 1.0)
    P = np.sqrt(n + 0.5)
    w = np.linalg.eigvals(A + np.outer(P, P))
    return np.sort_complex(w[w.imag < 0])


def s4d_eigenvalues(init: str, N: int) -> torch.Tensor:
    """The S4D inits (arXiv 2206.11893 §4) with Im λ <= 0, ssmkit's documented sign (``ops.hippo.s4d_eigenvalues``: the
    official kernel's ``A = -real - 1j·imag``; with 2 Re and a complex normal C either sign is the same model)."""
    M = N // 2
    n = torch.arange(M, dtype=F64)
    if init == "lin":
        return torch.complex(-0.5 * torch.ones(M, dtype=F64), -math.pi * n)
    if init == "inv":
        return torch.complex(-0.5 * torch.ones(M, dtype=F64), -(N / math.pi) * (N / (2 * n + 1) - 1))
    if init == "real":
        return torch.complex(-(n + 1), torch.zeros(M, dtype=F64))
    return torch.from_numpy(legs_normal_eigenvalues(N))


@pytest.mark.parametrize("d_state", [2, 6])
@pytest.mark.parametrize("init", ["lin", "inv", "real", "legs"])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s4d_small_states_every_init_at_a_fixed_step(d_state, init, discretization):
    """K_l = 2 Re Σ_n C_n B̄_n Ā_n^l with λ from the init's closed form, B = 1 (LegS: the layer's V*B), Δ = dt."""
    dt = 0.37
    torch.manual_seed(3)
    layer = layers.build("s4d", d_model=3, d_state=d_state, init=init, discretization=discretization, dt_min=dt,
                         dt_max=dt, dtype=F64)
    Lambda = s4d_eigenvalues(init, d_state)  # (M,)
    stored = torch.complex(-torch.exp(layer.log_A_real), layer.A_imag).detach()  # (H, M)
    if init == "legs":  # the same set (the layer's order is its own)
        Lambda = Lambda[torch.argsort(Lambda.imag)]
        stored = stored[:, torch.argsort(stored[0].imag)]
    assert rel_err(stored, Lambda.expand(3, -1)) < 1e-12
    stored = torch.complex(-torch.exp(layer.log_A_real), layer.A_imag).detach()  # (H, M) in the layer's order
    assert rel_err(torch.exp(layer.log_dt), torch.full((3,), dt, dtype=F64)) < 1e-15  # Δ = dt exactly
    B = torch.view_as_complex(layer.B.detach()) if init == "legs" else torch.ones(3, d_state // 2, dtype=torch.complex128)
    if init == "legs":
        Lambda = stored  # the modes in the layer's order (checked equal above)
    else:
        Lambda = Lambda.expand(3, -1)
    if discretization == "zoh":
        A_bar, B_bar = torch.exp(dt * Lambda), (torch.exp(dt * Lambda) - 1) / Lambda * B
    else:
        A_bar, B_bar = (1 + dt * Lambda / 2) / (1 - dt * Lambda / 2), dt * B / (1 - dt * Lambda / 2)
    C = torch.view_as_complex(layer.C.detach()[0])  # (H, M)
    L = 9
    K = torch.stack([2 * (C * B_bar * A_bar**l).sum(-1).real for l in range(L)], dim=-1)  # (H, L)
    x = torch.randn(2, L, 3, dtype=F64)
    assert_all_paths(layer, x, causal_sum(K, x) + layer.D.detach() * x)


# ---------------------------------------------------------------------------------------------------------------------
# Mamba and Mamba-2 at the smallest widths


def depthwise_causal(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """y_t = Σ_k w[c, k] x_{t-W+1+k} + b (zeros before t = 0): x (B, L, C), w (C, W)."""
    W = w.shape[1]
    xp = torch.cat([torch.zeros(x.shape[0], W - 1, x.shape[2], dtype=x.dtype), x], dim=1)
    y = sum(w[:, k] * xp[:, k : k + x.shape[1]] for k in range(W))
    return y + (0 if b is None else b)


def mamba_loop(layer, u: torch.Tensor) -> torch.Tensor:
    """Mamba-1 (REFERENCE §1): x, z = W_in u; x ← SiLU(conv(x)); δ, B, C = W_x x; Δ = softplus(W_Δ δ + b_Δ);
    h ← exp(Δ A) h + Δ B x; y = C h + D x; out = W_out(y ⊙ SiLU(z))."""
    p = {k: v.detach() for k, v in layer.named_parameters()}
    E, N, R = layer.d_inner, layer.d_state, layer.rank
    xz = F.linear(u, p["in_proj.weight"], p.get("in_proj.bias"))
    x = F.silu(depthwise_causal(xz[..., :E], p["conv1d.weight"], p.get("conv1d.bias")))
    z = xz[..., E:]
    A = -torch.exp(p["A_log"])  # (E, N)
    h = torch.zeros(u.shape[0], E, N, dtype=F64)
    ys = []
    for t in range(u.shape[1]):
        dbc = x[:, t] @ p["x_proj.weight"].T
        delta = F.softplus(dbc[:, :R] @ p["dt_proj.weight"].T + p["dt_bias"])  # (B, E)
        h = torch.exp(delta[..., None] * A) * h + (delta * x[:, t])[..., None] * dbc[:, None, R : R + N]
        y = (h * dbc[:, None, R + N :]).sum(-1) + p["D"] * x[:, t]
        ys.append(y * F.silu(z[:, t]))
    return F.linear(torch.stack(ys, 1), p["out_proj.weight"], p.get("out_proj.bias"))


@pytest.mark.parametrize("opts", [
    dict(d_model=1, d_state=1, d_conv=1, expand=1, dt_rank=1),
    dict(d_model=1, d_state=2, d_conv=5, expand=3, dt_rank=1, bias=True, conv_bias=False),
    dict(d_model=5, d_state=1, d_conv=2, expand=1, dt_rank=4, dt_min=0.05, dt_max=0.05, dt_init="constant"),
])
def test_mamba_at_the_smallest_widths_equals_its_loop(opts):
    torch.manual_seed(4)
    layer = perturb(layers.build("mamba", dtype=F64, **opts))
    x = torch.randn(2, 7, opts["d_model"], dtype=F64)
    assert_all_paths(layer, x, mamba_loop(layer, x))


def mamba2_loop(layer, u: torch.Tensor) -> torch.Tensor:
    """Mamba-2 (REFERENCE §1): [z, x, B, C, δ] = W_in u; [x, B, C] ← SiLU(conv); head h reads group h // (heads/G);
    H ← exp(Δ A) H + Δ x Bᵀ, y = H C + D x; out = W_out(RMSNorm_G(y ⊙ SiLU(z)) w) (or the other orders)."""
    p = {k: v.detach() for k, v in layer.named_parameters()}
    E, N, G, nh, P = layer.d_inner, layer.d_state, layer.ngroups, layer.nheads, layer.headdim
    zxbcdt = F.linear(u, p["in_proj.weight"], p.get("in_proj.bias"))
    z, xBC, dt = zxbcdt[..., :E], zxbcdt[..., E : 2 * E + 2 * G * N], zxbcdt[..., 2 * E + 2 * G * N :]
    xBC = F.silu(depthwise_causal(xBC, p["conv.weight"], p.get("conv.bias")))
    x, Bm, Cm = xBC[..., :E], xBC[..., E : E + G * N], xBC[..., E + G * N :]
    delta = F.softplus(dt + p["dt_bias"])  # (B, L, nh)
    A = -torch.exp(p["A_log"])
    D = p["D"] if layer.D_has_hdim else p["D"].repeat_interleave(P)  # (E,)
    state = torch.zeros(u.shape[0], nh, P, N, dtype=F64)
    outs = []
    for t in range(u.shape[1]):
        y = torch.empty(u.shape[0], E, dtype=F64)
        for h in range(nh):
            g = h // (nh // G)
            xh = x[:, t, h * P : (h + 1) * P]  # (B, P)
            d = delta[:, t, h : h + 1]  # (B, 1)
            state[:, h] = torch.exp(d * A[h])[..., None] * state[:, h] + (d * xh)[..., None] * Bm[:, t, None, g * N : (g + 1) * N]
            y[:, h * P : (h + 1) * P] = (state[:, h] * Cm[:, t, None, g * N : (g + 1) * N]).sum(-1)
        y = y + D * x[:, t]
        gate = F.silu(z[:, t])
        if layer.rmsnorm:
            v = y if layer.norm_before_gate else y * gate
            v = v.unflatten(-1, (G, E // G))
            v = (v / torch.sqrt((v**2).mean(-1, keepdim=True) + 1e-5)).flatten(-2) * p["norm.weight"]
            y = v * gate if layer.norm_before_gate else v
        else:
            y = y * gate
        outs.append(y)
    return F.linear(torch.stack(outs, 1), p["out_proj.weight"], p.get("out_proj.bias"))


@pytest.mark.parametrize("opts", [
    dict(d_model=5, expand=1, headdim=1, ngroups=5, d_state=1, d_conv=1, chunk_size=2),  # a group per one-channel head
    dict(d_model=5, expand=1, headdim=5, ngroups=1, d_state=2, chunk_size=3, norm_before_gate=True, D_has_hdim=True),
    dict(d_model=1, expand=3, headdim=1, ngroups=3, d_state=1, d_conv=2, chunk_size=1, rmsnorm=False, bias=True),
])
def test_mamba2_heads_and_groups_at_their_limits_equal_the_loop(opts):
    torch.manual_seed(5)
    layer = perturb(layers.build("mamba2", dtype=F64, **opts))
    x = torch.randn(2, 7, opts["d_model"], dtype=F64)
    assert_all_paths(layer, x, mamba2_loop(layer, x))


# ---------------------------------------------------------------------------------------------------------------------
# S5, LRU, RG-LRU at degenerate ranges


def mimo_loop(A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, D: torch.Tensor, u: torch.Tensor, scale: float):
    """x_t = Ā ⊙ x_{t-1} + B̄ u_t, y_t = scale·Re(C x_t) + D ⊙ u_t: Ā (M,), B̄ (M, H), C (H, M) complex."""
    x = torch.zeros(u.shape[0], A_bar.shape[0], dtype=torch.complex128)
    ys = []
    for t in range(u.shape[1]):
        x = A_bar * x + u[:, t].to(torch.complex128) @ B_bar.T
        ys.append(scale * (x @ C.T).real + D * u[:, t])
    return torch.stack(ys, 1)


def test_s5_blocks_of_two_states_bilinear_with_step_rescale():
    """blocks = P/2: each block is HiPPO-LegS(2), whose normal part has λ = -½ ± i√3/2 (one mode kept per block);
    the bilinear Λ̄ = (1 + ΔΛ/2)/(1 - ΔΛ/2), B̄ = Δ B̃/(1 - ΔΛ/2) with Δ = step_rescale·exp(log Δ); y = 2 Re(C̃ x) + D u."""
    torch.manual_seed(6)
    P, s = 10, 2.5
    layer = layers.build("s5", d_model=3, d_state=P, blocks=P // 2, discretization="bilinear", step_rescale=s, dtype=F64)
    lam = torch.complex(layer.A_real, layer.A_imag).detach()
    assert rel_err(lam, torch.full((P // 2,), complex(-0.5, -math.sqrt(3) / 2), dtype=torch.complex128)) < 1e-12
    perturb(layer, scale=0.1)
    Lambda = torch.complex(layer.A_real, layer.A_imag).detach()
    dt = s * torch.exp(layer.log_dt.detach())
    A_bar = (1 + dt * Lambda / 2) / (1 - dt * Lambda / 2)
    B_bar = (dt / (1 - dt * Lambda / 2))[:, None] * torch.view_as_complex(layer.B.detach())
    x = torch.randn(2, 8, 3, dtype=F64)
    y_ref = mimo_loop(A_bar, B_bar, torch.view_as_complex(layer.C.detach()[0]), layer.D.detach(), x, 2.0)
    assert_all_paths(layer, x, y_ref)
    plain = layers.build("s5", d_model=3, d_state=P, blocks=P // 2, discretization="bilinear", dtype=F64)
    plain.load_state_dict(layer.state_dict())
    with torch.no_grad():
        plain.log_dt.add_(math.log(s))  # step_rescale is Δ times s, nothing else
    assert rel_err(plain(x)[0], y_ref) < TOL


def test_lru_ring_of_one_radius_equals_its_loop():
    """r_min = r_max = r: every |λ| = r, γ = √(1 - r²); h_t = λ ⊙ h_{t-1} + γ ⊙ (B u_t), y = Re(C h) + D u."""
    torch.manual_seed(7)
    r = 0.7
    layer = layers.build("lru", d_model=3, d_state=6, r_min=r, r_max=r, max_phase=0.3, dtype=F64)
    lam = torch.exp(torch.complex(-torch.exp(layer.log_nu), torch.exp(layer.log_theta))).detach()
    assert rel_err(lam.abs(), torch.full((3,), r, dtype=F64)) < 1e-12
    assert float(torch.angle(lam).max()) <= 0.3
    assert rel_err(torch.exp(layer.log_gamma), torch.full((3,), math.sqrt(1 - r * r), dtype=F64)) < 1e-12
    B_bar = torch.exp(layer.log_gamma.detach())[:, None] * torch.view_as_complex(layer.B.detach())
    x = torch.randn(2, 9, 3, dtype=F64)
    y_ref = mimo_loop(lam, B_bar, torch.view_as_complex(layer.C.detach()[0]), layer.D.detach(), x, 1.0)
    assert_all_paths(layer, x, y_ref)


@pytest.mark.parametrize("init", ["ring", "paper"])
def test_rglru_a_min_equal_to_a_max_fixes_every_decay(init):
    """ring: a² ~ U[a_min², a_max²] gives a = a_min; paper: a^c ~ U[a_min, a_max] gives a^c = a_min (a = σ(Λ))."""
    c, a = 3.0, 0.8
    layer = layers.build("rglru", d_model=3, lru_width=5, n_heads=5, c=c, init=init, a_min=a, a_max=a, dtype=F64)
    decay = torch.sigmoid(layer.Lambda.detach())
    want = a if init == "ring" else a ** (1 / c)
    assert rel_err(decay, torch.full((5,), want, dtype=F64)) < 1e-12


# ---------------------------------------------------------------------------------------------------------------------
# Attention windows, Mega chunks of one, SGConv's smallest kernel


def test_attention_window_one_is_the_value_and_a_long_window_is_no_window():
    """window = 1: each query sees only its own key, weight 1, so y_t = W_out V_t (rotary changes nothing there);
    a window of at least L is the full causal attention."""
    torch.manual_seed(8)
    one = perturb(layers.build("attention", d_model=3, n_heads=2, head_dim=4, window=1, bias=True, dtype=F64))
    x = torch.randn(2, 6, 3, dtype=F64)
    qkv = F.linear(x, one.qkv.weight, one.qkv.bias).detach()  # (B, L, 3·A·P), [q, k, v]
    v = qkv[..., 16:]
    assert_all_paths(one, x, F.linear(v, one.out.weight, one.out.bias).detach())
    full = layers.build("attention", d_model=3, n_heads=2, head_dim=4, bias=True, dtype=F64)
    long = layers.build("attention", d_model=3, n_heads=2, head_dim=4, window=6, bias=True, dtype=F64)
    full.load_state_dict(one.state_dict())
    long.load_state_dict(one.state_dict())
    y_full = full(x)[0]
    assert rel_err(long(x)[0], y_full) < TOL and rel_err(y_full, one(x)[0]) > 1e-2


def ema_loop(ema, u: torch.Tensor) -> torch.Tensor:
    """h_t = α β u_t + (1 - α δ) h_{t-1}, y_t = Σ_n γ_n h_{t,n}/√N + ω u_t (arXiv 2209.10655 eq. 2-3)."""
    a, d = torch.sigmoid(ema.logit_alpha.detach()[0]), torch.sigmoid(ema.logit_delta.detach()[0])  # (H, N)
    beta, gamma, N = ema.beta.detach()[0], ema.gamma.detach()[0], ema.logit_alpha.shape[-1]
    h = torch.zeros(u.shape[0], *a.shape, dtype=F64)
    ys = []
    for t in range(u.shape[1]):
        h = a * beta * u[:, t, :, None] + (1 - a * d) * h
        ys.append((gamma * h).sum(-1) / math.sqrt(N) + ema.D.detach() * u[:, t])
    return torch.stack(ys, 1)


@pytest.mark.parametrize("attention", ["softmax", "laplace"])
def test_mega_chunks_of_one_equal_the_equations(attention):
    """chunk_size = 1: query t sees key t only. softmax: weight 1, O = V; Laplace: weight f(q·k/1 + b_rel[0]),
    f(x) = ½(1 + erf((x - √½)/(σ√2))), σ = √(1/4π). Then eq. 12-15: out = φ ⊙ (Ĥ - X)."""
    torch.manual_seed(9)
    H, Z, V = 3, 4, 5
    layer = perturb(layers.build("mega", d_model=H, d_state=2, d_qk=Z, d_v=V, chunk_size=1, attention=attention,
                                 dtype=F64), scale=0.5)
    p = {k: v.detach() for k, v in layer.named_parameters()}
    x = torch.randn(2, 7, H, dtype=F64)
    mx = F.silu(ema_loop(layer.ema, x))  # X'
    value = F.silu(x @ p["W_v"].T + p["b_v"])
    proj = mx @ p["W_mx"].T + p["b_mx"]
    phi, zr, hx = torch.sigmoid(proj[..., :H]), F.silu(proj[..., H : H + Z + V]), proj[..., H + Z + V :]
    z, reset = zr[..., :Z], zr[..., Z:]
    if attention == "softmax":
        O = value
    else:
        q, k = z * p["kappa"][0] + p["mu"][0], z * p["kappa"][1] + p["mu"][1]
        s = (q * k).sum(-1, keepdim=True) + p["rel_bias"][0]
        sigma = math.sqrt(1 / (4 * math.pi))
        O = 0.5 * (1 + torch.erf((s - math.sqrt(0.5)) / (sigma * math.sqrt(2)))) * value
    H_hat = F.silu(hx + (O * reset) @ p["U_h"].T + p["b_h"])
    assert_all_paths(layer, x, phi * (H_hat - x))


def test_sgconv_one_tap_bidirectional():
    """l_max = kernel_dim = 1: S = 1 scale, K = w/|w| per direction: y_t = (K0 + D) u_t + K1 u_{t+1} (the anti-causal
    tap 0 at lag -1)."""
    torch.manual_seed(10)
    layer = layers.build("sgconv", d_model=3, l_max=1, kernel_dim=1, bidirectional=True, dtype=F64)
    assert layer.n_scales == 1 and layer.kernel_length == 1
    w = layer.sub_kernels.detach()[0, :, :, 0]  # (2, H)
    K = w / w.abs()  # each direction normalised to unit L2 norm
    x = torch.randn(2, 6, 3, dtype=F64)
    y = (K[0] + layer.D.detach()) * x
    y[:, :-1] += K[1] * x[:, 1:]
    assert_all_paths(layer, x, y)


# ---------------------------------------------------------------------------------------------------------------------
# Models: configuration files, dropout in eval, optimizer groups


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_mamba2_A_init_range_round_trips_through_a_config_file(tmp_path, suffix):
    """Finding 1: JSON and YAML hold the pair as a list; the model built from the file equals the original."""
    if suffix == ".yaml":
        pytest.importorskip("yaml")
    torch.manual_seed(11)
    model = SequenceModel(2, 4, 1, "mamba2", {"headdim": 2, "d_state": 3, "A_init_range": (2.0, 3.0)}, d_output=2,
                          head="regress", pool=None, dtype=F64)
    path = tmp_path / f"model{suffix}"
    model.config.save(path)
    loaded = SequenceModelConfig.load(path)
    assert loaded.layer_options["A_init_range"] == [2.0, 3.0]
    again = SequenceModel.from_config(loaded, dtype=F64)
    assert again.blocks[0].layer.A_init_range == (2.0, 3.0)
    again.load_state_dict(model.state_dict())
    x = torch.randn(2, 5, 2, dtype=F64)
    assert torch.equal(again(x)[0], model(x)[0])
    A = -torch.exp(layers.build("mamba2", d_model=4, headdim=2, d_state=3, A_init_range=[2.5, 2.5], dtype=F64).A_log)
    assert rel_err(A, torch.full((4,), -2.5, dtype=F64)) < 1e-15  # the list's bounds are the draw's


def test_mega_biases_get_no_weight_decay():
    """Finding 2: "norm weights and every bias get no weight decay" (docs/design.md) holds for Mega's b_v, b_mx,
    b_h and μ too; its weights keep the global decay, and decay_norms_and_biases decays the biases again."""
    model = SequenceModel(1, 4, 1, "mega", {"d_state": 2, "d_qk": 4, "chunk_size": 4}, d_output=2)
    mega = model.blocks[0].layer
    for decay_biases in (False, True):
        decay = {}
        for group in param_groups(model, lr=0.01, weight_decay=0.1, decay_norms_and_biases=decay_biases):
            decay.update({id(p): group["weight_decay"] for p in group["params"]})
        for name in ("b_v", "b_mx", "b_h", "mu"):
            assert decay[id(getattr(mega, name))] == (0.1 if decay_biases else 0.0), name
        for name in ("W_v", "W_mx", "U_h", "kappa"):
            assert decay[id(getattr(mega, name))] == 0.1, name


def test_dropout_in_eval_mode_changes_nothing():
    """A hybrid model with dropout 0.5 in eval mode equals the same weights with dropout 0, forward and step."""
    opts = dict(d_input=2, d_model=4, n_layers=3, layer=["mamba2", "attention", "s4d"], d_output=3, head="regress",
                pool=None, layer_options={"mamba2": {"headdim": 2, "d_state": 3},
                                          "attention": {"n_heads": 2, "head_dim": 2, "window": 3},
                                          "s4d": {"d_state": 2}})
    torch.manual_seed(12)
    dropped = SequenceModel(**opts, dropout=0.5, dtype=F64).eval()
    plain = SequenceModel(**opts, dtype=F64).eval()
    plain.load_state_dict(dropped.state_dict())
    x = torch.randn(2, 6, 2, dtype=F64)
    y = plain(x)[0]
    assert torch.equal(dropped(x)[0], y)
    state = dropped.initial_state(2)
    for t in range(6):
        y_t, state = dropped.step(x[:, t], state)
        assert rel_err(y_t, y[:, t]) < TOL
    dropped.train()
    assert rel_err(dropped(x)[0], y) > 1e-2  # and in training mode it does drop


@pytest.mark.parametrize("name, options, match", [
    ("s4", dict(d_state=4, n_ssm=2), "d_model must be divisible by n_ssm"),
    ("s5", dict(d_state=10, blocks=3), "d_state must be a positive multiple of 6"),
    ("s5", dict(d_state=6, blocks=3, conj_sym=False), "d_state must be a positive multiple of 12"),
    ("rglru", dict(lru_width=5, n_heads=2), "n_heads must divide lru_width"),
    ("mamba2", dict(expand=1, headdim=1, ngroups=2), "ngroups must divide the 3 heads"),
    ("mamba2", dict(expand=1, headdim=2), "headdim must divide expand·d_model"),
    ("hyena", dict(emb_dim=4), "emb_dim must be an odd int >= 3"),
    ("dss", dict(d_state=4, version="softmax"), "give l_max"),
    ("mega", dict(d_qk=5, positional="rotary"), "d_qk must be even"),
])
def test_sizes_that_barely_do_not_divide_are_refused_by_name(name, options, match):
    with pytest.raises(ValueError, match=match):
        layers.build(name, d_model=3, **options)
