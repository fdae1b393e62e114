"""Independent references for ssmkit.ops.woodbury, ssmkit.ops.gated_norm, ssmkit.ops.philox, ssmkit.ops.dropout and
ssmkit.analysis.onnx_irregular (a mutation-testing round of these modules):

- Woodbury (arXiv 2111.00396 §3.2): the Cauchy sums and the resolvent C̃ᵀ(z − A)⁻¹B with A = diag Λ − Σ_i P_i P_i*
  formed in numpy and solved by ``np.linalg.solve`` (ranks 0 to 3), and the gradient of the factor f in closed form;
- the gated grouped RMSNorm (arXiv 2405.21060 §7; the gate before the norm is Mamba-2's default,
  shared/notes/layers-checked.md beside the project) as the float64 numpy formula v_g / √(mean(v_g²) + eps) · w;
- Philox4x32-10 (Salmon et al., SC 2011) as plain Python integers, Random123's structure (a round, then the key bump
  between rounds), against its published known-answer vectors, and the mask and scale built from it;
- dropout: the seed drawn from torch's generator and the Philox mask, p = 1, forward-mode AD, and the kept fraction
  and the mean within binomial bounds;
- the real-arithmetic coefficients of the ONNX graphs at irregular gaps against complex128 formulas and math.expm1.
"""

from __future__ import annotations

import cmath
import math

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD

from ssmkit.ops.dropout import dropout
from ssmkit.ops.gated_norm import gated_rmsnorm, gated_rmsnorm_reference
from ssmkit.ops.native import native_available
from ssmkit.ops.philox import drop_threshold, dropout_reference, keep_mask, keep_scale, philox4x32
from ssmkit.ops.woodbury import woodbury, woodbury_reference

C128 = torch.complex128
F64 = torch.float64


# --------------------------------------------------------------------------------------------------------- Woodbury
def _dplr_problem(S, C, R, H=2, n=4, W=3, seed=0):
    """numpy B (S, H, n), C̃ (C, H, n), P (R, H, n), Λ (H, n), z (H, W); the sums r (S+R, C+R, H, W) by the direct formula
    r[a, b] = Σ_n a_n b_n / (z − λ_n), a ∈ {B, P}, b ∈ {C̃, conj P}; and the resolvent k0[s, c] = C̃_cᵀ (z − A)⁻¹ B_s
    with A = diag Λ − Σ_i P_i P_i* solved densely."""
    rng = np.random.default_rng(seed)
    cn = lambda *s: rng.standard_normal(s) + 1j * rng.standard_normal(s)  # noqa: E731
    B, Ct, P = cn(S, H, n), cn(C, H, n), 0.5 * cn(R, H, n)
    Lam = -0.2 - rng.random((H, n)) + 1j * rng.standard_normal((H, n))
    z = 3j * rng.standard_normal((H, W))
    a, b = np.concatenate([B, P]), np.concatenate([Ct, P.conj()])
    r = np.einsum("ahn,bhn,hwn->abhw", a, b, 1 / (z[:, :, None] - Lam[:, None, :]))
    k0 = np.zeros((S, C, H, W), dtype=complex)
    for h in range(H):
        A = np.diag(Lam[h]) - sum(np.outer(P[i, h], P[i, h].conj()) for i in range(R))
        for w in range(W):
            X = np.linalg.solve(z[h, w] * np.eye(n) - A, B[:, h].T)  # (n, S): (z − A)⁻¹ B_s
            k0[:, :, h, w] = (Ct[:, h] @ X).T
    return r, k0


