"""Float32 accuracy of the chunked linear recurrence at long L, for slow oscillating modes (probe 11).

h_t = a ⊙ h_{t-1} + b_t with a time-invariant complex gate |a| = e^{-1e-4} (memory ~1e4 steps) and phases 0.3..3 rad,
the modes of LRU (arXiv 2303.06349, eq. 1) and S5 near the unit circle. The oracle is the float64 loop on the SAME
gate (the complex64 value widened), so the float32 rounding of a itself is not counted: what is left is the scan's
own error. The chunked scan used to carry across chunks in float32 with the chunk power a^T rounded once, an error
that multiplied the state at every carry; on 8 such modes (B 2, norm-wise relative) it grew 4e-6 (L = 1024) ->
1.5e-5 (4096) -> 4.5e-5 (16 384) while the float32 loop stayed at 1e-6 -> 1.5e-6 -> 2.3e-6. With the carry in
float64 it measures 3.7e-7 at every L (scripts/float32_long_accuracy.py, docs/benchmarks.md "Float32 accuracy at
long L (probe 11)").
"""

from __future__ import annotations

import torch

from ssmkit.ops.recurrence import linear_recurrence_chunked, linear_recurrence_reference
from tests.conftest import rel_err

L = 4096  # 64 carries of T = 64: the old carry error was already 10x the float32 loop's here
H = 6


def slow_modes() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """a (H,) complex64 with |a| = e^{-1e-4}, b and the output weights w (2, L, H) complex64."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.linspace(0.3, 3.0, H, dtype=torch.float64)
    a = torch.exp(torch.complex(torch.full((H,), -1e-4, dtype=torch.float64), theta)).to(torch.complex64)
    b = torch.randn(2, L, H, generator=gen, dtype=torch.complex64)
    w = torch.randn(2, L, H, generator=gen, dtype=torch.complex64)
    return a, b, w


def run(scan, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor):
    """States and the gradients of Re Σ conj(w) h with respect to b and a."""
    a = a.clone().requires_grad_()
    b = b.clone().requires_grad_()
    h, _ = scan(a, b)
    (h * w.to(h.dtype).conj()).real.sum().backward()
    return h.detach(), b.grad, a.grad


def test_chunked_float32_is_as_accurate_as_the_float32_loop_on_slow_modes():
    a, b, w = slow_modes()
    wide = lambda t: t.to(torch.complex128)  # noqa: E731
    h64, db64, da64 = run(linear_recurrence_reference, wide(a), wide(b), w)
    h32, db32, da32 = run(lambda a, b: linear_recurrence_chunked(a, b, chunk_size=64), a, b, w)
    loop32, _, _ = run(linear_recurrence_reference, a, b, w)
    # errors are rel_err's max |error| / max |oracle| (the norm-wise figures in the module docstring are lower)
    loop_err = rel_err(loop32, h64)  # the float32 loop's own rounding: measured 1.5e-6
    # states: no worse than the plain float32 loop (measured 9.6e-7 against the loop's 1.5e-6; 2.9e-5 before)
    assert rel_err(h32, h64) <= loop_err
    # gradients run the same scan in reverse (the adjoint): measured 6.6e-7 (db) and 3.2e-7 (da); 2.9e-5 and 3.8e-5
    # before. 2e-6 = about the float32 loop's error at this L
    assert rel_err(db32, db64) < 2e-6
    assert rel_err(da32, da64) < 2e-6


def test_float64_carry_is_unchanged_in_float64():
    """A float64 scan stays float64 throughout (its states equal the loop's to rounding)."""
    a, b, _ = slow_modes()
    a, b = a.to(torch.complex128), b.to(torch.complex128)
    h, h_last = linear_recurrence_chunked(a, b, chunk_size=64)
    ref, ref_last = linear_recurrence_reference(a, b)
    assert h.dtype == torch.complex128 and h_last.dtype == torch.complex128
    assert rel_err(h, ref) < 1e-12  # observed ~1e-15; float64 sums in another order
    assert rel_err(h_last, ref_last) < 1e-12
