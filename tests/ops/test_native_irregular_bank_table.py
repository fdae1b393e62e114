"""The gap tables of the irregularly sampled bank's C kernel (``ssmkit/ops/native/irregular_bank.c``; S4D arXiv
2206.11893, DSS arXiv 2203.14343, Mega's EMA arXiv 2209.10655): a row whose gaps take few distinct values has each
value's coefficients formed once and looked up per step. Here: the rows' distinct gaps and indices against numpy's
unique per row, and the rule; the table path bit for bit equal to the per-step path (outputs, final state and every
gradient, the gaps' included), complex and real modes, both rules, both precisions, one distinct gap, few, a table as
long as the sequence, rows of either kind in one call; the kernel reading the table's gaps (not τ); the float64 loop
of :func:`ssmkit.ops.irregular_bank.bank_irregular_scan_reference` at 1e-12; gradcheck; threads; torch.compile.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmkit.ops.irregular_bank import bank_irregular_scan, bank_irregular_scan_reference
from ssmkit.ops.native import irregular_bank as nib
from ssmkit.ops.native.gate import native_status
from ssmkit.ops.native.irregular_bank import bank_unchecked, gap_table
from tests.conftest import DEVICE

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="a CPU kernel")
F64 = torch.float64
COMPLEX = {torch.float32: torch.complex64, F64: torch.complex128}
NAMES = ["y", "x_L", "du", "dLambda", "dB", "dC", "ddt", "dtau", "dD", "dx0"]


def _kernel_ok(dtype) -> None:
    ok, why = native_status("bank_irregular", dtype)
    if not ok:
        pytest.skip(f"the native kernel cannot run here: {why}")


def _gaps(Bsz, L, distinct, g):
    """(B, L) float64 gaps: row b draws from ``distinct[b]`` values (each value at least once; None: every step its own
    gap in [0.05, 3])."""
    rows = []
    for b in range(Bsz):
        if distinct[b] is None:
            rows.append(0.05 + 2.95 * torch.rand(L, generator=g, dtype=F64))
            continue
        values = torch.tensor([1.0, 2.0, 3.0, 0.5, 4.0, 1.5, 7.0, 0.25][: distinct[b]], dtype=F64)
        row = values[torch.randint(0, distinct[b], (L,), generator=g)]
        row[: distinct[b]] = values  # every value present: K_b = distinct[b]
        rows.append(row[torch.randperm(L, generator=g)])
    return torch.stack(rows)


def _problem(Bsz, L, H, M, distinct, real=False, seed=0):
    """A bank in float64 with the gaps of :func:`_gaps`: u, Λ (Re in [-1.1, -0.1], Im up to ±12; real modes: Re only),
    B, C, Δ in [0.02, 1.02], τ, D, x0."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    c = (lambda *s: r(*s)) if real else (lambda *s: torch.complex(r(*s), r(*s)))  # noqa: E731
    re = -0.1 - torch.rand(H, M, generator=g, dtype=F64)
    lam = re if real else torch.complex(re, 4 * r(H, M))
    dt = 0.02 + torch.rand(H, generator=g, dtype=F64)
    return [r(Bsz, L, H), lam, c(H, M), c(H, M), dt, _gaps(Bsz, L, distinct, g), r(H), c(Bsz, H, M)]


def _cast(args, dtype):
    return [a.to(COMPLEX[dtype] if a.is_complex() else dtype) for a in args]


def _grads(fn, args):
    """fn's (y, x_L) and the gradients of a loss reading both (weights across time: every step counts differently)."""
    leaves = [a.clone().requires_grad_() for a in args]
    y, h = fn(*leaves)
    weight = torch.linspace(-1, 1, y.shape[1], dtype=y.dtype).view(1, -1, 1)
    loss = (y * weight).square().sum() + h.abs().square().sum()
    return [y.detach(), h.detach(), *torch.autograd.grad(loss, leaves)]


def _kernel(rule):
    return lambda *a: bank_unchecked(*a[:7], rule, a[7], True)


def _per_step(monkeypatch):
    """No row takes a table (the rule's ratio past any K)."""
    monkeypatch.setattr(nib, "TABLE_RATIO", 1 << 40)