@pytest.mark.parametrize("S,C,R", [(2, 2, 0), (1, 3, 1), (3, 1, 2), (2, 2, 3)])
def test_woodbury_equals_numpy_solve_of_the_dense_resolvent(S, C, R):
    r, k0 = _dplr_problem(S, C, R, seed=S + 10 * C + 100 * R)
    f = torch.tensor([0.5 + 1j, -1.2 + 0.3j, 2.0 - 0.7j], dtype=C128)
    want = torch.from_numpy(k0) * f
    for fn in (woodbury, woodbury_reference):
        torch.testing.assert_close(fn(torch.from_numpy(r), S, C, f), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("R", [0, 1, 2])
def test_woodbury_gradient_of_the_factor_is_the_closed_form(R):
    """k = f ⊙ k0: the gradient of L = Re Σ conj(g) k with respect to f is Σ_{s,c,h} g conj(k0), in both forms, and r's
    gradient of the one-node form equals the reference's (at R = 0, k = f ⊙ r: g conj(f))."""
    r_np, k0 = _dplr_problem(2, 2, R, seed=7 + R)
    g = torch.from_numpy(np.random.default_rng(3).standard_normal(k0.shape) + 0.5j)
    want_f = (g * torch.from_numpy(k0).conj()).sum((0, 1, 2))
    grads = []
    for fn in (woodbury, woodbury_reference):
        r = torch.from_numpy(r_np).requires_grad_()
        f = torch.tensor([1.0 + 0.5j, -0.3j, 2.0], dtype=C128, requires_grad=True)
        g_r, g_f = torch.autograd.grad(fn(r, 2, 2, f), (r, f), g)
        torch.testing.assert_close(g_f, want_f, rtol=1e-10, atol=1e-12)
        grads.append(g_r)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-13)
    if R == 0:
        torch.testing.assert_close(grads[0], g * f.detach().conj(), rtol=1e-15, atol=0)


def test_woodbury_refuses_no_inputs_and_a_factor_of_another_dtype():
    r = torch.randn(3, 2, 4, 5, dtype=C128)
    with pytest.raises(ValueError, match="S = 0"):
        woodbury(torch.randn(2, 3, 4, 5, dtype=C128), 0, 1, torch.ones(5, dtype=C128))  # R = 2, no inputs
    with pytest.raises(ValueError, match=r"f must be \(W,\)"):
        woodbury(r, 2, 1, torch.ones(5, dtype=torch.complex64))


# -------------------------------------------------------------------------------------------------- gated RMSNorm
def _silu(z):
    return z / (1 + np.exp(-z))


