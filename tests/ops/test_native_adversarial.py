"""Adversarial checks of the C kernels of Mamba-2's SSD scan, the gated grouped RMSNorm and the RG-LRU against their
PyTorch references, where tests/ops/test_ssd_native.py, test_gated_norm.py and test_rglru_native.py do not reach:
sizes of 1 and odd sizes (P, N, E, H off the vector widths, lengths off the recompute chunk), float32 and float64,
gradients wanted for only some inputs, strided, transposed and expanded (stride 0) views, empty dimensions, extreme
and non-finite values (NaN and inf where the reference puts them), and 1 against 2 real threads (bit for bit).

Every comparison is against the reference path run in float64 on the same values: float64 within 1e-10, float32
within 2e-5 of the scale (rel_err)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from ssmkit.ops.gated_norm import gated_rmsnorm, gated_rmsnorm_reference
from ssmkit.ops.native import native_available, ssd_native
from ssmkit.ops.rglru import rglru, rglru_torch
from ssmkit.ops.ssd import ssd, ssd_reference
from tests.conftest import DEVICE, rel_err

F64, F32 = torch.float64, torch.float32
TOL = {F64: 1e-10, F32: 2e-5}
pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu" or not all(native_available(op, dtype) for op in ("ssd", "gated_norm", "rglru")
                                    for dtype in (F32, F64)),
    reason="the native backend runs on the CPU where a C compiler builds it",
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _leaves(ts, req, dtype):
    """Fresh leaves of ``ts`` in ``dtype`` (None stays None), requiring a gradient where ``req`` says so."""
    return [None if t is None else t.detach().to(dtype).clone().requires_grad_(bool(r)) for t, r in zip(ts, req)]


def _outputs_and_grads(outs, weights, leaves):
    """outs, then the gradients of Σ outs ⊙ weights for the leaves that want one (in order)."""
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    loss = sum((o * w.to(o.dtype)).sum() for o, w in zip(outs, weights))
    return [*outs, *(torch.autograd.grad(loss, wanted) if wanted else [])]


@pytest.fixture
def two_threads():
    """torch's real thread count set to 1, then 2, by the test (restored afterwards)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------------------ SSD


def ssd_inputs(Bsz, L, H, P, G, N, seed=0):
    """x, Δ, A, B, C, h0 in float64: Δ = softplus(noise), A in [-3.5, -0.5]."""
    g = _gen(seed)
    x = torch.randn(Bsz, L, H, P, generator=g, dtype=F64)
    dt = F.softplus(torch.randn(Bsz, L, H, generator=g, dtype=F64))
    A = -(torch.rand(H, generator=g, dtype=F64) * 3 + 0.5)
    B, C = (torch.randn(Bsz, L, G, N, generator=g, dtype=F64) for _ in range(2))
    h0 = torch.randn(Bsz, H, P, N, generator=g, dtype=F64)
    return [x, dt, A, B, C, h0]


def ssd_weights(Bsz, L, H, P, N, seed=1):
    g = _gen(seed)
    return torch.randn(Bsz, L, H, P, generator=g, dtype=F64), torch.randn(Bsz, H, P, N, generator=g, dtype=F64)


def ssd_compare(ins, req, dtype, chunk_size=None):
    """max rel_err of y, the final state and the wanted gradients: the kernel in ``dtype`` against the float64 loop."""
    Bsz, L, H, P = ins[0].shape
    weights = ssd_weights(Bsz, L, H, P, ins[3].shape[3])
    ref = _leaves(ins, req, F64)
    want = _outputs_and_grads(ssd_reference(*ref), weights, ref)
    mine = _leaves(ins, req, dtype)
    got = _outputs_and_grads(ssd_native(*mine, chunk_size=chunk_size), weights, mine)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == dtype and a.shape == b.shape
    return max(rel_err(a, b) for a, b in zip(got, want))


