"""ZOH and bilinear discretisation, diagonal and DPLR (ssmkit.ops.discretize)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssmkit.ops.discretize import bilinear, bilinear_dplr, zoh, zoh_reference
from ssmkit.ops.hippo import nplr, rank_correction, transition
from tests.conftest import rel_err

C128 = torch.complex128
H, N = 3, 4  # pairwise-distinct small sizes


def _random(device, dtype=torch.float64, H=H, N=N):
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    Lambda = torch.complex(-torch.rand(H, N, dtype=dtype) - 0.1, 10 * torch.randn(H, N, dtype=dtype)).to(device)
    B = torch.randn(H, N, dtype=cdtype).to(device)
    dt = torch.exp(torch.empty(H, 1, dtype=dtype).uniform_(math.log(1e-3), math.log(1e-1))).to(device)
    return Lambda, B, dt


def _scalar(lam, dt, device):
    return (torch.tensor([[lam]], dtype=C128, device=device), torch.ones(1, 1, dtype=C128, device=device),
            torch.tensor([[dt]], dtype=torch.float64, device=device))


def test_zoh_by_hand(device):
    A_bar, B_bar = zoh(*_scalar(-1.0, 0.1, device))
    assert abs(complex(A_bar) - math.exp(-0.1)) < 1e-15 and abs(complex(B_bar) - (1 - math.exp(-0.1))) < 1e-15
    # lambda = i pi/2, dt = 1: A_bar = i, B_bar = (i - 1)/(i pi/2) = (2/pi)(1 + i).
    A_bar, B_bar = zoh(*_scalar(0.5j * math.pi, 1.0, device))
    assert abs(complex(A_bar) - 1j) < 1e-15 and abs(complex(B_bar) - (2 / math.pi) * (1 + 1j)) < 1e-15


def test_zoh_small_z_limit(device):
    mpmath = pytest.importorskip("mpmath")
    zs = [0, 1e-14, -3e-9 + 2e-9j, 1e-5j, -0.2 + 0.3j, 0.7j, -0.999, 1.0001j, -2 + 3j]
    dt = 0.05
    Lambda = torch.tensor([[z / dt for z in zs]], dtype=C128, device=device)
    B = torch.full_like(Lambda, 2 - 1j)
    A_bar, B_bar = zoh(Lambda, B, torch.tensor([[dt]], dtype=torch.float64, device=device))
    assert A_bar[0, 0] == 1 and B_bar[0, 0] == dt * (2 - 1j)  # Lambda = 0 exactly: B_bar = dt B
    mpmath.mp.dps = 40
    want = [complex(dt * (2 - 1j) * (mpmath.expm1(mpmath.mpc(z)) / z if z != 0 else 1)) for z in zs]
    # Series (|z| < 1) and direct formula (|z| >= 1) both keep float64 relative accuracy, entry by entry.
    for got, w in zip(B_bar[0].tolist(), want):
        assert abs(got - w) <= 4e-16 * abs(w)
    # The direct formula loses ~eps/|z| relative accuracy: the tiny-z entries are where zoh must differ.
    _, B_ref = zoh_reference(Lambda[:, 1:], B[:, 1:], torch.tensor([[dt]], dtype=torch.float64, device=device))
    assert abs(complex(B_ref[0, 0]) - want[1]) > 1e-6 * abs(want[1])


def test_zoh_gradient_near_zero(device):
    # d B_bar / d Lambda = dt^2 B phi'(z), phi'(z) = 1/2 + z/3 + O(z^2); holomorphic, so a complex JVP gives it.
    dt = torch.tensor([[0.1]], dtype=torch.float64, device=device)
    B = torch.ones(1, 1, dtype=C128, device=device)
    for lam in (0.0, 1e-9 + 1e-9j):
        Lambda = torch.tensor([[lam]], dtype=C128, device=device)
        _, d = torch.autograd.functional.jvp(lambda l: zoh(l, B, dt)[1], Lambda, torch.ones_like(Lambda))
        want = 0.01 * (0.5 + 0.1 * lam / 3)
        assert abs(complex(d) - want) < 1e-17  # ~eps * |want|; the quotient rule would lose everything here


def test_zoh_matches_reference(device):
    Lambda, B, dt = _random(device, H=5, N=64)
    Lambda = Lambda * 10  # |z| spread over ~[1e-3, 10], across the series/direct switch at |z| = 1
    # Away from z = 0 the direct formula is exact to ~eps/|z|; min |z| here is ~1e-3.
    for got, want in zip(zoh(Lambda, B, dt), zoh_reference(Lambda, B, dt)):
        assert rel_err(got, want) <= 1e-12


def test_zoh_float32(device):
    Lambda, B, dt = _random(device)
    out32 = zoh(Lambda.to(torch.complex64), B.to(torch.complex64), dt.float())
    out64 = zoh(Lambda, B, dt)
    for got, want in zip(out32, out64):
        assert got.dtype == torch.complex64
        assert rel_err(got, want) <= 1e-6  # float32 rounding of inputs and exp


def test_bilinear_by_hand(device):
    A_bar, B_bar = bilinear(*_scalar(-1.0, 0.1, device))
    assert abs(complex(A_bar) - 0.95 / 1.05) < 1e-15 and abs(complex(B_bar) - 0.1 / 1.05) < 1e-15


@pytest.mark.parametrize("fn", [zoh, bilinear])
def test_gradcheck(fn, device):
    Lambda, B, dt = _random(device, H=2, N=5)
    Lambda[0, 0] = 0.0  # the series branch at z = 0
    Lambda[1, 1] = 15.0 + 40j  # |z| >= 1 with the largest dt
    dt[1, 0] = 0.1
    args = tuple(t.detach().requires_grad_() for t in (Lambda, B, dt))
    assert torch.autograd.gradcheck(fn, args)


def test_bilinear_dplr_diagonal_case(device):
    Lambda, B, dt = _random(device, H=H, N=N)
    A_d, B_d = bilinear(Lambda, B, dt)
    for r in (0, 2):
        P = torch.zeros(r, H, N, dtype=C128, device=device)
        A_bar, B_bar = bilinear_dplr(Lambda, P, B, dt[:, 0])
        assert A_bar.shape == (H, 2 * N, 2 * N) and B_bar.shape == (H, 2 * N)
        diag = torch.cat([A_d, A_d.conj()], dim=-1)  # both halves of each pair
        assert rel_err(A_bar, torch.diag_embed(diag)) <= 1e-14  # one float64 LU solve of a diagonal system
        assert rel_err(B_bar, torch.cat([B_d, B_d.conj()], dim=-1)) <= 1e-14


def test_bilinear_dplr_against_numpy(device):
    Lambda, B, dt = _random(device, H=H, N=N)
    P = torch.randn(2, H, N, dtype=C128, device=device)
    A_bar, B_bar = bilinear_dplr(Lambda, P, B, dt[:, 0])
    lam, p, b, d = (t.cpu().numpy() for t in (Lambda, P, B, dt[:, 0]))
    for h in range(H):
        lf = np.concatenate([lam[h], lam[h].conj()])
        pf = np.concatenate([p[:, h], p[:, h].conj()], axis=1)  # (r, 2N)
        A = np.diag(lf) - sum(np.outer(pi, pi.conj()) for pi in pf)
        left = np.eye(2 * N) - d[h] / 2 * A
        want_A = np.linalg.inv(left) @ (np.eye(2 * N) + d[h] / 2 * A)
        want_B = np.linalg.inv(left) @ (d[h] * np.concatenate([b[h], b[h].conj()]))
        # float64 inverse vs solve of a well-conditioned (dt|A| <= ~5) 8x8 system.
        assert rel_err(A_bar[h], torch.from_numpy(want_A)) <= 1e-13
        assert rel_err(B_bar[h], torch.from_numpy(want_B)) <= 1e-13


@pytest.mark.parametrize("measure", ["legs", "legt"])
def test_bilinear_dplr_equals_real_hippo(measure, device):
    # V_f Abar_c V_f* must be the bilinear discretisation of the real HiPPO matrix; likewise V_f Bbar_c.
    Nr, dt = 8, 0.03
    A, B = transition(measure, Nr)
    r = nplr(measure, Nr, B_clip=None)
    V_f = torch.cat([r.V, r.V.conj()], dim=1)  # (N, N)
    A_bar, B_bar = bilinear_dplr(r.Lambda[None].to(device), r.P[:, None].to(device), r.B[None].to(device),
                                 torch.tensor([dt], dtype=torch.float64, device=device))
    left = torch.eye(Nr, dtype=torch.float64) - dt / 2 * A
    want_A = torch.linalg.solve(left, torch.eye(Nr, dtype=torch.float64) + dt / 2 * A)
    want_B = torch.linalg.solve(left, dt * B)
    # NPLR reconstruction (~1e-14) propagated through one well-conditioned solve.
    assert rel_err(V_f @ A_bar[0].cpu() @ V_f.conj().T, want_A) <= 1e-12
    assert rel_err(V_f @ B_bar[0].cpu(), want_B) <= 1e-12
    assert rank_correction(measure, Nr).shape[0] == r.P.shape[0]


def test_bilinear_dplr_float32(device):
    Lambda, B, dt = _random(device)
    P = torch.randn(1, H, N, dtype=C128, device=device) * 0.3
    out64 = bilinear_dplr(Lambda, P, B, dt[:, 0])
    out32 = bilinear_dplr(Lambda.to(torch.complex64), P.to(torch.complex64), B.to(torch.complex64), dt[:, 0].float())
    for got, want in zip(out32, out64):
        assert got.dtype == torch.complex64 and rel_err(got, want) <= 1e-5  # float32 LU of an 8x8 system


def test_bad_shapes(device):
    Lambda, B, dt = _random(device)
    with pytest.raises(ValueError, match=r"Lambda must be \(H, N\) complex \(complex64 or complex128\); got torch.flo"):
        zoh(Lambda.real, B, dt)
    with pytest.raises(ValueError, match=r"Lambda must be \(H, N\) complex; got shape \(1, 3, 4\)"):
        bilinear(Lambda[None], B, dt)
    # probe 19: the type check and B's complex check (removing either left the tests green)
    with pytest.raises(ValueError, match=r"Lambda must be a complex torch.Tensor \(H, N\); got ndarray"):
        zoh(Lambda.cpu().numpy(), B, dt)
    with pytest.raises(ValueError, match=r"B must be \(H, N\) complex \(complex64 or complex128\); got torch.float64"):
        zoh(Lambda, B.real, dt)
    with pytest.raises(ValueError, match=r"B must be \(H, N\) = \(3, 4\) like Lambda; got shape \(3, 5\)"):
        zoh(Lambda, torch.ones(3, 5, dtype=C128, device=device), dt)
    with pytest.raises(ValueError, match=r"dt must be \(H, 1\) = \(3, 1\) \(broadcast along N only\); got shape \(3,"):
        zoh(Lambda, B, dt[:, 0])
    with pytest.raises(ValueError, match=r"dt must be \(H, 1\).*got shape \(3, 4\)"):
        bilinear(Lambda, B, dt.expand(3, 4))
    with pytest.raises(ValueError, match="dt must have a floating-point dtype"):
        zoh_reference(Lambda, B, dt.to(torch.complex128))
    P = torch.zeros(1, 3, 4, dtype=C128, device=device)
    with pytest.raises(ValueError, match=r"P must be \(r, H, N/2\) = \(r, 3, 4\) complex; got shape \(3, 4\)"):
        bilinear_dplr(Lambda, P[0], B, dt[:, 0])
    with pytest.raises(ValueError, match=r"dt must be \(H,\) = \(3,\); got shape \(3, 1\)"):
        bilinear_dplr(Lambda, P, B, dt)
    with pytest.raises(ValueError, match=r"P must be \(r, H, N/2\) complex"):
        bilinear_dplr(Lambda, P.real, B, dt[:, 0])


def test_series_coefficients_made_in_inference_mode_serve_a_later_backward():
    """The φ-series coefficients are made once per dtype and device; the first made inside ``torch.inference_mode``
    (a generation loop) must still be saved by a later call's autograd, and the gradient equals the closed form."""
    from ssmkit.ops import discretize

    discretize._COEFFS.clear()
    z = torch.tensor([0.3 + 0.2j, -0.5 + 0.1j], dtype=torch.complex128)
    with torch.inference_mode():
        discretize._expm1_over_z(z)
    assert not discretize._COEFFS[(torch.complex128, z.device)].is_inference()
    w = z.clone().requires_grad_()
    phi = discretize._expm1_over_z(w)
    (phi.real.sum() + phi.imag.sum()).backward()
    # φ' = (z e^z - e^z + 1) / z²; torch's gradient of a real loss is ∂ℓ/∂Re z + i ∂ℓ/∂Im z, and for ℓ = Re φ + Im φ
    # (φ holomorphic: ∂φ/∂Im z = i φ') that is (Re φ' + Im φ') + i (Re φ' - Im φ')
    d = (z * torch.exp(z) - torch.exp(z) + 1) / z**2
    expected = torch.complex(d.real + d.imag, d.real - d.imag)
    torch.testing.assert_close(w.grad, expected, rtol=1e-12, atol=1e-12)
