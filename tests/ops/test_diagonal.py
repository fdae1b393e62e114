"""The diagonal SSM step against the recurrence written out by hand, real and complex, with and without skip,
in eager mode and under torch.func (where its in-place add takes the functional form)."""

import pytest
import torch

from ssmkit.ops.diagonal import diagonal_ssm_step, diagonal_step_coefficients
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