# (B, L, H, P, G, N): sizes of 1 everywhere; one channel block plus one channel (65); 127 and 129 channels (a block
# and a tail of 63 or 1) with N = 33 (off 8 and 16); L = 65 (one step past the default chunk) with N = 65; one head
# per group (G = H = 8); 12 heads in 4 groups of 3; L = 130 with tiny P and N
SSD_SHAPES = [(1, 1, 1, 1, 1, 1), (1, 1, 1, 65, 1, 1), (3, 5, 4, 1, 4, 1), (1, 7, 1, 129, 1, 33),
              (1, 4, 2, 127, 2, 3), (2, 65, 2, 8, 1, 65), (1, 9, 6, 7, 2, 129), (2, 64, 8, 3, 8, 9),
              (1, 5, 12, 5, 4, 3), (1, 130, 1, 2, 1, 2)]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("chunk", [None, 1, 3], ids=["default-chunk", "chunk-1", "chunk-3"])
@pytest.mark.parametrize("shape", SSD_SHAPES, ids=[str(s) for s in SSD_SHAPES])
def test_ssd_odd_sizes_equal_the_loop_with_every_gradient(shape, chunk, dtype):
    assert ssd_compare(ssd_inputs(*shape), [1] * 6, dtype, chunk) < TOL[dtype]


SSD_SUBSETS = [r for r in itertools.product((0, 1), repeat=6) if any(r)]


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "from-rest"])
def test_ssd_gradients_for_every_subset_of_the_inputs(with_h0):
    """Each of the 63 (31 without h0) subsets of (x, Δ, A, B, C, h0) wanting a gradient, float64: the kernel's
    gradients of that subset against the loop's gradients of all inputs."""
    ins = ssd_inputs(2, 11, 4, 66, 2, 5)
    if not with_h0:
        ins[5] = None
    weights = ssd_weights(2, 11, 4, 66, 5)
    ref = _leaves(ins, [1] * 6, F64)
    y, h, *grads = _outputs_and_grads(ssd_reference(*ref), weights, ref)
    for req in SSD_SUBSETS:
        if not with_h0 and (req[5] or not any(req[:5])):
            continue
        mine = _leaves(ins, req, F64)
        got = _outputs_and_grads(ssd_native(*mine), weights, mine)
        want = [y, h, *(gr for gr, r in zip(grads, req) if r)]
        assert len(got) == len(want) and max(rel_err(a, b) for a, b in zip(got, want)) < 1e-12, req


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_ssd_strided_transposed_and_expanded_inputs(dtype):
    """x a permuted view, Δ expanded over time (stride 0), A every other element, B expanded over groups, C every other
    state, h0 transposed: the same values and gradients (into the un-viewed leaves) as the loop on those views."""
    Bsz, L, H, P, G, N = 2, 9, 4, 5, 2, 3
    g = _gen(0)
    base = [torch.randn(L, Bsz, P, H, generator=g, dtype=F64), torch.rand(Bsz, 1, H, generator=g, dtype=F64) + 0.1,
            -torch.rand(2 * H, generator=g, dtype=F64) - 0.2, torch.randn(Bsz, L, 1, N, generator=g, dtype=F64),
            torch.randn(Bsz, L, G, 2 * N, generator=g, dtype=F64), torch.randn(Bsz, H, N, P, generator=g, dtype=F64)]

    def views(x, dt, A, B, C, h0):
        return (x.permute(1, 0, 3, 2), dt.expand(Bsz, L, H), A[::2], B.expand(Bsz, L, G, N), C[..., 1::2],
                h0.transpose(-1, -2))

    gy, gh = ssd_weights(Bsz, L, H, P, N)
    out = []
    for backend, dt_ in (("native", dtype), ("reference", F64)):
        leaves = _leaves(base, [1] * 6, dt_)
        y, h = ssd(*views(*leaves), backend=backend)
        out.append(_outputs_and_grads([y, h], [gy, gh], leaves))
    for a, b in zip(*out):
        assert rel_err(a, b) < TOL[dtype]


@pytest.mark.parametrize("shape", [(1, 5, 0, 3, 1, 4), (1, 5, 2, 0, 1, 4), (2, 5, 2, 3, 1, 0)],
                         ids=["H=0", "P=0", "N=0"])
def test_ssd_empty_heads_channels_or_states_work_like_the_loop(shape):
    ins = ssd_inputs(*shape)
    assert ssd_compare(ins, [1] * 6, F64) == 0.0


