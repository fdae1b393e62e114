"""Size-boundary probe of 2026-12-05: every layer and backend at the sizes where the fast paths' blockings meet the
user's sizes, against the float64 ``"reference"`` backend (outputs, final states, gradients of the input, the initial
state and every parameter).

The blockings in the code (values on this AVX-512 machine; common.h's VBYTES is 32 on AVX2, halving each VEC):

- diagonal C kernel (ops/native/diagonal_scan.c): items of (batch row, VEC channels), VEC = VBYTES / itemsize = 16
  floats / 8 doubles (8 / 4 on AVX2); time chunks T = 64 (ops/native/diagonal.py ``default_chunk``); complex modes
  advanced MB = 4 at a time forward, MBB = 2 backward (1 on AVX2); real modes (EMA) MBR = 8, MBBR = 4 (4, 2 on AVX2)
- selective scan C kernel (Mamba): items of 64 channels; backward chunks T = 64 halved while (2T+1)·N·64·itemsize
  > 1 MiB (T = 32 at N = 16 in float64, T = 8 at N = 64 in float64, 16 in float32); the chunked path's
  ``default_chunk_size``: T in [8, 128], 128 at small B·H·N
- SSD C kernel (Mamba-2): items of PV = 64 head channels; backward chunks T = 64 halved while (T+2)·N·64·itemsize
  > 4 MiB (T = 32 at N = 128 in float64); the chunked path's chunks are the layer's ``chunk_size``
- RG-LRU C scan: items of 64 channels; the chunked path's ``linear_recurrence``: chunks of 64 below B·H = 8192, one
  loop from there (ops/recurrence.py ``_LOOP_WIDTH``)
- causal conv C kernel: items of max(64, W-1) steps; gated RMSNorm C kernel: items of 64 rows (B·L)
- work items over ``torch.get_num_threads()`` threads (ops/native/parallel.py ``parts``: min(threads, items))
- chunked diagonal scan (ops/chunked.py): chunks of 64, carried in ~√nc groups
- FFT convolution (ops/fftconv.py, ops/fftblocks.py): n = the smallest even 2·3·5-smooth size >= 2L; by blocks of
  16 MiB of padded signal (whole batch rows, else channel ranges of one row) once the signal is over one block, or
  over 1 MiB where the passes run in C (no_grad forwards and every backward); C passes (spectral.c) in tiles of 64
  steps x 16 channels and gradient items of 1024 frequencies (n = 2048 at L = 1024: 1025 frequencies)
- S4's Cauchy kernels: blocks of 64 points forward, 256 backward, 256 in the pair sums; (L_k + 1) // 2 points
- row-blocked projections (ops/rows.py): blocks of 2048 rows once B·L > 4096 (Mamba, Mamba-2, RG-LRU, the model
  Block's output linear/GLU); the MIMO C path's GEMMs by 32768 rows (ops/native/mimo.py)
- attention: query blocks of 256 on the masked path (a cache or a window)

What was swept (about 2 000 comparisons, float64 at 1e-10 and float32 against the float32 reference's own error):
L in {1, 2, 63, 64, 65, 127, 128, 129, 255, 256, 257, 513, 576, 577, 1023, 1024, 1025, 2049, 4097, 6145}, d_model
in {1, 7, 8, 9, 15, 16, 17, 33} and 63/64/65 for the 64-channel items, d_state around the mode blocks (1, 4, 5, 7,
8, 9, 16, 17 modes) and the chunk-halving sizes (16, 64, 128), B in {1, 2, 3} against 1, 2, 3 threads, continuation
splits k in {63, 64, 65, 128}, bidirectional layers, FFT blocks forced small (whole rows, channel ranges), row blocks
against ``F.linear`` (ROW_BLOCK patched out), MIMO row blocks patched to 64-129, B·H across 8192.

Found: (1) a crash: the bidirectional diagonal layers (S4D, DSS, DLR, EMA, Mega) on the ``"chunked"`` backend raised
"Output 0 of Slice is a view and is being modified inplace" at d_model = 1 (any B, L) and at B = L = 1: the chunked
scan's contiguous transpose returned a view of its input where the transpose was already contiguous, and
``two_sided_scans`` adds into its output in place. Fixed in ops/chunked.py (``_transpose_copy`` always copies).
(2) Benign: at L = 1 without a state the reference returns no gradient (None) for a bidirectional EMA / DLR / Mega
parameter that cannot act at L = 1 (Ā's), where the fast paths return zeros; compared here as zeros.
No silent wrong answer was found at any boundary; the tests below keep the straddling sizes as a guard.
"""

