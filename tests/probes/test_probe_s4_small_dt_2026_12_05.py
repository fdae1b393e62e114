"""Probe of 2026-12-05: S4's kernel and DPLR forms at small step sizes Δ, against a 60-digit mpmath reference.

The reachable-values probe (test_probe_reachable_2026_12_05.py, finding 2) compared S4's ``fft`` path with the float64
``reference`` backend and read the differences at tiny Δ as the kernel's (∂log Δ 5e-6 off at log Δ = -15, 22 % at
-20). Against mpmath (the dense definition K_l = C_trueᵀ Ā^l B̄, (I - Ā^L)ᵀ C_true = C̃, 60 digits; N = 8, log Δ
from 0 to -30) the blame lies elsewhere. Errors below: relative, gradients along random directions.

1. Right all along: the Cauchy + Woodbury kernel (:func:`dplr_kernel_fast`; chunked, native and reference Cauchy
   sums). Its points z = i(2/Δ) tan(πk/L) dwarf λ, but z - λ is a sum of unequal numbers, not a cancellation;
   K̂(1) = -C̃ᵀA⁻¹B_f has no Δ in it, and K̂(ω ≠ 1) ~ Δ keeps its relative accuracy. LegS: kernel <= 5e-16, every
   gradient (Λ, P, B, C̃, log Δ) <= 4e-14 at every log Δ; FouT (Re λ = -1e-4: conditioned by |λ|max/1e-4 ~ 1e4)
   <= 3e-12, the same at log Δ = 0 as at -30.
2. Fixed: the dense oracle :func:`dplr_kernel_reference`. Ā = (I - ΔA/2)⁻¹(I + ΔA/2) holds ΔA only to eps absolutely,
   and I - Ā^L (≈ -LΔA) from it cancels. LegS: kernel 5e-9 / 7e-9 / 1e-5 off at log Δ = -15 / -20 / -25, ∂log Δ
   2e-3 / 2e-2 / 3e6 (a gradient summed from ±1/Δ terms); FouT: ∂Λ 3e-4 at -20, 6 at -30. Now the increment form:
   Ā = I + ΔÊ, Ê = (I - ΔA/2)⁻¹A, B̄ = ΔB̂, (Ā^L - I)/Δ by :func:`ssmkit.ops.dplr.increment_power`,
   K_l = (ΔC_true)ᵀ Ā^l B̂: LegS <= 7e-15 (kernel) and 7e-13 (gradients), FouT <= 2e-12, at every log Δ.
3. Fixed: :func:`bilinear_dplr_real` (S4's real-basis Ā, B̄: the final state, C̃ attuned beyond l_max, C_true) formed
   Ā = (4/Δ)M⁻¹ - I, whose log Δ gradient cancels ±2: 1e-10 / 1.3e-8 / 2.4e-4 off at log Δ = -15 / -20 / -30, and
   S4's float64 ``fft`` ∂log Δ at L > l_max 1e-10 / 2e-8 / 2e-6 at -15 / -20 / -25 (LegS, L 70, l_max 32). Now
   Ā = I + (Ā - I), Ā - I = diag(2S - 2) - (4/Δ)W with S = (1 - ΔΛ/2)⁻¹ (= ΔΛS where |ΔΛ| < 1): <= 6e-16, and the
   layer's ``fft`` <= 2e-14 in every gradient at every log Δ; ``minus_identity=True`` returns Ā - I itself.
4. Fixed (by the lead from this probe's report, layers/s4.py): ``S4._C_true`` = (I - Ā^{l_max})⁻ᵀ C̃ from the rounded Ā (``step``, the
   ``reference`` backend, ``state_space``): outputs ~eps/(LΔ|λ|) off (5e-9 at log Δ = -20, ~1e-6 at -25), ∂log Δ
   1e-2 and 1e2, and FouT at log Δ = -30 raises LinAlgError. From Ā - I and :func:`increment_power`: outputs and
   every other gradient <= 4e-15 (FouT at -30: equal to ``fft`` to 2e-14); ∂log Δ 2e-10 / 4e-8 / 7e-6 at -15 / -20 /
   -25 stays, inherent to y = C_trueᵀ x with C_true ∝ 1/Δ and x ∝ Δ (eps/Δ). A float32 state (rounded every step)
   has ~eps32/Δ on its ∂log Δ: 9e-4 / 0.3 at -15 / -20, whatever the kernel.
"""

