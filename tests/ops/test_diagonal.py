"""The diagonal SSM step against the recurrence written out by hand, real and complex, with and without skip,
in eager mode and under torch.func (where its in-place add takes the functional form)."""

import pytest
import torch

from ssmkit.ops.diagonal import (
    diagonal_kernel,
    diagonal_ssm_bidirectional,
    diagonal_ssm_step,
    diagonal_step_coefficients,
)
from ssmkit.ops.scan import ssm_scan_reference
from tests.conftest import rel_err


@pytest.mark.parametrize("dtype", [torch.complex128, torch.float64])
@pytest.mark.parametrize("with_skip", [False, True])
def test_step_equals_the_recurrence(dtype, with_skip):
    torch.manual_seed(0)
    H, M, B = 3, 4, 2
    A_bar = 0.9 * torch.randn(H, M, dtype=dtype) / 2
    B_bar, C = torch.randn(H, M, dtype=dtype), torch.randn(H, M, dtype=dtype)
    D = torch.randn(H, dtype=torch.float64) if with_skip else None
    x = torch.randn(B, H, M, dtype=dtype)
    u = torch.randn(B, H, dtype=torch.float64)
    y, x_new = diagonal_ssm_step(u, diagonal_step_coefficients(A_bar, B_bar, C), x, D=D)
    x_ref = A_bar * x + B_bar * u[..., None]
    y_ref = (C * x_ref).sum(-1)
    y_ref = (y_ref.real if y_ref.is_complex() else y_ref) + (0 if D is None else D * u)
    assert rel_err(x_new, x_ref) < 1e-15 and rel_err(y, y_ref) < 1e-14
    # a sequence of steps equals the loop oracle of the scan
    seq = torch.randn(B, 7, H, dtype=torch.float64)
    coeffs, h, ys = diagonal_step_coefficients(A_bar, B_bar, C), x, []
    for t in range(7):
        y_t, h = diagonal_ssm_step(seq[:, t], coeffs, h, D=D)
        ys.append(y_t)
    y_scan, h_scan = ssm_scan_reference(seq, A_bar, B_bar, C, x, D=D)
    assert rel_err(torch.stack(ys, 1), y_scan) < 1e-13 and rel_err(h, h_scan) < 1e-13


def test_step_under_vmap_and_grad():
    torch.manual_seed(1)
    A_bar = 0.5 * torch.randn(3, 4, dtype=torch.complex128)
    B_bar, C = torch.randn(3, 4, dtype=torch.complex128), torch.randn(3, 4, dtype=torch.complex128)
    x = torch.randn(5, 2, 3, 4, dtype=torch.complex128)
    u = torch.randn(5, 2, 3, dtype=torch.float64)
    coeffs = diagonal_step_coefficients(A_bar, B_bar, C)
    y, h = torch.func.vmap(lambda ui, xi: diagonal_ssm_step(ui, coeffs, xi))(u, x)
    y_ref, h_ref = diagonal_ssm_step(u.reshape(10, 3), coeffs, x.reshape(10, 3, 4))
    assert rel_err(y.reshape(10, 3), y_ref) < 1e-14 and rel_err(h.reshape(10, 3, 4), h_ref) < 1e-14
    g = torch.func.grad(lambda ui: diagonal_ssm_step(ui, coeffs, x[0])[0].sum())(u[0])
    ui = u[0].clone().requires_grad_()
    g_ref, = torch.autograd.grad(diagonal_ssm_step(ui, coeffs, x[0])[0].sum(), ui)
    assert rel_err(g, g_ref) < 1e-14


def _loop_kernel(A_bar, B_bar, C, L):
    """K_l = Re Σ_n C_n B̄_n Ā_n^l by Python complex arithmetic: (H, L) float64 nested lists."""
    H, M = A_bar.shape
    return [[sum((complex(C[h, n]) * complex(B_bar[h, n]) * complex(A_bar[h, n]) ** l).real for n in range(M))
             for l in range(L)] for h in range(H)]


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_diagonal_kernel_against_a_python_loop(backend):
    # probe 19: C·B̄ → C/B̄ in diagonal_kernel left every test green (no test called it)
    torch.manual_seed(2)
    H, M, L = 3, 4, 7
    A_bar = 0.9 * torch.randn(H, M, dtype=torch.complex128) / 2
    B_bar, C = torch.randn(H, M, dtype=torch.complex128), torch.randn(H, M, dtype=torch.complex128)
    K = diagonal_kernel(A_bar, B_bar, C, L, backend=backend)
    assert K.shape == (H, L) and rel_err(K, torch.tensor(_loop_kernel(A_bar, B_bar, C, L), dtype=torch.float64)) < 1e-13


@pytest.mark.parametrize("backend", ["reference", "fft"])
def test_diagonal_ssm_bidirectional_against_a_python_loop(backend):
    # y_t = Σ_{s<=t} K0[t-s] u_s + Σ_{s>t} K1[s-t-1] u_s; swapping Ā and B̄ in the dispatch survived (the backend test
    # compares the backends with each other only)
    torch.manual_seed(3)
    H, M, L, B = 3, 4, 6, 2
    A_bar = 0.9 * torch.randn(H, M, dtype=torch.complex128) / 2
    B_bar, C = torch.randn(H, M, dtype=torch.complex128), torch.randn(2, H, M, dtype=torch.complex128)
    u = torch.randn(B, L, H, dtype=torch.float64)
    K0, K1 = _loop_kernel(A_bar, B_bar, C[0], L), _loop_kernel(A_bar, B_bar, C[1], L)
    ref = torch.zeros(B, L, H, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for t in range(L):
                ref[b, t, h] = sum(K0[h][t - s] * float(u[b, s, h]) for s in range(t + 1)) + sum(
                    K1[h][s - t - 1] * float(u[b, s, h]) for s in range(t + 1, L))
    y = diagonal_ssm_bidirectional(u, A_bar, B_bar, C, backend=backend)
    assert rel_err(y, ref) < 1e-12

