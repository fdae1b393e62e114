"""Probe of 2026-12-05: parameter values that training can reach (not the init ranges), hunting silent wrong answers.

Method (throw-away scripts; 2-core CPU, one thread): every registered layer (the first 1-4 variants of
tests/conftest.py), each unconstrained parameter set directly to a value an optimiser can reach -- log Δ = +10, +30,
-30; log(-Re λ) = +30, -30 (Re λ -> 0 from below); DSS-softmax's and S5's Re λ = 0, -1e-30, +0.01, -1e4; DLR's
√(-Re λ) = 0; Im λ x 1e4; B, C, W, C̃, D x 1e4 and x 1e-20; Mamba / Mamba-2 A_log = ±30, +10 and dt_bias = ±30, their
conv weights x 1e4; RG-LRU Λ = ±30, 1e4 (a -> 1, a -> 0); EMA's logits of α, δ = ±30 (0 and 1 after the sigmoid);
Mega's W_mx, κ, μ (q·k ~ 1e6) and relative bias x 1e3-1e4 (softmax and Laplace); attention's qkv x 1e3; Hyena's
filter frequencies and output weights x 1e4; S4 / Liquid-S4 P x 1e2, 1e4 (an ill-conditioned Woodbury step); LRU
log ν = ±30, log θ = 10, log γ = ±30. For each: outputs and the gradients of the input and of every parameter of every
backend (``reference``, ``auto``, ``chunked``, ``fft``, ``native``) in float64 and float32 against the float64
``reference`` backend (error per gradient relative to the largest gradient of any tensor, so that a gradient that is
0 in exact arithmetic is judged on the loss's scale), finiteness, and ``step`` against ``forward``.

Found:

1. **Fixed: the torch zero-order hold's gradient at a large Δ** (``ops/discretize._expm1_over_z``, used by every
   backend but the C one: ``reference``, ``chunked``, ``fft`` on the CPU and every path on a GPU; S4D, DSS, S5, H3,
   GSS: every layer that discretises by ZOH). φ(z) = expm1(z)/z was differentiated by torch's expm1
   backward, which uses expm1(z) + 1 for e^z: where Re z << 0 that is expm1's rounding (~eps), not e^z ≈ 0, and
   φ'(z) = (e^z - φ)/z then carries eps/|z| against the true 1/z². float64, Λ = -0.5 + 2πi, log Δ = 30: ∂Im λ 1.2 %
   off (-0.028490 for -0.028835) and ∂log Δ 2.4e-3 for 0 (the C kernel: 3e-17). In a float32 S4D (LegS) at
   log Δ = 10 (Δ = 2.2e4) the ``reference`` / ``chunked`` / ``fft`` ∂log Δ was 0.44 for ~0: 4.4e-3 of the loss's
   largest gradient (DSS 2.2e-3, S5 6.2e-4, H3 4.0e-4); 1.4e-7-3.9e-7 after, as the C kernel.
   Now φ keeps expm1's value and takes e^z as its
   derivative (eagerly a small autograd Function ``_Expm1``, no more aten ops than before; under torch.compile and
   torch.func the same numbers by standard ops). The C kernel was right throughout.
2. Not fixed, reported (S4 / Liquid-S4 kernel files belong to another helper): S4's Cauchy + Woodbury kernel
   (``fft``, ``auto``) at tiny Δ loses digits like eps·(2/Δ)/|λ| in the bilinear nodes 2/Δ·(1-z)/(1+z) - λ, in
   float64 as in float32 (the same numbers: the kernel runs in float64): D = 0, LegS, outputs 2e-13 / 3e-10 / 1.6e-8 /
   1.6e-6 / 3.7e-4 off the float64 reference at log Δ = -10 / -15 / -20 / -25 / -30, and ∂log Δ 1e-10 / 5e-6 / 22 % /
   100 % / 100 % off (the reference's own float32 ∂log Δ is 45 % off at -20: the SSM part is ~Δ and its log-Δ
   gradient a difference of near-equal terms). At log Δ = +30 (Δ = 1e13, Ā -> -I) outputs ~1e13 differ by 2.4e-3: the
   singular bilinear system already recorded in docs/design.md ("Fast paths away from init"). P x 1e4 (Woodbury
   ill-conditioned): float64 FFT-path ∂A_imag 3.7e-4 (LegT), ∂log(-Re λ) 5e-2 (FouT) off the reference; outputs
   1e-11. FouT at log Δ = -30 or log(-Re λ) = -30: the reference raises torch's LinAlgError (singular solve): an error,
   not a silent answer.
3. Float32 limits shared by every path, step included (not bugs): LRU log θ = 10 and DLR Im λ x 1e4 (phases of
   ~1e4 rad per step rounded: 4e-3-2e-2), Hyena's filter frequencies x 1e4 (sin of 1e4·t in float32: 0.1-0.25), S4D
   bilinear at Δ = 1e13 (3.6e-6). Attention's chunked float32 gradients at scores ~1e6 (∂x 4.5e-2-1.5e-1) are
   PyTorch's CPU kernel, documented in ``causal_attention_chunked``.

Checked right (guards below): at every other setting above, every backend equals the float64 reference (outputs
1e-10, gradients 1e-8 of the largest), float32 ``auto`` outputs are finite and within 1e-4, and float64 ``step``
equals ``forward``; documented clamps hold (LRU's rate floor, S5's ``clip_eigs``, DSS-softmax's growing modes within
l_max); ``SequenceModel(check_finite=True)`` names the block and the first time step where a reachable setting
(S4D Δ = e^1000 = inf; S5 Re λ = +5) makes a block's output non-finite.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import ssmkit.layers as layers
from ssmkit import ops
from ssmkit.models import SequenceModel
from ssmkit.ops.discretize import zoh_log
from tests.conftest import NEEDED_AT_TINY_WIDTH, rel_err, run_steps, runnable_backends, variants

H = 3
L = 70  # > one 64-step chunk


def _build(name: str, opts: dict, setting: list, dtype=torch.float64):
    """Layer ``name`` (d_model H, seed 1) with each (parameter, "set" | "mul", value) of ``setting`` applied."""
    torch.manual_seed(1)
    layer = layers.build(name, d_model=H, dtype=dtype, **{**NEEDED_AT_TINY_WIDTH.get(name, {}), **opts})
    params = dict(layer.named_parameters())
    with torch.no_grad():
        for pname, how, value in setting:
            p = params[pname]
            p.copy_(torch.full_like(p, value) if how == "set" else p * value)
    return layer


def _run(layer, x, w, backend):
    """Output and the gradients of (y·w).sum() for the input and every parameter, on ``backend``."""
    x = x.detach().requires_grad_()
    params = [x, *layer.parameters()]
    with ops.use_backend(backend):
        y, _ = layer(x)
        grads = torch.autograd.grad((y * w).sum(), params, allow_unused=True)
    return y.detach(), grads


def _grad_err(grads, want) -> float:
    """The largest max|g - g_ref| over the tensors, relative to the largest |g_ref| of any tensor (a gradient that is 0
    in exact arithmetic is judged on the loss's scale, not on its own rounding)."""
    scale = max(float(b.abs().max()) for b in want if b is not None)
    return max(float((a.double() - b).abs().max()) / scale for a, b in zip(grads, want) if b is not None)


# ---------------------------------------------------------------------------------------------------------- finding 1


def test_torch_zoh_gradients_at_a_huge_step_match_the_closed_form():
    """Λ = -e^a + ib, Δ = e^30: e^{ΔΛ} = 0, so B̄ = -B/Λ and ∂B̄/∂b = iB/Λ², ∂B̄/∂a = -e^a B/Λ², ∂B̄/∂log Δ = 0.
    Before the fix the torch path (``reference``) was 1.6e-4 off on ∂b here (1.2e-2 on one mode with B = 1) and gave
    ∂log Δ ~1e-3 for 0."""
    g = torch.Generator().manual_seed(0)
    a = torch.full((1, 3), math.log(0.5), dtype=torch.float64)
    b = torch.tensor([[0.0, math.pi, 2 * math.pi]], dtype=torch.float64)
    B = torch.complex(torch.randn(1, 3, generator=g, dtype=torch.float64), torch.randn(1, 3, generator=g, dtype=torch.float64))
    W = torch.complex(torch.randn(1, 3, generator=g, dtype=torch.float64), torch.randn(1, 3, generator=g, dtype=torch.float64))
    Lam = torch.complex(-a.exp(), b)
    want_b = (1j * B / Lam**2 * W.conj()).real
    want_a = (-a.exp() * B / Lam**2 * W.conj()).real
    for backend in ("reference", "auto"):
        leaves = [t.clone().requires_grad_() for t in (a, b, torch.tensor([30.0], dtype=torch.float64))]
        with ops.use_backend(backend):
            A_bar, B_bar = zoh_log(leaves[0], leaves[1], B, leaves[2])
            loss = (B_bar * W.conj()).real.sum() + A_bar.real.sum() + A_bar.imag.sum()
            g_a, g_b, g_log_dt = torch.autograd.grad(loss, leaves)
        assert rel_err(B_bar, -B / Lam) < 1e-15, backend
        assert rel_err(g_b, want_b) < 1e-13 and rel_err(g_a, want_a) < 1e-13, (backend, rel_err(g_b, want_b))
        assert float(g_log_dt.abs()) < 1e-13 * float(want_b.abs().max()), (backend, float(g_log_dt))


ZOH_LAYERS = [("s4d", {"d_state": 8, "init": "legs"}, "log_dt"), ("dss", {"d_state": 8, "version": "exp"}, "log_dt"),
              ("s5", {"d_state": 8, "blocks": 2}, "log_dt"), ("h3", {"d_state": 4, "head_dim": 3, "init": "inv",
                                                                     "discretization": "zoh"}, "ssm.log_dt")]


@pytest.mark.parametrize("name, opts, pname", ZOH_LAYERS, ids=[c[0] for c in ZOH_LAYERS])
def test_float32_gradients_at_a_large_step_on_every_backend(name, opts, pname):
    """log Δ = 10 (Δ = 2.2e4, reachable by training): every float32 backend's gradients within 2e-6 of the float64
    reference's on the loss's scale (all 1.4e-7-3.9e-7 now). Before the fix the torch ZOH's ∂log Δ was 4.4e-3 (S4D),
    2.2e-3 (DSS), 6.2e-4 (S5), 4.0e-4 (H3) off on ``reference`` / ``chunked`` / ``fft``."""
    base = _build(name, opts, [(pname, "set", 10.0)])
    x = torch.randn(2, L, H, dtype=torch.float64)
    w = torch.randn(2, L, H, dtype=torch.float64)
    y_ref, g_ref = _run(base, x, w, "reference")
    layer = copy.deepcopy(base).float()
    for backend in ("reference", "auto", *runnable_backends(layer)):
        y, grads = _run(layer, x.float(), w.float(), backend)
        assert rel_err(y, y_ref) < 1e-6, backend
        assert _grad_err(grads, g_ref) < 2e-6, (backend, _grad_err(grads, g_ref))


# ------------------------------------------------------------------------------------------------------------ guards

# (name, variant index, setting): settings an optimiser can reach where every path agreed with the reference
GUARDS = [
    ("s4d", 0, [("log_A_real", "set", -30.0)]),  # Re λ = -1e-13: an integrator
    ("s4d", 0, [("A_imag", "mul", 1e4)]),
    ("s4d", 0, [("log_dt", "set", -30.0)]),
    ("s4d", 1, [("B", "mul", 1e-20), ("C", "mul", 1e4)]),
    ("dss", 1, [("A_real", "set", 0.0)]),  # DSS-softmax: Re λ free
    ("dss", 1, [("A_real", "set", 0.01)]),  # a growing mode, within l_max
    ("dss", 0, [("log_A_real", "set", -30.0)]),
    ("s5", 0, [("A_real", "set", 0.0)]),  # no clip_eigs: on the unit circle
    ("s5", 2, [("A_real", "set", 1.0)]),  # clip_eigs clamps it to -1e-4
    ("lru", 0, [("log_nu", "set", -30.0)]),  # the rate floor 1e-6
    ("lru", 0, [("log_nu", "set", 30.0)]),  # λ -> 0
    ("dlr", 0, [("A_sqrt_neg_real", "set", 0.0)]),
    ("ema", 0, [("logit_alpha", "set", 30.0), ("logit_delta", "set", -30.0)]),
    ("ema", 0, [("logit_alpha", "set", -30.0), ("logit_delta", "set", 30.0)]),
    ("rglru", 0, [("Lambda", "set", 30.0)]),  # a -> 1
    ("rglru", 0, [("Lambda", "set", -30.0)]),  # a -> 0
    ("mamba", 0, [("A_log", "set", 30.0), ("dt_bias", "set", 30.0)]),
    ("mamba", 0, [("A_log", "set", -30.0), ("dt_bias", "set", -30.0)]),
    ("mamba", 1, [("conv1d.weight", "mul", 1e4)]),
    ("mamba2", 0, [("A_log", "set", 30.0), ("dt_bias", "set", 30.0)]),
    ("mamba2", 0, [("A_log", "set", -30.0), ("dt_bias", "set", -30.0)]),
    ("mega", 0, [("W_mx", "mul", 1e3)]),  # q·k ~ 1e6
    ("mega", 2, [("W_mx", "mul", 1e3), ("rel_bias", "mul", 1e4)]),  # Laplace attention, rotary
    ("sgconv", 0, [("sub_kernels", "mul", 1e4)]),
    ("hyena", 0, [("filter.w_out", "mul", 1e4)]),
    ("gss", 0, [("ssm.log_A_real", "set", -30.0)]),
    ("h3", 0, [("ssm.log_A_real", "set", -30.0), ("ssm.A_imag", "mul", 1e4)]),
    ("s4", 0, [("A_imag", "mul", 1e4)]),
    ("s4", 0, [("P", "mul", 1e2)]),
    ("liquid_s4", 0, [("log_A_real", "set", -30.0)]),
]


def _guard_id(case) -> str:
    name, vi, setting = case
    return f"{name}{vi}-" + ",".join(f"{p}{'=' if how == 'set' else 'x'}{v:g}" for p, how, v in setting)


@pytest.mark.parametrize("name, vi, setting", GUARDS, ids=[_guard_id(c) for c in GUARDS])
def test_every_backend_equals_the_reference_at_a_reachable_extreme(name, vi, setting):
    base = _build(name, variants(name)[vi], setting)
    n = base.l_max if getattr(base, "version", None) == "softmax" else L
    x = torch.randn(2, n, H, dtype=torch.float64)
    w = torch.randn(2, n, H, dtype=torch.float64)
    y_ref, g_ref = _run(base, x, w, "reference")
    assert torch.isfinite(y_ref).all() and all(torch.isfinite(g).all() for g in g_ref if g is not None)
    for backend in ("auto", *runnable_backends(base)):
        y, grads = _run(base, x, w, backend)
        assert rel_err(y, y_ref) < 1e-10, backend
        assert _grad_err(grads, g_ref) < 1e-8, (backend, _grad_err(grads, g_ref))
    with torch.no_grad():
        y32, _ = copy.deepcopy(base).float()(x.float())
        assert torch.isfinite(y32).all() and rel_err(y32, y_ref) < 1e-4
        if name != "hyena":  # Hyena's step is exact up to l_max only (64 < L)
            y_step, _ = run_steps(base, x)
            assert rel_err(y_step, y_ref) < 1e-10


# ---------------------------------------------------------------------------------------------------- check_finite


@pytest.mark.parametrize("name, pname, value, block", [("s4d", "log_dt", 1000.0, 1), ("s5", "A_real", 5.0, 2)])
def test_check_finite_names_the_block_and_first_step_of_a_reachable_blow_up(name, pname, value, block):
    torch.manual_seed(0)
    model = SequenceModel(d_input=3, d_model=4, n_layers=3, layer=name, d_output=2, head="regress", pool=None,
                          check_finite=True)
    with torch.no_grad():
        getattr(model.blocks[block].layer, pname).fill_(value)
    x = torch.randn(2, 400, 3)
    outs = []
    hook = model.blocks[block].register_forward_hook(lambda m, i, o: outs.append(o[0] if isinstance(o, tuple) else o))
    model.check_finite = False
    with torch.no_grad():
        model(x)
    hook.remove()
    bad = ~torch.isfinite(outs[0])  # (B, L, H)
    first = int(bad.any(-1).any(0).nonzero()[0])
    assert 0 < first < 400 or name == "s4d"  # S5's state overflows float32 part-way; S4D's Δ = inf from the start
    model.check_finite = True
    with pytest.raises(ValueError, match=f"output of block {block} is not finite .* from time step {first} on"):
        model(x)