@pytest.mark.parametrize("shape", [(0, 5, 2, 3, 1, 4), (1, 0, 2, 3, 1, 4)], ids=["B=0", "L=0"])
def test_ssd_empty_batch_or_length_raise_value_error(shape):
    ins = ssd_inputs(*shape)
    with pytest.raises(ValueError, match="B, L >= 1"):
        ssd_native(*ins)
    with pytest.raises(ValueError, match="B, L >= 1"):
        ssd(*ins, backend="native")


def _set(index, value, where=None):
    def edit(ts):
        t = ts[index].clone()
        if where is None:
            t.fill_(value)
        else:
            t[where] = value
        ts[index] = t
        return ts
    return edit


# values the reference handles without overflow in float32 (A·Δ ≤ 0): saturated and vanishing decays, A = 0, and a
# NaN or inf in each input, which must land where the reference puts it (and nowhere else)
SSD_EXTREMES = {
    "dt=1e4": _set(1, 1e4), "dt=1e-30": _set(1, 1e-30), "A=0": _set(2, 0.0), "A=-1e-12": _set(2, -1e-12),
    "A=-1e6": _set(2, -1e6), "A*dt=-87.5": lambda ts: _set(2, -87.5)(_set(1, 1.0)(ts)),
    "A*dt=-100": lambda ts: _set(2, -100.0)(_set(1, 1.0)(ts)), "x=nan": _set(0, float("nan"), (0, 3, 1, 2)),
    "x=inf": _set(0, float("inf"), (0, 3, 1, 2)), "dt=nan": _set(1, float("nan"), (0, 3, 1)),
    "dt=inf": _set(1, float("inf"), (0, 3, 1)), "A=nan": _set(2, float("nan"), (1,)),
    "A=-inf": _set(2, float("-inf"), (1,)), "B=nan": _set(3, float("nan"), (0, 4, 0, 1)),
    "C=inf": _set(4, float("inf"), (0, 4, 0, 1)), "h0=nan": _set(5, float("nan"), (0, 1, 2, 3)),
}


def _same_non_finite_and_close(a, b, tol):
    """NaN and inf (with its sign) where the reference b has them; the finite values within tol of their scale, or of
    1e-30 (float32's kernel exponential is 0 below e^-88, where float32 has denormals down to 1e-45)."""
    a, b = a.detach().double(), b.detach()
    assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf())
    assert torch.equal(a[a.isinf()], b[b.isinf()])
    finite = a.isfinite()
    if finite.any():
        assert float((a[finite] - b[finite]).abs().max()) <= tol * max(float(b[finite].abs().max()), 1e-30)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(SSD_EXTREMES), ids=list(SSD_EXTREMES))
def test_ssd_extreme_and_non_finite_values_follow_the_reference(case, dtype):
    ins = SSD_EXTREMES[case](ssd_inputs(1, 12, 3, 5, 1, 4))
    ins = [t.to(dtype).double() for t in ins]  # values representable in both dtypes
    weights = ssd_weights(1, 12, 3, 5, 4)
    ref = _leaves(ins, [1] * 6, F64)
    want = _outputs_and_grads(ssd_reference(*ref), weights, ref)
    mine = _leaves(ins, [1] * 6, dtype)
    got = _outputs_and_grads(ssd_native(*mine), weights, mine)
    for a, b in zip(got, want):
        _same_non_finite_and_close(a, b, TOL[dtype])


def test_ssd_float32_growth_past_the_largest_exponential_overflows_like_the_reference():
    one = torch.ones(1, 1, 1, 1, dtype=F32)
    y, h = ssd_native(one, torch.ones(1, 1, 1, dtype=F32), torch.tensor([100.0]), one, one, one)
    y_ref, h_ref = ssd_reference(one, torch.ones(1, 1, 1, dtype=F32), torch.tensor([100.0]), one, one, one)
    assert torch.isinf(y_ref).all() and torch.isinf(h_ref).all()
    assert torch.equal(y, y_ref) and torch.equal(h, h_ref)  # got 1.6516e38, finite


