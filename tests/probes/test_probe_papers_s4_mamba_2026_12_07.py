"""Probe of 2026-12-07: S4, S4D, DSS, DLR, Mega (its EMA and the gated attention), Mamba and Mamba-2 against their
papers, by a reproducer who trusts nothing until it matches.

Each layer is built with its defaults as a user would (``ssmkit.layers.build``) and checked against float64
references written here from the papers' equations and the shared REFERENCE.md, with the official-code details of
notes/layers-checked.md, notes/core-checked.md and notes/dlr-applications-checked.md, and the decisions recorded in
docs/design.md:

- S4 (arXiv 2111.00396): the DPLR system A = diag(Λ_f) − P_f P_f* rebuilt here as a dense conjugate-doubled N×N
  matrix is HiPPO-LegS / LegT in a unitary basis (tr A^k and Bᴴ A^k B equal the HiPPO matrices' ones, built here
  from their closed forms; numpy's own NPLR gives the eigenvalues and the ±2 clip count), the forward (Cauchy +
  Woodbury kernel) and the O(N) step equal the dense bilinear recurrence with C recovered from C̃ = (I − Ā^L)ᵀ C,
  also beyond l_max (the doubling) and from an initial state; C ~ CN(0, 1), log Δ log-uniform, the optimiser marks;
- S4D (arXiv 2206.11893): the Lin / Inv / Real / LegS eigenvalues from their closed forms (LegS from numpy's eigh),
  ZOH and bilinear forward and step against the recurrence, with an initial state;
- DSS (arXiv 2203.14343): Λ from the skew part of LegS(2M), the exp and softmax kernels (separate Δ for Re and Im,
  the official 1e-7 regulariser) as direct sums, the parameter count of the official module;
- DLR (arXiv 2212.00768): the damped roots of unity, W's 1/M scale, the kernel Re Σ W λ^l;
- Mega (arXiv 2209.10655): the EMA's recurrence and init laws, and the whole layer (eq. 6-15, softmax and Laplace,
  the official simple relative bias built with the official pad-and-tile trick, Mega-chunk) as a float64 loop;
- Mamba (arXiv 2312.00752): S6 with the official conv (nn.Conv1d semantics), x_proj / dt_proj split, softplus Δ,
  A = −(1..N), the inverse-softplus Δ bias, R = ⌈d/16⌉ and the parameter count;
- Mamba-2 (arXiv 2405.21060): SSD per head with groups (head h reads group h // (heads/G)), the grouped gated RMSNorm
  after the gate, D per head, A ∈ [1, 16], the Δ floor, the default head count and the parameter count;
- every forward also against the layer's own ``step`` loop (with and without autograd: the fused C steps), the
  bidirectional variants (a second kernel acting from lag −1), the float32 layers a user builds (default backends,
  i.e. the C kernels on the CPU, past their 64-step chunks) and their gradients, for every parameter, the input and a
  given initial state, against autograd through the float64 references;
- the parameter counts against the official modules' formulas and the optimiser marks (lr 1e-3 / 1e-4 and weight
  decay 0 on Δ, A, B, P; C, W and D at the global settings where docs/design.md records it);
- the obvious user mistakes (shapes, dtypes, options), which must raise a ValueError naming what was expected.

Found: no departure from the papers or the notes that docs/design.md does not already record (see the report of
2026-12-07). Each test was checked to fail on a mutant of the layer it probes (20 mutants, all caught).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ssmkit.layers as layers
from ssmkit.train import param_groups
from tests.conftest import DEVICE, rel_err, run_steps

F64, C128 = torch.float64, torch.complex128
H = 3


def d64(t: torch.Tensor) -> torch.Tensor:
    """t in double precision on the CPU (differentiable: the references' gradients reach the layer's parameters)."""
    return t.to(C128 if t.is_complex() else F64).cpu()


def pair(t: torch.Tensor) -> torch.Tensor:
    """A real pair (..., 2) as complex128."""
    t = d64(t)
    return torch.complex(t[..., 0], t[..., 1])


def build(name: str, seed: int = 0, d_model: int = H, **opts):
    torch.manual_seed(seed)
    return layers.build(name, d_model=d_model, device=DEVICE, dtype=F64, **opts)


def x_in(B: int = 2, L: int = 11, seed: int = 1, h: int = H) -> torch.Tensor:
    return torch.randn(B, L, h, generator=torch.Generator().manual_seed(seed), dtype=F64).to(DEVICE)


def step_all(layer, x: torch.Tensor, state=None) -> torch.Tensor:
    """The outputs (B, L, H) of ``layer.step`` over x from ``state`` (:func:`tests.conftest.run_steps`)."""
    return run_steps(layer, x, state)[0]


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    err = rel_err(a, b)  # max |a - b| / max |b| in double precision
    assert err < tol, f"relative error {err:.3e} >= {tol:.1e}"


def ks_uniform(samples: np.ndarray, lo: float, hi: float) -> float:
    """Kolmogorov-Smirnov distance of samples from U[lo, hi]."""
    s = np.sort((np.asarray(samples, dtype=np.float64).ravel() - lo) / (hi - lo))
    n = len(s)
    return float(max(np.max(np.arange(1, n + 1) / n - s), np.max(s - np.arange(n) / n)))


def marks(layer) -> dict[str, tuple[float, float]]:
    """name -> (lr, weight decay) of every trainable parameter under param_groups(lr=0.01, wd=0.1)."""
    ids = {id(p): n for n, p in layer.named_parameters()}
    out = {}
    for g in param_groups(layer, 0.01, 0.1):
        for p in g["params"]:
            out[ids[id(p)]] = (g["lr"], g["weight_decay"])
    return out


def n_params(layer) -> int:
    return sum(p.numel() for p in layer.parameters())


# ------------------------------------------------------------------------------------------------ HiPPO by hand


def legs(N: int) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-LegS: A_nk = −√((2n+1)(2k+1)) (n > k), −(n+1) (n = k), 0 (n < k); B_n = √(2n+1)."""
    q = np.sqrt(2 * np.arange(N) + 1.0)
    A = -np.tril(np.outer(q, q), -1) - np.diag(np.arange(N) + 1.0)
    return A, q.copy()


def legt(N: int) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-LegT as the official code (halved): A_nk = −½√((2n+1)(2k+1))·(1 if n ≥ k else (−1)^{n−k}), B = ½√(2n+1)."""
    q = np.sqrt(2 * np.arange(N) + 1.0)
    n, k = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")
    sign = np.where(n >= k, 1.0, (-1.0) ** (n - k))
    return -0.5 * np.outer(q, q) * sign, 0.5 * q


def legs_nplr(N: int):
    """numpy's NPLR of LegS: Λ (N/2, Im ≤ 0), V (N, N/2) (LAPACK's phase), P_n = √(n+½)."""
    A, B = legs(N)
    P = np.sqrt(np.arange(N) + 0.5)
    S = A + np.outer(P, P) + 0.5 * np.eye(N)  # skew
    w, V = np.linalg.eigh(-1j * S)  # ascending: the first N/2 are negative
    return -0.5 + 1j * w[: N // 2], V[:, : N // 2], B, P


# ------------------------------------------------------------------------------------------------------------ S4


def s4_dense(layer):
    """The layer's full conjugate-doubled system in float64: A_f (H, N, N), B_f (H, N), C_true (C, H, N), Δ (H,)."""
    G = layer.log_A_real.shape[0]
    rep = layer.d_model // G
    Lam = torch.complex(-torch.exp(d64(layer.log_A_real)), d64(layer.A_imag)).repeat(rep, 1)  # (H, M)
    P = pair(layer.P).repeat(1, rep, 1)  # (r, H, M)
    Bh = pair(layer.B).repeat(rep, 1)  # (H, M)
    dt = torch.exp(d64(layer.log_dt))
    Lf = torch.cat([Lam, Lam.conj()], -1)
    Pf = torch.cat([P, P.conj()], -1)  # (r, H, N)
    A = torch.diag_embed(Lf) - torch.einsum("rhn,rhm->hnm", Pf, Pf.conj())
    Bf = torch.cat([Bh, Bh.conj()], -1)
    N = A.shape[-1]
    I = torch.eye(N, dtype=C128)
    left = I - dt[:, None, None] / 2 * A
    Abar = torch.linalg.solve(left, I + dt[:, None, None] / 2 * A)
    Bbar = torch.linalg.solve(left, dt[:, None] * Bf)
    Ct = pair(layer.C_tilde)
    Ctf = torch.cat([Ct, Ct.conj()], -1)  # (C, H, N)
    AL = torch.linalg.matrix_power(Abar, layer.l_max)
    C_true = torch.linalg.solve((I - AL).transpose(-1, -2), Ctf.unsqueeze(-1)).squeeze(-1)  # (I − Ā^L)ᵀ C = C̃
    return A, Bf, Abar, Bbar, C_true, dt


