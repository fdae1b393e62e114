"""Liquid-S4 (arXiv 2209.12951), DLR (arXiv 2212.00768) and GSS (arXiv 2206.13947) against float64 references written
here from the papers' equations (dense matrices, loops over time, direct sums), with every parameter moved off its
initial value, an initial state, shapes that are not multiples of each other, and each option checked (probe 36)."""

from __future__ import annotations

import math

import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
from ssmkit.layers.gss import GSSDiagonal
from ssmkit.layers.liquid import LiquidS4State
from tests.conftest import DEVICE, H, rel_err, run_steps

F64, C128 = torch.float64, torch.complex128


@torch.no_grad()
def perturb(layer: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    """Move every parameter and buffer of ``layer`` off its initial value by seeded relative noise."""
    gen = torch.Generator().manual_seed(seed)
    for tensor in list(layer.parameters()) + list(layer.buffers()):
        noise = torch.randn(tensor.shape, generator=gen, dtype=F64).to(tensor.device, tensor.dtype)
        tensor.add_(scale * (tensor.abs().mean() + 0.1) * noise)


# ------------------------------------------------------------------------------------------------------------------
# Liquid-S4: x_k = Ā x_{k-1} + B̄ v_k over the full conjugate-pair state, bilinear discretisation of
# A = diag(Λ) - P P*, C_true from (I - Ā^{l_max})ᵀ C_true = C̃, the liquid input s_t = Σ_p β^{p-1} f(u_t ... u_{t-p+1})

CONTRACT = {None: lambda v: v, "tanh": torch.tanh, "lecun": lambda v: 1.7159 * torch.tanh(0.666 * v)}


def liquid_dense(layer, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ā (H, N, N), B̄ (H, N), C_true (H, N) complex128 over the full state [x, x̄] (channel h uses copy h mod G), on
    ``device`` (the loop's inputs' device, the CPU or the layer's)."""
    G = layer.log_A_real.shape[0]
    copy = torch.arange(layer.d_model, device=device) % G
    w = {k: v.double().to(device) for k, v in layer.named_parameters()}  # differentiable copies
    w.update({k: v.double().to(device) for k, v in layer.named_buffers() if k not in w})
    Lam = torch.complex(-torch.exp(w["log_A_real"]), w["A_imag"])[copy]  # (H, M)
    P = torch.view_as_complex(w["P"])[:, copy]  # (r, H, M)
    B = torch.view_as_complex(w["B"])[copy]  # (H, M)
    dt = torch.exp(w["log_dt"])[:, None, None]  # (H, 1, 1)
    Lam_f, P_f, B_f = (torch.cat([v, v.conj()], dim=-1) for v in (Lam, P, B))
    A = torch.diag_embed(Lam_f) - torch.einsum("rhn,rhm->hnm", P_f, P_f.conj())  # (H, N, N)
    eye = torch.eye(A.shape[-1], dtype=C128, device=device)
    A_bar = torch.linalg.solve(eye - dt / 2 * A, eye + dt / 2 * A)
    B_bar = torch.linalg.solve(eye - dt / 2 * A, dt[..., 0] * B_f)  # (H, N)
    C_t = torch.view_as_complex(w["C_tilde"])[0]
    C_t = torch.cat([C_t, C_t.conj()], dim=-1)  # (H, N)
    A_L = torch.linalg.matrix_power(A_bar, layer.l_max)
    C_true = torch.linalg.solve((eye - A_L).mT, C_t)  # (H, N)
    return A_bar, B_bar, C_true


def liquid_reference(layer, u: torch.Tensor, h0: torch.Tensor, past: torch.Tensor):
    """y (B, L, H), the final half state (B, H, M) and the last P-1 inputs (B, H, P-1), by a float64 loop.

    KB: x_k = Ā x_{k-1} + B̄ (u_k + s_k), y_k = C_trueᵀ x_k + D u_k; PB: x_k = Ā x_{k-1} + B̄ u_k,
    y_k = C_trueᵀ x_k + D u_k + (C_trueᵀ B̄) s_k; s_k = Σ_{p=2}^{P} β^{p-1} f(Π_{j<p} u_{k-j}), β = 1ᵀ B̄.
    """
    A_bar, B_bar, C_true = liquid_dense(layer, u.device)
    D, P, f = layer.D.double().to(u.device), layer.liquid_degree, CONTRACT[layer.liquid_contract]
    beta, K0 = B_bar.sum(-1).real, (C_true * B_bar).sum(-1).real  # (H,), (H,)
    seq = torch.cat([past.transpose(1, 2), u], dim=1)  # (B, P-1+L, H): u_t at P-1+t
    x = torch.cat([h0, h0.conj()], dim=-1)  # (B, H, N)
    ys = []
    for t in range(u.shape[1]):
        s = torch.zeros_like(u[:, t])
        for p in range(2, P + 1):
            product = torch.ones_like(s)
            for j in range(p):
                product = product * seq[:, P - 1 + t - j]
            s = s + beta ** (p - 1) * f(product)
        v = u[:, t] + s if layer.liquid_kernel == "kb" else u[:, t]
        x = torch.einsum("hnm,bhm->bhn", A_bar, x) + B_bar * v[..., None]
        y = (C_true * x).sum(-1).real + D * u[:, t]
        ys.append(y + K0 * s if layer.liquid_kernel == "pb" else y)
    M = layer.d_state // 2
    return torch.stack(ys, dim=1), x[..., :M], seq[:, u.shape[1]:].transpose(1, 2)


LIQUID_CASES = [
    {"liquid_kernel": "pb", "liquid_degree": 3, "liquid_contract": "tanh", "n_ssm": None, "d_state": 6},
    {"liquid_kernel": "kb", "liquid_degree": 4, "liquid_contract": "lecun", "init": "legt", "d_state": 4},
    {"liquid_kernel": "pb", "liquid_degree": 4, "liquid_contract": None, "init": "fout", "n_ssm": 3, "d_state": 4},
    {"liquid_kernel": "kb", "liquid_degree": 2, "liquid_contract": "tanh", "init": "lagt", "d_state": 6},
]


def liquid_layer(opts: dict, seed: int = 5):
    """A float64 Liquid-S4 layer (l_max = 8) with every parameter moved off its init, after one cached forward."""
    torch.manual_seed(seed)
    layer = layers.build("liquid_s4", d_model=H, l_max=8, device=DEVICE, dtype=F64, **opts)
    with torch.no_grad():
        layer(torch.randn(1, 5, H, dtype=F64, device=DEVICE))  # fills the caches at the init values
    perturb(layer, seed)
    return layer


def liquid_inputs(layer, L: int, seed: int = 7):
    """u (2, L, H), an initial half state (2, H, M) and past inputs (2, H, P-1), random and seeded."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(2, L, H, generator=gen, dtype=F64)
    h0 = torch.randn(2, H, layer.d_state // 2, generator=gen, dtype=C128)
    past = torch.randn(2, H, layer.liquid_degree - 1, generator=gen, dtype=F64)
    return u.to(DEVICE), h0.to(DEVICE), past.to(DEVICE)


@pytest.mark.parametrize("opts", LIQUID_CASES)
def test_liquid_forward_and_step_equal_the_dense_loop(opts):
    layer = liquid_layer(opts)
    u, h0, past = liquid_inputs(layer, 19)  # L = 19 > l_max = 8: the attuned C̃ is used
    y_ref, h_ref, past_ref = liquid_reference(layer, u.cpu(), h0.cpu(), past.cpu())
    past_ref = past_ref.to(u.device)  # the last inputs, copied: compared bit for bit with the layer's (torch.equal)
    state = LiquidS4State(h0, past)
    with torch.no_grad():
        for backend in ("reference", "fft"):
            with ops.use_backend(backend):
                y, h = layer(u, state)
                y0, _ = layer(u)  # from zeros
                y1, h1 = layer(u[:, :2], state)  # a chunk shorter than P-1 for degree 4
                y2, h2 = layer(u[:, 2:], h1)
            assert rel_err(y, y_ref) < 1e-9, backend
            assert rel_err(h.ssm, h_ref) < 1e-9 and torch.equal(h.inputs, past_ref), backend
            zero = liquid_reference(layer, u.cpu(), torch.zeros_like(h0.cpu()), torch.zeros_like(past.cpu()))[0]
            assert rel_err(y0, zero) < 1e-9, backend
            assert rel_err(torch.cat([y1, y2], 1), y_ref) < 1e-9 and rel_err(h2.ssm, h_ref) < 1e-9, backend
            assert torch.equal(h2.inputs, past_ref), backend
        y_step, h_step = run_steps(layer, u, state)
    assert rel_err(y_step, y_ref) < 1e-9 and rel_err(h_step.ssm, h_ref) < 1e-9
    assert torch.equal(h_step.inputs, past_ref)


@pytest.mark.parametrize("opts", [LIQUID_CASES[0], LIQUID_CASES[1]])
def test_liquid_gradients_equal_the_dense_loop(opts):
    layer = liquid_layer(opts, seed=11)
    u, h0, past = liquid_inputs(layer, 9, seed=12)
    weight = torch.randn(u.shape, generator=torch.Generator().manual_seed(13), dtype=F64).to(DEVICE)
    params = list(layer.parameters())
    y_ref = liquid_reference(layer, u, h0, past)[0]
    g_ref = torch.autograd.grad((y_ref * weight).sum(), params)
    for backend in ("reference", "fft"):
        with ops.use_backend(backend):
            y = layer(u, LiquidS4State(h0, past), return_state=False)[0]
        for name, g, r in zip([n for n, _ in layer.named_parameters()], torch.autograd.grad((y * weight).sum(), params),
                              g_ref):
            assert rel_err(g, r) < 1e-8, (backend, name)


def test_liquid_float32_layer_follows_the_float64_loop():
    layer = liquid_layer(LIQUID_CASES[0]).float()
    u, h0, past = liquid_inputs(layer, 12)
    ref = layers.build("liquid_s4", d_model=H, l_max=8, device=DEVICE, dtype=F64, **LIQUID_CASES[0])
    ref.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    y_ref, h_ref, _ = liquid_reference(ref, u.cpu(), h0.cpu(), past.cpu())
    state = LiquidS4State(h0.to(torch.complex64), past.float())
    with torch.no_grad():
        for backend in ("reference", "fft"):
            with ops.use_backend(backend):
                y, h = layer(u.float(), state)
                y64, _ = layer(u, state)  # a float64 input: float64 out, computed in float32
            assert y.dtype == torch.float32 and y64.dtype == F64 and h.ssm.dtype == torch.complex64, backend
            assert rel_err(y, y_ref) < 1e-4 and rel_err(y64, y_ref) < 1e-4 and rel_err(h.ssm, h_ref) < 1e-4, backend
        y_t, h_t = layer.step(u[:, 0].float(), state)
    assert y_t.dtype == torch.float32 and h_t.ssm.dtype == torch.complex64 and h_t.inputs.dtype == torch.float32
    assert rel_err(y_t, y_ref[:, 0]) < 1e-5


def test_liquid_options_are_stored_shown_and_checked():
    layer = layers.build("liquid_s4", d_model=H, d_state=4, l_max=8, liquid_kernel="kb", liquid_degree=3,
                         liquid_contract="lecun")
    assert (layer.liquid_kernel, layer.liquid_degree, layer.liquid_contract) == ("kb", 3, "lecun")
    text = repr(layer)
    assert "liquid_kernel='kb'" in text and "liquid_degree=3" in text and "liquid_contract='lecun'" in text
    assert "d_state=4" in text and "l_max=8" in text and "init='legs'" in text
    assert layer.state_spec().inputs.shape == (H, 2)  # the last P-1 inputs
    assert layer.initial_state(2).inputs.shape == (2, H, 2)
    assert layers.build("liquid_s4", d_model=H, d_state=4).liquid_degree == 2  # the official default
    for bad in (True, 2.0, 1, 0, "2"):
        with pytest.raises(ValueError, match="liquid_degree"):
            layers.build("liquid_s4", d_model=H, d_state=4, liquid_degree=bad)
    zoo = layers.LiquidS4.zoo  # its own entry: the input-dependent transition Ā + B̄ u_k 1ᵀ varies in time
    assert zoo.paper == "arXiv 2209.12951" and zoo.time_varying and not zoo.stable_by_construction


def test_liquid_reference_backend_is_the_step_loop():
    """The "reference" backend runs ``step`` over the sequence: the same float64 operations, bit for bit."""
    layer = liquid_layer(LIQUID_CASES[1])
    u, h0, past = liquid_inputs(layer, 6)
    state = LiquidS4State(h0, past)
    with torch.no_grad(), ops.use_backend("reference"):
        y, h = layer(u, state)
    y_step, h_step = run_steps(layer, u, state)
    assert torch.equal(y, y_step) and torch.equal(h.ssm, h_step.ssm) and torch.equal(h.inputs, h_step.inputs)


# ------------------------------------------------------------------------------------------------------------------
# DLR: λ_n = exp(-a_n² + i b_n), K_l = Re Σ_n W_n λ_n^l (causal), the second W's kernel at lags -1, -2, ...


def dlr_reference(layer, u: torch.Tensor, h0: torch.Tensor | None = None):
    """y (B, L, H) and the final state s_L (B, H, M): direct sums over lags of the eigenvalue powers (float64)."""
    a, b = layer.A_sqrt_neg_real.double().to(u.device), layer.A_imag.double().to(u.device)
    W = torch.complex(layer.W[..., 0].double(), layer.W[..., 1].double()).to(u.device)  # (C, H, M)
    lam = torch.exp(torch.complex(-a * a, b))  # (M,)
    B, L, _ = u.shape
    y = layer.D.double().to(u.device) * u
    for t in range(L):
        for s in range(L):
            if s <= t:  # causal lag t - s
                y[:, t] += (W[0] * lam ** (t - s)).sum(-1).real * u[:, s]
            elif layer.bidirectional:  # anti-causal lag s - t >= 1: tap s - t - 1 of the second kernel
                y[:, t] += (W[1] * lam ** (s - t - 1)).sum(-1).real * u[:, s]
        if h0 is not None:
            y[:, t] += (W[0] * lam ** (t + 1) * h0).sum(-1).real
    state = sum(lam ** (L - 1 - s) * u[:, s, :, None] for s in range(L))  # (B, H, M)
    if h0 is not None:
        state = state + lam ** L * h0
    return y, state


def dlr_layer(opts: dict, seed: int = 3):
    """A float64 DLR layer with a, b, W, D moved off their init (a of both signs), after one cached forward."""
    torch.manual_seed(seed)
    layer = layers.build("dlr", d_model=H, device=DEVICE, dtype=F64, **opts)
    with torch.no_grad():
        layer(torch.randn(1, 4, H, dtype=F64, device=DEVICE))
        perturb(layer, seed)
        layer.A_sqrt_neg_real[0] = -layer.A_sqrt_neg_real[0].abs() - 0.05  # Re Λ = -a² whatever the sign of a
    return layer


@pytest.mark.parametrize("opts", [{"d_state": 10, "init": "randn"}, {"d_state": 8, "init": "omega", "lr_W": 1e-4}])
def test_dlr_forward_state_and_step_equal_the_direct_sums(opts):
    layer = dlr_layer(opts)
    gen = torch.Generator().manual_seed(4)
    u = torch.randn(2, 13, H, generator=gen, dtype=F64).to(DEVICE)
    h0 = torch.randn(2, H, layer.n_modes, generator=gen, dtype=C128).to(DEVICE)
    y_ref, s_ref = dlr_reference(layer, u.cpu(), h0.cpu())
    y0_ref, s0_ref = dlr_reference(layer, u.cpu())
    with torch.no_grad():
        for backend in ("reference", "chunked", "fft"):
            with ops.use_backend(backend):
                y, h = layer(u, h0)
                y0, h_0 = layer(u)
            assert rel_err(y, y_ref) < 1e-12 and rel_err(h, s_ref) < 1e-12, backend
            assert rel_err(y0, y0_ref) < 1e-12 and rel_err(h_0, s0_ref) < 1e-12, backend
        y_step, h_step = run_steps(layer, u, h0)
        K = layer.kernel(13)
    assert rel_err(y_step, y_ref) < 1e-12 and rel_err(h_step, s_ref) < 1e-12
    impulse = torch.zeros(1, 13, H, dtype=F64)
    impulse[:, 0] = 1
    assert rel_err(K, dlr_reference(layer, impulse)[0][0].T) < 1e-12  # the kernel is the impulse response


def test_dlr_bidirectional_equals_the_two_sided_sum():
    layer = dlr_layer({"d_state": 6, "bidirectional": True, "init": "randn"}, seed=8)
    u = torch.randn(2, 11, H, generator=torch.Generator().manual_seed(9), dtype=F64).to(DEVICE)
    y_ref, _ = dlr_reference(layer, u.cpu())
    with torch.no_grad():
        for backend in ("reference", "chunked", "fft"):
            with ops.use_backend(backend):
                assert rel_err(layer(u)[0], y_ref) < 1e-12, backend


def test_dlr_state_space_and_eigenvalues():
    layer = dlr_layer({"d_state": 8})
    lam = torch.exp(torch.complex(-layer.A_sqrt_neg_real.detach() ** 2, layer.A_imag.detach()))
    assert rel_err(layer.eigenvalues(), lam) < 1e-15
    A_bar, B_bar, W = layer.discrete()
    assert A_bar.shape == (H, 4) and torch.equal(B_bar, torch.ones_like(B_bar)) and W.shape == (1, H, 4)
    assert rel_err(A_bar, lam.expand(H, 4)) < 1e-15
    assert layer.n_modes == 4
    poles = torch.as_tensor(layer.state_space().poles()).reshape(-1)
    for value in lam.cpu():  # every shared mode is a pole of the realisation (poles: numpy, on the CPU)
        assert float((poles - value).abs().min()) < 1e-12


def test_dlr_initialisation_draws():
    torch.manual_seed(6)
    M = 2000
    layer = layers.DLR(2, d_state=2 * M, init="randn", dt_min=1e-3, dt_max=1e-2, dtype=F64)
    b = layer.A_imag.detach()
    assert float(b.min()) >= 0 and float(b.max()) < 2 * math.pi
    # b = z mod 2π with z ~ N(0, 1): P(b > π) = P(z < 0) - P(z < -π) ≈ 0.4992, E[cos b] = E[cos z] = e^{-1/2}
    assert abs(float((b > math.pi).double().mean()) - 0.4992) < 0.05
    assert abs(float(torch.cos(b).mean()) - math.exp(-0.5)) < 0.05
    dt = 2 * layer.A_sqrt_neg_real.detach() ** 2
    assert float(dt.min()) >= 1e-3 * (1 - 1e-12) and float(dt.max()) <= 1e-2 * (1 + 1e-12)
    assert bool((layer.A_sqrt_neg_real > 0).all())
    assert abs(float(layer.W.detach()[..., 0].std()) - 1 / M) < 0.1 / M  # real parts N(0, 1)/M
    assert abs(float(layer.W.detach()[..., 1].std()) - 1 / M) < 0.1 / M  # imaginary parts N(0, 1)/M
    assert abs(float(layer.W.detach().mean())) < 0.1 / M
    wide = layers.DLR(500, d_state=4, dtype=F64)
    assert abs(float(wide.D.detach().std()) - 1) < 0.15 and abs(float(wide.D.detach().mean())) < 0.15  # N(0, 1)
    before = [p.detach().clone() for p in wide.parameters()]
    wide.reset_parameters()  # a fresh draw, same law
    assert all(not torch.equal(p, q) for p, q in zip(before, wide.parameters()) if p.numel() > 2)


def test_dlr_options_are_stored_shown_and_checked():
    layer = layers.DLR(H, d_state=6, init="randn", dt_min=2e-3, dt_max=3e-2, lr=2e-4, lr_W=5e-4, bidirectional=True)
    assert (layer.d_model, layer.d_state, layer.init, layer.dt_min, layer.dt_max) == (H, 6, "randn", 2e-3, 3e-2)
    assert (layer.lr, layer.lr_W, layer.bidirectional) == (2e-4, 5e-4, True)
    assert layer.W.shape == (2, H, 3, 2) and layer.A_imag.shape == (3,) and layer.D.shape == (H,)
    assert repr(layer).endswith("DLR(d_model=3, d_state=6, init='randn', bidirectional=True, dt_min=0.002, dt_max=0.03, "
                                "lr=0.0002, lr_W=0.0005)")
    marks = layers.optim_marks(layer)
    assert marks == {"A_sqrt_neg_real": {"lr": 2e-4, "weight_decay": 0.0}, "A_imag": {"lr": 2e-4, "weight_decay": 0.0},
                     "W": {"lr": 5e-4, "weight_decay": 0.0}}
    assert "W" not in layers.optim_marks(layers.DLR(H))
    zoo = layers.DLR.zoo  # LTI, and only non-expansive (|λ| = 1 at a = 0), not stable by construction
    assert zoo.paper == "arXiv 2212.00768" and not zoo.time_varying and not zoo.stable_by_construction
    half = layers.DLR(H, d_state=4).half()  # half weights: refused by name, not a complex32 error
    for method in (half.eigenvalues, half.discrete):
        with pytest.raises(ValueError, match="float16"):
            method()
    for bad in ({"d_model": 0}, {"bidirectional": 1}, {"dt_min": 0.2, "dt_max": 0.1}, {"lr": -1.0}):
        name = next(iter(bad)).split("_")[0]
        with pytest.raises(ValueError, match=name):
            layers.DLR(**{"d_model": H, **bad})


# ------------------------------------------------------------------------------------------------------------------
# GSS: g = GELU(W_g x), u = LayerNorm(GELU(W_d x)), s = DSS(u) with λ = -e^a + i e^b, B = 1, Δ = 1,
# y = W_o((W_u s) ⊙ g) + b_o


def gss_reference(layer, x: torch.Tensor, h0: torch.Tensor):
    """y (B, L, E) and the final SSM state (B, H_s, M) by a float64 loop of the paper's block (torch, exact GELU)."""
    p = {n: t.detach().double().cpu() for n, t in layer.named_parameters()} | {
        n: t.double().cpu() for n, t in layer.named_buffers()}
    gelu = lambda v: 0.5 * v * (1 + torch.erf(v / math.sqrt(2)))  # noqa: E731
    g = gelu(x @ p["gate.weight"].T)
    a = gelu(x @ p["down.weight"].T)
    mean, var = a.mean(-1, keepdim=True), a.var(-1, unbiased=False, keepdim=True)
    u = (a - mean) / torch.sqrt(var + layer.norm.eps) * p["norm.weight"] + p["norm.bias"]
    lam = torch.complex(-torch.exp(p["ssm.log_A_real"]), torch.exp(p["ssm.log_A_imag"]))  # (M,)
    B = torch.view_as_complex(p["ssm.B"])  # (H_s, M)
    C = torch.view_as_complex(p["ssm.C"])[0]  # (H_s, M)
    state, s = h0.clone(), torch.zeros_like(u)
    for t in range(x.shape[1]):
        state = torch.exp(lam) * state + (torch.exp(lam) - 1) / lam * B * u[:, t, :, None]
        s[:, t] = (C * state).sum(-1).real + p["ssm.D"] * u[:, t]
    return ((s @ p["up.weight"].T) * g) @ p["out.weight"].T + p["out.bias"], state


@pytest.mark.parametrize("opts", [{"d_state": 6, "expand": 3, "bottleneck": 2}, {"d_state": 4, "bottleneck": 1}])
def test_gss_forward_state_and_step_equal_the_loop(opts):
    torch.manual_seed(2)
    E = 5
    layer = layers.build("gss", d_model=E, device=DEVICE, dtype=F64, **opts)
    perturb(layer, 3)  # the norm's scale and shift, B and every weight off their init
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 14, E, generator=gen, dtype=F64).to(DEVICE)
    h0 = torch.randn(2, layer.ssm.d_model, layer.ssm.n_modes, generator=gen, dtype=C128).to(DEVICE)
    y_ref, h_ref = gss_reference(layer, x.cpu(), h0.cpu())
    with torch.no_grad():
        for backend in ("reference", "chunked", "fft"):
            with ops.use_backend(backend):
                y, h = layer(x, h0)
            assert rel_err(y, y_ref) < 1e-12 and rel_err(h, h_ref) < 1e-12, backend
        y_step, h_step = run_steps(layer, x, h0)
        y_in32, _ = layer(x.float(), h0)  # a float32 input to a float64 layer: computed in float64, float32 out
        y32, _ = layer.float()(x.float(), h0.to(torch.complex64))
    assert rel_err(y_step, y_ref) < 1e-12 and rel_err(h_step, h_ref) < 1e-12
    assert y_in32.dtype == torch.float32 and rel_err(y_in32, y_ref.float()) < 1e-6
    assert y32.dtype == torch.float32 and rel_err(y32, y_ref) < 1e-4
    with pytest.raises(RuntimeError, match="^GSS: backend 'triton'"), ops.use_backend("triton"):
        layer(x.float())  # the layer checks the backend itself, not only its SSM


def test_gss_widths_options_and_reset():
    layer = layers.build("gss", d_model=7, d_state=6, expand=3, bottleneck=2, lr=2e-3, dtype=F64)
    assert (layer.d_model, layer.d_state, layer.expand, layer.bottleneck, layer.lr) == (7, 6, 3, 2, 2e-3)
    assert layer.ssm.d_model == 4 and layer.ssm.n_modes == 3 and layer.norm.normalized_shape == (4,)  # ⌈7/2⌉
    assert layer.gate.weight.shape == (21, 7) and layer.up.weight.shape == (21, 4) and layer.out.weight.shape == (7, 21)
    assert layer.gate.bias is None and layer.down.bias is None and layer.up.bias is None
    assert layer.out.bias is not None and layer.out.bias.shape == (7,)
    assert "d_model=7, d_state=6, expand=3, bottleneck=2, lr=0.002\n" in repr(layer)
    assert "GSSDiagonal(d_model=4, d_state=6)" in repr(layer)
    marks = {name: mark for name, _, mark in layers.marked_parameters(layer) if mark is not None}
    assert marks == {f"ssm.{n}": {"lr": 2e-3, "weight_decay": 0.0} for n in ("log_A_real", "log_A_imag")}
    assert layer.state_spec().shape == (4, 3)
    with pytest.raises(ValueError, match="bfloat16"):
        layers.build("gss", d_model=H, d_state=4).to(torch.bfloat16).ssm.discrete()
    perturb(layer, 1)
    layer.reset_parameters()
    assert torch.equal(layer.norm.weight, torch.ones(4, dtype=F64))
    assert torch.equal(layer.norm.bias, torch.zeros(4, dtype=F64))
    assert torch.equal(layer.ssm.B, torch.view_as_real(torch.ones(4, 3, dtype=C128)))
    bound = 1 / math.sqrt(7)  # nn.Linear's uniform bound for fan_in 7
    for linear in (layer.gate, layer.down):
        top = float(linear.weight.detach().abs().max())
        assert 0.5 * bound < top <= bound
    torch.manual_seed(9)
    first = layers.build("gss", d_model=7, d_state=6, dtype=F64).state_dict()
    torch.manual_seed(9)
    again = layers.build("gss", d_model=7, d_state=6, dtype=F64)
    perturb(again, 2)
    torch.manual_seed(9)
    again.reset_parameters()  # the same draws in the same order as the constructor
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.items())
    for bad in ({"d_model": 0}, {"expand": 0}, {"bottleneck": -1}, {"d_state": 3}, {"lr": -1.0}):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=name):
            layers.build("gss", **{"d_model": H, **bad})
    inner = GSSDiagonal(4)  # defaults d_state 64, lr 1e-3; one C (no second direction), B = 1 per channel
    assert inner.d_state == 64 and inner.n_modes == 32 and inner.C.shape == (1, 4, 32, 2) and inner.B.shape == (4, 32, 2)
    assert layers.optim_marks(inner) == {n: {"lr": 1e-3, "weight_decay": 0.0} for n in ("log_A_real", "log_A_imag")}
    assert inner.discrete()[2].shape == (1, 4, 32)
    for bad in ({"d_model": 0}, {"d_state": 3}, {"lr": -1.0}):  # the inner SSM checks its own options
        with pytest.raises(ValueError, match=next(iter(bad))):
            GSSDiagonal(**{"d_model": H, **bad})
    zoo = layers.GSS.zoo  # gates around an LTI SSM: time-invariant convolution inside, Re λ = -exp(a) < 0
    assert zoo.paper == "arXiv 2206.13947" and not zoo.time_varying and zoo.stable_by_construction