def test_ssd_one_and_two_threads_agree_bit_for_bit(two_threads):
    ins = [t.float() for t in ssd_inputs(3, 50, 6, 70, 3, 9)]
    weights = ssd_weights(3, 50, 6, 70, 9)
    runs = []
    for n in (1, 2):
        torch.set_num_threads(n)
        leaves = _leaves(ins, [1] * 6, F32)
        runs.append(_outputs_and_grads(ssd_native(*leaves, chunk_size=16), weights, leaves))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_ssd_gradient_of_the_output_alone_and_reuse_of_the_graph():
    """Only y used (the final state's gradient absent), then a second backward through the same graph."""
    ins = ssd_inputs(2, 19, 3, 70, 1, 6)
    gy, _ = ssd_weights(2, 19, 3, 70, 6)
    ref = _leaves(ins, [1] * 6, F64)
    want = torch.autograd.grad((ssd_reference(*ref)[0] * gy).sum(), ref)
    mine = _leaves(ins, [1] * 6, F64)
    loss = (ssd_native(*mine, chunk_size=4)[0] * gy).sum()
    for _ in range(2):
        got = torch.autograd.grad(loss, mine, retain_graph=True)
        for a, b in zip(got, want):
            assert rel_err(a, b) < 1e-12


def test_tied_inputs_equal_the_references():
    """One tensor in several arguments (B is C in the SSD; y, z and x in the norm; x, r and i in the RG-LRU): the
    gradients of each use add up as on the reference paths."""
    x, dt, A, B, _, h0 = ssd_inputs(2, 9, 4, 3, 2, 5)
    gy, gh = ssd_weights(2, 9, 4, 3, 5)
    runs = []
    for backend in ("native", "reference"):
        leaves = _leaves([x, dt, A, B, h0], [1] * 5, F64)
        y, h = ssd(*leaves[:4], leaves[3], leaves[4], backend=backend)
        runs.append(_outputs_and_grads([y, h], [gy, gh], leaves))
        (y_, z_, w_, x_, D_), gout = norm_inputs((3,), 8)
        leaves = _leaves([y_, w_, D_], [1] * 3, F64)
        o = gated_rmsnorm(leaves[0], leaves[0], leaves[1], 2, 1e-5, False, leaves[0], leaves[2], backend=backend)
        runs[-1] += _outputs_and_grads([o], [gout], leaves)
        (xr, _, _, Lam, _), _, weights = rglru_inputs(2, 7, 5)
        leaves = _leaves([xr.sigmoid(), Lam], [1] * 2, F64)
        h, last = rglru(leaves[0], leaves[0], leaves[0], leaves[1], 8.0, None, None, backend=backend)
        runs[-1] += _outputs_and_grads([h, last], weights, leaves)
    for a, b in zip(*runs):
        assert rel_err(a, b) < 1e-12


# ----------------------------------------------------------------------------------------------------- gated norm


def norm_inputs(rows, E, seed=0):
    """y, z, w, x, D in float64, and the output's weights."""
    g = _gen(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    return [r(*rows, E), r(*rows, E), 1 + 0.3 * r(E), r(*rows, E), r(E)], r(*rows, E)


def norm_compare(ins, gout, req, G, nbg, dtype, eps=1e-5):
    ref = _leaves(ins, req, F64)
    want = _outputs_and_grads([gated_rmsnorm_reference(*ref[:3], G, eps, nbg, *ref[3:])], [gout], ref)
    mine = _leaves(ins, req, dtype)
    got = _outputs_and_grads([gated_rmsnorm(*mine[:3], G, eps, nbg, *mine[3:], backend="native")], [gout], mine)
    for a, b in zip(got, want):
        assert a.dtype == dtype and a.shape == b.shape
    return max(rel_err(a, b) for a, b in zip(got, want))


# (rows, E, G): one row of 3 channels; 65 rows (a block of 64 and one); rows (2, 3, 5) of 33 in 11 groups; 129 rows of
# 130 in 2 groups; 64 groups of 1 row; 17 channels in one group; 1000 channels in 8 groups. Groups of one channel
# (E = G) are ill-conditioned (n = v/√(v² + eps) ≈ ±1: the gradient cancels), tested in float64 only, below.
NORM_SHAPES = [((1,), 3, 1), ((65,), 9, 3), ((2, 3, 5), 33, 11), ((129,), 130, 2), ((3,), 64, 2), ((64,), 17, 1),
               ((2,), 1000, 8)]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("skip", [True, False], ids=["skip", "no-skip"])
@pytest.mark.parametrize("nbg", [False, True], ids=["gate-first", "norm-first"])
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=[str(s) for s in NORM_SHAPES])
def test_norm_odd_sizes_equal_the_reference_with_every_gradient(shape, nbg, skip, dtype):
    rows, E, G = shape
    ins, gout = norm_inputs(rows, E)
    ins = ins if skip else ins[:3]
    assert norm_compare(ins, gout, [1] * len(ins), G, nbg, dtype) < TOL[dtype]


