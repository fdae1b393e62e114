"""Adversarial checks of the two C kernels around S4's convolution: the FFT convolution's passes around the FFTs
(ssmkit.ops.native.spectral, through ssmkit.ops.fftblocks and the ``fft`` backend of causal_conv and
bidirectional_conv) and the Cauchy sums over conjugate pairs of poles (ssmkit.ops.native.cauchy_pairs, through
ssmkit.ops.cauchy.cauchy_pairs and dplr_kernel_fast), where test_native_spectral.py, test_fftblocks.py and
test_cauchy_pairs.py do not reach: sizes of 1, prime and odd sizes (tails of the C tiles and point blocks), the
one-block threshold and several blocks, every subset of inputs wanting a gradient, strided, transposed, expanded,
offset and lazily negated or conjugated views, empty dimensions, extreme and non-finite values, 1 against 2 threads
(bit for bit), other dtypes and devices, and the poles the pair form could trip on (real, duplicated, on the
imaginary axis, under a point).

Each path runs with the passes in C and in PyTorch (the C calls counted, so that a native run that silently fell
back fails), against a reference written here: the convolution as a Toeplitz product (O(L²)) or a plain
``torch.fft`` product at another FFT length, the pair sums as Σ_n v/(iy - w) + conj(v)/(iy - conj(w)) by
broadcasting; in float64 within 1e-10 and in float32 within 2e-5 of the scale (rel_err), against the float64 reference
on the same values."""

from __future__ import annotations

import itertools

import pytest
import torch

import ssmkit.ops.cauchy as cauchy_mod
import ssmkit.ops.fftblocks as fftblocks
import ssmkit.ops.fftconv as fftconv
import ssmkit.ops.native.spectral as spectral
from ssmkit.ops.cauchy import cauchy_pairs, dplr_kernel, dplr_kernel_reference
from ssmkit.ops.fftconv import bidirectional_conv, causal_conv
from ssmkit.ops.native import native_available
from tests.conftest import DEVICE, rel_err

