"""S4's DPLR forms (ssmkit.ops.dplr): dense matrix, dense and Woodbury bilinear, the O(N) step, small inverses.

Each fast form is compared with its dense form in float64, and everything with one case computed on paper.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssmkit.ops.dplr import (
    DPLRStepCoefficients,
    bilinear_dplr,
    bilinear_dplr_real,
    dplr_matrix,
    dplr_step,
    dplr_step_coefficients,
    dplr_step_reference,
    small_inverse,
)
from ssmkit.ops.hippo import nplr
from tests.conftest import rel_err

C128, F64 = torch.complex128, torch.float64
H, M = 3, 4  # channels, modes (N = 2M = 8); pairwise-distinct with B = 2, r up to 3
B = 2


def random_dplr(r: int, device, seed: int = 0):
    """Λ (H, M) with Re λ in [-1.1, -0.1], P (r, H, M), B (H, M), C (H, M) complex128, Δ (H,) log-uniform [1e-3, 1e-1]."""
    g = torch.Generator().manual_seed(seed)
    Lambda = torch.complex(-torch.rand(H, M, dtype=F64, generator=g) - 0.1, 10 * torch.randn(H, M, dtype=F64, generator=g))
    P = 0.7 * torch.randn(r, H, M, dtype=C128, generator=g)
    Bv = torch.randn(H, M, dtype=C128, generator=g)
    C = torch.randn(H, M, dtype=C128, generator=g)
    dt = torch.exp(torch.empty(H, dtype=F64).uniform_(math.log(1e-3), math.log(1e-1), generator=g))
    return tuple(t.to(device) for t in (Lambda, P, Bv, C, dt))


def real_basis(N: int, device) -> torch.Tensor:
    """T (N, N) with x_f = T z for z = [Re x, Im x]: T = [[I, iI], [I, -iI]]."""
    I = torch.eye(N // 2, dtype=C128, device=device)
    return torch.cat([torch.cat([I, 1j * I], 1), torch.cat([I, -1j * I], 1)], 0)


def full(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.conj()], dim=-1)


# --------------------------------------------------------------------------------------------------
# A hand-computed case: one pair, λ = -1, P = 1, B = 1, Δ = 1


def test_hand_computed_pair(device):
    # A = diag(-1, -1) - [1, 1][1, 1]ᴴ = [[-2, -1], [-1, -2]]. In the real basis Ax = -2x - x̄ is diag(-3, -1),
    # so Ā = diag((1 - 3/2)/(1 + 3/2), (1 - 1/2)/(1 + 1/2)) = diag(-0.2, 1/3) and B̄ = [1/2.5, 0] = [0.4, 0]
    # (B_f = [1, 1] is x = 1, i.e. z = [1, 0]). In the complex basis Ā = [[1/15, -4/15], [-4/15, 1/15]],
    # B̄ = [0.4, 0.4]. With C = 1 the step from x = 0 with u = (1, 0) gives x = (0.4, -0.08), y = 2 Re x = (0.8, -0.16).
    one = torch.ones(1, 1, dtype=C128, device=device)
    Lambda, P, Bv, C, dt = -one, one[None], one, one, torch.ones(1, dtype=F64, device=device)
    exact = 1e-15  # a handful of float64 operations on numbers of order 1
    torch.testing.assert_close(dplr_matrix(Lambda, P)[0], torch.tensor([[-2, -1], [-1, -2]], dtype=C128, device=device),
                               rtol=0, atol=exact)
    A_bar, B_bar = bilinear_dplr(Lambda, P, Bv, dt)
    torch.testing.assert_close(A_bar[0], torch.tensor([[1, -4], [-4, 1]], dtype=C128, device=device) / 15, rtol=0, atol=exact)
    torch.testing.assert_close(B_bar[0], torch.tensor([0.4, 0.4], dtype=C128, device=device), rtol=0, atol=exact)
    A_r, B_r = bilinear_dplr_real(Lambda, P, Bv, dt)
    torch.testing.assert_close(A_r[0], torch.tensor([[-0.2, 0], [0, 1 / 3]], dtype=F64, device=device), rtol=0, atol=exact)
    torch.testing.assert_close(B_r[0], torch.tensor([0.4, 0.0], dtype=F64, device=device), rtol=0, atol=exact)
    coeffs = dplr_step_coefficients(Lambda, P, Bv, dt)
    # R = 1/(2 + 1) = 1/3, E = 2 - 1 = 1, Y = 1 + 2 Re(1 · 1/3 · 1) = 5/3
    assert abs(complex(coeffs.R) - 1 / 3) < exact and abs(complex(coeffs.E) - 1) < exact
    assert abs(float(coeffs.Y_inv) - 0.6) < exact
    x = torch.zeros(1, 1, 1, dtype=C128, device=device)
    ys, xs = [], []
    for u in (1.0, 0.0):
        y, x = dplr_step(torch.full((1, 1), u, dtype=F64, device=device), x, coeffs, C)
        ys.append(float(y)), xs.append(complex(x))
    assert ys == pytest.approx([0.8, -0.16], abs=exact) and xs == pytest.approx([0.4, -0.08], abs=exact)


def test_small_inverse_by_hand_and_against_linalg(device):
    Y = torch.tensor([[4.0, 7.0], [2.0, 6.0]], dtype=F64, device=device)
    torch.testing.assert_close(small_inverse(Y), torch.tensor([[0.6, -0.7], [-0.2, 0.4]], dtype=F64, device=device),
                               rtol=0, atol=1e-15)
    assert small_inverse(torch.full((1, 1), 4.0, device=device)).item() == 0.25
    g = torch.Generator().manual_seed(5)
    for r in (1, 2, 3):
        for dtype in (F64, C128):
            Y = torch.randn(H, 5, r, r, dtype=dtype, generator=g).to(device) + 3 * torch.eye(r, device=device)
            # well-conditioned (diagonally dominated) r x r: closed forms and LU agree to a few ulps
            assert rel_err(small_inverse(Y), torch.linalg.inv(Y)) < 1e-13
    assert small_inverse(torch.zeros(H, 0, 0, dtype=F64, device=device)).shape == (H, 0, 0)
    with pytest.raises(ValueError, match=r"Y must be \(\.\.\., r, r\).*got shape \(3, 2\)"):
        small_inverse(torch.zeros(3, 2, device=device))


# --------------------------------------------------------------------------------------------------
# Fast forms against the dense ones (float64)


@pytest.mark.parametrize("r", [0, 1, 2, 3])
def test_dplr_matrix_and_bilinear_against_numpy(r, device):
    Lambda, P, Bv, _, dt = random_dplr(r, device, seed=r)
    A = dplr_matrix(Lambda, P)
    A_bar, B_bar = bilinear_dplr(Lambda, P, Bv, dt)
    lam, p, b, d = (t.cpu().numpy() for t in (Lambda, P, Bv, dt))
    for h in range(H):
        pf = np.concatenate([p[:, h], p[:, h].conj()], axis=1)  # (r, N)
        want = np.diag(np.concatenate([lam[h], lam[h].conj()])) - sum((np.outer(pi, pi.conj()) for pi in pf), 0)
        assert rel_err(A[h], torch.from_numpy(np.asarray(want, dtype=np.complex128))) < 1e-15  # same sums
        left = np.eye(2 * M) - d[h] / 2 * want
        # LU solve vs numpy's inverse of a well-conditioned 8x8 (|Δλ| <= ~3): a few ulps times the condition
        assert rel_err(A_bar[h], torch.from_numpy(np.linalg.solve(left, np.eye(2 * M) + d[h] / 2 * want))) < 1e-13
        want_B = np.linalg.solve(left, d[h] * np.concatenate([b[h], b[h].conj()]))
        assert rel_err(B_bar[h], torch.from_numpy(want_B)) < 1e-13


@pytest.mark.parametrize("r", [0, 1, 2, 3])
def test_bilinear_real_is_the_dense_system_in_the_real_basis(r, device):
    Lambda, P, Bv, _, dt = random_dplr(r, device, seed=10 + r)
    A_c, B_c = bilinear_dplr(Lambda, P, Bv, dt)
    A_r, B_r = bilinear_dplr_real(Lambda, P, Bv, dt)
    assert A_r.shape == (H, 2 * M, 2 * M) and B_r.shape == (H, 2 * M) and A_r.dtype == B_r.dtype == F64
    T = real_basis(2 * M, device)
    T_inv = torch.linalg.inv(T)
    # Woodbury (r x r closed-form inverse) against one LU solve: both float64, well-conditioned; measured ~1e-15
    assert rel_err(A_r, (T_inv @ A_c @ T).real) < 1e-12
    assert float((T_inv @ A_c @ T).imag.abs().max()) < 1e-12 * float(A_r.abs().max())  # the real system is real
    assert rel_err(B_r, (B_c @ T_inv.T).real) < 1e-12
    # several input vectors at once (leading dims of B)
    Bs = torch.stack([Bv, 2 * Bv, Bv.conj()])  # (S, H, M)
    _, B_rs = bilinear_dplr_real(Lambda, P, Bs, dt)
    _, B_cs = bilinear_dplr(Lambda, P, Bs, dt)
    assert B_rs.shape == (3, H, 2 * M) and rel_err(B_rs, (B_cs @ T_inv.T).real) < 1e-12


@pytest.mark.parametrize("measure", ["legs", "legt"])
def test_bilinear_real_on_hippo(measure, device):
    # The NPLR forms of HiPPO-LegS (rank 1) and LegT (rank 2, Re λ ≈ 0: the hard case), N = 16.
    init = nplr(measure, 16, B_clip=None)
    Lambda = torch.complex(init.Lambda.real.clamp(max=-1e-4), init.Lambda.imag)[None].expand(H, -1).to(device)
    P, Bv = init.P[:, None].expand(-1, H, -1).to(device), init.B[None].expand(H, -1).to(device)
    dt = torch.tensor([1e-3, 1e-2, 1e-1], dtype=F64, device=device)
    A_c, B_c = bilinear_dplr(Lambda, P, Bv, dt)
    A_r, B_r = bilinear_dplr_real(Lambda, P, Bv, dt)
    T = real_basis(16, device)
    T_inv = torch.linalg.inv(T)
    # the LU solve of I - ΔA/2 with ‖A‖ ~ N: both forms lose ~cond·eps ≈ 1e-13 at Δ = 0.1
    assert rel_err(A_r, (T_inv @ A_c @ T).real) < 1e-11
    assert rel_err(B_r, (B_c @ T_inv.T).real) < 1e-11


@pytest.mark.parametrize("r", [0, 1, 2, 3])
def test_step_equals_dense_step_and_real_recurrence(r, device):
    Lambda, P, Bv, C, dt = random_dplr(r, device, seed=20 + r)
    coeffs = dplr_step_coefficients(Lambda, P, Bv, dt)
    assert isinstance(coeffs, DPLRStepCoefficients) and coeffs.Y_inv.shape == (H, r, r)
    A_c, B_c = bilinear_dplr(Lambda, P, Bv, dt)
    A_r, B_r = bilinear_dplr_real(Lambda, P, Bv, dt)
    c_r = torch.cat([2 * C.real, -2 * C.imag], dim=-1)  # (H, N): C_fᵀ x_f = c_r · z
    g = torch.Generator().manual_seed(30 + r)
    x = torch.randn(B, H, M, dtype=C128, generator=g).to(device)
    x_f, z = full(x), torch.cat([x.real, x.imag], dim=-1)
    for _ in range(50):
        u = torch.randn(B, H, dtype=F64, generator=g).to(device)
        y, x = dplr_step(u, x, coeffs, C)
        y_f, x_f = dplr_step_reference(u, x_f, A_c, B_c, full(C))
        z = torch.einsum("hnm,bhm->bhn", A_r, z) + B_r * u[..., None]
        # 50 float64 steps of |Ā| <= 1 systems: three algorithms agree to ~1e-14
        assert rel_err(y, y_f) < 1e-12 and rel_err(x, x_f[..., :M]) < 1e-12
        assert rel_err(x_f[..., M:], x_f[..., :M].conj()) < 1e-12  # the dense state stays conjugate-symmetric
        assert rel_err(y, (c_r * z).sum(-1)) < 1e-12 and rel_err(torch.complex(z[..., :M], z[..., M:]), x) < 1e-12


def test_gradients(device):
    Lambda, P, Bv, C, dt = random_dplr(2, device, seed=40)
    H2 = slice(0, 2)
    leaves = [t[..., H2, :2].clone().requires_grad_() if t.dim() > 1 else t[H2].clone().requires_grad_()
              for t in (Lambda, P, Bv, C, dt)]
    # the Woodbury real form and the O(N) step are differentiable in every parameter
    assert torch.autograd.gradcheck(lambda l, p, b, c, d: bilinear_dplr_real(l, p, b, d), leaves)
    x = torch.randn(1, 2, 2, dtype=C128, device=device)
    u = torch.randn(1, 2, dtype=F64, device=device)
    assert torch.autograd.gradcheck(lambda l, p, b, c, d: dplr_step(u, x, dplr_step_coefficients(l, p, b, d), c), leaves)
    # and their gradients equal those of the dense complex forms
    T = real_basis(4, device)
    T_inv = torch.linalg.inv(T)
    w = torch.randn(2, 4, 4, dtype=F64, device=device)
    grads = []
    for fast in (True, False):
        ls = [t.detach().clone().requires_grad_() for t in leaves]
        A = bilinear_dplr_real(ls[0], ls[1], ls[2], ls[4])[0] if fast else (T_inv @ bilinear_dplr(ls[0], ls[1], ls[2], ls[4])[0] @ T).real
        grads.append(torch.autograd.grad((A * w).sum(), [ls[0], ls[1], ls[4]]))
    for a, b in zip(*grads):
        assert rel_err(a, b) < 1e-10  # float64, two algorithms


def test_bad_inputs(device):
    Lambda, P, Bv, C, dt = random_dplr(1, device)
    with pytest.raises(ValueError, match=r"Lambda must be \(H, N/2\) complex \(complex64 or complex128\)"):
        dplr_matrix(Lambda.real, P)
    with pytest.raises(ValueError, match=r"P must be \(r, H, N/2\) = \(r, 3, 4\) complex; got shape \(3, 4\)"):
        bilinear_dplr_real(Lambda, P[0], Bv, dt)
    with pytest.raises(ValueError, match=r"B must be \(H, N/2\) = \(3, 4\) like Lambda.*got shape \(3, 5\)"):
        bilinear_dplr_real(Lambda, P, torch.ones(3, 5, dtype=C128, device=device), dt)
    with pytest.raises(ValueError, match=r"B must have Lambda's dtype torch.complex128; got torch.complex64"):
        bilinear_dplr(Lambda, P, Bv.to(torch.complex64), dt)
    with pytest.raises(ValueError, match=r"dt must be \(H,\) = \(3,\); got shape \(3, 1\)"):
        dplr_step_coefficients(Lambda, P, Bv, dt[:, None])
    with pytest.raises(ValueError, match=r"B must be \(H, N/2\) = \(3, 4\) \(one input vector\)"):
        dplr_step_coefficients(Lambda, P, Bv[None], dt)
    coeffs = dplr_step_coefficients(Lambda, P, Bv, dt)
    x = torch.zeros(B, H, M, dtype=C128, device=device)
    with pytest.raises(ValueError, match=r"x must be \(B, H, N/2\) = \(B, 3, 4\); got shape \(2, 3, 5\)"):
        dplr_step(torch.zeros(B, H, dtype=F64, device=device), torch.zeros(B, H, 5, dtype=C128, device=device), coeffs, C)
    with pytest.raises(ValueError, match=r"u must be \(B, H\) = \(2, 3\); got shape \(2, 4\)"):
        dplr_step(torch.zeros(B, 4, dtype=F64, device=device), x, coeffs, C)
    with pytest.raises(ValueError, match=r"C must be \(H, N/2\) = \(3, 4\); got shape \(1, 3, 4\)"):
        dplr_step(torch.zeros(B, H, dtype=F64, device=device), x, coeffs, C[None])
    A_c, B_c = bilinear_dplr(Lambda, P, Bv, dt)
    u, x_f = torch.zeros(B, H, dtype=F64, device=device), full(x)
    with pytest.raises(ValueError, match=r"A_bar must be \(H, N, N\); got shape \(3, 8\)"):
        dplr_step_reference(u, x_f, A_c[:, 0], B_c, full(C))
    with pytest.raises(ValueError, match=r"x must be \(B, H, N\) = \(B, 3, 8\); got shape \(2, 3, 4\)"):
        dplr_step_reference(u, x, A_c, B_c, full(C))
    with pytest.raises(ValueError, match=r"C must be \(H, N\) = \(3, 8\); got shape \(3, 4\)"):
        dplr_step_reference(u, x_f, A_c, B_c, C)


def test_every_form_checks_lambda_p_b_and_dt(device):
    """The shared check, through each form: Λ, P, B not tensors or real (named), a 3-D Λ, a P whose trailing axes
    are not (H, N/2) though it is 3-D, a P of another complex dtype, a dt not a tensor or not floating-point."""
    Lambda, P, Bv, C, dt = random_dplr(1, device)
    for f in (bilinear_dplr, bilinear_dplr_real, dplr_step_coefficients):
        with pytest.raises(ValueError, match=r"Lambda must be a complex torch.Tensor \(H, N/2\); got list"):
            f(Lambda.tolist(), P, Bv, dt)
        with pytest.raises(ValueError, match=r"P must be \(r, H, N/2\) complex \(complex64 or complex128\); got torch.float64"):
            f(Lambda, P.real, Bv, dt)
        with pytest.raises(ValueError, match=r"B must be \(H, N/2\) complex \(complex64 or complex128\); got torch.float64"):
            f(Lambda, P, Bv.real, dt)
        with pytest.raises(ValueError, match=r"Lambda must be \(H, N/2\) complex; got shape \(1, 3, 4\)"):
            f(Lambda[None], P, Bv, dt)
        with pytest.raises(ValueError, match=r"P must be \(r, H, N/2\) = \(r, 3, 4\) complex; got shape \(1, 3, 3\)"):
            f(Lambda, P[..., :3], Bv, dt)
        with pytest.raises(ValueError, match=r"P must have Lambda's dtype torch.complex128; got torch.complex64"):
            f(Lambda, P.to(torch.complex64), Bv, dt)
        with pytest.raises(ValueError, match=r"dt must be a torch.Tensor; got list"):
            f(Lambda, P, Bv, dt.tolist())
        with pytest.raises(ValueError, match=r"dt must have a floating-point dtype \(float32 or float64\); got torch.complex128"):
            f(Lambda, P, Bv, dt.to(C128))
    with pytest.raises(ValueError, match=r"P must have Lambda's dtype"):
        dplr_matrix(Lambda, P.to(torch.complex64))


def test_dense_step_refuses_a_non_square_matrix_and_a_wrong_input(device):
    """``dplr_step_reference``: Ā (H, N, N + 1) and u (B, H + 1) are refused by name."""
    Lambda, P, Bv, C, dt = random_dplr(1, device)
    A_c, B_c = bilinear_dplr(Lambda, P, Bv, dt)
    u, x_f = torch.zeros(B, H, dtype=F64, device=device), torch.zeros(B, H, 2 * M, dtype=C128, device=device)
    with pytest.raises(ValueError, match=r"A_bar must be \(H, N, N\); got shape \(3, 8, 9\)"):
        dplr_step_reference(u, x_f, torch.cat([A_c, A_c[..., :1]], -1), B_c, full(C))
    with pytest.raises(ValueError, match=r"u must be \(B, H\) = \(2, 3\); got shape \(2, 4\)"):
        dplr_step_reference(torch.zeros(B, H + 1, dtype=F64, device=device), x_f, A_c, B_c, full(C))