@pytest.mark.parametrize("nbg", [False, True], ids=["gate-first", "norm-first"])
def test_norm_groups_of_one_channel_in_float64(nbg):
    ins, gout = norm_inputs((70,), 7)
    assert norm_compare(ins, gout, [1] * 5, 7, nbg, F64) < 1e-9


@pytest.mark.parametrize("nbg", [False, True], ids=["gate-first", "norm-first"])
def test_norm_gradients_for_every_subset_of_the_inputs(nbg):
    ins, gout = norm_inputs((5, 7), 12)
    for req in itertools.product((0, 1), repeat=5):
        if any(req):
            assert norm_compare(ins, gout, req, 3, nbg, F64) < 1e-12, req


@pytest.mark.parametrize("eps,scale", [(0.0, 1.0), (1.0, 1.0), (1e6, 1.0), (1e-5, 1e-20), (1e-5, 1e20)],
                         ids=["eps=0", "eps=1", "eps=1e6", "tiny-values", "huge-values"])
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_norm_eps_and_scales(eps, scale, dtype):
    ins, gout = norm_inputs((4,), 12)
    ins[0] = ins[0] * scale
    assert norm_compare(ins, gout, [1] * 5, 3, False, dtype, eps) < TOL[dtype]


@pytest.mark.parametrize("nbg", [False, True], ids=["gate-first", "norm-first"])
def test_norm_strided_transposed_and_expanded_inputs(nbg):
    """y permuted, z and x expanded over rows (stride 0), the weight every other element, D one value expanded."""
    g = _gen(0)
    base = [torch.randn(12, 4, 3, generator=g, dtype=F64), torch.randn(1, 12, generator=g, dtype=F64),
            torch.randn(24, generator=g, dtype=F64), torch.randn(4, 1, 12, generator=g, dtype=F64),
            torch.randn(1, generator=g, dtype=F64)]
    gout = torch.randn(4, 3, 12, generator=g, dtype=F64)
    out = []
    for backend in ("native", "reference"):
        y, z, w, x, D = leaves = _leaves(base, [1] * 5, F64)
        o = gated_rmsnorm(y.permute(1, 2, 0), z.expand(4, 3, 12), w[::2], 4, 1e-5, nbg, x.expand(4, 3, 12),
                          D.expand(12), backend=backend)
        out.append(_outputs_and_grads([o], [gout], leaves))
    for a, b in zip(*out):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("rows", [(0,), (3, 0)], ids=["no-rows", "empty-middle"])
def test_norm_empty_rows_work_like_the_reference(rows):
    ins, gout = norm_inputs(rows, 6)
    assert norm_compare(ins, gout, [1] * 5, 2, False, F64) == 0.0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["y", "z", "w", "x", "D"])
def test_norm_non_finite_values_follow_the_reference(where, value):
    ins, _ = norm_inputs((3,), 8)
    ins["yzwxD".index(where)].view(-1)[1] = value
    gout = torch.arange(24.0, dtype=F64).view(3, 8)
    out = []
    for backend in ("native", "reference"):
        leaves = _leaves(ins, [1] * 5, F64)
        o = gated_rmsnorm(*leaves[:3], 2, 1e-5, False, *leaves[3:], backend=backend)
        wanted = torch.autograd.grad((o * gout).nansum(), leaves)
        out.append([o, *wanted])
    for a, b in zip(*out):
        _same_non_finite_and_close(a, b, 1e-10)


def test_norm_one_and_two_threads_agree_bit_for_bit(two_threads):
    ins, gout = norm_inputs((300,), 40)
    runs = []
    for n in (1, 2):
        torch.set_num_threads(n)
        leaves = _leaves(ins, [1] * 5, F32)
        runs.append(_outputs_and_grads([gated_rmsnorm(*leaves[:3], 4, 1e-5, False, *leaves[3:], backend="native")],
                                       [gout], leaves))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------------------ RG-LRU