from __future__ import annotations

import copy

import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
import ssmkit.ops.fftblocks as fftblocks
import ssmkit.ops.native.mimo as native_mimo
import ssmkit.ops.rows as rows
from ssmkit.models import SequenceModel
from ssmkit.ops.fftconv import _fft_size
from tests.conftest import leaves, rel_err, runnable_backends, state_map

F64_TOL = 1e-10  # float64 paths against the float64 loop: rounding only (observed <= 1e-14)
# float32: a path may be this many times less accurate than the float32 reference loop itself (observed <= 3x; a
# blocking bug gives O(1) errors), with a floor for errors at float32's rounding
F32_FACTOR, F32_FLOOR = 8.0, 1e-5


def _tensors(state) -> list[torch.Tensor]:
    """The tensors of a layer state; none for None (a bidirectional layer's)."""
    return [] if state is None else leaves(state)


def _perturb(layer: torch.nn.Module) -> None:
    """Move every parameter a little away from its init (structure-preserving inits hide mixed-up channels)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            p.add_(0.1 * noise.to(p.dtype) * p.detach().abs().mean().clamp_min(0.1))


def _run(layer, x, h0, w, backend, threads=None, k=None):
    """(y, final state, gradients of [x, h0's tensors, parameters]) of the loss Σ w·y + Σ|h|², one pass or the
    continuation x[:, :k] then x[:, k:]; None gradients as zeros."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        x = x.detach().requires_grad_()
        h0 = None if h0 is None else state_map(lambda t: t.detach().requires_grad_(), h0)
        wrt = [x, *_tensors(h0), *layer.parameters()]
        with ops.use_backend(backend):
            if k is None:
                y, h = layer(x, h0)
            else:
                y1, h1 = layer(x[:, :k], h0)
                y2, h = layer(x[:, k:], h1)
                y = torch.cat([y1, y2], dim=1)
            loss = (y * w.to(y.dtype)).sum() + sum((t.abs() ** 2).sum() for t in _tensors(h))
            grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    finally:
        torch.set_num_threads(old)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]
    return y, h, grads


def _errors(a, ref) -> list[float]:
    """Relative errors of y, every state tensor and every gradient of a run against a reference run."""
    (y, h, g), (y_r, h_r, g_r) = a, ref
    return [rel_err(y, y_r), *(rel_err(s, t) for s, t in zip(_tensors(h), _tensors(h_r))),
            *(rel_err(s, t) for s, t in zip(g, g_r))]


def _check(name, options, B, L, H, threads, k, dtypes=(torch.float64, torch.float32), backends=None,
           state=True) -> None:
    """Every backend of layer ``name`` (and ``"auto"``) at (B, L, H) on ``threads`` threads, one pass or split at k,
    against the float64 reference loop."""
    torch.manual_seed(1)
    ref = layers.build(name, d_model=H, dtype=torch.float64, **options)
    _perturb(ref)
    x, w = torch.randn(B, L, H, dtype=torch.float64), torch.randn(B, L, H, dtype=torch.float64)
    h0 = state_map(lambda t: 0.5 * torch.randn_like(t), ref.initial_state(B)) if state else None
    out_ref = _run(ref, x, h0, w, "reference")
    for dtype in dtypes:
        layer = copy.deepcopy(ref).to(dtype)
        like = iter(leaves(layer.initial_state(B)))  # the state's dtypes (attention keeps a float64 position)
        h0_d = None if h0 is None else state_map(lambda t: t.to(next(like).dtype), h0)
        if dtype == torch.float64:
            tol = [F64_TOL] * len(_errors(out_ref, out_ref))
        else:
            own = _errors(_run(layer, x.to(dtype), h0_d, w, "reference"), out_ref)
            tol = [max(F32_FLOOR, F32_FACTOR * e) for e in own]
        for backend in backends or ("auto", *runnable_backends(layer)):
            errs = _errors(_run(layer, x.to(dtype), h0_d, w, backend, threads, k), out_ref)
            bad = [(i, e, t) for i, (e, t) in enumerate(zip(errs, tol)) if not e <= t]
            assert not bad, (name, options, (B, L, H), threads, k, backend, dtype, bad)


# (options, [(B, L, H, threads, k)]) per layer: each case straddles one of the layer's blockings (module docstring).
SWEEP: dict[str, tuple[dict, list[tuple]]] = {
    # diagonal C kernel: 16 / 8 channels per item, T = 64, MB = 4 modes (d_state 10: 5 modes), B·items vs threads
    "s4d": ({"d_state": 10}, [(1, 1, 8, 1, None), (3, 65, 17, 2, None), (1, 130, 9, 3, 64), (2, 130, 16, 3, 65)]),
    "dss": ({"d_state": 2}, [(1, 64, 17, 3, None), (2, 130, 8, 2, 63)]),
    "dlr": ({"d_state": 8}, [(3, 65, 16, 2, None), (1, 130, 9, 3, 64)]),
    # real modes: MBR = 8 (d_state 9 = one block and one mode)
    "ema": ({"d_state": 9}, [(1, 1, 9, 1, None), (3, 65, 17, 2, None), (2, 130, 8, 3, 64)]),
    "gss": ({"d_state": 8, "expand": 1, "bottleneck": 1}, [(2, 65, 17, 3, None), (1, 130, 16, 2, 63)]),
    "h3": ({"d_state": 8}, [(2, 65, 17, 3, None), (1, 130, 16, 2, 64)]),
    "mega": ({"d_state": 3, "d_qk": 4, "d_v": 5, "chunk_size": 64}, [(2, 65, 17, 3, None), (1, 130, 9, 2, 64)]),
    # MIMO C path (row GEMMs patched small in test_mimo_row_blocks)
    "lru": ({"d_state": 10}, [(3, 65, 17, 2, None), (1, 130, 9, 3, 64)]),
    "s5": ({"d_state": 8, "blocks": 2}, [(3, 65, 17, 2, None), (1, 130, 9, 3, 65)]),
    # selective C scan: 64 channels per item (d_inner = H), backward T = 32 at N = 16 in float64, 64 in float32
    "mamba": ({"d_state": 16, "expand": 1, "dt_rank": 2},
              [(1, 33, 65, 2, None), (2, 65, 64, 3, None), (1, 130, 63, 1, 64)]),
    # SSD: 64 head channels per item (one head of headdim = H), the layer's chunks of 64, RMSNorm items of 64 rows
    "mamba2": ({"d_state": 4, "expand": 1, "chunk_size": 64, "headdim": 65},
               [(1, 65, 65, 2, None), (2, 130, 65, 3, 64)]),
    # RG-LRU C scan: 64 channels per item
    "rglru": ({"lru_width": 65, "n_heads": 5}, [(1, 65, 5, 2, None), (3, 130, 3, 3, 64)]),
    # query blocks of 256: a window or a cache takes the masked path
    "attention": ({"n_heads": 1, "head_dim": 4, "window": 255}, [(2, 257, 3, None, None), (1, 513, 3, None, 256)]),
    # S4: l_max 129 -> 65 Cauchy points (blocks of 64), L beyond l_max (doubling)
    "s4": ({"d_state": 4, "l_max": 129}, [(2, 129, 9, 2, None), (1, 259, 3, None, 129)]),
    "liquid_s4": ({"d_state": 4, "l_max": 64}, [(2, 65, 3, None, None), (1, 66, 3, None, 64)]),
    # FFT sizes: n = 130 (L 65), 256 (L 128), 260 (L 129)
    "hyena": ({"l_max": 130, "filter_width": 8}, [(2, 65, 5, None, None), (1, 129, 5, None, 64)]),
    "sgconv": ({"l_max": 130, "kernel_dim": 8}, [(2, 128, 5, None, None), (1, 129, 5, None, 65)]),
}


def test_the_sweep_covers_every_layer():
    assert sorted(SWEEP) == layers.available()


@pytest.mark.parametrize("name", sorted(SWEEP))
def test_every_backend_at_the_blockings_equals_the_reference(name):
    options, cases = SWEEP[name]
    for B, L, H, threads, k in cases:
        _check(name, options, B, L, H, threads, k)


# (name, options) of the layers whose bidirectional form runs two diagonal scans (ops: ``two_sided_scans``)
TWO_SIDED = [("s4d", {"d_state": 4}), ("dss", {"d_state": 4}), ("dlr", {"d_state": 4}), ("ema", {"d_state": 3}),
             ("mega", {"d_state": 3, "d_qk": 4, "d_v": 5, "chunk_size": 8})]


@pytest.mark.parametrize("name,options", TWO_SIDED, ids=[n for n, _ in TWO_SIDED])
def test_bidirectional_chunked_scans_at_width_one_and_length_one(name, options):
    """The chunked scan's transpose of an (H, 1) or (1, H) matrix was a view of its input, and the anti-causal half
    added into it in place: RuntimeError "Output 0 of Slice is a view and is being modified inplace" at d_model = 1
    (any B, L) and at B = L = 1 (fixed in ops/chunked.py)."""
    for B, L, H in [(1, 1, 3), (2, 9, 1), (1, 1, 1)]:
        _check(name, {**options, "bidirectional": True}, B, L, H, None, None, backends=("chunked",), state=False)


def test_bidirectional_natives_at_the_channel_and_chunk_blockings():
    """The C kernel's reversed scan (``reverse``) at the item and chunk edges."""
    for name, options in [("s4d", {"d_state": 10}), ("ema", {"d_state": 9})]:
        for B, L, H, threads in [(1, 65, 17, 3), (3, 64, 9, 2)]:
            _check(name, {**options, "bidirectional": True}, B, L, H, threads, None, backends=("native",),
                   state=False)


def test_native_backward_chunks_that_halve_with_the_state_size():
    """The selective scan's backward chunk is 8 steps at N = 64 in float64 (16 in float32), the SSD's 32 at N = 128
    in float64: lengths across those chunks."""
    _check("mamba", {"d_state": 64, "expand": 1, "dt_rank": 2}, 1, 9, 5, 1, None, backends=("native",))
    _check("mamba", {"d_state": 64, "expand": 1, "dt_rank": 2}, 2, 17, 5, 2, 8, backends=("native",))
    _check("mamba2", {"d_state": 128, "headdim": 8, "expand": 1, "chunk_size": 32}, 1, 33, 8, 2, None,
           backends=("native", "chunked"))


def test_linear_recurrence_at_the_loop_width():
    """The chunked RG-LRU and Mamba-2 paths run ``linear_recurrence`` by chunks below B·H = 8192 and as one loop
    from there: 2·4096 and 2·(2·64·64) state channels, against 1·4096."""
    _check("rglru", {"lru_width": 4096, "n_heads": 64}, 2, 70, 3, None, 64, dtypes=(torch.float64,),
           backends=("chunked",))
    _check("mamba2", {"d_state": 64, "headdim": 64, "expand": 2, "chunk_size": 16}, 2, 40, 32, None, None,
           dtypes=(torch.float64,), backends=("chunked",))
    _check("mamba2", {"d_state": 64, "headdim": 64, "expand": 2, "chunk_size": 16}, 1, 40, 32, None, None,
           dtypes=(torch.float64,), backends=("chunked",))


@pytest.mark.parametrize("blocks", ["rows", "channels"])
def test_fft_blocks_through_the_layers(monkeypatch, blocks):
    """The blocked FFT convolution (a no_grad forward and every backward) with blocks forced small: two whole batch
    rows per block (3 rows: a partial last block), or 5 channels of one row (17 channels: 5, 5, 5, 2). L = 1024:
    n = 2048, 1025 frequencies (the C gradient pass's items of 1024 frequencies)."""
    B, L, H = 3, 1024, 17
    n = _fft_size(2 * L)
    calls = []
    for fn in ("conv_forward_blocked", "conv_grads_blocked"):
        original = getattr(fftblocks, fn)
        monkeypatch.setattr(fftblocks, fn, lambda *a, _f=original, _n=fn, **kw: calls.append(_n) or _f(*a, **kw))
    for name, options in [("s4d", {"d_state": 4}), ("sgconv", {"l_max": L, "kernel_dim": 16}),
                          ("hyena", {"l_max": L, "filter_width": 8}), ("s4", {"d_state": 4, "l_max": L})]:
        for dtype in (torch.float64, torch.float32):
            row = n * torch.finfo(dtype).bits // 8  # bytes of one padded channel
            monkeypatch.setattr(fftblocks, "BLOCK_BYTES", 2 * H * row if blocks == "rows" else 5 * row)
            torch.manual_seed(1)
            ref = layers.build(name, d_model=H, dtype=torch.float64, **options)
            _perturb(ref)
            x = torch.randn(B, L, H, dtype=torch.float64)
            layer = copy.deepcopy(ref).to(dtype)
            with torch.no_grad():
                with ops.use_backend("reference"):
                    y_ref, _ = ref(x)
                    y_own, _ = layer(x.to(dtype))
                del calls[:]
                with ops.use_backend("fft"):
                    y, _ = layer(x.to(dtype))
            assert calls == ["conv_forward_blocked"], (name, calls)
            tol = F64_TOL if dtype == torch.float64 else max(F32_FLOOR, F32_FACTOR * rel_err(y_own, y_ref))
            assert rel_err(y, y_ref) <= tol, (name, dtype, rel_err(y, y_ref))
            del calls[:]
            _check(name, options, B, L, H, None, None, dtypes=(dtype,), backends=("fft",), state=False)
            assert "conv_grads_blocked" in calls, (name, calls)


def _same_with_whole_gemms(fn, monkeypatch):
    """fn() with the row blocks as they are and with ROW_BLOCK so large that every projection is one ``F.linear``."""
    blocked = fn()
    monkeypatch.setattr(rows, "ROW_BLOCK", 10**9)
    whole = fn()
    monkeypatch.undo()
    return blocked, whole


@pytest.mark.parametrize("B,L", [(1, 4096), (1, 4097), (3, 2049)])
def test_row_blocked_projections_at_the_threshold(monkeypatch, B, L):
    """Rows B·L = 4096 (one GEMM), 4097 (blocks of 2048, 2048, 1) and 6147, in Mamba, Mamba-2, RG-LRU and a
    SequenceModel (its Blocks' output GLU and linear), float64 and float32, against whole GEMMs."""
    torch.manual_seed(0)
    x = torch.randn(B, L, 5, dtype=torch.float64)
    w = torch.randn(B, L, 5, dtype=torch.float64)
    cases = [("mamba", {"d_state": 3, "expand": 1, "dt_rank": 2}), ("mamba2", {"d_state": 3, "headdim": 5, "expand": 1}),
             ("rglru", {"lru_width": 6, "n_heads": 2})]
    for dtype in (torch.float64, torch.float32):
        tol = 1e-12 if dtype == torch.float64 else 1e-5  # the same dot products in another order
        for name, options in cases:
            torch.manual_seed(1)
            layer = layers.build(name, d_model=5, dtype=dtype, **options)
            _perturb(layer)
            h0 = state_map(lambda t: 0.5 * torch.randn_like(t), layer.initial_state(B))
            a, b = _same_with_whole_gemms(lambda: _run(layer, x.to(dtype), h0, w, "auto"), monkeypatch)
            assert max(_errors(a, b)) <= tol, (name, dtype, _errors(a, b))
        for mixer_out in ("glu", "linear"):
            torch.manual_seed(2)
            model = SequenceModel(d_input=5, d_model=4, n_layers=2, layer="s4d", layer_options={"d_state": 4},
                                  d_output=2, head="regress", pool=None, mixer_out=mixer_out, dtype=dtype)

            def fit():
                y = model(x.to(dtype))
                y = y[0] if isinstance(y, tuple) else y
                return [y, *torch.autograd.grad((y * w[..., :2].to(dtype)).sum(), list(model.parameters()))]

            a, b = _same_with_whole_gemms(fit, monkeypatch)
            assert max(rel_err(s, t) for s, t in zip(a, b)) <= tol, (mixer_out, dtype)


@pytest.mark.parametrize("row_block", [64, 65])
def test_mimo_row_blocks(monkeypatch, row_block):
    """The MIMO C path's GEMMs by blocks of rows (32768 in use, patched to 64 / 65) at B·L = 129, 130."""
    monkeypatch.setattr(native_mimo, "ROW_BLOCK", row_block)
    for name, options in [("s5", {"d_state": 8, "blocks": 2}), ("lru", {"d_state": 6})]:
        _check(name, options, 1, 129, 5, None, None, backends=("native",))
        _check(name, options, 2, 65, 5, None, 64, backends=("native",))