def _rmsnorm_np(y, z, w, G, eps, nbg, x=None, D=None):
    """v_g / √(mean(v_g²) + eps) · w over each group of E/G consecutive channels, v = (y + D x) ⊙ SiLU(z) (Mamba-2's
    default, the gate first) or gated after the norm (``nbg``), in float64 numpy."""
    v = y + (0 if x is None else D * x)
    v = v if nbg else v * _silu(z)
    g = v.reshape(*v.shape[:-1], G, v.shape[-1] // G)
    out = (g / np.sqrt((g * g).mean(-1, keepdims=True) + eps)).reshape(v.shape) * w
    return out * _silu(z) if nbg else out


def _backends():
    native = native_available("gated_norm", F64)
    return ["reference", "chunked"] + (["native"] if native else [])


@pytest.mark.parametrize("nbg", [False, True], ids=["gate-first", "norm-first"])
@pytest.mark.parametrize("eps", [1e-5, 0.5])
@pytest.mark.parametrize("G", [1, 3, 6])
def test_gated_rmsnorm_equals_the_numpy_formula(G, eps, nbg):
    """Groups at scales 1e-2 to 1e3 (the power-of-two rescaling of large groups moves eps to eps/m²); eps 0.5 makes
    its placement visible in every group."""
    rng = np.random.default_rng(G)
    E = 12
    scale = np.repeat(np.logspace(-2, 3, G), E // G)
    y, z, x = rng.standard_normal((2, 5, E)) * scale, rng.standard_normal((2, 5, E)), rng.standard_normal((2, 5, E))
    w, D = 1 + 0.3 * rng.standard_normal(E), rng.standard_normal(E)
    t = torch.from_numpy
    for skip in (False, True):
        want = _rmsnorm_np(y, z, w, G, eps, nbg, *((x, D) if skip else ()))
        for backend in _backends():
            got = gated_rmsnorm(t(y), t(z), t(w), G, eps, nbg, *((t(x), t(D)) if skip else ()), backend=backend)
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-14, err_msg=backend)


def test_gated_rmsnorm_of_a_float32_group_with_large_entries_equals_the_formula():
    """A float32 group at ~1e30 (its squares overflow float32) against the float64 formula, with eps = 1 large enough to
    matter in the small groups."""
    rng = np.random.default_rng(5)
    y = rng.standard_normal((3, 8)) * np.repeat([1e30, 1.0, 1e-1, 3.0], 2)
    z, w = rng.standard_normal((3, 8)), 1 + 0.2 * rng.standard_normal(8)
    want = _rmsnorm_np(y, z, w, 4, 1.0, False)
    got = gated_rmsnorm_reference(*(torch.from_numpy(a).float() for a in (y, z, w)), 4, 1.0, False)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=2e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------- Philox
M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85  # Salmon et al. 2011, Random123's philox.h
MASK32 = 0xFFFFFFFF
# Random123's kat_vectors for philox4x32_10: counter, key -> output
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK32,) * 4, (MASK32,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _philox_py(ctr, key, rounds=10):
    """Philox4x32-R in Python ints, as Random123 writes it: round, then bump the key before each later round."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for i in range(rounds):
        if i:
            k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32
    return c0, c1, c2, c3


def _mask_py(n, seed, p):
    """Element i: word i mod 4 of the block at counter (i div 4, 0, 0, 0) under (seed mod 2^32, seed div 2^32), kept
    iff the word is ≥ round(p · 2^32)."""
    words = [w for j in range((n + 3) // 4) for w in _philox_py((j, 0, 0, 0), (seed & MASK32, seed >> 32))]
    return [w >= round(p * 2**32) for w in words[:n]]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_plain_python_philox_reproduces_the_published_vectors(counter, key, expected):
    assert _philox_py(counter, key) == expected
    assert philox4x32(torch.tensor([counter], dtype=torch.int64), key)[0].tolist() == list(expected)


@pytest.mark.parametrize("rounds", [1, 7, 10])
def test_philox_equals_plain_python_on_random_counters_and_keys(rounds):
    rng = np.random.default_rng(rounds)
    ctrs = [tuple(int(v) for v in rng.integers(0, 2**32, 4)) for _ in range(16)]
    key = tuple(int(v) for v in rng.integers(0, 2**32, 2))
    got = philox4x32(torch.tensor(ctrs, dtype=torch.int64), key, rounds)
    assert got.tolist() == [list(_philox_py(c, key, rounds)) for c in ctrs]
    with pytest.raises(ValueError, match=r"counter must be \(\.\.\., 4\) int64"):
        philox4x32(torch.zeros(2, 4, dtype=torch.int32), key)


def test_keep_mask_threshold_and_scale_equal_the_definitions():
    """A word equal to the threshold is kept (≥); the key takes the seed's low word first; p = 1 keeps nothing."""
    seed, n = (0x01234567 << 32) | 0x89ABCDEF, 37
    words = [w for j in range(10) for w in _philox_py((j, 0, 0, 0), (0x89ABCDEF, 0x01234567))][:n]
    p = words[5] / 2**32  # exact in float64: the threshold is word 5 itself
    want = [w >= words[5] for w in words]
    assert want[5] and not all(want)
    assert keep_mask(n, seed, p).tolist() == want == _mask_py(n, seed, p)
    for q in (0.0, 0.3, 0.75, 1.0):
        assert keep_mask(n, seed, q).tolist() == _mask_py(n, seed, q)
        assert drop_threshold(q) == round(q * 2**32)
    assert keep_scale(0.75) == 4.0 and keep_scale(1.0) == 0.0
    x = torch.linspace(-2, 3, n, dtype=F64)
    keep = torch.tensor(_mask_py(n, seed, 0.3))
    torch.testing.assert_close(dropout_reference(x, 0.3, seed), torch.where(keep, x / 0.7, 0.0), rtol=1e-15, atol=0)


# ---------------------------------------------------------------------------------------------------------- dropout
@pytest.mark.skipif(not native_available("dropout", torch.float32), reason="the dropout kernel is not built here")
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_dropout_is_the_philox_mask_of_the_seed_drawn_from_torchs_generator(dtype):
    """On the CPU, dropout draws one int64 from torch's default generator and keeps x ⊙ mask/(1 − p) with the Philox
    mask of that seed; the next call draws the next seed, hence another mask."""
    n, p = 50, 0.3
    x = torch.linspace(0.5, 3.0, n, dtype=dtype).reshape(5, 10)
    torch.manual_seed(123)
    seeds = [int(torch.empty((), dtype=torch.int64).random_().item()) for _ in range(2)]
    torch.manual_seed(123)
    ys = [dropout(x, p), dropout(x, p)]
    for y, seed in zip(ys, seeds):
        keep = torch.tensor(_mask_py(n, seed, p)).reshape(5, 10)
        assert torch.equal(y, torch.where(keep, x * (1 / (1 - p)), torch.zeros((), dtype=dtype)))
    assert not torch.equal(ys[0], ys[1])


@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.bfloat16])
def test_dropout_keeps_a_binomial_fraction_and_the_mean(dtype):
    """Over n = 2^17 ones at p = 0.25: the kept fraction within 5 binomial standard deviations of 1 − p, every kept
    element 1/(1 − p), so the mean within 5σ of 1 (the C path for float32/float64, torch's for bfloat16)."""
    n, p = 1 << 17, 0.25
    torch.manual_seed(9)
    y = dropout(torch.ones(n, dtype=dtype), p).double()
    kept = (y != 0).double()
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(kept.mean().item() - (1 - p)) < 5 * sd
    scale = torch.tensor(1 / (1 - p), dtype=dtype).double()  # 1/(1 − p) in x's dtype
    assert torch.equal(y[y != 0], scale.expand(int(kept.sum())))
    assert abs(y.mean().item() - 1) < 5 * sd / (1 - p)