def rglru_inputs(Bsz, L, H, seed=0):
    """x, r, i, Λ, h0 in float64 (gates in (0.01, 0.99), Λ ~ N(0, 3²)), resets at 20 % of the steps, and the outputs'
    weights."""
    g = _gen(seed)
    x = torch.randn(Bsz, L, H, generator=g, dtype=F64)
    r, i = (torch.rand(Bsz, L, H, generator=g, dtype=F64) * 0.98 + 0.01 for _ in range(2))
    Lam = torch.randn(H, generator=g, dtype=F64) * 3
    h0 = torch.randn(Bsz, H, generator=g, dtype=F64)
    flags = torch.rand(Bsz, L, generator=g) < 0.2
    weights = (torch.randn(Bsz, L, H, generator=g, dtype=F64), torch.randn(Bsz, H, generator=g, dtype=F64))
    return [x, r, i, Lam, h0], flags, weights


def rglru_compare(ins, flags, weights, req, dtype, c=8.0):
    ref = _leaves(ins, req, F64)
    want = _outputs_and_grads(rglru_torch(*ref[:4], c, ref[4], flags, "reference"), weights, ref)
    mine = _leaves(ins, req, dtype)
    got = _outputs_and_grads(rglru(*mine[:4], c, mine[4], flags, backend="native"), weights, mine)
    for a, b in zip(got, want):
        assert a.dtype == dtype and a.shape == b.shape
    return max(rel_err(a, b) for a, b in zip(got, want))


RGLRU_SHAPES = [(1, 1, 1), (1, 2, 1), (3, 1, 65), (1, 7, 63), (2, 5, 129), (1, 100, 1)]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("resets", [True, False], ids=["resets", "no-resets"])
@pytest.mark.parametrize("shape", RGLRU_SHAPES, ids=[str(s) for s in RGLRU_SHAPES])
def test_rglru_odd_sizes_equal_the_reference_with_every_gradient(shape, resets, dtype):
    ins, flags, weights = rglru_inputs(*shape)
    assert rglru_compare(ins, flags if resets else None, weights, [1] * 5, dtype) < TOL[dtype]


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "from-rest"])
def test_rglru_gradients_for_every_subset_of_the_inputs(with_h0):
    ins, flags, weights = rglru_inputs(2, 9, 5)
    if not with_h0:
        ins[4] = None
    for req in itertools.product((0, 1), repeat=5):
        if any(req[:5 if with_h0 else 4]) and (with_h0 or not req[4]):
            assert rglru_compare(ins, flags, weights, req, F64) < 1e-12, req


@pytest.mark.parametrize("c", [0.0, 1e-6, 100.0], ids=["c=0", "c=1e-6", "c=100"])
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_rglru_extreme_c(c, dtype):
    ins, flags, weights = rglru_inputs(2, 9, 5)
    assert rglru_compare(ins, flags, weights, [1] * 5, dtype, c) < TOL[dtype]


@pytest.mark.parametrize("resets", ["pattern-expanded", "all", "transposed"])
def test_rglru_strided_transposed_and_expanded_inputs(resets):
    """x transposed, r expanded over time, i every other channel, Λ one value expanded, h0 transposed; the resets an
    expanded row, all True, or a transposed view."""
    g = _gen(0)
    base = [torch.randn(7, 2, 5, generator=g, dtype=F64), torch.rand(2, 1, 5, generator=g, dtype=F64) * 0.9 + 0.05,
            torch.rand(2, 7, 10, generator=g, dtype=F64) * 0.9 + 0.05, torch.randn(1, generator=g, dtype=F64),
            torch.randn(5, 2, generator=g, dtype=F64)]
    flags = {"pattern-expanded": torch.tensor([[True, False, False, True, False, False, False]]).expand(2, 7),
             "all": torch.ones(2, 7, dtype=torch.bool),
             "transposed": (torch.rand(7, 2, generator=g) < 0.4).t()}[resets]
    weights = (torch.randn(2, 7, 5, generator=g, dtype=F64), torch.randn(2, 5, generator=g, dtype=F64))
    out = []
    for backend in ("native", "reference"):
        x, r, i, Lam, h0 = leaves = _leaves(base, [1] * 5, F64)
        h, last = rglru(x.transpose(0, 1), r.expand(2, 7, 5), i[..., ::2], Lam.expand(5), 8.0, h0.t(), flags,
                        backend=backend)
        out.append(_outputs_and_grads([h, last], weights, leaves))
    for a, b in zip(*out):
        assert rel_err(a, b) < 1e-12