F64, F32, C128, C64 = torch.float64, torch.float32, torch.complex128, torch.complex64
TOL = {F64: 1e-10, F32: 2e-5, C128: 1e-10, C64: 2e-5}
REAL = {C128: F64, C64: F32}
pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu" or not all(native_available(op, d) for op in ("fft_blocks", "cauchy_pairs")
                                    for d in (F32, F64)),
    reason="the native backend runs on the CPU where a C compiler builds it",
)
native_passes = fftblocks.native_passes  # the real predicates, before any test patches them
blockwise = fftconv._blockwise


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def two_threads():
    """torch's thread count set by the test (restored afterwards)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------- FFT convolution passes


@pytest.fixture(params=["native", "torch"])
def passes(request, monkeypatch):
    """The passes around the FFTs in C (each C entry counted in the returned dict) or in PyTorch ops."""
    calls = {"load_padded": 0, "store_block": 0, "spectral_grads": 0}
    if request.param == "native":
        assert native_passes(F32) and native_passes(F64)
        for name in calls:
            def counted(*args, _fn=getattr(spectral, name), _name=name):
                calls[_name] += 1
                return _fn(*args)
            monkeypatch.setattr(spectral, name, counted)
    else:
        monkeypatch.setattr(fftblocks, "native_passes", lambda dtype: False)
    calls["native"] = request.param == "native"
    return calls


def _row_bytes(L: int, dtype: torch.dtype) -> int:
    """Bytes of one zero-padded channel of the FFT convolution of length L."""
    return fftconv._fft_size(2 * L) * torch.empty(0, dtype=dtype).element_size()


def _set_blocking(monkeypatch, blocking: str, B: int, L: int, H: int, dtype: torch.dtype) -> bool:
    """Blocks of one channel of one batch row ("channel"), of two batch rows ("rows"), or one block of any size by the
    C passes ("one-block": the 1 MB threshold lowered to a byte); whether the convolution goes by blocks."""
    row = _row_bytes(L, dtype)
    if blocking == "channel":
        monkeypatch.setattr(fftblocks, "BLOCK_BYTES", row - 1)
    elif blocking == "rows":
        monkeypatch.setattr(fftblocks, "BLOCK_BYTES", 2 * H * row)
    else:
        monkeypatch.setattr(fftblocks, "ONE_BLOCK_BYTES", 1)
    size = B * H * row
    return size > fftblocks.BLOCK_BYTES or (size >= fftblocks.ONE_BLOCK_BYTES and fftblocks.native_passes(dtype))


def conv_loop(u: torch.Tensor, K: torch.Tensor, two_sided: bool) -> torch.Tensor:
    """The convolution as a Toeplitz product: y[b, t, h] = Σ_s T[h, t, s] u[b, s, h], T[h, t, s] = K0[h, t - s] for
    s <= t and K1[h, s - t - 1] for s > t (two-sided; else 0). Differentiable in u and K."""
    L = u.shape[1]
    k0, k1 = (K[0], K[1]) if two_sided else (K, None)
    lag = torch.arange(L)[:, None] - torch.arange(L)[None, :]  # (t, s): t - s
    T = k0[:, lag.clamp(min=0)] * (lag >= 0)  # (H, L, L)
    if two_sided:
        T = T + k1[:, (-lag - 1).clamp(min=0)] * (lag < 0)
    return torch.einsum("hts,bsh->bth", T, u)


def conv_plain_fft(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """The causal convolution by torch.fft at length 4L (not the library's 2·3·5-smooth n): (B, L, H)."""
    L = u.shape[1]
    n = 4 * L
    spec = torch.fft.rfft(u.transpose(1, 2), n=n) * torch.fft.rfft(K[:, :L], n=n)  # (B, H, n//2 + 1)
    return torch.fft.irfft(spec, n=n)[..., :L].transpose(1, 2)


def _conv(two_sided: bool):
    return (lambda u, K: bidirectional_conv(u, K, backend="fft")) if two_sided else \
        (lambda u, K: causal_conv(u, K, backend="fft"))


def conv_results(fn, u, K, gy, req):
    """[y, then the gradients of Σ y ⊙ gy for the inputs that want one]: fresh leaves of u and K with req."""
    leaves = [t.detach().clone().requires_grad_(bool(r)) for t, r in zip((u, K), req)]
    y = fn(*leaves)
    wanted = [t for t in leaves if t.requires_grad]
    return [y, *(torch.autograd.grad(y, wanted, gy) if wanted else [])]


def conv_inputs(B, L, H, Lk, two_sided, seed=0):
    g = _gen(seed)
    u = torch.randn(B, L, H, generator=g, dtype=F64)
    K = torch.randn(*((2,) if two_sided else ()), H, Lk, generator=g, dtype=F64)
    gy = torch.randn(B, L, H, generator=g, dtype=F64)
    return u, K, gy


# (B, L, H, L_k): L = 1 (n = 2); a kernel longer than the signal; L prime; H = 17 (a channel tile and a tail of 1);
# L = 67 (a time tile of 64 and a tail of 3); one batch row, one channel; odd everything
CONV_SHAPES = [(1, 1, 1, 1), (2, 1, 3, 4), (1, 7, 1, 7), (3, 13, 5, 17), (2, 2, 17, 2), (1, 67, 3, 70), (5, 3, 2, 3)]
SUBSETS = list(itertools.product((0, 1), repeat=2))


@pytest.mark.parametrize("blocking", ["channel", "rows", "one-block"])
@pytest.mark.parametrize("two_sided", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=[str(s) for s in CONV_SHAPES])
def test_conv_odd_sizes_and_every_gradient_subset_equal_the_toeplitz_product(shape, dtype, two_sided, blocking,
                                                                           passes, monkeypatch):
    B, L, H, Lk = shape
    blocked = _set_blocking(monkeypatch, blocking, B, L, H, dtype)
    u, K, gy = conv_inputs(B, L, H, Lk, two_sided, seed=B + L + H)
    fn = _conv(two_sided)
    for req in SUBSETS:
        want = conv_results(lambda u, K: conv_loop(u, K, two_sided), u, K, gy, req)
        got = conv_results(fn, u.to(dtype), K.to(dtype), gy.to(dtype), req)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a.dtype == dtype and a.shape == b.shape
            assert rel_err(a, b) < TOL[dtype], req
    assert (passes["load_padded"] > 0) == (passes["native"] and blocked)
    assert (passes["spectral_grads"] > 0) == (passes["native"] and blocked)


@pytest.mark.parametrize("two_sided", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_conv_strided_transposed_expanded_and_offset_views(dtype, two_sided, passes, monkeypatch):
    """u a permuted view at an offset, or one batch row expanded (stride 0); K every other tap at an offset, or one
    channel expanded; the output's gradient expanded (y.sum()) or transposed: the values and the gradients (into the
    un-viewed leaves) of the Toeplitz product on the same views."""
    B, L, H = 3, 11, 4
    _set_blocking(monkeypatch, "channel", B, L, H, dtype)
    g = _gen(3)
    Kshape = (2,) if two_sided else ()
    bases = [torch.randn(H + 1, B, L + 2, generator=g, dtype=F64), torch.randn(*Kshape, H, 2 * L + 3, generator=g,
                                                                                 dtype=F64)]
    u_views = {"permuted": lambda b: b[1:, :, 2:].permute(1, 2, 0),  # (B, L, H), offset, no unit stride
               "expanded": lambda b: b[1:2, :1, 2:].permute(1, 2, 0).expand(B, L, H)}
    K_views = {"strided": lambda k: k[..., 1::2],  # (…, H, L + 1) every other tap from the second
               "expanded": lambda k: k[..., :1, 3:].expand(*Kshape, H, 2 * L)}
    gys = {"expanded": torch.ones(1, 1, 1, dtype=F64).expand(B, L, H),
           "transposed": torch.randn(H, L, B, generator=g, dtype=F64).permute(2, 1, 0)}
    for (un, uv), (kn, kv), (gn, gy) in itertools.product(u_views.items(), K_views.items(), gys.items()):
        out = []
        for fn, dt in ((_conv(two_sided), dtype), (lambda u, K: conv_loop(u, K, two_sided), F64)):
            leaves = [b.to(dt).requires_grad_() for b in bases]
            y = fn(uv(leaves[0]), kv(leaves[1]))
            out.append([y, *torch.autograd.grad(y, leaves, gy.to(dt))])
        for a, b in zip(*out):
            assert rel_err(a, b) < TOL[dtype], (un, kn, gn)
    assert (passes["load_padded"] > 0) == passes["native"]


@pytest.mark.parametrize("blocking", ["channel", "one-block"])
@pytest.mark.parametrize("two_sided", [False, True], ids=["causal", "bidirectional"])
def test_conv_lazily_negated_views_read_as_their_values(two_sided, blocking, passes, monkeypatch):
    """u and the output's gradient as ``z.conj().imag`` (a strided view whose negative bit says: read as -storage):
    the C copies read through the strides, so they must see the values, not the storage (found: the sign of every
    output and input gradient flipped, rel_err 2.0)."""
    B, L, H = 2, 9, 3
    _set_blocking(monkeypatch, blocking, B, L, H, F64)
    g = _gen(4)
    zu, zy = (torch.complex(torch.randn(B, L, H, generator=g, dtype=F64), torch.randn(B, L, H, generator=g, dtype=F64))
              for _ in range(2))
    u, gy = zu.conj().imag, zy.conj().imag
    assert u.is_neg() and gy.is_neg()
    K = torch.randn(*((2,) if two_sided else ()), H, L, generator=g, dtype=F64)
    with torch.no_grad():
        assert rel_err(_conv(two_sided)(u, K), conv_loop(u.resolve_neg(), K, two_sided)) < 1e-10
    got = conv_results(_conv(two_sided), u, K, gy, (1, 1))
    want = conv_results(lambda u, K: conv_loop(u, K, two_sided), u.resolve_neg(), K, gy.resolve_neg(), (1, 1))
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-10
    assert (passes["load_padded"] > 0) == passes["native"]


@pytest.mark.parametrize("two_sided", [False, True], ids=["causal", "bidirectional"])
def test_conv_gradcheck_by_blocks_in_c(two_sided, monkeypatch):
    """torch.autograd.gradcheck (float64, finite differences) of the convolution by one-channel blocks in C."""
    B, L, H = 2, 5, 3
    _set_blocking(monkeypatch, "channel", B, L, H, F64)
    u, K, _ = conv_inputs(B, L, H, L + 1, two_sided, seed=5)
    assert torch.autograd.gradcheck(_conv(two_sided), (u.requires_grad_(), K.requires_grad_()))


# (dtype, B, L, H, at least 1 MiB): 1 MiB of padded float32 / float64 signal at L = 512 (n = 1 024) is B·H = 256 / 128
# channels: one channel short of it, exactly it (in one row, or in 4 rows of 64 channels), one channel pair over it
THRESHOLD = [(F32, 1, 512, 255, False), (F32, 1, 512, 256, True), (F32, 4, 512, 64, True), (F32, 2, 512, 129, True),
             (F64, 1, 512, 127, False), (F64, 2, 512, 64, True)]


@pytest.mark.parametrize("dtype,B,L,H,blocked", THRESHOLD,
                         ids=["f32-1x255", "f32-1x256", "f32-4x64", "f32-2x129", "f64-1x127", "f64-2x64"])
@pytest.mark.parametrize("several", [False, True], ids=["one-block", "several-blocks"])
def test_conv_just_below_and_above_the_one_block_threshold(dtype, B, L, H, blocked, several, passes, monkeypatch):
    """Padded signals just under and at/over ONE_BLOCK_BYTES (the C passes from there, on one block), and the same
    sizes in several blocks (BLOCK_BYTES lowered to 256 KiB: single batch rows at 4x64 float32, else channel ranges
    of single rows, the last one ragged at an odd H): values and both gradients against torch.fft at length 4L in
    float64."""
    n = fftconv._fft_size(2 * L)
    assert n == 1024 and (B * H * n * torch.empty(0, dtype=dtype).element_size() >= fftblocks.ONE_BLOCK_BYTES) == \
        blocked
    if several:
        monkeypatch.setattr(fftblocks, "BLOCK_BYTES", 1 << 18)
        blocked = True
    with torch.no_grad():
        assert fftconv._blockwise(torch.zeros(B, L, H, dtype=dtype), n) == (blocked and passes["native"] or several)
    u, K, gy = conv_inputs(B, L, H, L, False, seed=H)
    got = conv_results(_conv(False), u.to(dtype), K.to(dtype), gy.to(dtype), (1, 1))
    want = conv_results(conv_plain_fft, u, K, gy, (1, 1))
    for a, b in zip(got, want):
        assert rel_err(a, b) < TOL[dtype]
    assert (passes["load_padded"] > 0) == (passes["native"] and blocked)


@pytest.mark.parametrize("two_sided", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("shape", [(0, 5, 2), (2, 0, 2), (2, 5, 0)], ids=["B=0", "L=0", "H=0"])
def test_conv_empty_dimensions_raise_value_error(shape, two_sided, passes, monkeypatch):
    """The public convolutions document u (B, L, H) with every size >= 1: a ValueError on either path."""
    monkeypatch.setattr(fftblocks, "ONE_BLOCK_BYTES", 1)
    B, L, H = shape
    u = torch.zeros(B, L, H, dtype=F64)
    K = torch.zeros(*((2,) if two_sided else ()), H, max(L, 1), dtype=F64)
    with pytest.raises(ValueError, match="every size >= 1"):
        _conv(two_sided)(u, K)


def test_conv_short_kernels_and_other_dtypes_raise_value_error(passes, monkeypatch):
    """A kernel shorter than the signal, or of another dtype than u, is refused (not promoted, not read as u's)."""
    monkeypatch.setattr(fftblocks, "ONE_BLOCK_BYTES", 1)
    u = torch.zeros(2, 5, 3, dtype=F64)
    with pytest.raises(ValueError, match="at least L=5 taps"):
        causal_conv(u, torch.zeros(3, 4, dtype=F64), backend="fft")
    with pytest.raises(ValueError, match="K must have u's dtype torch.float64; got torch.float32"):
        causal_conv(u, torch.zeros(3, 5), backend="fft")
    with pytest.raises(ValueError, match="K must have u's dtype torch.float32; got torch.float64"):
        bidirectional_conv(u.float(), torch.zeros(2, 3, 5, dtype=F64), backend="fft")
    with pytest.raises(ValueError, match="u must be float32 or float64"):
        causal_conv(u.half(), torch.zeros(3, 5, dtype=torch.half), backend="fft")


@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
@pytest.mark.parametrize("blocking", ["channel", "one-block"])
def test_conv_kernel_on_another_device_raises(blocking, grad, passes, monkeypatch):
    """u on the CPU and K on the meta device: a ValueError naming the devices (found: without a gradient the blocks'
    in-place product of the CPU spectrum with the meta k̂ did nothing, and the convolution returned u itself)."""
    _set_blocking(monkeypatch, blocking, 2, 5, 3, F64)
    u = torch.randn(2, 5, 3, dtype=F64, generator=_gen(22), requires_grad=grad)
    for conv, K in ((_conv(False), torch.ones(3, 5, dtype=F64)), (_conv(True), torch.ones(2, 3, 5, dtype=F64))):
        with pytest.raises(ValueError, match="K must be on u's device cpu; got meta"):
            conv(u, K.to("meta"))
        with pytest.raises(ValueError, match="K must be on u's device meta; got cpu"):
            conv(u.detach().to("meta"), K)


def test_conv_output_gradient_of_another_dtype_is_cast_like_the_reference(passes, monkeypatch):
    """A float64 output gradient of a float32 convolution (autograd casts it to float32): the gradients of the
    float32 Toeplitz product, never float64 bytes read as float32."""
    B, L, H = 3, 9, 4
    _set_blocking(monkeypatch, "channel", B, L, H, F32)
    u, K, gy = conv_inputs(B, L, H, L, False, seed=6)
    got = conv_results(_conv(False), u.float(), K.float(), gy, (1, 1))
    want = conv_results(lambda u, K: conv_loop(u, K, False), u, K, gy, (1, 1))
    for a, b in zip(got, want):
        assert a.dtype == F32 and rel_err(a, b) < TOL[F32]
    assert (passes["spectral_grads"] > 0) == passes["native"]


def _edit(index, where, value):
    def edit(ts):
        ts = [t.clone() for t in ts]
        ts[index][where] = value
        return ts
    return edit


def _scale(su, sk):
    return lambda ts: [ts[0] * su, ts[1] * sk, ts[2]]


nan, inf = float("nan"), float("inf")
CONV_EXTREMES = {
    "u=nan": _edit(0, (1, 3, 2), nan), "u=inf": _edit(0, (0, 0, 1), inf), "K=nan": _edit(1, (2, 4), nan),
    "K=-inf": _edit(1, (0, 0), -inf), "dy=nan": _edit(2, (2, 6, 0), nan), "dy=inf": _edit(2, (0, 1, 3), inf),
}
# (float64 scale, float32 scale) of u and K: intermediate spectra near the top and bottom of each range
# (the float32 spectra's product reaches ~1e3 times u's scale times K's: 1e17² keeps it under float32's 3.4e38)
CONV_SCALES = {"huge-u": (1e150, 1e-150, 1e18, 1e-18), "tiny-u": (1e-150, 1e150, 1e-18, 1e18),
               "both-huge": (1e150, 1e150, 1e17, 1e17), "both-tiny": (1e-150, 1e-150, 1e-18, 1e-18)}


def _same_non_finite_and_close(a, b, tol):
    """NaN and inf (with its sign) where b has them; the finite values within tol of their scale."""
    a, b = a.detach().double(), b.detach().double()
    assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf())
    assert torch.equal(a[a.isinf()], b[b.isinf()])
    finite = a.isfinite()
    if finite.any():
        assert float((a[finite] - b[finite]).abs().max()) <= tol * max(float(b[finite].abs().max()), 1e-300)


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", list(CONV_EXTREMES) + list(CONV_SCALES))
def test_conv_extreme_and_non_finite_values_follow_the_whole_array_passes(case, dtype, passes, monkeypatch):
    """NaN and inf spread over a channel's row by the FFTs: the blocks (in C or PyTorch) put them where the whole-array
    FFT passes do, in the output and both gradients; huge and tiny scales of u and K (finite results) equal the
    Toeplitz product in float64."""
    B, L, H = 3, 13, 4
    ins = conv_inputs(B, L, H, L, False, seed=7)
    if case in CONV_SCALES:
        s = CONV_SCALES[case]
        ins = _scale(*(s[:2] if dtype == F64 else s[2:]))(ins)
    else:
        ins = CONV_EXTREMES[case](ins)
    ins = [t.to(dtype) for t in ins]
    monkeypatch.setattr(fftconv, "_blockwise", lambda x, n: False)
    whole = conv_results(_conv(False), *ins, (1, 1))
    monkeypatch.setattr(fftconv, "_blockwise", blockwise)
    _set_blocking(monkeypatch, "channel", B, L, H, dtype)
    got = conv_results(_conv(False), *ins, (1, 1))
    if case in CONV_SCALES:
        want = conv_results(lambda u, K: conv_loop(u, K, False), *(t.double() for t in ins), (1, 1))
        for a, b in zip(got, want):
            assert rel_err(a, b) < TOL[dtype]
    for a, b in zip(got, whole):
        _same_non_finite_and_close(a, b, TOL[dtype])
    assert (passes["load_padded"] > 0) == passes["native"]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_conv_one_and_two_threads_agree_bit_for_bit(dtype, two_threads, monkeypatch):
    """The C passes (and the FFTs) on 1 and 2 threads: the same bits in the output and both gradients."""
    B, L, H = 3, 150, 40
    _set_blocking(monkeypatch, "rows", B, L, H, dtype)  # blocks of 2 rows and a ragged 1: several items per call
    u, K, gy = (t.to(dtype) for t in conv_inputs(B, L, H, L, True, seed=8))
    runs = []
    for n in (1, 2):
        torch.set_num_threads(n)
        runs.append(conv_results(_conv(True), u, K, gy, (1, 1)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_load_and_store_through_expanded_negated_and_offset_views():
    """load_padded from a view expanded in batch and time (strides 0), negated (z.conj().imag) and at an offset;
    store_block into an offset view, and a refusal to write through a negated view (the C code writes storage)."""
    from ssmkit.ops.native.spectral import load_padded, store_block

    g = _gen(9)
    b, L, c, n = 3, 70, 19, 150
    views = {"expanded": torch.randn(1, 1, c, generator=g, dtype=F64).expand(b, L, c),
             "negated": torch.complex(*torch.randn(2, b, c, L + 1, generator=g, dtype=F64)).conj().imag[..., 1:]
             .transpose(1, 2)}
    for name, x in views.items():
        buf = torch.full((b, c, n), 5.0, dtype=F64)
        load_padded(x, buf)
        assert torch.equal(buf[..., :L], x.transpose(1, 2).resolve_neg()), name
        assert bool((buf[..., L:] == 5).all())
        out = torch.zeros(b + 1, L, c + 2, dtype=F64)
        store_block(buf, out[1:, :, 2:])
        assert torch.equal(out[1:, :, 2:], x.resolve_neg()) and not bool(out[0].any()) and not bool(out[:, :, :2].any())
    y = torch.complex(*torch.zeros(2, b, L, c, dtype=F64)).conj().imag
    with pytest.raises(ValueError, match="y must hold its values in memory, not be a lazily negated view"):
        store_block(buf, y)


def test_spectral_grads_reads_conjugated_strided_and_offset_parameters():
    """U and K as lazy conjugates (contiguous views whose memory holds the unconjugated values), transposed and at an
    offset: read as their values, as the products written out here (U and K are copied before the call, never
    freed under it); dY and acc written in place must be plain contiguous tensors of dY's dtype (a copy would drop
    the result): a ValueError otherwise."""
    from ssmkit.ops.native.spectral import spectral_grads

    g = _gen(10)
    b, c, F = 2, 3, 1030

    def crandn(*shape):
        return torch.complex(torch.randn(*shape, generator=g, dtype=F64), torch.randn(*shape, generator=g, dtype=F64))

    Us = {"conj": crandn(b, c, F).conj(), "transposed-offset": crandn(c, b + 1, F)[:, 1:].transpose(0, 1)}
    Ks = {"conj": crandn(c, F).conj(), "strided-offset": crandn(c, 2 * F + 1)[:, 1::2]}
    for (un, U), (kn, K) in itertools.product(Us.items(), Ks.items()):
        dY, acc = crandn(b, c, F), crandn(c, F)
        want_acc = acc + (U.resolve_conj().conj() * dY).sum(0)
        want_dY = dY * K.resolve_conj().conj()
        spectral_grads(U, dY, K, acc)
        assert rel_err(acc, want_acc) < 1e-13 and rel_err(dY, want_dY) < 1e-13, (un, kn)
    dY, acc, K = crandn(b, c, F), crandn(c, F), crandn(c, F)
    with pytest.raises(ValueError, match="conjugate"):
        spectral_grads(None, dY.conj(), K, None)
    with pytest.raises(ValueError, match="conjugate"):
        spectral_grads(dY, dY, None, acc.conj())
    with pytest.raises(ValueError, match="acc"):
        spectral_grads(dY, dY, None, acc.to(C64))
    with pytest.raises(ValueError, match="U must be torch.complex128"):
        spectral_grads(dY.to(C64), dY, None, acc)


# ------------------------------------------------------------------------------------------------ Cauchy pair sums


def pairs_direct(v: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """out[..., h, m] = Σ_n v[..., h, n] / (i y[h, m] - w[h, n]) + conj(v[..., h, n]) / (i y[h, m] - conj(w[h, n]))
    by broadcasting over (..., H, W, M); differentiable in v, y and w."""
    z = torch.complex(torch.zeros_like(y), y)[:, :, None]  # (H, W, 1)
    vv = v[..., :, None, :]  # (..., H, 1, M)
    return (vv / (z - w[:, None, :]) + vv.conj() / (z - w.conj()[:, None, :])).sum(-1)  # (..., H, W)


def pairs_inputs(lead, H, M, W, dtype=C128, seed=0):
    """v, y, w in complex128 / float64 (values representable in ``dtype``): Re w in [-1.05, -0.05], Im w ~ 5 N(0, 1),
    y ~ 20 N(0, 1) with y = 0 at the first point, and the output's gradient."""
    g = _gen(seed)

    def crandn(*shape):
        return torch.complex(torch.randn(*shape, generator=g, dtype=F64), torch.randn(*shape, generator=g, dtype=F64))

    v = crandn(*lead, H, M)
    y = 20 * torch.randn(H, W, generator=g, dtype=F64)
    if W:
        y[:, 0] = 0
    w = torch.complex(-0.05 - torch.rand(H, M, generator=g, dtype=F64), 5 * torch.randn(H, M, generator=g, dtype=F64))
    gout = crandn(*lead, H, W)
    return [t.to(dtype if t.is_complex() else REAL[dtype]).to(t.dtype) for t in (v, y, w)], gout


def pairs_results(fn, ins, gout, req, dtype):
    """[out, then the gradients of Re Σ conj(gout) out for the inputs that want one], fresh leaves in ``dtype``."""
    leaves = [t.detach().to(dtype if t.is_complex() else REAL[dtype]).clone().requires_grad_(bool(r))
              for t, r in zip(ins, req)]
    out = fn(*leaves)
    wanted = [t for t in leaves if t.requires_grad]
    return [out, *(torch.autograd.grad(out, wanted, gout.to(out.dtype)) if wanted else [])]


def native_pairs(v, y, w):
    return cauchy_pairs(v, y, w, backend="native")


PAIR_BACKENDS = {"native": native_pairs, "chunked": lambda v, y, w: cauchy_pairs(v, y, w, backend="chunked"),
                 "auto": cauchy_pairs}
# (lead, H, M, W): all 1; a block of 256 points less one, exactly, and one more (the C kernel's PBLK); two blocks and
# a tail of 1 with one pair; two leading dimensions
PAIR_SHAPES = [((), 1, 1, 1), ((1,), 1, 7, 255), ((2, 3), 3, 2, 256), ((2,), 2, 3, 257), ((5,), 1, 1, 513)]
PAIR_SUBSETS = list(itertools.product((0, 1), repeat=3))


@pytest.mark.parametrize("backend", list(PAIR_BACKENDS))
@pytest.mark.parametrize("dtype", [C128, C64], ids=["c128", "c64"])
@pytest.mark.parametrize("shape", PAIR_SHAPES, ids=[str(s) for s in PAIR_SHAPES])
def test_pairs_odd_sizes_and_every_gradient_subset_equal_the_direct_sums(shape, dtype, backend):
    ins, gout = pairs_inputs(*shape, dtype=dtype, seed=shape[-1])
    for req in PAIR_SUBSETS:
        want = pairs_results(pairs_direct, ins, gout, req, C128)
        got = pairs_results(PAIR_BACKENDS[backend], ins, gout, req, dtype)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a.dtype == (dtype if b.is_complex() else REAL[dtype]) and a.shape == b.shape
            assert rel_err(a, b) < TOL[dtype], req


def test_pairs_gradcheck_of_the_c_kernel():
    """torch.autograd.gradcheck (complex128, finite differences) of the native pair sums in v, y and w."""
    ins, _ = pairs_inputs((2,), 2, 3, 5, seed=11)
    assert torch.autograd.gradcheck(native_pairs, [t.requires_grad_() for t in ins])


@pytest.mark.parametrize("conj", [False, True], ids=["plain", "lazy-conj"])
def test_pairs_strided_transposed_expanded_and_offset_views(conj):
    """v permuted at an offset or expanded over the leading dimension, y transposed at an offset or one row expanded
    over the channels, w every other pole at an offset (and lazily conjugated views of v and w): the values and the
    gradients (into the un-viewed leaves) of the direct sums on the same views."""
    H, M, W = 3, 4, 300
    g = _gen(12)

    def crandn(*shape):
        return torch.complex(torch.randn(*shape, generator=g, dtype=F64), torch.randn(*shape, generator=g, dtype=F64))

    bases = [crandn(M + 1, H, 3), 10 * torch.randn(W, 2 * H + 1, generator=g, dtype=F64),
             torch.complex(-0.1 - torch.rand(H, 2 * M + 1, generator=g, dtype=F64),
                           3 * torch.randn(H, 2 * M + 1, generator=g, dtype=F64))]
    c = (lambda t: t.conj()) if conj else (lambda t: t)
    v_views = {"permuted": lambda b: c(b[1:].permute(2, 1, 0)),  # (3, H, M), offset, no unit stride
               "expanded": lambda b: c(b[1:, :, :1].permute(2, 1, 0).expand(3, H, M))}
    y_views = {"transposed": lambda b: b[:, 1::2].t(), "expanded": lambda b: b[:, :1].t().expand(H, W)}
    w_view = lambda b: c(b[:, 1::2])  # noqa: E731
    gout = crandn(3, H, W)
    for (vn, vv), (yn, yv) in itertools.product(v_views.items(), y_views.items()):
        out = []
        for fn in (native_pairs, pairs_direct):
            leaves = [b.clone().requires_grad_() for b in bases]
            o = fn(vv(leaves[0]), yv(leaves[1]), w_view(leaves[2]))
            out.append([o, *torch.autograd.grad(o, leaves, gout)])
        for a, b in zip(*out):
            assert rel_err(a, b) < 1e-10, (vn, yn)


def test_pairs_lazily_negated_points_read_as_their_values():
    """y as ``z.conj().imag`` where that view is contiguous (one channel, one point) or ``torch._neg_view``: the
    kernel reads memory, so the negative bit must be resolved first (found: out(-y) = conj(out(y)), rel_err 1.97)."""
    ins, gout = pairs_inputs((2,), 1, 3, 1, seed=13)
    ins[1] = torch.full((1, 1), 2.5, dtype=F64)  # not 0: the sums at -y are the conjugates of those at y
    want = pairs_results(pairs_direct, ins, gout, (1, 1, 1), C128)
    negated = {"conj-imag": lambda y: torch.complex(torch.zeros_like(y), -y).conj().imag,
               "neg-view": lambda y: torch._neg_view(-y)}
    for name, negate in negated.items():
        v, y, w = (t.clone().requires_grad_() for t in ins)
        yn = negate(y)
        assert yn.is_neg() and yn.is_contiguous() and torch.equal(yn, y)
        out = native_pairs(v, yn, w)
        for a, b in zip([out, *torch.autograd.grad(out, (v, y, w), gout)], want):
            assert rel_err(a, b) < 1e-12, name


def _pole_case(kind):
    """Poles the pair form could trip on, in channel 1 of 3: both of a pair's poles on the real axis (Im w = 0: the
    pair is one pole twice), a duplicated pole, a pole and its conjugate as two pairs, poles on the imaginary axis
    (Re w = 0) away from every point, and all of these at once."""
    ins, gout = pairs_inputs((2,), 3, 4, 70, seed=14)
    v, y, w = ins
    w = w.clone()
    if kind in ("real", "all"):
        w[1, 0] = w[1, 0].real.item()
        w[1, 3] = 0.5  # an unstable real pole
    if kind in ("duplicated", "all"):
        w[1, 2] = w[1, 1]
    if kind in ("conjugates", "all"):
        w[0, 2] = w[0, 1].conj()
    if kind in ("imaginary-axis", "all"):
        w[2, :2] = torch.complex(torch.zeros(2, dtype=F64), torch.tensor([3.3, -7.1], dtype=F64))
    return [v, y, w], gout


@pytest.mark.parametrize("backend", ["native", "auto"])
@pytest.mark.parametrize("kind", ["real", "duplicated", "conjugates", "imaginary-axis", "all"])
def test_pairs_real_duplicated_conjugate_and_imaginary_axis_poles(kind, backend):
    """The pair form assumes only that each pair's second pole is the first's conjugate, which the API's one pole per
    pair makes true; poles that coincide with each other or with their conjugates are summed as the direct form does."""
    ins, gout = _pole_case(kind)
    for a, b in zip(pairs_results(PAIR_BACKENDS[backend], ins, gout, (1, 1, 1), C128),
                    pairs_results(pairs_direct, ins, gout, (1, 1, 1), C128)):
        assert rel_err(a, b) < 1e-10


def _isfinite_pattern(t):
    return t.real.isfinite() & t.imag.isfinite() if t.is_complex() else t.isfinite()


@pytest.mark.parametrize("backend", ["native", "chunked"])
def test_pairs_points_on_a_pole_are_non_finite_exactly_where_the_direct_sums_are(backend):
    """A point on a pole (i y = w with Re w = 0), on a pole's conjugate (y = -Im w), and z = 0 = w: non-finite sums in
    exactly the entries where the direct form has them (which of NaN or inf differs with the formula: complex division
    by 0), the other entries equal."""
    ins, gout = pairs_inputs((2,), 3, 4, 9, seed=15)
    v, y, w = (t.clone() for t in ins)
    w[0, 1], y[0, 3], y[0, 5] = 2.5j, 2.5, -2.5
    w[2, 0], y[2, 0] = 0, 0
    got, want = PAIR_BACKENDS[backend](v, y, w), pairs_direct(v, y, w)
    bad = ~_isfinite_pattern(want)
    assert int(bad.sum()) == 2 * 3 and torch.equal(_isfinite_pattern(got), ~bad)
    assert rel_err(got[~bad], want[~bad]) < 1e-10


NON_FINITE = {"v=nan": (0, (1, 1, 2), complex(nan, 0)), "v=inf": (0, (0, 2, 1), complex(inf, 0)),
              "v=inf-i": (0, (0, 2, 1), complex(1, -inf)), "w=nan": (2, (1, 3), complex(0, nan)),
              "w=-inf": (2, (1, 3), complex(-inf, 1)), "w=inf-i": (2, (2, 0), complex(-1, inf)),
              "y=nan": (1, (1, 4), nan)}


@pytest.mark.parametrize("backend", ["native", "chunked"])
@pytest.mark.parametrize("case", list(NON_FINITE))
def test_pairs_non_finite_inputs_spread_where_the_direct_sums_put_them(case, backend):
    """A NaN or an infinity in v, w or y: the output non-finite in exactly the entries where the direct sums are, the
    rest equal; the gradients likewise."""
    ins, gout = pairs_inputs((2,), 3, 4, 9, seed=16)
    index, where, value = NON_FINITE[case]
    ins = [t.clone() for t in ins]
    ins[index][where] = value
    got = pairs_results(PAIR_BACKENDS[backend], ins, gout, (1, 1, 1), C128)
    want = pairs_results(pairs_direct, ins, gout, (1, 1, 1), C128)
    for i, (a, b) in enumerate(zip(got, want)):
        ok = _isfinite_pattern(b)
        assert torch.equal(_isfinite_pattern(a), ok), (case, i)
        if ok.any():
            assert rel_err(a[ok], b[ok]) < 1e-10, (case, i)


# scales of (w, y) inside the range the pair form's |D|² = |(iy - w)(iy - conj w)|² represents: complex128 to
# ~1e±77, complex64 to ~1e±9 (cauchy_pairs' docstring)
PAIR_SCALES = {C128: [(1e-60, 1e-60), (1.0, 1e60), (1e60, 1e60), (1e-60, 1.0)],
               C64: [(1e-8, 1e-8), (1.0, 1e7), (1e7, 1e7), (1e-4, 1.0)]}  # |y| up to ~6e8 (20 N(0, 1) y)


@pytest.mark.parametrize("dtype", [C128, C64], ids=["c128", "c64"])
@pytest.mark.parametrize("which", range(4), ids=["tiny", "huge-points", "huge", "tiny-poles"])
def test_pairs_huge_and_tiny_magnitudes_within_the_documented_range(which, dtype):
    sw, sy = PAIR_SCALES[dtype][which]
    ins, gout = pairs_inputs((2,), 2, 3, 300, seed=17)
    ins = [ins[0], ins[1] * sy, ins[2] * sw]
    same = [t.to(dtype if t.is_complex() else REAL[dtype]).to(t.dtype) for t in ins]  # the values in dtype
    for a, b in zip(pairs_results(native_pairs, ins, gout, (1, 1, 1), dtype),
                    pairs_results(pairs_direct, same, gout, (1, 1, 1), C128)):
        assert rel_err(a, b) < 10 * TOL[dtype]


@pytest.mark.parametrize("backend", ["native", "auto", "chunked"])
@pytest.mark.parametrize("lead,H,M,W", [((0,), 2, 3, 4), ((3, 0), 2, 3, 4), ((2,), 2, 0, 4), ((2,), 0, 3, 4),
                                        ((2,), 2, 3, 0), ((0,), 0, 0, 0)])
def test_pairs_empty_dimensions_give_empty_or_zero_sums(lead, H, M, W, backend):
    """No numerators (also an empty middle leading dimension), no pairs (zero sums), no channels, no points, nothing:
    the shapes of the direct sums, zero sums, zero gradients of the right shapes."""
    ins, gout = pairs_inputs(lead, H, M, W, seed=18)
    got = pairs_results(PAIR_BACKENDS[backend], ins, gout, (1, 1, 1), C128)
    want = pairs_results(pairs_direct, ins, gout, (1, 1, 1), C128)
    for a, b in zip(got, want):
        assert a.shape == b.shape and torch.equal(a, b)


def test_pairs_one_and_two_threads_agree_bit_for_bit(two_threads):
    """Sums and gradients of 6 channels (the work items) on 1 and 2 threads, complex128 and complex64."""
    for dtype in (C128, C64):
        ins, gout = pairs_inputs((3,), 6, 5, 300, seed=19)
        runs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append(pairs_results(native_pairs, ins, gout, (1, 1, 1), dtype))
        for a, b in zip(*runs):
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["native", "auto", "chunked"])
def test_pairs_other_dtypes_and_devices_raise(backend):
    """v, w and y of mismatched dtypes (another precision, a real v, an integer y) are refused with a ValueError, never
    promoted silently or read as another dtype's bytes; the C kernel refuses an input on another device."""
    (v, y, w), _ = pairs_inputs((2,), 2, 3, 4, seed=20)
    for args in ((v.to(C64), y, w), (v, y, w.to(C64)), (v, y.float(), w), (v.to(C64), y, w.to(C64)),
                 (v.real, y, w), (v, y.long(), w), (v, y, w.real)):
        with pytest.raises(ValueError, match="must be"):
            cauchy_pairs(*args, backend=backend)
    if backend == "native":  # the C kernel reads CPU memory: an input elsewhere is refused, naming the device
        for args in ((v.to("meta"), y, w), (v, y.to("meta"), w), (v, y, w.to("meta"))):
            with pytest.raises(RuntimeError, match="backend 'native' runs on the CPU; the inputs are on meta"):
                cauchy_pairs(*args, backend=backend)


def test_dplr_kernel_by_the_pair_sums_equals_the_dense_system(monkeypatch):
    """S4's kernel (dplr_kernel_fast, the pair sums' caller) with the C pair sums and the generic op, against the dense
    bilinear system: L = 1, 2 and odd, a real pole, duplicated poles, rank 0 and 2; and its gradients in every input
    with the C pair sums against those with the generic op."""
    g = _gen(21)
    H, Nh = 2, 4
    Lam = torch.complex(-0.05 - torch.rand(H, Nh, generator=g, dtype=F64), 3 * torch.randn(H, Nh, generator=g,
                                                                                           dtype=F64))
    Lam[0, 1] = Lam[0, 1].real.item()  # a real pole (its pair is itself twice)
    Lam[1, 3] = Lam[1, 2]  # a duplicated pair
    dt = torch.tensor([0.1, 0.013], dtype=F64)

    def crandn(*shape):
        return 0.3 * torch.complex(torch.randn(*shape, generator=g, dtype=F64), torch.randn(*shape, generator=g,
                                                                                            dtype=F64))

    for r, L in ((0, 1), (2, 2), (1, 7), (2, 16)):
        args = [Lam, crandn(r, H, Nh), crandn(2, H, Nh), crandn(1, H, Nh), dt]
        want = dplr_kernel_reference(*args, L)
        grads = []
        for path in ("native", "chunked"):
            monkeypatch.setattr(cauchy_mod, "_cauchy_backend", lambda path=path: path)
            leaves = [t.clone().requires_grad_() for t in args]
            K = dplr_kernel(*leaves, L, backend="fft")
            assert rel_err(K, want) < 1e-9, (path, r, L)
            grads.append(torch.autograd.grad((K * torch.linspace(-1, 1, L, dtype=F64)).sum(), leaves))
        for a, b in zip(*grads):
            assert rel_err(a, b) < 1e-10, (r, L)