def test_gap_table_finds_each_rows_distinct_gaps_and_indices_as_numpy_unique():
    g = torch.Generator().manual_seed(1)
    L = 64
    tau = _gaps(4, L, [1, 3, 8, None], g)
    tau[1, 5], tau[1, 9] = 0.0, -0.0  # apart by their bits: a fourth and a fifth value in row 1
    tab = gap_table(tau, 4, False)
    for b in range(4):
        bits = tau[b].view(torch.int64).numpy()
        values, inverse = np.unique(bits, return_inverse=True)
        K = len(values)
        want_count = K if K * 8 <= L else 0  # TABLE_RATIO = 8; 4 modes: far below TABLE_BYTES
        assert int(tab.count[b]) == want_count, b
        got = tab.gaps[b].view(torch.int64).numpy()
        # the row's first K entries are its distinct gaps (bit patterns), each step's index points at its own gap
        assert sorted(got[:K].tolist()) == sorted(values.tolist()) and not got[K:].any()
        assert np.array_equal(got[tab.index[b].numpy()], bits)
        assert np.array_equal(np.unique(tab.index[b].numpy()), np.arange(K))
        assert np.array_equal(values[inverse], got[tab.index[b].numpy()])
    assert tab.index.dtype == torch.int32 and tab.count.tolist() == [1, 5, 8, 0]


def test_the_rule_bounds_k_by_the_length_and_the_table_by_its_bytes():
    g = torch.Generator().manual_seed(2)
    tau = _gaps(1, 64, [8], g)
    assert gap_table(tau, 4, False).count.tolist() == [8]  # K = 8 = L/8
    assert gap_table(tau[:, :63].contiguous(), 4, False).count.tolist() == [0]  # K = 8 > 63/8
    assert gap_table(tau[:, :7].contiguous(), 4, False) is None  # L < 8: no row can take a table
    # 8 gaps of 6 sections (3 real) of M modes × 8 lanes × 8 bytes within TABLE_BYTES (4 MiB): M ≤ 1365 (real 2730)
    assert nib.TABLE_BYTES == 4 << 20
    assert gap_table(tau, 1365, False).count.tolist() == [8]
    assert gap_table(tau, 1366, False).count.tolist() == [0]
    assert gap_table(tau, 2730, True).count.tolist() == [8]
    assert gap_table(tau, 2731, True).count.tolist() == [0]


@pytest.mark.parametrize("real", [False, True], ids=["complex", "real"])
@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_table_path_is_bit_for_bit_the_per_step_path(real, rule, dtype, monkeypatch):
    # rows of 1, 3 and 8 distinct gaps take tables (L = 150: three spans of the backward, the last of 22 steps; 19
    # channels: blocks of 8 or 4 with a tail); the fourth row, every step its own gap, the per-step path in both runs
    _kernel_ok(dtype)
    args = _cast(_problem(4, 150, 19, 3, [1, 3, 8, None], real), dtype)
    assert gap_table(args[5].to(F64).contiguous(), 3, real).count.tolist() == [1, 3, 8, 0]
    table = _grads(_kernel(rule), args)
    _per_step(monkeypatch)
    step = _grads(_kernel(rule), args)
    for name, a, b in zip(NAMES, table, step):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("real", [False, True], ids=["complex", "real"])
@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
def test_a_table_as_long_as_the_sequence_is_still_the_per_step_path(real, rule, monkeypatch):
    # every step its own gap and the rule opened to K = L: a table of 70 entries, one per step
    _kernel_ok(F64)
    args = _problem(2, 70, 9, 2, [None, None], real, seed=4)
    monkeypatch.setattr(nib, "TABLE_RATIO", 1)
    assert gap_table(args[5], 2, real).count.tolist() == [70, 70]
    table = _grads(_kernel(rule), args)
    _per_step(monkeypatch)
    step = _grads(_kernel(rule), args)
    for name, a, b in zip(NAMES, table, step):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("real", [False, True], ids=["complex", "real"])
