"""The C kernel of Mamba-2's SSD scan (ssmkit.ops.native.ssd) against the step-by-step float64 loop and the quadratic
form: outputs, final state and every gradient, at shapes that exercise its channel blocks (64 channels and a tail),
groups, chunk tails and threads; float32 against float64 over a long sequence; the dispatch of "auto"; and what it keeps
for a backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ssmkit.ops as ops
from ssmkit.ops.native import native_available, ssd_native
from ssmkit.ops.native.ssd import default_chunk
from ssmkit.ops.ssd import ssd, ssd_reference
from tests.conftest import DEVICE, rel_err
from tests.ops.test_native import THREADING_IDS, THREADINGS, use_threads
from tests.ops.test_ssd import make_inputs, quadratic_form

F64 = torch.float64
pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu" or not (native_available("ssd", torch.float32) and native_available("ssd", F64)),
    reason="the native backend runs on the CPU where a C compiler builds it",
)

# (B, L, H, P, G, N, T): a partial block of 3 channels, 3 heads per group; two blocks (64 and a tail of 6) with a chunk
# tail of one step (L = 33, T = 8); three blocks (64, 64, 2) of a group of 2 heads; one full block, one group, L = 1;
# chunks longer than L; N = 1; a full block with N = 37 (the vector code's ∂B and ∂C by groups of 8 or 16 states: two
# or four full groups and a partial one)
SHAPES = [(2, 37, 6, 3, 2, 5, 4), (1, 33, 2, 70, 1, 4, 8), (2, 9, 4, 130, 2, 3, 2), (3, 1, 1, 64, 1, 7, 8),
          (2, 12, 2, 64, 2, 16, 64), (1, 20, 3, 5, 3, 1, 4), (1, 19, 2, 64, 1, 37, 8)]


def _grads(fn, ins, gy, gh):
    y, h = fn(*ins)
    return [y, h, *torch.autograd.grad((y * gy).sum() + (h * gh).sum(), [t for t in ins if t is not None])]


@pytest.mark.parametrize("threads", THREADINGS, ids=THREADING_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "from-rest"])
def test_forward_and_every_gradient_equal_the_loop_in_float64(shape, with_h0, threads, monkeypatch):
    use_threads(monkeypatch, *threads)
    Bsz, L, H, P, G, N, T = shape
    x, dt, A, B, C, h0 = (t.requires_grad_() for t in make_inputs(Bsz, L, H, P, G, N))
    ins = (x, dt, A, B, C, h0 if with_h0 else None)
    g = torch.Generator().manual_seed(1)
    gy, gh = torch.randn(x.shape, generator=g, dtype=F64), torch.randn(h0.shape, generator=g, dtype=F64)
    want = _grads(ssd_reference, ins, gy, gh)
    got = _grads(lambda *a: ssd_native(*a, chunk_size=T), ins, gy, gh)
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-12


def test_equals_the_quadratic_form_and_the_final_state_alone_carries_a_gradient():
    """Against the explicit float64 sum y = (𝓛 ∘ C Bᵀ)(Δ x) + decays · H0 C (independent of the loop), and with only
    the final state used (y's gradient absent: the kernel reads zeros) against the loop."""
    x, dt, A, B, C, h0 = make_inputs(2, 29, 4, 66, 2, 6)
    y, h = ssd_native(x, dt, A, B, C, h0, chunk_size=8)
    y_q, h_q = quadratic_form(x, dt, A, B, C, h0)
    assert rel_err(y, y_q) < 1e-12 and rel_err(h, h_q) < 1e-12
    ins = [t.requires_grad_() for t in (x, dt, A, B, C, h0)]
    got = torch.autograd.grad(ssd_native(*ins, chunk_size=8)[1].square().sum(), ins, materialize_grads=True)
    want = torch.autograd.grad(ssd_reference(*ins)[1].square().sum(), ins, materialize_grads=True)
    assert not want[4].any() and not got[4].any()  # the final state does not depend on C
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-12 or not b.any()


def test_gradcheck():
    x, dt, A, B, C, h0 = (t.requires_grad_() for t in make_inputs(1, 7, 2, 3, 1, 2))
    assert torch.autograd.gradcheck(lambda *a: ssd_native(*a, chunk_size=2), (x, dt, A, B, C, h0))


def test_float32_long_sequence_against_float64():
    """L = 3 000 in float32 (the kernel's own exp) against the float64 loop on the same inputs: forward and gradients
    within float32's accumulated rounding."""
    x, dt, A, B, C, h0 = make_inputs(1, 3000, 2, 70, 1, 8, decay=0.1, seed=3)
    ins64 = [t.requires_grad_() for t in (x, dt, A, B, C, h0)]
    ins32 = [t.detach().float().requires_grad_() for t in ins64]
    g = torch.Generator().manual_seed(2)
    gy, gh = torch.randn(x.shape, generator=g, dtype=F64), torch.randn(h0.shape, generator=g, dtype=F64)
    want = _grads(ssd_native, ins64, gy, gh)  # (equal to the loop in float64: the test above)
    got = _grads(ssd_native, ins32, gy.float(), gh.float())
    for a, b in zip(got, want):
        assert rel_err(a.double(), b) < 2e-5


def test_gradients_do_not_depend_on_the_threads(monkeypatch):
    runs = []
    x, dt, A, B, C, h0 = make_inputs(3, 70, 6, 70, 3, 4, dtype=torch.float32)
    for threads in THREADINGS:
        use_threads(monkeypatch, *threads)
        ins = [t.clone().requires_grad_() for t in (x, dt, A, B, C, h0)]
        y, h = ssd_native(*ins, chunk_size=16)
        runs.append([y, h, *torch.autograd.grad(y.sin().sum() + h.sum(), ins)])
    for other in runs[1:]:
        for a, b in zip(other, runs[0]):
            assert torch.equal(a, b)  # bit for bit: 1 thread, 3 OpenMP threads, 3 Python threads


def test_auto_takes_the_kernel_and_nothing_is_kept_without_grad(monkeypatch):
    import ssmkit.ops.native.ssd as native_ssd

    calls = []
    real = native_ssd._forward_kernel
    monkeypatch.setattr(native_ssd, "_forward_kernel", lambda *a: calls.append(a[-1]) or real(*a))
    x, dt, A, B, C, h0 = make_inputs()
    with torch.no_grad():
        y, h = ssd(x, dt, A, B, C, h0)  # "auto"
    y_ref, h_ref = ssd_reference(x, dt, A, B, C, h0)
    assert rel_err(y, y_ref) < 1e-12 and rel_err(h, h_ref) < 1e-12
    ssd(x, dt.requires_grad_(), A, B, C, h0)
    with ops.use_backend("chunked"):
        ssd(x, dt, A, B, C, h0)
    assert calls == [False, True]  # keep the chunk states only for a backward; "chunked" does not take the kernel
    with torch.no_grad():
        y, h = ssd_native(x, dt, A, B, C, h0)
    assert y.grad_fn is None and h.grad_fn is None


def test_bad_inputs_raise_by_name():
    x, dt, A, B, C, h0 = make_inputs()
    with pytest.raises(ValueError, match=r"dt must be \(B, L, H\)"):
        ssd_native(x, dt[:, :-1], A, B, C, h0)
    with pytest.raises(ValueError, match=r"h0 must be \(B, H, P, N\)"):
        ssd_native(x, dt, A, B, C, h0[:, :, :1])
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        ssd_native(x, dt, A, B, C, h0, chunk_size=0)
    with pytest.raises(ValueError, match="must have x's dtype"):
        ssd_native(x, dt.float(), A, B, C, h0)


def test_default_chunk_fits_the_buffer_in_four_megabytes():
    assert default_chunk(64, 4) == 64 and default_chunk(128, 4) == 64 and default_chunk(128, 8) == 32
    assert default_chunk(256, 4) == 32 and default_chunk(2048, 8) == 8
    for N, size in ((64, 8), (16, 8), (256, 4), (1000, 4)):
        T = default_chunk(N, size)
        assert T == 8 or (T + 2) * N * 64 * size <= 4 << 20


def test_the_mamba2_layer_takes_the_kernel_and_equals_the_chunked_path():
    import ssmkit.layers as layers

    torch.manual_seed(0)
    layer = layers.build("mamba2", d_model=48, d_state=8, headdim=32, ngroups=1, chunk_size=8, dtype=F64)
    u = torch.randn(2, 21, 48, dtype=F64, requires_grad=True)
    out = {}
    for backend in ("chunked", "native"):
        with ops.use_backend(backend):
            y, state = layer(u, return_state=True)
        grads = torch.autograd.grad(F.mse_loss(y, torch.zeros_like(y)) + state.ssm.square().sum(),
                                    [u, *layer.parameters()])
        out[backend] = [y, state.ssm, *grads]
    for a, b in zip(out["native"], out["chunked"]):
        assert rel_err(a, b) < 1e-11