from __future__ import annotations

import pytest
import torch

from ssmkit import ops
from ssmkit.ops.cauchy import dplr_kernel_fast, dplr_kernel_reference
from ssmkit.ops.dplr import bilinear_dplr, bilinear_dplr_real, increment_power
from ssmkit.ops.hippo import nplr
from ssmkit.ops.native import native_available
from tests.conftest import DEVICE

C128, F64 = torch.complex128, torch.float64
N, L = 8, 16
DPS = 60
LOG_DTS = {"legs": [-2.0, -15.0, -20.0, -25.0], "fout": [-2.0, -15.0, -30.0]}
# the kernel's relative error on every path, at every log Δ alike: LegS <= 3e-15 measured; FouT's mode at
# Re λ = -1e-4 conditions the sums by |λ|max/1e-4 ~ 1e4 (<= 1.3e-12 measured, at log Δ = -2 as at -30)
TOL_K = {"legs": 1e-13, "fout": 1e-11}
GROUPS = ("Lambda", "P", "B", "C", "log_dt")


def _system(init: str, H: int):
    """Λ (H, M), P (1, H, M), B (1, H, M), C̃ (1, H, M) complex128: the NPLR of ``init`` (-Re λ >= 1e-4, as S4)
    repeated over H channels, and a seeded C̃."""
    s = nplr(init, N)
    Lam = torch.complex(s.Lambda.real.clamp(max=-1e-4), s.Lambda.imag)
    C = torch.randn(N // 2, dtype=C128, generator=torch.Generator().manual_seed(3))
    rep = lambda x: x.expand(H, N // 2).clone()  # noqa: E731
    return rep(Lam), s.P[:, None].expand(-1, H, -1).clone(), rep(s.B)[None], rep(C)[None]


def _mp_full(mp, x):
    return [mp.mpc(v) for v in x] + [mp.conj(mp.mpc(v)) for v in x]


def _mp_bilinear(mp, Lam, P, B, dt):
    """Ā - I and B̄ of the full conjugate-pair system (eq. 3), mpmath matrices: one channel."""
    Lf, Pf, Bf = _mp_full(mp, Lam), [_mp_full(mp, p) for p in P], _mp_full(mp, B)
    n = len(Lf)
    A = mp.matrix(n, n)
    for i in range(n):
        for j in range(n):
            A[i, j] = (Lf[i] if i == j else 0) - mp.fsum(p[i] * mp.conj(p[j]) for p in Pf)
    T_inv = mp.inverse(mp.eye(n) - dt / 2 * A)
    return T_inv * (dt * A), T_inv * mp.matrix([dt * b for b in Bf])  # Ā - I = (I - ΔA/2)⁻¹ΔA


def _mp_kernel(mp, Lam, P, B, C, log_dt):
    """K_l = C_trueᵀ Ā^l B̄ (l < L), (I - Ā^L)ᵀ C_true = C̃_f, by the definition in mpmath: one channel."""
    E, x = _mp_bilinear(mp, Lam, P, B, mp.exp(log_dt))
    n = E.rows
    A_bar, A_L = E + mp.eye(n), mp.eye(n)
    for _ in range(L):
        A_L = A_L * A_bar
    C_true = mp.lu_solve((mp.eye(n) - A_L).T, mp.matrix(_mp_full(mp, C)))
    taps = []
    for _ in range(L):
        taps.append(mp.re(mp.fsum(C_true[i] * x[i] for i in range(n))))
        x = A_bar * x
    return taps


def _mp_reference(init: str):
    """For each channel h (its own log Δ): the kernel (L,) and the derivative of ℓ = Σ_l W_l K_l along a seeded
    direction of each parameter group (central differences at 60 digits, step 1e-15), as float64 tensors."""
    mp = pytest.importorskip("mpmath")
    log_dts = LOG_DTS[init]
    Lam, P, B, C = _system(init, len(log_dts))
    g = torch.Generator().manual_seed(5)
    W = torch.randn(len(log_dts), L, dtype=F64, generator=g)
    dirs = {k: torch.randn(shape, dtype=C128, generator=g) for k, shape in
            (("Lambda", Lam.shape), ("P", P.shape), ("B", B.shape), ("C", C.shape))}
    dirs["log_dt"] = torch.ones(len(log_dts), dtype=F64)
    K, dl = torch.zeros(len(log_dts), L, dtype=F64), torch.zeros(len(GROUPS), len(log_dts), dtype=F64)
    with mp.workdps(DPS):
        h = mp.mpf("1e-15")  # rounding ~1e-43 of ℓ (I - Ā^L cancels <= 17 digits) / h, truncation ~h²
        for c, log_dt in enumerate(log_dts):
            base = {"Lambda": [mp.mpc(v) for v in Lam[c].tolist()], "B": [mp.mpc(v) for v in B[0, c].tolist()],
                    "P": [[mp.mpc(v) for v in p] for p in P[:, c].tolist()], "C": [mp.mpc(v) for v in C[0, c].tolist()],
                    "log_dt": mp.mpf(log_dt)}
            d = {"Lambda": dirs["Lambda"][c].tolist(), "P": dirs["P"][:, c].tolist(), "B": dirs["B"][0, c].tolist(),
                 "C": dirs["C"][0, c].tolist(), "log_dt": 1.0}
            w = [mp.mpf(v) for v in W[c].tolist()]

            def loss(group=None, t=0):
                args = dict(base)
                if group == "P":
                    args["P"] = [[a + t * mp.mpc(b) for a, b in zip(pa, pd)] for pa, pd in zip(base["P"], d["P"])]
                elif group == "log_dt":
                    args["log_dt"] = base["log_dt"] + t
                elif group is not None:
                    args[group] = [a + t * mp.mpc(b) for a, b in zip(base[group], d[group])]
                return _mp_kernel(mp, args["Lambda"], args["P"], args["B"], args["C"], args["log_dt"])

            K[c] = torch.tensor([float(k) for k in loss()], dtype=F64)
            for j, group in enumerate(GROUPS):
                up, down = loss(group, h), loss(group, -h)
                dl[j, c] = float(mp.fsum(wl * (a - b) for wl, a, b in zip(w, up, down)) / (2 * h))
    return (Lam, P, B, C), W, dirs, K, dl


_REFERENCES: dict[str, tuple] = {}


def _reference(init: str):
    if init not in _REFERENCES:
        _REFERENCES[init] = _mp_reference(init)
    return _REFERENCES[init]


def _paths():
    native = DEVICE.type == "cpu" and native_available("cauchy_pairs", F64)
    return ["reference", "fft-chunked", "fft-reference"] + (["fft-native"] if native else [])


@pytest.mark.parametrize("init", sorted(LOG_DTS))
@pytest.mark.parametrize("path", _paths())
def test_the_kernel_and_its_gradients_follow_mpmath_down_to_tiny_steps(init, path, device):
    (Lam, P, B, C), W, dirs, K_want, dl_want = _reference(init)
    log_dt = torch.tensor(LOG_DTS[init], dtype=F64)
    leaves = [t.to(device).requires_grad_() for t in (Lam, P, B, C, log_dt)]
    fn = dplr_kernel_reference if path == "reference" else dplr_kernel_fast
    with ops.use_backend(path.split("-")[-1]):  # the Cauchy sums' backend inside dplr_kernel_fast
        K = fn(*leaves[:4], leaves[4].exp(), L)[0, 0]  # (H, L)
    grads = torch.autograd.grad((K * W.to(device)).sum(), leaves)
    # the kernel: channel by channel, relative to its largest tap (before the fix the dense reference was 5e-9 off
    # at log Δ = -15, 1e-5 at -25)
    err_K = ((K.detach().cpu() - K_want).abs().amax(-1) / K_want.abs().amax(-1)).max()
    assert err_K < TOL_K[init], (path, float(err_K))
    # each gradient along its direction, relative to |g|·|d| (<= 4e-12 measured; the log Δ derivative, ~Δ times the
    # others, relative to itself: the reference's was 2e-3 off at -15 before)
    for j, (name, grad) in enumerate(zip(GROUPS, grads)):
        grad, d = grad.cpu(), dirs[name]
        if name == "log_dt":
            got, scale = grad, dl_want[j].abs()
        else:
            prod = grad.conj() * d
            sum_dims = [k for k in range(grad.dim()) if k != grad.dim() - 2]  # all but the channel dimension
            got = prod.real.sum(sum_dims)
            scale = (grad.abs() * d.abs()).sum(sum_dims)
        err = ((got - dl_want[j]).abs() / scale).max()
        assert err < 1e-10, (path, name, float(err))


def test_bilinear_real_and_its_log_dt_gradient_follow_mpmath(device):
    """Ā and B̄ in the real basis z = [Re x, Im x], Ā - I (``minus_identity=True``), and ∂/∂log Δ of Σ W ⊙ Ā, at
    log Δ from +30 to -30. Before the fix Ā = (4/Δ)M⁻¹ - I had a log Δ gradient 1e-10 / 1.3e-8 / 2.4e-4 off at
    log Δ = -15 / -20 / -30 (now <= 6e-16 at every log Δ), and there was no Ā - I (from Ā: eps/(Δ|λ|) off, 2e-11 /
    5e-9 / 1e-4)."""
    mp = pytest.importorskip("mpmath")
    log_dts = [30.0, 5.0, -2.0, -10.0, -15.0, -20.0, -30.0]
    Lam, P, B, _ = (t.to(device) for t in _system("legs", len(log_dts)))
    W = torch.randn(len(log_dts), N, N, dtype=F64, generator=torch.Generator().manual_seed(7)).to(device)
    out = {}
    for minus_identity in (False, True):
        log_dt = torch.tensor(log_dts, dtype=F64, device=device, requires_grad=True)
        A, B_bar = bilinear_dplr_real(Lam, P, B[0], log_dt.exp(), minus_identity=minus_identity)
        out[minus_identity] = (A.detach().cpu(), B_bar.detach().cpu(), *torch.autograd.grad((A * W).sum(), log_dt))
    M = N // 2
    with mp.workdps(DPS):
        T = mp.matrix(N, N)  # x_f = T z
        for i in range(M):
            T[i, i], T[i, M + i], T[M + i, i], T[M + i, M + i] = 1, 1j, 1, -1j
        T_inv = mp.inverse(T)
        h = mp.mpf("1e-22")
        for c, ld in enumerate(log_dts):
            args = (Lam[c].tolist(), P[:, c].tolist(), B[0, c].tolist())

            def real_basis(log_dt):
                E_c, B_c = _mp_bilinear(mp, *args, mp.exp(log_dt))
                return T_inv * E_c * T, T_inv * B_c

            E_want, B_want = real_basis(mp.mpf(ld))
            E_want = torch.tensor([[float(mp.re(E_want[i, j])) for j in range(N)] for i in range(N)], dtype=F64)
            B_want = torch.tensor([float(mp.re(B_want[i])) for i in range(N)], dtype=F64)
            (E_up, _), (E_down, _) = real_basis(mp.mpf(ld) + h), real_basis(mp.mpf(ld) - h)
            g_want = float(mp.fsum(mp.mpf(W[c, i, j].item()) * mp.re(E_up[i, j] - E_down[i, j])
                                   for i in range(N) for j in range(N)) / (2 * h))
            A_bar, B_bar, g_A = (x[c] for x in out[False])
            E, B_bar_2, g_E = (x[c] for x in out[True])
            # Ā = I + (Ā - I) rounded once (|Ā| <= 1); B̄ and Ā - I: relative accuracy at every Δ
            assert torch.equal(A_bar, E + torch.eye(N, dtype=F64)), ld
            for got, want in ((B_bar, B_want), (B_bar_2, B_want), (E, E_want)):
                assert float((got - want).abs().max() / want.abs().max()) < 1e-13, ld
            # the log Δ gradient of Ā and of Ā - I at every Δ (<= 1e-15 measured)
            for got in (g_A, g_E):
                assert abs(float(got) - g_want) < 1e-11 * abs(g_want), (ld, float(got), g_want)


def test_increment_power_by_the_closed_form(device):
    """(I + sE)^n = I + sF for a diagonal E: F = expm1(n log1p(s e))/s, exact in float64 to a few eps. At s e = 1e-12
    the naive ((1 + s e)^n - 1)/s is ~1e-4 off."""
    e = torch.tensor([-0.5, 1e-3, 2.0, -3.0], dtype=F64, device=device)
    assert torch.equal(increment_power(torch.diag(e)[None], 0), torch.zeros(1, 4, 4, dtype=F64, device=device))
    for s, n in ((1e-12, 4096), (1e-12, 1000), (0.1, 7), (0.25, 1)):
        F = increment_power(torch.diag(e)[None], n, torch.tensor([s], dtype=F64, device=device))[0]
        want = torch.expm1(n * torch.log1p(s * e)) / s
        assert torch.equal(F - torch.diag(torch.diagonal(F)), torch.zeros_like(F)), (s, n)  # stays diagonal
        assert float((torch.diagonal(F) - want).abs().max() / want.abs().max()) < 1e-14 * n**0.5, (s, n)
    naive = ((1 + 1e-12 * e) ** 4096 - 1) / 1e-12
    assert float(((naive - 4096 * e) / (4096 * e)).abs().max()) > 1e-6  # what the increments avoid
    # a complex non-diagonal batch without a scale against matrix_power, and with a per-matrix scale
    X = 0.3 * torch.randn(2, 3, 5, 5, dtype=C128, generator=torch.Generator().manual_seed(1)).to(device)
    eye = torch.eye(5, dtype=C128, device=device)
    for n in (1, 2, 13, 64):
        want = torch.linalg.matrix_power(eye + X, n) - eye
        assert float((increment_power(X, n) - want).abs().max() / want.abs().max()) < 1e-13, n
    s = torch.tensor([1.0, 0.5, 2.0], dtype=F64, device=device)
    F = increment_power(X, 13, s)
    want = (torch.linalg.matrix_power(eye + s.to(C128)[:, None, None] * X, 13) - eye) / s.to(C128)[:, None, None]
    assert float((F - want).abs().max() / want.abs().max()) < 1e-13


def test_increment_power_refuses_bad_arguments(device):
    E = torch.zeros(3, 4, 4, dtype=F64, device=device)
    with pytest.raises(ValueError, match=r"E must be \(\.\.\., N, N\) square; got shape \(3, 4, 5\)"):
        increment_power(torch.zeros(3, 4, 5, dtype=F64), 2)
    for n in (-1, 2.0, True):
        with pytest.raises(ValueError, match=rf"n must be an int >= 0; got {n!r}"):
            increment_power(E, n)
    with pytest.raises(ValueError, match=r"scale must be \(H,\) = \(3,\) for E \(\.\.\., H, N, N\); got \(4,\)"):
        increment_power(E, 2, torch.ones(4, dtype=F64, device=device))
    with pytest.raises(ValueError, match=r"scale must be \(H,\) = \(\?,\) .*got \(1,\)"):
        increment_power(torch.zeros(4, 4, dtype=F64, device=device), 2, torch.ones(1, dtype=F64, device=device))


def test_the_usual_steps_are_unchanged_to_round_off(device):
    """At Δ in [1e-3, 1e-1] the increment forms equal the forms they replace (copied here) to round-off, forward and
    gradients: Ā = (4/Δ)M⁻¹ - I, B̄ = 2M⁻¹B_f with M⁻¹ = diag(R) - R P Y⁻¹ P* R, R = (2/Δ - Λ)⁻¹ (complex basis,
    then T⁻¹ · T); the dense kernel from Ā = :func:`bilinear_dplr` and C_true = (I - Ā^L)⁻ᵀ C̃."""
    g = torch.Generator().manual_seed(11)
    H, M, r, eye_M = 3, 4, 2, torch.eye(4, dtype=C128)
    Lam = torch.complex(-torch.rand(H, M, dtype=F64, generator=g) - 0.1, 10 * torch.randn(H, M, dtype=F64, generator=g))
    P, B, C = (s * torch.randn(n, H, M, dtype=C128, generator=g) for s, n in ((0.7, r), (1, 1), (1, 1)))
    dt = torch.tensor([1e-3, 1e-2, 1e-1], dtype=F64)
    T = torch.cat([torch.cat([eye_M, 1j * eye_M], 1), torch.cat([eye_M, -1j * eye_M], 1)]).to(device)  # x_f = T z
    full = lambda x: torch.cat([x, x.conj()], -1)  # noqa: E731

    def old_real(Lam, P, B, C, dt):
        Rf, Pf = full(1 / (2 / dt[:, None] - Lam)), full(P)  # (H, N), (r, H, N)
        Y = torch.eye(r, dtype=C128, device=device) + torch.einsum("jhn,hn,ihn->hji", Pf.conj(), Rf, Pf)  # (H, r, r)
        low = torch.einsum("hn,ihn,hij,jhm,hm->hnm", Rf, Pf, torch.linalg.inv(Y), Pf.conj(), Rf)  # (H, N, N)
        M_inv = torch.diag_embed(Rf) - low  # (H, N, N)
        A = (4 / dt)[:, None, None] * M_inv - torch.eye(2 * M, dtype=C128, device=device)  # (H, N, N)
        B_bar = torch.linalg.solve(T, 2 * M_inv @ full(B[0])[..., None])[..., 0]  # (H, N)
        return torch.linalg.solve(T, A @ T).real, B_bar.real

    def old_kernel(Lam, P, B, C, dt):
        A_bar, B_bar = bilinear_dplr(Lam, P, B, dt)  # (H, N, N), (1, H, N)
        eye = torch.eye(2 * M, dtype=C128, device=device)
        C_true = torch.linalg.solve((eye - torch.linalg.matrix_power(A_bar, L)).mT, full(C)[..., None])[..., 0]
        taps, x = [], B_bar
        for _ in range(L):
            taps.append(torch.einsum("chn,shn->sch", C_true, x).real)  # (1, 1, H)
            x = torch.einsum("hnm,shm->shn", A_bar, x)  # (1, H, N)
        return torch.stack(taps, -1)  # (1, 1, H, L)

    W = torch.randn(H, 2 * M, 2 * M, dtype=F64, generator=g).to(device)
    real = lambda Lam, P, B, C, dt: bilinear_dplr_real(Lam, P, B[0], dt)  # noqa: E731
    # tolerances: the old forms' own round-off, eps/(Δ|λ|) in Ā - I and eps/(LΔ|λ|) in I - Ā^L at Δ = 1e-3
    # (measured: Ā, B̄ 3e-16, their gradients 5e-14; the kernel 1.2e-13, its gradients 3e-12 (Δ's), 9e-14 (others))
    pairs = ((old_real, real, lambda A_B: (A_B[0] * W).sum() + A_B[1].sum(), 1e-14, 1e-12),
             (old_kernel, lambda *a: dplr_kernel_reference(*a, L), lambda K: (K * W.reshape(H, -1)[:, :L]).sum(), 1e-12,
              1e-10))
    for old, new, loss, tol_out, tol_grad in pairs:
        outs = []
        for fn in (old, new):
            leaves = [t.to(device).requires_grad_() for t in (Lam, P, B, C, dt)]
            out = fn(*leaves)
            grads = torch.autograd.grad(loss(out), leaves, allow_unused=True)
            outs.append(([o.detach() for o in out] if isinstance(out, tuple) else [out.detach()], grads))
        for a, b in zip(outs[1][0], outs[0][0]):
            assert float((a - b).abs().max() / b.abs().max()) < tol_out, new
        for a, b in zip(outs[1][1], outs[0][1]):
            if b is not None:  # bilinear_dplr_real has no C
                assert float((a - b).abs().max() / b.abs().max()) < tol_grad, new


@pytest.mark.parametrize("init,log_dt", [("legs", -20.0), ("fout", -30.0)])
def test_the_s4_layers_step_views_agree_with_its_kernel_at_tiny_steps(init, log_dt):
    """S4's ``reference`` backend (the DPLR step loop, through C_true) equals its ``fft`` path (the Cauchy kernel, right
    at every Δ: test above) at log Δ = -20 (LegS) and -30 (FouT). With C_true from the rounded Ā, the loop was 5e-9
    off at -20 and FouT's solve raised LinAlgError at -30 (finding 4)."""
    import ssmkit.layers as layers

    torch.manual_seed(0)
    layer = layers.build("s4", d_model=3, d_state=8, l_max=32, init=init, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        layer.log_dt.fill_(log_dt)
    x = torch.randn(2, 20, 3, dtype=torch.float64, device=DEVICE)
    with ops.use_backend("fft"):
        y_fft, h_fft = layer(x)
    with ops.use_backend("reference"):
        y_ref, h_ref = layer(x)
    assert ((y_ref - y_fft).abs().max() / y_fft.abs().max()).item() < 1e-12
    steps = []
    h = layer.initial_state(2)
    for t in range(20):
        y_t, h = layer.step(x[:, t], h)
        steps.append(y_t)
    assert ((torch.stack(steps, 1) - y_fft).abs().max() / y_fft.abs().max()).item() < 1e-12