def test_dropout_of_p_one_drops_everything():
    for dtype in (torch.float32, F64, torch.bfloat16):
        y = dropout(torch.randn(4, 6, dtype=dtype), 1.0)
        assert y.dtype == dtype and torch.equal(y, torch.zeros(4, 6, dtype=dtype))


def test_dropout_under_forward_mode_ad_is_a_scaled_mask():
    """The tangent of dropout is the tangent through the same mask: t ⊙ m/(1 − p), m read off the primal."""
    x = torch.linspace(0.5, 2.0, 40, dtype=F64)
    t = torch.linspace(-1.0, 1.0, 40, dtype=F64)
    with fwAD.dual_level():
        y, ty = fwAD.unpack_dual(dropout(fwAD.make_dual(x, t), 0.4))
    keep = y != 0
    torch.testing.assert_close(y, torch.where(keep, x / 0.6, 0.0), rtol=1e-15, atol=0)
    torch.testing.assert_close(ty, torch.where(keep, t / 0.6, 0.0), rtol=1e-15, atol=0)


# ------------------------------------------------------------------------------------ ONNX coefficients at gaps
def _coefficients_c128(tau, mu, rule):
    """Ā_τ and E(τ) in complex128: ZOH e^{τμ}, e^{τμ} − 1 (by expm1 and the half-angle sine); bilinear
    (1 + τμ/2)/(1 − τμ/2), τ/(1 − τμ/2)."""
    z = tau * mu
    if rule == "zoh":
        e = cmath.exp(z)
        return e, complex(math.expm1(z.real) * math.cos(z.imag) - 2 * math.sin(z.imag / 2) ** 2, e.imag)
    return (1 + z / 2) / (1 - z / 2), tau / (1 - z / 2)


@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_modal_coefficients_equal_the_complex_formulas_at_every_gap(rule, dtype):
    """Gaps from 1e-7 to 50 and modes from slow (Re μ = −1e-6) to fast, with ``turns`` for a float32 ZOH: each
    coefficient within a few roundings of its size (E relative to |E|, which is small at a tiny gap)."""
    from ssmkit.analysis.onnx_irregular import modal_coefficients

    mu = torch.tensor([[-1e-6 + 0.3j, -0.05 + 7.0j, -2.0 - 11.0j, -1e-7 + 0.0j]], dtype=C128)
    tau = torch.tensor([1e-7, 1e-3, 0.7, 1.0, 3.3, 50.0], dtype=F64)
    turns = (mu.imag / (2 * math.pi)) if dtype == torch.float32 and rule == "zoh" else None
    a_re, a_im, e_re, e_im = modal_coefficients(tau.to(dtype), mu.real.to(dtype), mu.imag.to(dtype), rule, turns)
    tol = 2e-6 if dtype == torch.float32 else 1e-13
    for b, t in enumerate(tau.tolist()):
        for k, m in enumerate(mu[0].tolist()):
            # the μ the graph holds: its dtype's Re μ, and Im μ too unless the phase comes from float64 ``turns``
            im = m.imag if turns is not None else float(torch.tensor(m.imag, dtype=dtype))
            m = complex(float(torch.tensor(m.real, dtype=dtype)), im)
            A, E = _coefficients_c128(float(torch.tensor(t, dtype=dtype)), m, rule)
            got_A = complex(a_re[b, 0, k].item(), a_im[b, 0, k].item())
            got_E = complex(e_re[b, 0, k].item(), e_im[b, 0, k].item())
            assert abs(got_A - A) <= tol * max(abs(A), 1e-30) + 1e-30, (rule, t, m)
            assert abs(got_E - E) <= 4 * tol * abs(E) + 1e-30, (rule, t, m, got_E, E)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_graphs_expm1_equals_math_expm1(dtype):
    """e^x − 1 from e^x with ONNX's ops, to a few roundings of its own size, tiny, moderate and large |x| alike."""
    from ssmkit.analysis.onnx_irregular import _expm1

    x = torch.tensor([-100.0, -3.0, -0.6, -0.4, -1e-3, -1e-8, -1e-30, 0.0, 1e-9, 2e-4, 0.3, 0.5, 2.0, 30.0], dtype=dtype)
    got = _expm1(x, torch.exp(x))
    ulp = torch.finfo(dtype).eps
    for a, b in zip(x.tolist(), got.tolist()):
        want = math.expm1(a)
        assert abs(b - want) <= 4 * ulp * abs(want), (a, b, want)


