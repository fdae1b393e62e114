"""Float32 accuracy of the scans over long sequences with poles near the unit circle (probe of 2026-12-05, fifth
session), each float32 result against the float64 computation of the same float32 numbers.

1. *The chunked diagonal scan's carry.* ``ssm_scan_chunked`` carried the state across its nc = L/T chunks with a
   float32 multiplier reused at every group end: Ā^T rounded once and (Ā^T)^G taken by a float32 product of G factors
   near 1, which is biased (~1 ulp low per 64 factors). With |λ| in 1 - [1e-5, 1e-4] the error grew linearly in nc: at
   L = 16 384 the output was 1.4e-6 off, the final state 2.4e-6 and the gradients 1.5e-6 to 3.4e-6, against 2.9e-7,
   3.3e-7 and 2.8e-7 to 4.3e-7 with the multiplier computed in double and applied as a float32 hi + lo pair (with
   |λ| in 1 - [1e-6, 1e-5] at L = 262 144: 2.6e-5 against 8.9e-7). Reference: the loop (``ssm_scan_reference``) in
   float64.
2. *The final state of the FFT path* (``ssm_final_state_chunked``) raised the rounded Ā^T to the powers 0..nc-1:
   2.3e-6 off at L = 16 384, now 2.4e-7 (each power from Ā in double, rounded once). Reference: the float64 loop.
3. *∂A of the Mamba-2 C kernel* (``ssd_scan.c``) was a float32 running sum over all L steps: 3.3e-6 off at
   L = 32 768 with inputs of one sign, 1.9e-7 summed in double. Reference: the chunked SSD algorithm in float64.
"""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops.native import native_available
from ssmkit.ops.scan import ssm_scan, ssm_scan_reference
from ssmkit.ops.ssd import ssd

F64 = torch.float64
L_DIAG = 16384  # the shortest length where the old carry was clearly off (8 192: 9.6e-7 against 2.8e-7)


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """‖a - ref‖ / ‖ref‖ in double precision (complex tensors as real pairs)."""
    a = torch.view_as_real(a) if a.is_complex() else a
    ref = torch.view_as_real(ref) if ref.is_complex() else ref
    return ((a.double() - ref.double()).norm() / ref.double().norm()).item()


def wide(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.complex128 if t.is_complex() else F64)


def slow_system(complex_modes: bool, L: int = L_DIAG, H: int = 4, N: int = 16, seed: int = 1):
    """u (1, L, H) and float32 (Ā, B̄, C) with |λ| = 1 - [1e-5, 1e-4] (memory 1e4 to 1e5 steps, LRU-like), B̄ scaled by
    √(1 - |λ|²), and a fixed output weight w (1, L, H)."""
    g = torch.Generator().manual_seed(seed)
    r = 1 - 1e-5 * (1 + 9 * torch.rand(H, N, generator=g, dtype=F64))
    if complex_modes:
        A = torch.polar(r, 0.05 * torch.rand(H, N, generator=g, dtype=F64)).to(torch.complex64)
        B = (torch.randn(H, N, dtype=torch.complex128, generator=g) * (1 - r**2).sqrt()).to(torch.complex64)
        C = torch.randn(H, N, dtype=torch.complex128, generator=g).to(torch.complex64)
    else:
        A = r.float()
        B = ((1 - r**2).sqrt() * torch.randn(H, N, generator=g, dtype=F64)).float()
        C = torch.randn(H, N, generator=g, dtype=F64).float()
    u = torch.randn(1, L, H, generator=g)
    w = torch.randn(1, L, H, generator=g)
    return u, A, B, C, w


def gradients(fn, u, A, B, C, w, to_wide: bool):
    """y, the final state and ∂(Σ w ⊙ y)/∂(u, Ā, B̄, C) of ``fn`` (in float64 when ``to_wide``)."""
    cast = wide if to_wide else (lambda t: t)
    params = [cast(t).detach().requires_grad_(True) for t in (u, A, B, C)]
    y, x = fn(*params)
    (y * cast(w)).sum().backward()
    return y.detach(), x.detach(), [p.grad for p in params]


@pytest.fixture(scope="module")
def complex_case():
    u, A, B, C, w = slow_system(True)
    return (u, A, B, C, w), gradients(ssm_scan_reference, u, A, B, C, w, to_wide=True)


def test_chunked_scan_output_and_state_near_unit_circle(complex_case):
    (u, A, B, C, _), (y64, x64, _) = complex_case
    with torch.no_grad():
        y, x = ssm_scan(u, A, B, C, backend="chunked")
    assert rel(y, y64) < 8e-7  # was 1.4e-6; now 2.9e-7 (the float32 loop itself: 3.0e-6)
    assert rel(x, x64) < 1e-6  # was 2.4e-6; now 3.3e-7


def test_chunked_scan_gradients_near_unit_circle(complex_case):
    (u, A, B, C, w), (_, _, grads64) = complex_case
    _, _, grads = gradients(lambda *p: ssm_scan(*p, backend="chunked"), u, A, B, C, w, to_wide=False)
    errors = {name: rel(g, g64) for name, g, g64 in zip(("u", "A_bar", "B_bar", "C"), grads, grads64)}
    # were u 1.5e-6, Ā 3.4e-6, B̄ 1.8e-6, C 1.5e-6; now 3.2e-7, 3.4e-7, 4.3e-7, 2.8e-7
    assert max(errors.values()) < 1e-6, errors


def test_fft_path_final_state_near_unit_circle(complex_case):
    (u, A, B, C, _), (y64, x64, _) = complex_case
    with torch.no_grad():
        y, x = ssm_scan(u, A, B, C, backend="fft")
    assert rel(x, x64) < 1e-6  # was 2.3e-6; now 2.4e-7
    assert rel(y, y64) < 1e-6  # the FFT output was not affected (3.5e-7)


def test_chunked_scan_real_modes_near_one():
    u, A, B, C, _ = slow_system(False)
    with torch.no_grad():
        y64, x64 = ssm_scan_reference(wide(u), wide(A), wide(B), wide(C))
        y, x = ssm_scan(u, A, B, C, backend="chunked")
    assert rel(y, y64) < 4e-7  # was 8.8e-7; now 1.4e-7
    assert rel(x, x64) < 1e-6  # was 2.7e-6; now 3.0e-7


@pytest.mark.skipif(
    not (native_available("ssd", torch.float32)), reason="the native backend runs where a C compiler builds it"
)
def test_ssd_native_decay_gradient_summed_in_double():
    L, H, P, N = 32768, 16, 4, 8
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, L, H, P, generator=g, dtype=F64)  # inputs of one sign: every step's ∂a_t has the same sign
    dt = 1e-3 * (1 + torch.rand(1, L, H, generator=g, dtype=F64))
    A = -torch.linspace(0.5, 1.0, H, dtype=F64)
    B = torch.rand(1, L, 1, N, generator=g, dtype=F64)
    C = torch.rand(1, L, 1, N, generator=g, dtype=F64)

    def grad_A(dtype: torch.dtype, backend: str) -> torch.Tensor:
        args = [t.float().to(dtype).requires_grad_(True) for t in (x, dt, A, B, C)]
        y, _ = ssd(*args, backend=backend)
        y.sum().backward()
        return args[2].grad

    ref = grad_A(F64, "chunked")
    assert rel(grad_A(torch.float32, "native"), ref) < 1e-6  # was 3.3e-6 (a float32 running sum); now 1.9e-7