def test_the_kernel_steps_by_the_tables_gaps(real, monkeypatch):
    # the tables handed to the kernel hold twice each gap: the rows that take them then run the bank of 2τ (the
    # outputs, the final state and ∂u against the loop at 2τ), the per-step row its own τ
    _kernel_ok(F64)
    args = _problem(3, 80, 11, 2, [2, 5, None], real, seed=5)
    true_table = gap_table

    def doubled(tau, modes, real_modes):
        tab = true_table(tau, modes, real_modes)
        return tab._replace(gaps=2 * tab.gaps)

    monkeypatch.setattr(nib, "gap_table", doubled)
    got = _grads(_kernel("zoh"), args)
    tau2 = args[5].clone()
    tau2[:2] *= 2
    want = _grads(lambda *a: bank_irregular_scan_reference(*a[:7], "zoh", a[7]), [*args[:5], tau2, *args[6:]])
    for name, a, b in list(zip(NAMES, got, want))[:3]:
        assert torch.allclose(a, b, rtol=1e-11, atol=1e-11), name


@pytest.mark.parametrize("real", [False, True], ids=["complex", "real"])
@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_table_path_matches_the_float64_loop_with_every_gradient(real, rule, dtype):
    _kernel_ok(dtype)
    # rows of 1 and 4 distinct gaps (tables) and one of 130 (per step: the fallback) in one call
    args = _problem(3, 130, 13, 3, [1, 4, None], real, seed=6)
    assert gap_table(args[5], 3, real).count.tolist() == [1, 4, 0]
    want = _grads(lambda *a: bank_irregular_scan_reference(*a[:7], rule, a[7]), args)
    got = _grads(_kernel(rule), _cast(args, dtype))
    tol = 1e-12 if dtype == F64 else 1e-5  # relative to each quantity's largest entry (float32: state kept in double)
    for name, a, b in zip(NAMES, got, want):
        assert a.dtype == (COMPLEX[dtype] if b.is_complex() else dtype), name
        err = (a.to(b.dtype) - b).abs().max() / b.abs().max()
        assert err < tol, (name, float(err))


@pytest.mark.parametrize("real", [False, True], ids=["complex", "real"])
@pytest.mark.parametrize("rule", ["zoh", "bilinear"])
def test_gradcheck_through_the_tables(real, rule):
    # L = 24: rows of 2 and 3 distinct gaps take tables (K ≤ 3); a gap perturbed by gradcheck is one more value
    _kernel_ok(F64)
    args = _problem(2, 24, 3, 2, [2, 3], real, seed=7)
    assert gap_table(args[5], 2, real).count.tolist() == [2, 3]
    leaves = [a.clone().requires_grad_() for a in args]

    def f(*a):
        y, h = bank_unchecked(*a[:7], rule, a[7], True)
        return y, torch.view_as_real(h) if h.is_complex() else h

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_threads_give_the_one_thread_result_bit_for_bit_with_tables(monkeypatch):
    _kernel_ok(F64)
    args = _problem(3, 70, 21, 2, [1, 3, None], seed=8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    one = _grads(_kernel("zoh"), args)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    for name, a, b in zip(NAMES, _grads(_kernel("zoh"), args), one):
        assert torch.equal(a, b), name


def test_the_public_op_under_torch_compile_takes_the_tables():
    _kernel_ok(torch.float32)
    args64 = _problem(2, 40, 6, 2, [2, 3], seed=9)
    args = _cast(args64, torch.float32)

    def loss(u, a, scan):
        return scan(u, *a[1:7], "zoh", a[7])[0].square().sum()

    native = lambda *a: bank_irregular_scan(*a, backend="native")  # noqa: E731
    u = args[0].clone().requires_grad_()
    got = torch.compile(lambda u: loss(u, args, native), backend="aot_eager", fullgraph=True)(u)
    (g_got,) = torch.autograd.grad(got, u)
    u64 = args64[0].clone().requires_grad_()
    want = loss(u64, args64, bank_irregular_scan_reference)
    (g_want,) = torch.autograd.grad(want, u64)
    assert abs(float(got.detach()) - float(want.detach())) <= 1e-5 * float(want.detach())
    assert (g_got.double() - g_want).abs().max() <= 1e-5 * g_want.abs().max()