def test_rglru_empty_batch_works_like_the_reference():
    ins, flags, weights = rglru_inputs(0, 5, 4)
    assert rglru_compare(ins, flags, weights, [1] * 5, F64) == 0.0


def test_rglru_empty_length_raises_value_error_on_the_native_path():
    ins, flags, _ = rglru_inputs(2, 0, 4)
    with pytest.raises(ValueError):
        rglru_torch(*ins[:4], 8.0, ins[4], flags, "reference")
    with pytest.raises(ValueError):
        rglru(*ins[:4], 8.0, ins[4], flags, backend="native")


def _rglru_set(index, value):
    def edit(ts):
        ts[index].view(-1)[5 if index < 3 else 1] = value
        return ts
    return edit


RGLRU_EXTREMES = {
    "x=nan": _rglru_set(0, float("nan")), "x=inf": _rglru_set(0, float("inf")), "r=nan": _rglru_set(1, float("nan")),
    "r=0": _rglru_set(1, 0.0), "r=1": _rglru_set(1, 1.0), "r=1e-30": _rglru_set(1, 1e-30),
    "r=-0.5": _rglru_set(1, -0.5), "i=inf": _rglru_set(2, float("inf")), "Lambda=inf": _rglru_set(3, float("inf")),
    "Lambda=-inf": _rglru_set(3, float("-inf")), "Lambda=nan": _rglru_set(3, float("nan")),
    "Lambda=30": _rglru_set(3, 30.0), "Lambda=-30": _rglru_set(3, -30.0), "Lambda=100": _rglru_set(3, 100.0),
    "Lambda=-100": _rglru_set(3, -100.0), "h0=nan": _rglru_set(4, float("nan")),
}


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(RGLRU_EXTREMES), ids=list(RGLRU_EXTREMES))
def test_rglru_extreme_and_non_finite_values_follow_the_reference(case, dtype):
    ins, _, _ = rglru_inputs(1, 6, 4)
    ins = RGLRU_EXTREMES[case](ins)
    weights = (torch.arange(24.0, dtype=F64).view(1, 6, 4), torch.zeros(1, 4, dtype=F64))
    ref = _leaves(ins, [1] * 5, F64)
    want = _outputs_and_grads(rglru_torch(*ref[:4], 8.0, ref[4], None, "reference"), weights, ref)
    mine = _leaves(ins, [1] * 5, dtype)
    got = _outputs_and_grads(rglru(*mine[:4], 8.0, mine[4], None, backend="native"), weights, mine)
    for a, b in zip(got, want):
        _same_non_finite_and_close(a, b, 1e-10 if dtype == F64 else 1e-4)


def test_rglru_one_and_two_threads_agree_bit_for_bit(two_threads):
    ins, flags, weights = rglru_inputs(3, 40, 150)
    runs = []
    for n in (1, 2):
        torch.set_num_threads(n)
        leaves = _leaves(ins, [1] * 5, F32)
        runs.append(_outputs_and_grads(rglru(*leaves[:4], 8.0, leaves[4], flags, backend="native"), weights, leaves))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_kernel_inputs_checks_dtypes_and_keeps_contiguous_copies():
    """The fused steps' argument helper: every tensor contiguous (a copy the caller keeps until the kernel returns),
    None passed through, and a tensor of another dtype refused before the C code could read it as the kernel's."""
    from ssmkit.ops.native.parallel import kernel_inputs

    a = torch.arange(6.0).reshape(2, 3).t()  # (3, 2), not contiguous
    kept = kernel_inputs("k", F32, a=a, b=None, c=torch.ones(2))
    assert list(kept) == ["a", "b", "c"] and kept["b"] is None
    assert kept["a"].is_contiguous() and torch.equal(kept["a"], a) and kept["a"].data_ptr() != a.data_ptr()
    with pytest.raises(ValueError, match=r"^k: c must be torch.float64, the kernel's dtype; got torch.float32$"):
        kernel_inputs("k", F64, a=a.double(), c=torch.ones(2))