def test_continuous_modes_are_the_layers_and_a_layer_that_disagrees_is_refused(monkeypatch):
    """S4D's continuous modes give its own Ā = e^{μ} at τ = 1; a continuous() 0.1 % off its discrete() is refused."""
    from ssmkit.analysis.onnx_irregular import continuous_modes
    from ssmkit.layers import build

    torch.manual_seed(0)
    layer = build("s4d", d_model=3, d_state=4)
    modes = continuous_modes(layer)
    with torch.no_grad():
        A_bar = layer.discrete()[0].to(C128)
        Lam, B, dt = layer.continuous()
    torch.testing.assert_close(torch.exp(modes.mu), A_bar, rtol=1e-5, atol=1e-7)
    monkeypatch.setattr(layer, "continuous", lambda: (Lam * 1.001, B, dt))
    with pytest.raises(NotImplementedError, match="does not reproduce"):
        continuous_modes(layer)


def test_dropout_compiles_into_one_graph():
    """Under torch.compile (fullgraph) dropout takes torch's traceable op, not the C kernel (no custom op: a graph
    break); the kept fraction of 4096 ones at p = 0.3 within 5 binomial standard deviations, kept elements 1/(1 − p)."""
    compiled = torch.compile(lambda x: dropout(x, 0.3), fullgraph=True, backend="eager")
    torch.manual_seed(2)
    y = compiled(torch.ones(4096, dtype=F64))
    kept = y != 0
    assert abs(kept.double().mean().item() - 0.7) < 5 * math.sqrt(0.21 / 4096)
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7), rtol=1e-15, atol=0)


def test_a_float32_modal_graph_keeps_the_phase_of_a_long_gap():
    """LRU modes of |λ| ≥ 0.999 (still there after 5 000 periods) at gaps of 777.5 to 5 000.25 (exact in float32): the
    float32 form's step from a state of ones, with no input, is Ā_τ x to 2e-6 of the float64 form's (its phase from
    float64 turns Im μ/2π; a float32 τ Im μ is ~2e-4 off at φ ~ 1e4). Float64 gaps that float32 cannot hold (1 999.91)
    keep their digits in the phase too (τ rounded to float32 first: 3e-4 off)."""
    from ssmkit.analysis.onnx_irregular import RealIrregularModes
    from ssmkit.layers import build

    torch.manual_seed(0)
    layer = build("lru", d_model=2, d_state=8, r_min=0.999, r_max=0.9999).double()
    forms = {dtype: RealIrregularModes(layer, dtype) for dtype in (torch.float32, F64)}
    state = torch.ones((3,) + forms[F64].state_shape(), dtype=F64)
    tau, x = torch.tensor([2000.0, 5000.25, 777.5], dtype=F64), torch.zeros(3, 2, dtype=F64)
    with torch.no_grad():
        want = forms[F64].step(x, state, interval=tau)[1]
        got = forms[torch.float32].step(x.float(), state.float(), interval=tau.float())[1]
        assert (got.double() - want).abs().max().item() < 2e-6
        tau = torch.tensor([1999.91, 5000.3, 777.7], dtype=F64)
        want = forms[F64].step(x, state, interval=tau)[1]
        got = forms[torch.float32].step(x.float(), state.float(), interval=tau)[1]
        assert (got.double() - want).abs().max().item() < 2e-6
