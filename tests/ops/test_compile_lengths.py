"""torch.compile of the chunked diagonal scan at many lengths (compile2, docs/design.md "Compiled S4 and
length-generic compiles"): its carry loops ran ⌈√nc⌉ and nc/G times and the last chunk's remainder indexed the power
table, so every new length compiled a new graph (EMA, Mega). Under torch.compile the carry is now a doubling scan
(``ops.chunked._carry_doubling``: groups of 8 chunks, the group ends carried by doubling) and the remainder a number in
the graph: one graph per octave of the group count. Checked with ``fullgraph=True`` at 9 lengths against the float64
loop (``ssm_scan_reference``) and eager."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import ssmkit.ops.chunked as chunked
from ssmkit.ops.chunked import _carry, _carry_doubling, ssm_scan_chunked
from ssmkit.ops.scan import ssm_scan_reference
from tests.conftest import rel_err

# under torch.compile the scan runs nc = (L + 2T - 1) // T chunks (the last all padding) in ng = (nc + 15) // 8 groups:
# at T = 16, ng = 2, 2, 2, 2, 2, 3, 3, 6, 11 -> a static first graph, then one per octave (1, 2], (2, 4], (4, 8], (8, 16]
LENGTHS = (9, 30, 40, 64, 65, 128, 200, 600, 1200)


@pytest.fixture(autouse=True)
def _length_generic(monkeypatch):
    """The length-generic compiled scan is opt-in (``ops.chunked.LENGTH_GENERIC_COMPILE``, off by default: it costs
    compiled training at a fixed length ~1/3 more time)."""
    monkeypatch.setattr(chunked, "LENGTH_GENERIC_COMPILE", True)


def _system(complex_modes: bool, H: int = 3, N: int = 4):
    g = torch.Generator().manual_seed(0)
    if complex_modes:
        A = torch.polar(torch.rand(H, N, generator=g, dtype=torch.float64) * 0.3 + 0.65,
                        torch.rand(H, N, generator=g, dtype=torch.float64))
        B = torch.randn(H, N, generator=g, dtype=torch.complex128)
        C = torch.randn(H, N, generator=g, dtype=torch.complex128)
    else:
        A = torch.rand(H, N, generator=g, dtype=torch.float64) * 0.3 + 0.65
        B = torch.randn(H, N, generator=g, dtype=torch.float64)
        C = torch.randn(H, N, generator=g, dtype=torch.float64)
    return A, B, C


@pytest.mark.parametrize("complex_modes", [False, True], ids=["real", "complex"])
def test_the_compiled_chunked_scan_compiles_once_per_octave_of_the_chunk_count(complex_modes):
    A, B, C = _system(complex_modes)
    D = torch.randn(3, dtype=torch.float64)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")

    def fn(u, x0):
        return ssm_scan_chunked(u, A, B, C, x0, D, chunk_size=16)

    compiled = torch.compile(fn, backend=counter, fullgraph=True)
    for L in LENGTHS:
        u = torch.randn(2, L, 3, dtype=torch.float64)
        x0 = 0.5 * torch.randn(2, 3, 4, dtype=A.dtype)
        y, h = compiled(u, x0)
        y_ref, h_ref = ssm_scan_reference(u, A, B, C, x0, D)
        y_eager, h_eager = fn(u, x0)
        assert rel_err(y, y_ref) < 1e-12 and rel_err(h, h_ref) < 1e-12
        assert rel_err(y, y_eager) < 1e-12 and rel_err(h, h_eager) < 1e-12
    assert counter.frame_count == 5  # one per length (9) before


def test_the_doubling_carry_equals_the_two_level_carry():
    """``_carry_doubling`` against ``_carry`` (eager) with and without an initial state, nc from 1 to 70 (1 to 10
    groups)."""
    g = torch.Generator().manual_seed(1)
    A_T = torch.rand(2, 3, generator=g, dtype=torch.float64) * 0.5 + 0.45
    for nc in (1, 2, 3, 7, 8, 9, 33, 70):
        z = torch.randn(2, 4, nc, 3, generator=g, dtype=torch.float64)
        for x0 in (None, torch.randn(2, 4, 3, generator=g, dtype=torch.float64)):
            prev, last = _carry_doubling(z, A_T, x0)
            prev_ref, last_ref = _carry(z, A_T, x0)
            assert rel_err(prev, prev_ref) < 1e-13 and rel_err(last, last_ref) < 1e-13