def s4_reference(layer, u, s=None):
    _, _, Abar, Bbar, C_true, _ = s4_dense(layer)
    u = d64(u)
    Bsz, L, Hh = u.shape
    x = torch.zeros(Bsz, Hh, Abar.shape[-1], dtype=C128)
    if s is not None:
        s = d64(s)
        x = torch.cat([s, s.conj()], -1)
    ys = []
    for t in range(L):
        x = torch.einsum("hnm,bhm->bhn", Abar, x) + Bbar * u[:, t, :, None]
        ys.append(torch.einsum("hn,bhn->bh", C_true[0], x).real + d64(layer.D) * u[:, t])
    return torch.stack(ys, 1), x[..., : Abar.shape[-1] // 2]


@pytest.mark.parametrize("opts", [{"init": "legs"}, {"init": "legt"}, {"init": "legs", "n_ssm": None},
                                  {"init": "lagt"}, {"init": "fout"}])
def test_s4_forward_step_and_state_are_the_dense_bilinear_recurrence(opts):
    layer = build("s4", d_state=8, l_max=16, **opts)
    for L in (12, 37):  # within l_max, and beyond it (C̃ doubled to 64)
        u = x_in(L=L)
        y, h = layer(u)
        y_ref, h_ref = s4_reference(layer, u)
        close(y, y_ref, 1e-9)
        close(h, h_ref, 1e-9)
    u = x_in(L=9, seed=3)
    s = torch.randn(2, H, 4, dtype=C128, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    y, h = layer(u, s)
    y_ref, h_ref = s4_reference(layer, u, s)
    close(y, y_ref, 1e-9)
    close(h, h_ref, 1e-9)
    close(step_all(layer, u, s), y_ref, 1e-9)


@pytest.mark.parametrize("init, hippo", [("legs", legs), ("legt", legt)])
def test_s4_dplr_init_is_the_hippo_matrix_in_a_unitary_basis(init, hippo):
    N = 12
    layer = build("s4", d_state=N, init=init, B_clip=None)
    A_f, B_f, *_ = s4_dense(layer)
    A_h, B_h = (torch.from_numpy(m) for m in hippo(N))
    if init != "legs":  # Re λ = 0 there, clamped to −1e-4 at init (official inv_transform): A_f = A_h − 1e-4 I
        A_h = A_h - 1e-4 * torch.eye(N, dtype=F64)
    for k in range(1, 4):
        close(torch.diagonal(torch.linalg.matrix_power(A_f[0], k)).sum(),
              torch.diagonal(torch.linalg.matrix_power(A_h, k)).sum().to(C128), 1e-9)
        close(B_f[0].conj() @ torch.linalg.matrix_power(A_f[0], k) @ B_f[0],
              (B_h @ torch.linalg.matrix_power(A_h, k) @ B_h).to(C128), 1e-9)
    if init == "legs":  # the eigenvalues, sorted, against numpy's own NPLR
        lam, *_ = legs_nplr(N)
        ours = torch.complex(-torch.exp(d64(layer.log_A_real[0])), d64(layer.A_imag[0]))
        np.testing.assert_allclose(np.sort(ours.imag.detach().numpy()), np.sort(lam.imag), rtol=0, atol=1e-9)
        np.testing.assert_allclose(ours.real.detach().numpy(), -0.5, atol=1e-12)


def test_s4_default_init_clip_C_and_dt_and_marks():
    layer = build("s4", d_model=64)  # defaults: d_state 64, l_max 1024, legs, n_ssm 1, B_clip 2
    assert (layer.d_state, layer.l_max, layer.init, layer.n_ssm, layer.B_clip) == (64, 1024, "legs", 1, 2.0)
    lam, V, B, P = legs_nplr(64)
    Bt = V.conj().T @ B  # LAPACK's phase: first eigenvector entry real
    n_clip_ref = int((np.abs(Bt.imag) > 2).sum())
    Bl = pair(layer.B)[0]
    assert n_clip_ref == 11  # notes/core-checked.md: 11 of 32 at N = 64
    assert int((Bl.imag.abs() > 2 - 1e-12).sum()) == n_clip_ref
    order = np.argsort(lam.imag)
    ours = np.argsort(d64(layer.A_imag[0]).detach().numpy())
    # an eigenvector's sign is free (v and −v flip B̃ and P̃ together: the same system): compare B̃·conj(P̃)
    Bt_clip = Bt.real + 1j * np.clip(Bt.imag, -2, 2)
    Pt, Pl = V.conj().T @ P, pair(layer.P)[0, 0].detach().numpy()
    np.testing.assert_allclose(np.abs(Bl.detach().numpy())[ours], np.abs(Bt_clip)[order], atol=1e-8)
    np.testing.assert_allclose((Bl.detach().numpy() * Pl.conj())[ours], (Bt_clip * Pt.conj())[order], atol=1e-8)
    # C_true ~ CN(0, 1): E|C|² = 1 (64 × 32 draws), real and imaginary parts each variance ½
    _, _, _, _, C_true, dt = s4_dense(layer)
    assert abs(d64(layer.D).std().item() - 1) < 0.3 and abs(d64(layer.D).mean().item()) < 0.4  # D ~ N(0, 1), 64 draws
    c = C_true[0, :, :32]
    assert abs((c.abs() ** 2).mean().item() - 1) < 0.08
    assert abs(c.real.var().item() - 0.5) < 0.06 and abs(c.imag.var().item() - 0.5) < 0.06
    logdt = d64(layer.log_dt).detach().numpy()
    assert logdt.min() >= math.log(1e-3) and logdt.max() <= math.log(1e-1)
    assert ks_uniform(logdt, math.log(1e-3), math.log(1e-1)) < 0.2
    m = marks(layer)
    for name in ("log_dt", "log_A_real", "A_imag", "P", "B"):
        assert m[name] == (1e-3, 0.0), name
    assert m["C_tilde"] == (0.01, 0.1) and m["D"] == (0.01, 0.1)
    # the official count (n_ssm 1): Δ H, Λ 2M, P 2rM, B 2M, C̃ 2HM, D H
    Hh, M = 64, 32
    assert n_params(layer) == Hh + 2 * M + 2 * M + 2 * M + 2 * Hh * M + Hh
    assert n_params(build("s4", d_state=8, init="legt", n_ssm=None)) == H + 3 * (2 * 4 + 2 * 2 * 4 + 2 * 4) + 2 * H * 4 + H


# ----------------------------------------------------------------------------------------------------------- S4D


def s4d_reference(layer, u, s=None):
    lam = torch.complex(-torch.exp(d64(layer.log_A_real)), d64(layer.A_imag))  # (H, M)
    Bc, C = pair(layer.B), pair(layer.C)[0]
    dt = torch.exp(d64(layer.log_dt))[:, None]
    if layer.discretization == "zoh":
        Abar, Bbar = torch.exp(dt * lam), (torch.exp(dt * lam) - 1) / lam * Bc
    else:
        Abar, Bbar = (1 + dt * lam / 2) / (1 - dt * lam / 2), dt * Bc / (1 - dt * lam / 2)
    u = d64(u)
    x = torch.zeros(u.shape[0], *lam.shape, dtype=C128) if s is None else d64(s)
    ys = []
    for t in range(u.shape[1]):
        x = Abar * x + Bbar * u[:, t, :, None]
        ys.append(2 * (C * x).sum(-1).real + d64(layer.D) * u[:, t])
    return torch.stack(ys, 1), x


@pytest.mark.parametrize("init", ["lin", "inv", "real", "legs"])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_s4d_forward_and_step_are_the_diagonal_recurrence(init, disc):
    layer = build("s4d", d_state=8, init=init, discretization=disc)
    u = x_in(L=13)
    s = torch.randn(2, H, 4, dtype=C128, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    y, h = layer(u, s)
    y_ref, h_ref = s4d_reference(layer, u, s)
    close(y, y_ref)
    close(h, h_ref)
    close(step_all(layer, u, s), y_ref)
    impulse = torch.zeros(1, 13, H, dtype=F64)
    impulse[0, 0] = 1.0
    close(layer.kernel(13), s4d_reference(layer, impulse)[0][0].T)  # K = the impulse response, D on tap 0


def test_s4d_inits_are_the_papers_closed_forms():
    N, M = 64, 32
    n = np.arange(M)
    expect = {
        "lin": (np.full(M, -0.5), np.pi * n),
        "inv": (np.full(M, -0.5), (N / np.pi) * (N / (2 * n + 1) - 1)),
        "real": (-(n + 1.0), np.zeros(M)),
        "legs": (np.full(M, -0.5), np.sort(np.abs(legs_nplr(N)[0].imag))),
    }
    for init, (re, im) in expect.items():
        layer = build("s4d", d_model=200, init=init)
        lam_re = -torch.exp(d64(layer.log_A_real)).detach().numpy()
        lam_im = np.abs(d64(layer.A_imag).detach().numpy())
        assert np.allclose(lam_re, re[None], atol=1e-12), init
        got = np.sort(lam_im[0]) if init == "legs" else lam_im[0]
        assert np.allclose(got, im, rtol=1e-10, atol=1e-9), init
        assert np.all(lam_im == lam_im[:1]), init  # the same init for every channel
        if init != "legs":
            np.testing.assert_array_equal(pair(layer.B).detach().numpy(), 1.0)
    assert abs(np.sort(np.abs(legs_nplr(64)[0].imag))[-1] - 1303) < 1  # notes: LegS(64) max |Im λ| ≈ 1303
    lam, V, B, _ = legs_nplr(N)  # S4D-LegS's B = V*B with Im clipped to ±2, no ½ (official; docs/design.md)
    Bt = V.conj().T @ B
    Bt = Bt.real + 1j * np.clip(Bt.imag, -2, 2)
    ours = pair(build("s4d", init="legs").B)[0].detach().numpy()
    order, mine = np.argsort(lam.imag), np.argsort(d64(build("s4d", init="legs").A_imag[0]).detach().numpy())
    np.testing.assert_allclose(np.abs(ours[mine]), np.abs(Bt[order]), atol=1e-8)
    layer = build("s4d", d_model=400)  # default: legs, N 64, ZOH
    assert (layer.init, layer.d_state, layer.discretization) == ("legs", 64, "zoh")
    logdt = d64(layer.log_dt).detach().numpy()
    assert logdt.min() >= math.log(1e-3) and logdt.max() <= math.log(1e-1)
    assert ks_uniform(logdt, math.log(1e-3), math.log(1e-1)) < 0.1
    C = d64(layer.C)
    assert abs(C.var().item() - 0.5) < 0.02  # each part N(0, ½): E|C|² = 1
    assert abs(d64(layer.D).std().item() - 1) < 0.12
    m = marks(layer)
    assert all(m[k] == (1e-3, 0.0) for k in ("log_dt", "log_A_real", "A_imag", "B"))
    assert m["C"] == (0.01, 0.1) and m["D"] == (0.01, 0.1)
    # the official SSMKernelDiag per channel (B trainable, lr 1e-3): Δ H, Re and Im of λ HM each, B 2HM, C 2HM, D H
    assert n_params(build("s4d", d_state=8)) == H + H * 4 * 2 + 2 * H * 4 + 2 * H * 4 + H


# ----------------------------------------------------------------------------------------------------------- DSS


def dss_kernel_reference(layer, L):
    """Official DSS: K_l = Re Σ_n W_n (1/λ) e^{l z}(e^z − 1)/(e^{L_max z} − 1) (softmax; regularised reciprocal) or
    Re Σ W (e^z − 1)/λ e^{l z} (exp), z = Δ_re Re λ + i Δ_im Im λ."""
    re = -torch.exp(d64(layer.log_A_real)) if layer.version == "exp" else d64(layer.A_real)
    lam = torch.complex(re, d64(layer.A_imag))  # (M,)
    dt = torch.exp(d64(layer.log_dt))  # (H, 2) or (H, 1)
    dt = dt if dt.shape[1] == 2 else dt.expand(-1, 2)
    z = torch.complex(dt[:, :1] * lam.real, dt[:, 1:] * lam.imag)  # (H, M)
    W = pair(layer.W)[0]
    if layer.version == "exp":
        fac = W * (torch.exp(z) - 1) / lam
    else:
        x = lam * (torch.exp(layer.l_max * z) - 1)
        fac = W * (torch.exp(z) - 1) * x.conj() / (x.abs() ** 2 + 1e-7)
    ell = torch.arange(L, dtype=F64)
    return (fac[..., None] * torch.exp(z[..., None] * ell)).sum(-2).real  # (H, L)


def causal(u, K, D):
    u = d64(u)
    L = u.shape[1]
    return torch.stack([sum(K[:, j] * u[:, t - j] for j in range(t + 1)) for t in range(L)], 1) + d64(D) * u


@pytest.mark.parametrize("opts", [{"version": "exp"}, {"version": "softmax", "l_max": 20},
                                  {"version": "exp", "separate_dt": False}])
def test_dss_kernels_are_the_papers(opts):
    layer = build("dss", d_state=8, **opts)
    with torch.no_grad():  # separate Δ: make the two steps differ (they start equal)
        layer.log_dt.add_(torch.linspace(0, 0.7, layer.log_dt.numel(), dtype=F64).view_as(layer.log_dt).to(DEVICE))
    u = x_in(L=17)
    K = dss_kernel_reference(layer, 17)
    y_ref = causal(u, K, layer.D)
    close(layer(u)[0], y_ref)
    close(step_all(layer, u), y_ref)
    K_layer = layer.kernel(17)
    close(K_layer[:, 1:], K[:, 1:])
    close(K_layer[:, 0], K[:, 0] + d64(layer.D))


def test_dss_init_and_parameter_count():
    M = 32
    layer = build("dss", d_model=200)  # d_state 64 = 32 complex modes
    lam_re = -torch.exp(d64(layer.log_A_real)).detach().numpy()
    A, _ = legs(2 * M)
    P = np.sqrt(np.arange(2 * M) + 0.5)
    skew = A + np.outer(P, P) + 0.5 * np.eye(2 * M)
    w = np.linalg.eigvals(skew).imag
    np.testing.assert_allclose(lam_re, -0.5, atol=1e-12)
    np.testing.assert_allclose(np.sort(d64(layer.A_imag).detach().numpy()), np.sort(w[w > 0]), rtol=1e-9, atol=1e-8)
    assert abs(d64(layer.A_imag).max().item() - 1303) < 1  # notes: DSS N = 32 modes reaches 1303
    logdt = d64(layer.log_dt)
    assert torch.equal(logdt[:, 0], logdt[:, 1])  # one draw for Re and Im
    assert ks_uniform(logdt[:, 0].detach().numpy(), math.log(1e-3), math.log(1e-1)) < 0.12
    assert abs(d64(layer.W).var().item() - 1) < 0.03  # W parts each N(0, 1)
    # the official DSS: Λ (M, 2), log Δ (H, 2), W (H, M, 2), D (H,)
    assert n_params(build("dss", d_state=8)) == 2 * 4 + 2 * H + 2 * H * 4 + H
    m = marks(layer)
    assert all(m[k] == (1e-3, 0.0) for k in ("log_dt", "log_A_real", "A_imag"))
    assert m["W"] == (0.01, 0.1)  # recorded decision: W trains like C (official: lr 1e-3, wd 0)


# ----------------------------------------------------------------------------------------------------------- DLR


def test_dlr_kernel_init_and_count():
    layer = build("dlr", d_state=10)
    M = 5
    lam = torch.exp(torch.complex(-d64(layer.A_sqrt_neg_real) ** 2, d64(layer.A_imag)))
    K = (pair(layer.W)[0][..., None] * lam[:, None] ** torch.arange(15, dtype=F64)).sum(-2).real  # (H, L)
    u = x_in(L=15)
    y_ref = causal(u, K, layer.D)
    close(layer(u)[0], y_ref)
    close(step_all(layer, u), y_ref)
    np.testing.assert_allclose(d64(layer.A_imag).detach().numpy(), 2 * np.pi * np.arange(M) / M, atol=1e-12)
    assert n_params(layer) == 2 * M + 2 * H * M + H
    default = build("dlr")
    assert (default.d_state, default.init, default.dt_min, default.dt_max, default.lr) == (64, "omega", 1e-4, 0.1, 1e-4)
    big = build("dlr", d_model=50, d_state=1024)
    dt = 2 * d64(big.A_sqrt_neg_real).detach().numpy() ** 2  # Re Λ = −Δ/2
    assert dt.min() >= 1e-4 * (1 - 1e-12) and dt.max() <= 1e-1 * (1 + 1e-12)
    assert ks_uniform(np.log(dt), math.log(1e-4), math.log(1e-1)) < 0.06
    assert abs(d64(big.W).std().item() * 512 - 1) < 0.02  # W parts N(0, 1)·1/M
    m = marks(big)
    assert m["A_sqrt_neg_real"] == (1e-4, 0.0) and m["A_imag"] == (1e-4, 0.0) and m["W"] == (0.01, 0.1)


# ----------------------------------------------------------------------------------------------------------- EMA


def ema_reference(ema, u, h=None):
    alpha, delta = torch.sigmoid(d64(ema.logit_alpha[0])), torch.sigmoid(d64(ema.logit_delta[0]))
    beta, gamma = d64(ema.beta[0]), d64(ema.gamma[0])
    u = d64(u)
    h = torch.zeros(u.shape[0], *alpha.shape, dtype=F64) if h is None else d64(h)
    ys = []
    for t in range(u.shape[1]):
        h = alpha * beta * u[:, t, :, None] + (1 - alpha * delta) * h  # eq. 2
        ys.append((gamma * h).sum(-1) / math.sqrt(ema.d_state) + d64(ema.D) * u[:, t])  # eq. 3 + ω u
    return torch.stack(ys, 1), h


def test_ema_is_the_damped_multidimensional_ema():
    ema = build("ema", d_state=4)
    u = x_in(L=12)
    h0 = torch.randn(2, H, 4, dtype=F64, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    y_ref, h_ref = ema_reference(ema, u, h0)
    y, h = ema(u, h0)
    close(y, y_ref)
    close(h, h_ref)
    close(step_all(ema, u, h0), y_ref)
    # the official kernel: k = Σ_n γ/√N · p β · exp(l log q), p = σ(delta), q = 1 − p σ(alpha)
    p, a = torch.sigmoid(d64(ema.logit_alpha[0])), torch.sigmoid(d64(ema.logit_delta[0]))
    vander = torch.arange(12, dtype=F64) * torch.log(1 - p * a)[..., None]
    k = torch.einsum("dnl,dn->dl", (p * d64(ema.beta[0]))[..., None] * torch.exp(vander), d64(ema.gamma[0]) / 2.0)
    close(ema.kernel(12)[:, 1:], k[:, 1:])


def test_ema_init_laws_and_parameter_count():
    ema = build("ema", d_model=500)
    assert ema.d_state == 16
    for name in ("logit_alpha", "logit_delta"):
        assert abs(d64(getattr(ema, name)).std().item() - 0.2) < 0.005, name
    beta = d64(ema.beta)[0]
    signs = torch.tensor([1.0, -1.0] * 8, dtype=F64)
    assert abs((beta - signs).std().item() - 0.02) < 0.001 and abs((beta - signs).mean().item()) < 0.001
    assert abs(d64(ema.gamma).std().item() - 1) < 0.02 and abs(d64(ema.D).std().item() - 1) < 0.1
    assert n_params(build("ema")) == 4 * H * 16 + H  # official MultiHeadEMA: δ, α, β, γ (D, N) and ω (D)
    assert n_params(build("ema", bidirectional=True)) == 8 * H * 16 + H


# ---------------------------------------------------------------------------------------------------------- Mega


def official_simple_bias(rel: torch.Tensor, max_positions: int, seq_len: int) -> torch.Tensor:
    """fairseq mega SimpleRelativePositionalBias.forward (pad, tile, view, crop)."""
    bias = rel[max_positions - seq_len: max_positions + seq_len - 1]
    t = F.pad(bias, (0, seq_len)).repeat(seq_len)[:-seq_len].view(seq_len, 3 * seq_len - 2)
    r = (2 * seq_len - 1) // 2
    return t[:, r: t.size(1) - r]


def official_rotary_bias(rel: torch.Tensor, seq_len: int) -> torch.Tensor:
    """fairseq mega RotaryRelativePositionalBias.forward: rotate α and β at every position, then α_i · β_j."""
    Z = rel.shape[1]
    half = Z // 2
    freq = torch.exp(torch.arange(half, dtype=F64) * -(math.log(10000) / half))
    ang = torch.arange(seq_len, dtype=F64)[:, None] * freq[None]
    sin, cos = torch.sin(ang), torch.cos(ang)

    def rotary(v):
        x1, x2 = v.expand(seq_len, Z).chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=1)

    return rotary(rel[0]) @ rotary(rel[1]).T


def mega_reference(layer, x):
    """Eq. 6-15 in float64, chunk by chunk as the official MovingAverageGatedAttention (causal), minus X."""
    Hh, Z, V = layer.d_model, layer.d_qk, layer.d_v
    x = d64(x)
    ema_y = bidirectional_reference(layer.ema, x) if layer.bidirectional else ema_reference(layer.ema, x)[0]
    mx = F.silu(ema_y)
    v = F.silu(x @ d64(layer.W_v).T + d64(layer.b_v))
    base = mx @ d64(layer.W_mx).T + d64(layer.b_mx)
    u_gate, zr, hx = torch.split(base, [Hh, Z + V, Hh], -1)
    phi = torch.sigmoid(u_gate)
    z, r = torch.split(F.silu(zr), [Z, V], -1)
    q = z * d64(layer.kappa[0]) + d64(layer.mu[0])
    k = z * d64(layer.kappa[1]) + d64(layer.mu[1])
    L = x.shape[1]
    T = layer.chunk_size or L
    O = torch.zeros(x.shape[0], L, V, dtype=F64)
    for s0 in range(0, L, T):
        n = min(T, L - s0)
        sl = slice(s0, s0 + n)
        if layer.positional == "simple":
            bias = official_simple_bias(d64(layer.rel_bias), layer.span, n)
        else:
            bias = official_rotary_bias(d64(layer.rel_bias), n)
        causal_mask = torch.ones(n, n, dtype=torch.bool)
        causal_mask = causal_mask if layer.bidirectional else torch.tril(causal_mask)
        if layer.attention == "softmax":
            s = q[:, sl] @ k[:, sl].transpose(1, 2) / math.sqrt(Z) + bias
            w = torch.softmax(s.masked_fill(~causal_mask, float("-inf")), -1)
        else:
            lengths = causal_mask.sum(-1, keepdim=True).to(F64)
            s = q[:, sl] @ k[:, sl].transpose(1, 2) / lengths + bias
            w = 0.5 * (1 + torch.erf((s - math.sqrt(0.5)) / math.sqrt(1 / (4 * math.pi)) / math.sqrt(2))) * causal_mask
        O[:, sl] = w @ v[:, sl]
    h = F.silu(hx + (O * r) @ d64(layer.U_h).T + d64(layer.b_h))
    return phi * (h - x)


@pytest.mark.parametrize("opts", [{"chunk_size": None}, {"chunk_size": 4}, {"chunk_size": 5, "attention": "laplace"},
                                  {"chunk_size": 4, "positional": "rotary"}])
def test_mega_layer_is_equations_6_to_15(opts):
    layer = build("mega", d_qk=6, d_state=4, **opts)
    with torch.no_grad():  # the 0.02 init hides mistakes: bring every weight to O(1)
        for name in ("W_v", "W_mx", "U_h", "kappa", "rel_bias", "b_v", "b_mx", "b_h", "mu"):
            getattr(layer, name).copy_(torch.randn(getattr(layer, name).shape, dtype=F64) * 0.7)
    u = x_in(L=14)
    y_ref = mega_reference(layer, u)
    close(layer(u)[0], y_ref, 1e-9)
    close(step_all(layer, u), y_ref, 1e-9)


def test_mega_defaults_init_and_parameter_count():
    layer = build("mega", d_model=16)
    assert (layer.d_state, layer.d_qk, layer.d_v, layer.chunk_size, layer.attention) == (16, 64, 32, 1024, "softmax")
    w = torch.cat([d64(p).ravel() for p in (layer.W_v, layer.W_mx, layer.U_h, layer.kappa)])
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    for name in ("b_v", "b_mx", "b_h", "mu"):
        assert torch.count_nonzero(getattr(layer, name)) == 0, name
    Hh, Z, V, N, P = 16, 64, 32, 16, 1024
    official = (Hh * V + V) + (Hh * (Z + V + 2 * Hh) + Z + V + 2 * Hh) + (V * Hh + Hh) + 4 * Z + (2 * P - 1) \
        + 4 * Hh * N + Hh
    assert n_params(layer) == official
    m = marks(layer)
    assert all(m[n] == (0.01, 0.0) for n in ("b_v", "b_mx", "b_h", "mu"))  # biases: no weight decay


# --------------------------------------------------------------------------------------------------------- Mamba


def mamba_reference(layer, u, state=None):
    E, N, R, W = layer.d_inner, layer.d_state, layer.rank, layer.d_conv
    u = d64(u)
    Bsz, L, _ = u.shape
    xz = F.linear(u, d64(layer.in_proj.weight), None if layer.in_proj.bias is None else d64(layer.in_proj.bias))
    xs, z = xz[..., :E], xz[..., E:]
    hist = torch.zeros(Bsz, E, W - 1, dtype=F64) if state is None else d64(state.conv)
    xpad = torch.cat([hist, xs.transpose(1, 2)], -1)  # nn.Conv1d(groups=E) on the padded input, official layout
    cb = None if layer.conv1d.bias is None else d64(layer.conv1d.bias)
    xc = F.silu(F.conv1d(xpad, d64(layer.conv1d.weight)[:, None, :], cb, groups=E)).transpose(1, 2)
    dbl = xc @ d64(layer.x_proj.weight).T
    dlow, Bt, Ct = dbl[..., :R], dbl[..., R:R + N], dbl[..., R + N:]
    delta = F.softplus(dlow @ d64(layer.dt_proj.weight).T + d64(layer.dt_bias))  # (B, L, E)
    A = -torch.exp(d64(layer.A_log))
    h = torch.zeros(Bsz, E, N, dtype=F64) if state is None else d64(state.ssm)
    ys = []
    for t in range(L):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * Bt[:, t, None, :] * xc[:, t, :, None]
        ys.append((h * Ct[:, t, None, :]).sum(-1) + d64(layer.D) * xc[:, t])
    y = torch.stack(ys, 1) * F.silu(z)
    return F.linear(y, d64(layer.out_proj.weight), None if layer.out_proj.bias is None else d64(layer.out_proj.bias)), h


def random_state(layer, B=2, seed=7):
    g = torch.Generator().manual_seed(seed)
    return type(layer.initial_state(B))(*(torch.randn(s.shape, generator=g, dtype=F64).to(DEVICE)
                                          for s in layer.initial_state(B)))


@pytest.mark.parametrize("opts", [{}, {"bias": True, "conv_bias": False, "dt_init": "constant", "dt_rank": 2,
                                       "d_conv": 2, "expand": 1}])
def test_mamba_forward_and_step_are_s6(opts):
    layer = build("mamba", d_state=4, **opts)
    if opts:  # the biases the reference reads
        with torch.no_grad():
            layer.in_proj.bias.normal_()
            layer.out_proj.bias.normal_()
    u = x_in(L=10)
    s = random_state(layer)
    y_ref, h_ref = mamba_reference(layer, u, s)
    y, st = layer(u, s)
    close(y, y_ref)
    close(st.ssm, h_ref)
    E, W = layer.d_inner, layer.d_conv
    xs = F.linear(d64(u), d64(layer.in_proj.weight), None if layer.in_proj.bias is None else d64(layer.in_proj.bias))
    close(st.conv, torch.cat([d64(s.conv), xs[..., :E].transpose(1, 2)], -1)[..., -(W - 1):])
    close(step_all(layer, u, s), y_ref)


def test_mamba_defaults_init_and_count():
    d = 40
    layer = build("mamba", d_model=d)
    E, N, R, W = 80, 16, 3, 4  # expand 2, N 16, R = ⌈40/16⌉, conv 4
    assert (layer.d_inner, layer.d_state, layer.rank, layer.d_conv) == (E, N, R, W)
    np.testing.assert_allclose(torch.exp(d64(layer.A_log)).detach().numpy(), np.tile(np.arange(1, N + 1.0), (E, 1)), rtol=1e-12)
    dt = F.softplus(d64(layer.dt_bias)).detach().numpy()  # the bias is softplus⁻¹ of Δ₀
    assert dt.min() >= 1e-3 * (1 - 1e-9) and dt.max() <= 1e-1 * (1 + 1e-9)
    assert ks_uniform(np.log(dt), math.log(1e-3), math.log(1e-1)) < 0.16
    w = d64(layer.dt_proj.weight)
    assert w.abs().max() <= R ** -0.5 and w.abs().max() > 0.8 * R ** -0.5
    cw = d64(layer.conv1d.weight)
    assert cw.shape == (E, W) and cw.abs().max() <= 0.5 and layer.conv1d.bias is not None
    assert d64(layer.in_proj.weight).abs().max() <= d ** -0.5 and layer.in_proj.bias is None
    assert layer.out_proj.bias is None and d64(layer.out_proj.weight).abs().max() <= E ** -0.5
    assert torch.all(layer.D == 1)
    official = d * 2 * E + (E * W + E) + E * (R + 2 * N) + (R * E + E) + E * N + E + E * d
    assert n_params(layer) == official
    m = marks(layer)
    assert m["A_log"] == (0.01, 0.0) and m["dt_bias"] == (0.01, 0.0)
    assert m["D"] == (0.01, 0.1)  # recorded decision (docs/design.md, Probe 9): D decays like every skip


def test_mamba_dt_floor_applies_to_delta0():
    layer = build("mamba", d_model=16, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4)
    np.testing.assert_allclose(F.softplus(d64(layer.dt_bias)).detach().numpy(), 1e-4, rtol=1e-9)


# ------------------------------------------------------------------------------------------------------- Mamba-2


def mamba2_reference(layer, u, state=None):
    E, N, G, nh, P, W = layer.d_inner, layer.d_state, layer.ngroups, layer.nheads, layer.headdim, layer.d_conv
    u = d64(u)
    Bsz, L, _ = u.shape
    zxbcdt = F.linear(u, d64(layer.in_proj.weight), None if layer.in_proj.bias is None else d64(layer.in_proj.bias))
    z, xBC, dt = torch.split(zxbcdt, [E, E + 2 * G * N, nh], -1)  # official order [z, x, B, C, dt]
    hist = torch.zeros(Bsz, E + 2 * G * N, W - 1, dtype=F64) if state is None else d64(state.conv)
    xpad = torch.cat([hist, xBC.transpose(1, 2)], -1)
    cb = None if layer.conv.bias is None else d64(layer.conv.bias)
    xBC = F.silu(F.conv1d(xpad, d64(layer.conv.weight)[:, None, :], cb, groups=E + 2 * G * N))
    x, Bt, Ct = torch.split(xBC.transpose(1, 2), [E, G * N, G * N], -1)
    x = x.unflatten(-1, (nh, P))
    Bt, Ct = Bt.unflatten(-1, (G, N)), Ct.unflatten(-1, (G, N))
    grp = torch.arange(nh) // (nh // G)  # official: repeat(B, "b l g n -> b l (g h) n")
    delta = F.softplus(dt + d64(layer.dt_bias))  # (B, L, nh)
    A = -torch.exp(d64(layer.A_log))
    h = torch.zeros(Bsz, nh, P, N, dtype=F64) if state is None else d64(state.ssm)
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, t] * A)[..., None, None]
        h = dA * h + (delta[:, t, :, None] * x[:, t])[..., None] * Bt[:, t, grp, None, :]
        D = d64(layer.D).view(nh, P) if layer.D_has_hdim else d64(layer.D)[:, None]
        ys.append((h * Ct[:, t, grp, None, :]).sum(-1) + D * x[:, t])
    y = torch.stack(ys, 1).flatten(-2)  # (B, L, E)
    if layer.norm is None:
        out = y * F.silu(z)
    else:  # RMSNorm(y ⊙ SiLU(z)) per group, then w (or RMSNorm(y)·w ⊙ SiLU(z) with norm_before_gate)
        g = (y if layer.norm_before_gate else y * F.silu(z)).unflatten(-1, (G, E // G))
        out = (g / torch.sqrt((g ** 2).mean(-1, keepdim=True) + 1e-5)).flatten(-2) * d64(layer.norm.weight)
        out = out * F.silu(z) if layer.norm_before_gate else out
    return F.linear(out, d64(layer.out_proj.weight), None if layer.out_proj.bias is None else d64(layer.out_proj.bias)), h


@pytest.mark.parametrize("opts", [{}, {"norm_before_gate": True, "D_has_hdim": True}, {"rmsnorm": False}])
def test_mamba2_forward_and_step_are_ssd_with_groups_and_gated_norm(opts):
    layer = build("mamba2", d_model=4, d_state=3, headdim=2, ngroups=2, chunk_size=4, **opts)  # 4 heads, 2 groups
    with torch.no_grad():
        layer.D.copy_(torch.randn(layer.D.shape, dtype=F64))
        if layer.norm is not None:
            layer.norm.weight.copy_(torch.rand(8, dtype=F64) + 0.5)
    u = x_in(L=11, h=4)
    s = random_state(layer)
    y_ref, h_ref = mamba2_reference(layer, u, s)
    y, st = layer(u, s)
    close(y, y_ref)
    close(st.ssm, h_ref)
    close(step_all(layer, u, s), y_ref)


def test_mamba2_defaults_init_and_count():
    d = 64
    layer = build("mamba2", d_model=d)
    E, N, P, G, W = 128, 128, 64, 1, 4
    nh = E // P
    assert (layer.d_inner, layer.d_state, layer.headdim, layer.ngroups, layer.nheads, layer.d_conv) == (E, N, P, G, nh, W)
    A = torch.exp(d64(build("mamba2", d_model=256, headdim=1).A_log)).detach().numpy()  # 512 heads
    assert A.min() >= 1 and A.max() <= 16 and ks_uniform(A, 1, 16) < 0.07
    dt = F.softplus(d64(build("mamba2", d_model=256, headdim=1).dt_bias)).detach().numpy()
    assert dt.min() >= 1e-3 * (1 - 1e-9) and dt.max() <= 1e-1 * (1 + 1e-9)
    assert ks_uniform(np.log(dt), math.log(1e-3), math.log(1e-1)) < 0.07
    low = build("mamba2", d_model=8, headdim=4, dt_min=1e-6, dt_max=1e-5)
    np.testing.assert_allclose(F.softplus(d64(low.dt_bias)).detach().numpy(), 1e-4, rtol=1e-9)  # the Δ₀ floor
    assert torch.all(layer.D == 1) and layer.D.shape == (nh,) and torch.all(layer.norm.weight == 1)
    assert layer.norm.eps == 1e-5 and layer.norm.groups == G and not layer.norm.norm_before_gate
    conv_dim = E + 2 * G * N
    assert layer.conv.weight.shape == (conv_dim, W) and d64(layer.conv.weight).abs().max() <= 0.5
    official = d * (2 * E + 2 * G * N + nh) + (conv_dim * W + conv_dim) + 3 * nh + E + E * d
    assert n_params(layer) == official
    m = marks(layer)
    assert m["A_log"] == (0.01, 0.0) and m["dt_bias"] == (0.01, 0.0) and m["norm.weight"] == (0.01, 0.0)


# ------------------------------------------------------------------------------------------------- user mistakes


MISTAKES = [
    ("s4", {"d_state": 7}, "d_state must be an even int >= 2"),
    ("s4", {"init": "hippo"}, "init must be one of"),
    ("s4", {"n_ssm": 2}, "d_model must be divisible by n_ssm"),
    ("s4", {"l_max": 0}, "l_max"),
    ("s4", {"B_clip": -1.0}, "B_clip must be a finite float > 0"),
    ("s4d", {"d_state": 5}, "d_state must be an even int >= 2"),
    ("s4d", {"init": "Lin"}, "init must be one of"),
    ("s4d", {"discretization": "euler"}, "discretization must be one of"),
    ("s4d", {"dt_min": 0.2, "dt_max": 0.1}, "0 < dt_min <= dt_max"),
    ("dss", {"version": "softmax"}, "give l_max"),
    ("dss", {"version": "expo"}, "version must be one of"),
    ("dlr", {"init": "roots"}, "init must be one of"),
    ("dlr", {"d_state": 3}, "d_state must be an even int >= 2"),
    ("ema", {"d_state": 0}, "d_state must be a positive int"),
    ("mega", {"positional": "rotary", "d_qk": 5}, "d_qk must be even"),
    ("mega", {"attention": "relu2"}, "attention must be one of"),
    ("mamba", {"dt_rank": 0}, "dt_rank"),
    ("mamba", {"dt_init": "uniform"}, "dt_init must be one of"),
    ("mamba", {"expand": 1.5}, "expand must be a positive int"),
    ("mamba2", {"headdim": 4}, "headdim must divide"),
    ("mamba2", {"headdim": 2, "ngroups": 2}, "ngroups must divide"),
    ("mamba2", {"A_init_range": (16, 1)}, "A_init_range"),
]


@pytest.mark.parametrize("name, opts, message", MISTAKES)
def test_bad_options_raise_value_errors_naming_the_rule(name, opts, message):
    with pytest.raises(ValueError) as info:
        layers.build(name, d_model=H, **opts)
    assert message in str(info.value)


@pytest.mark.parametrize("name", ["s4", "s4d", "dss", "dlr", "ema", "mega", "mamba", "mamba2"])
def test_bad_inputs_raise_value_errors_naming_the_shape(name):
    layer = layers.build(name, **({"headdim": 2, "d_model": 4} if name == "mamba2" else {"d_model": H}))
    h = layer.d_model
    for x, message in ((torch.randn(2, 5), "(B, L, H)"), (torch.randn(2, h + 1, 5), f"(B, L, {h})"),
                       (torch.randint(0, 3, (2, 5, h)), "floating-point"), (torch.randn(2, 0, h), "L >= 1")):
        with pytest.raises(ValueError) as info:
            layer(x)
        assert message in str(info.value), (name, str(info.value))
    with pytest.raises(ValueError, match="initial_state"):
        layer(torch.randn(2, 5, h), layer.initial_state(3))
    with pytest.raises(ValueError, match=f"x_t must be \\(B, {h}\\)"):
        layer.step(torch.randn(2, 1, h), layer.initial_state(2))


# --------------------------------------------------------------------------------- bidirectional, continuation


def two_sided(u, K0, K1, D):
    """y_t = Σ_{s≤t} K0[t−s] u_s + Σ_{s>t} K1[s−t−1] u_s + D u_t (the anti-causal kernel from lag −1)."""
    u = d64(u)
    L = u.shape[1]
    y = causal(u, K0, D)
    back = torch.stack([sum((K1[:, s - t - 1] * u[:, s] for s in range(t + 1, L)), torch.zeros_like(u[:, 0]))
                        for t in range(L)], 1)
    return y + back


def test_bidirectional_s4d_s4_and_ema_are_two_kernels_from_lag_minus_one():
    L = 9
    ell = torch.arange(L, dtype=F64)
    s4d = build("s4d", d_state=6, init="inv", bidirectional=True)
    lam = torch.complex(-torch.exp(d64(s4d.log_A_real)), d64(s4d.A_imag))
    dt = torch.exp(d64(s4d.log_dt))[:, None]
    Bbar = (torch.exp(dt * lam) - 1) / lam * pair(s4d.B)
    Ks = [2 * (c * Bbar)[..., None].mul(torch.exp(dt * lam)[..., None] ** ell).sum(-2).real for c in pair(s4d.C)]
    u = x_in(L=L)
    close(s4d(u)[0], two_sided(u, Ks[0], Ks[1], s4d.D))
    s4 = build("s4", d_state=6, l_max=16, bidirectional=True)
    _, _, Abar, Bb, C_true, _ = s4_dense(s4)
    Ks = [torch.stack([torch.einsum("hn,hnm,hm->h", c, torch.linalg.matrix_power(Abar, j), Bb).real
                       for j in range(L)], -1) for c in C_true]
    close(s4(u)[0], two_sided(u, Ks[0], Ks[1], s4.D), 1e-9)
    ema = build("ema", d_state=4, bidirectional=True)
    al, de = torch.sigmoid(d64(ema.logit_alpha)), torch.sigmoid(d64(ema.logit_delta))
    Ks = [((al * d64(ema.beta) * d64(ema.gamma) / 2)[c, ..., None] * (1 - al * de)[c, ..., None] ** ell).sum(-2)
          for c in range(2)]
    close(ema(u)[0], two_sided(u, Ks[0], Ks[1], ema.D))


@pytest.mark.parametrize("name, opts", [("dss", {}), ("dss", {"version": "softmax", "l_max": 21}), ("dlr", {}),
                                         ("s4", {"l_max": 8})])
def test_bidirectional_dss_dlr_and_s4_beyond_l_max(name, opts):
    layer = build(name, d_state=6, bidirectional=True, **opts)
    u = x_in(L=21)
    if name == "s4":  # C̃ of both directions doubled twice (8 -> 32)
        _, _, Abar, Bb, C_true, _ = s4_dense(layer)
        Ks = [torch.stack([torch.einsum("hn,hnm,hm->h", c, torch.linalg.matrix_power(Abar, j), Bb).real
                           for j in range(21)], -1) for c in C_true]
    elif name == "dlr":
        lam = torch.exp(torch.complex(-d64(layer.A_sqrt_neg_real) ** 2, d64(layer.A_imag)))
        Ks = [(c[..., None] * lam[:, None] ** torch.arange(21, dtype=F64)).sum(-2).real for c in pair(layer.W)]
    else:
        W = layer.W
        Ks = []
        for c in range(2):  # the reference reads W[0]: one direction at a time
            layer.W = torch.nn.Parameter(W[c:c + 1].detach().clone())
            Ks.append(dss_kernel_reference(layer, 21).detach())
        layer.W = W
    close(layer(u)[0], two_sided(u, Ks[0], Ks[1], layer.D))


def test_dss_softmax_with_growing_modes_is_the_regularised_formula():
    layer = build("dss", d_state=8, version="softmax", l_max=12)
    with torch.no_grad():
        layer.A_real.copy_(torch.tensor([0.5, -0.3, 2.0, -1.0], dtype=F64))  # Re λ > 0 is allowed (DSS-softmax)
    u = x_in(L=12)
    y_ref = causal(u, dss_kernel_reference(layer, 12), layer.D)
    close(layer(u)[0], y_ref)
    close(step_all(layer, u), y_ref, 1e-9)


@pytest.mark.parametrize("opts", [{"chunk_size": 5}, {"chunk_size": None, "attention": "laplace"}])
def test_bidirectional_mega_and_its_padding_mask(opts):
    layer = build("mega", d_qk=6, d_state=4, bidirectional=True, **opts)
    with torch.no_grad():
        for name in ("W_v", "W_mx", "U_h", "kappa", "rel_bias"):
            getattr(layer, name).mul_(30.0)
    u = x_in(L=12)
    close(layer(u)[0], mega_reference(layer, u), 1e-9)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 8:] = False  # item 1 is 8 tokens long, right-padded
    y = layer(u, mask=mask.to(DEVICE))[0]
    close(y[0], mega_reference(layer, u[:1])[0], 1e-9)
    close(y[1, :8], mega_reference(layer, u[1:, :8])[0], 1e-9)


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_mega_continues_from_its_state_in_the_middle_of_a_chunk(chunk_size):
    layer = build("mega", d_qk=6, d_state=4, chunk_size=chunk_size)
    with torch.no_grad():
        for name in ("W_v", "W_mx", "U_h", "kappa", "rel_bias"):
            getattr(layer, name).mul_(30.0)
    u = x_in(L=13)
    y_ref = mega_reference(layer, u)
    y1, st = layer(u[:, :7])
    y2, _ = layer(u[:, 7:], st)
    close(torch.cat([y1, y2], 1), y_ref, 1e-9)


# --------------------------------------------------------------------------------------- float32, as a user builds


def bidirectional_reference(layer, u):
    """The two-sided references of the diagonal layers (S4D, EMA) in float64."""
    L = u.shape[1]
    ell = torch.arange(L, dtype=F64)
    if layer.__class__.__name__ == "EMA":
        al, de = torch.sigmoid(d64(layer.logit_alpha)), torch.sigmoid(d64(layer.logit_delta))
        g = al * d64(layer.beta) * d64(layer.gamma) / math.sqrt(layer.d_state)
        Ks = [(g[c, ..., None] * (1 - al * de)[c, ..., None] ** ell).sum(-2) for c in range(2)]
    else:
        lam = torch.complex(-torch.exp(d64(layer.log_A_real)), d64(layer.A_imag))
        dt = torch.exp(d64(layer.log_dt))[:, None]
        Bbar = (torch.exp(dt * lam) - 1) / lam * pair(layer.B)
        Ks = [2 * ((c * Bbar)[..., None] * torch.exp(dt * lam)[..., None] ** ell).sum(-2).real for c in pair(layer.C)]
    return two_sided(u, Ks[0], Ks[1], layer.D)


REFERENCES = {  # name, options, reference, has a step
    "s4": ("s4", dict(l_max=32), lambda m, u: s4_reference(m, u)[0], True),
    "s4-lagt": ("s4", dict(l_max=64, init="lagt"), lambda m, u: s4_reference(m, u)[0], True),
    "s4d": ("s4d", {}, lambda m, u: s4d_reference(m, u)[0], True),
    "s4d-lin-bilinear": ("s4d", dict(init="lin", discretization="bilinear"), lambda m, u: s4d_reference(m, u)[0], True),
    "s4d-bidirectional": ("s4d", dict(init="inv", bidirectional=True), bidirectional_reference, False),
    "dss": ("dss", {}, lambda m, u: causal(u, dss_kernel_reference(m, u.shape[1]), m.D), True),
    "dss-softmax": ("dss", dict(version="softmax", l_max=150),
                    lambda m, u: causal(u, dss_kernel_reference(m, u.shape[1]), m.D), True),
    "dlr": ("dlr", dict(d_state=16), None, True),
    "ema": ("ema", {}, lambda m, u: ema_reference(m, u)[0], True),
    "ema-bidirectional": ("ema", dict(bidirectional=True), bidirectional_reference, False),
    "mega": ("mega", dict(d_qk=8, chunk_size=8), mega_reference, True),
    "mega-laplace": ("mega", dict(d_qk=8, chunk_size=None, attention="laplace", max_positions=150), mega_reference,
                     True),
    "mamba": ("mamba", {}, lambda m, u: mamba_reference(m, u)[0], True),
    "mamba-variant": ("mamba", dict(conv_bias=False, dt_rank=3, d_conv=3, expand=1),
                      lambda m, u: mamba_reference(m, u)[0], True),
    "mamba2": ("mamba2", dict(headdim=4, d_state=16), lambda m, u: mamba2_reference(m, u)[0], True),
    "mamba2-groups": ("mamba2", dict(headdim=2, d_state=5, ngroups=4, norm_before_gate=True, D_has_hdim=True),
                      lambda m, u: mamba2_reference(m, u)[0], True),
    "mamba2-no-norm": ("mamba2", dict(headdim=4, d_state=6, ngroups=2, rmsnorm=False, bias=True, conv_bias=False),
                       lambda m, u: mamba2_reference(m, u)[0], True),
}


def dlr_reference(layer, u):
    lam = torch.exp(torch.complex(-d64(layer.A_sqrt_neg_real) ** 2, d64(layer.A_imag)))
    K = (pair(layer.W)[0][..., None] * lam[:, None] ** torch.arange(u.shape[1], dtype=F64)).sum(-2).real
    return causal(u, K, layer.D)


@pytest.mark.parametrize("case", sorted(REFERENCES))
def test_float32_default_layers_match_the_float64_references(case):
    """The user's layer: float32, default backend (the C kernels on the CPU where they run), several variants."""
    name, opts, reference, has_step = REFERENCES[case]
    reference = reference or dlr_reference
    torch.manual_seed(0)
    layer = layers.build(name, d_model=8, device=DEVICE, **opts)
    if name == "mamba2":
        with torch.no_grad():
            layer.D.normal_()
            if layer.in_proj.bias is not None:
                layer.in_proj.bias.normal_()
                layer.out_proj.bias.normal_()
    u = x_in(L=150, h=8).float()  # past the 64-step chunks of the scans
    y, _ = layer(u)
    assert y.dtype == torch.float32
    close(y, reference(layer, u), 3e-5)
    if has_step:
        y_ref = reference(layer, u[:2, :10])
        close(step_all(layer, u[:2, :10]), y_ref, 3e-5)
        with torch.no_grad():  # generation: the fused C steps and the cached step coefficients
            close(step_all(layer, u[:2, :10]), y_ref, 3e-5)


@pytest.mark.parametrize("case", ["s4", "s4d", "s4d-bidirectional", "dss-softmax", "dlr", "ema-bidirectional", "mega",
                                  "mamba", "mamba2-groups"])
def test_float32_gradients_match_the_float64_references(case):
    """Every parameter's and the input's gradient through the default (C kernel) backward against autograd through
    the float64 reference."""
    name, opts, reference, _ = REFERENCES[case]
    reference = reference or dlr_reference
    torch.manual_seed(0)
    layer = layers.build(name, d_model=8, device=DEVICE, **opts)
    u = x_in(L=90, h=8).float().requires_grad_()
    w = torch.randn(2, 90, 8, generator=torch.Generator().manual_seed(9), dtype=F64)
    params = [p for p in layer.parameters() if p.requires_grad]
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    got = torch.autograd.grad((d64(layer(u)[0]) * w).sum(), [u, *params])
    want = torch.autograd.grad((reference(layer, u) * w).sum(), [u, *params])
    for n, g, r in zip(["input", *names], got, want):
        err = (d64(g) - d64(r)).abs().max().item() / max(d64(r).abs().max().item(), 1e-30)
        assert err < 1e-3, (n, err)


@pytest.mark.parametrize("name", ["s4", "s4d", "ema", "mamba", "mamba2"])
def test_initial_state_gradients_match_the_float64_references(name):
    """A given state's gradient through the float32 default backward (the documented state forwarding)."""
    opts = {"s4": dict(d_state=6, l_max=16), "s4d": dict(d_state=6), "ema": dict(d_state=4), "mamba": dict(d_state=4),
            "mamba2": dict(headdim=2, d_state=4, ngroups=2)}[name]
    reference = {"s4": s4_reference, "s4d": s4d_reference, "ema": ema_reference, "mamba": mamba_reference,
                 "mamba2": mamba2_reference}[name]
    dm = 4 if name == "mamba2" else H
    torch.manual_seed(0)
    layer = layers.build(name, d_model=dm, device=DEVICE, **opts)
    u = x_in(L=70, h=dm).float()
    g = torch.Generator().manual_seed(3)
    st = layer.initial_state(2)
    if isinstance(st, tuple):
        st = type(st)(*(torch.randn(s.shape, generator=g, dtype=s.dtype).to(DEVICE).requires_grad_() for s in st))
        leaves = list(st)
    else:
        st = torch.randn(st.shape, generator=g, dtype=st.dtype).to(DEVICE).requires_grad_()
        leaves = [st]
    w = torch.randn(2, 70, dm, dtype=F64, generator=g)
    y, h = layer(u, st)
    h = h.ssm if isinstance(h, tuple) else h
    y_ref, h_ref = reference(layer, u, st)
    w_h = torch.randn(h_ref.shape, dtype=h_ref.dtype, generator=g)
    got = torch.autograd.grad((d64(y) * w).sum() + (d64(h) * w_h.conj()).real.sum(), leaves)
    want = torch.autograd.grad((y_ref * w).sum() + (h_ref * w_h.conj()).real.sum(), leaves)
    for a, b in zip(got, want):
        err = (d64(a) - d64(b)).abs().max().item() / d64(b).abs().max().item()
        assert err < 1e-5, err
