"""Adversarial checks of the fused C steps of Mamba, Mamba-2 and the RG-LRU block (ssmkit.ops.native.mamba_step,
mamba2_step, rglru_step), beyond tests/layers/test_native_steps.py: every parameter away from its init, 50 public steps
against one forward pass with and without grad mode, in train and eval mode, batch 1 and 3, both dtypes; parameters
changed in place between steps (no stale values); 1 against 2 real threads; and parameters that are not contiguous or
not in the layer's dtype, which the fused steps must read as the PyTorch step does."""

from __future__ import annotations

import pytest
import torch

import ssmkit.layers as layers
from ssmkit.ops.native import native_available
from tests.conftest import DEVICE, rel_err

F64, F32 = torch.float64, torch.float32
NAMES = ["mamba", "mamba2", "rglru"]
pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu" or not all(native_available(op, dtype) for op in ("mamba_step", "mamba2_step", "rglru_step")
                                    for dtype in (F32, F64)),
    reason="the native backend runs on the CPU where a C compiler builds it",
)


def build(name: str, dtype: torch.dtype):
    """A small layer (groups, heads and ranks off 1) with every parameter moved by 0.3 N(0, 1) from its init."""
    torch.manual_seed(0)
    if name == "mamba2":  # 8 heads of 3 channels in 2 groups
        layer = layers.build("mamba2", d_model=12, d_state=5, headdim=3, ngroups=2, dtype=dtype)
    elif name == "mamba":
        layer = layers.build("mamba", d_model=12, d_state=5, dt_rank=3, dtype=dtype)
    else:
        layer = layers.build("rglru", d_model=12, lru_width=10, n_heads=2, dtype=dtype)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=F64).to(dtype))
    return layer


def random_state(layer, Bsz: int, g: torch.Generator):
    start = layer.initial_state(Bsz)
    return type(start)(*(torch.randn(t.shape, generator=g, dtype=t.dtype) for t in start))


def uses_kernel(layer, monkeypatch) -> list:
    """Record each call of the layer's fused step."""
    calls = []
    real = layer._step_native
    monkeypatch.setattr(layer, "_step_native", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("grad,mode", [(False, "eval"), (False, "train"), (True, "train"), (True, "eval")],
                         ids=["no-grad-eval", "no-grad-train", "grad-train", "grad-eval"])
@pytest.mark.parametrize("Bsz", [1, 3], ids=["B=1", "B=3"])
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", NAMES)
def test_fifty_steps_continue_the_forward_pass(name, dtype, Bsz, grad, mode, monkeypatch):
    """From a random state: y and the final state of 50 public steps equal the forward pass (the fused step without
    grad mode, the PyTorch step with it)."""
    layer = build(name, dtype).train(mode == "train")
    calls = uses_kernel(layer, monkeypatch)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(Bsz, 50, 12, generator=g, dtype=dtype)
    state = random_state(layer, Bsz, g)
    with torch.set_grad_enabled(grad):
        y_fwd, end = layer(x, state)
        s, ys = state, []
        for t in range(x.shape[1]):
            y_t, s = layer.step(x[:, t], s)
            ys.append(y_t)
    assert len(calls) == (0 if grad else 50)
    tol = 1e-11 if dtype == F64 else 1e-5
    assert rel_err(torch.stack(ys, 1), y_fwd) < tol
    for a, b in zip(s, end):
        assert a.dtype == b.dtype and rel_err(a, b) < tol


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", NAMES)
def test_parameters_changed_in_place_between_steps_are_read(name, dtype, monkeypatch):
    """Every parameter scaled in place every 5th step (as an optimizer step does): the fused steps follow the PyTorch
    steps token by token."""
    layer = build(name, dtype)
    calls = uses_kernel(layer, monkeypatch)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 30, 12, generator=g, dtype=dtype)
    fused = slow = random_state(layer, 2, g)
    tol = 1e-12 if dtype == F64 else 2e-5
    with torch.no_grad():
        for t in range(x.shape[1]):
            if t % 5 == 4:
                for p in layer.parameters():
                    p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g, dtype=F64).to(dtype))
            y_fast, fused = layer.step(x[:, t], fused)
            y_slow, slow = layer._step_torch(x[:, t], slow)
            for a, b in zip((y_fast, *fused), (y_slow, *slow)):
                assert rel_err(a, b) < tol
    assert len(calls) == x.shape[1]


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", NAMES)
def test_one_and_two_threads_agree_bit_for_bit(name, restore_threads):
    layer = build(name, F32)
    g = torch.Generator().manual_seed(1)
    x, state = torch.randn(3, 10, 12, generator=g), random_state(layer, 3, g)
    runs = []
    for n in (1, 2):
        torch.set_num_threads(n)
        s, ys = state, []
        with torch.no_grad():
            for t in range(x.shape[1]):
                y, s = layer.step(x[:, t], s)
                ys.append(y)
        runs.append([torch.stack(ys), *s])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_rglru_steps_with_segment_starts_continue_the_forward_pass():
    """The RG-LRU's public step with a reset flag per row, against its forward pass with the same resets."""
    layer = build("rglru", F64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 40, 12, generator=g, dtype=F64)
    resets = torch.rand(3, 40, generator=g) < 0.15
    resets[1, 0] = True
    state = random_state(layer, 3, g)
    with torch.no_grad():
        y_fwd, end = layer(x, state, resets=resets)
        s, ys = state, []
        for t in range(x.shape[1]):
            y_t, s = layer.step(x[:, t], s, resets[:, t])
            ys.append(y_t)
    assert rel_err(torch.stack(ys, 1), y_fwd) < 1e-11
    for a, b in zip(s, end):
        assert rel_err(a, b) < 1e-11


@pytest.mark.parametrize("name", NAMES)
def test_steps_after_a_forward_prefix_and_from_non_contiguous_states(name):
    """The state a forward pass over a prefix returns, continued by fused steps, equals one forward pass; and a state
    given as non-contiguous views (the same values) gives the same steps."""
    layer = build(name, F64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 30, 12, generator=g, dtype=F64)
    with torch.no_grad():
        y_full, end = layer(x)
        y_pre, s = layer(x[:, :17])
        s_views = type(s)(*(t.transpose(0, -1).contiguous().transpose(0, -1) for t in s))
        assert not any(t.is_contiguous() for t in s_views)
        ys, ys_views = [], []
        for t in range(17, 30):
            y_t, s = layer.step(x[:, t], s)
            y_v, s_views = layer.step(x[:, t], s_views)
            ys.append(y_t)
            ys_views.append(y_v)
    assert rel_err(torch.cat([y_pre, torch.stack(ys, 1)], 1), y_full) < 1e-11
    assert torch.equal(torch.stack(ys), torch.stack(ys_views))
    for a, b in zip(s, end):
        assert rel_err(a, b) < 1e-11


@pytest.mark.parametrize("name", NAMES)
def test_fused_step_under_bfloat16_autocast_equals_the_pytorch_step(name):
    layer = build(name, F32)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 20, 12, generator=g)
    fused = slow = random_state(layer, 3, g)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for t in range(x.shape[1]):
            y_fast, fused = layer.step(x[:, t], fused)
            y_slow, slow = layer._step_torch(x[:, t], slow)
            for a, b in zip((y_fast, *fused), (y_slow, *slow)):
                assert a.dtype == b.dtype == F32 and rel_err(a, b) < 2e-5


FORWARD_OPTIONS = [("mamba2", {}), ("mamba2", {"D_has_hdim": True}), ("mamba2", {"norm_before_gate": True}),
                   ("mamba2", {"rmsnorm": False}), ("mamba2", {"ngroups": 4, "d_state": 1}), ("rglru", {}),
                   ("rglru", {"n_heads": 5, "lru_width": 10})]


@pytest.mark.parametrize("name,options", FORWARD_OPTIONS,
                         ids=[n + ":" + (",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
                              for n, o in FORWARD_OPTIONS])
def test_forward_native_backend_equals_reference_with_every_gradient(name, options):
    """The forward pass on the "native" backend (the SSD, gated-norm and RG-LRU kernels) against "reference", from a
    random state that requires a gradient: outputs, final state and the gradients of the input, the state and every
    parameter (RG-LRU with segment starts)."""
    import ssmkit.ops as ops

    torch.manual_seed(0)
    if name == "mamba2":
        kw = {"d_model": 12, "d_state": 5, "headdim": 3, "ngroups": 2, "chunk_size": 4, **options}
    else:
        kw = {"d_model": 12, **options}
    layer = layers.build(name, dtype=F64, **kw)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=F64))
    u = torch.randn(2, 13, 12, generator=g, dtype=F64, requires_grad=True)
    state = type(layer.initial_state(2))(*(t.requires_grad_() for t in random_state(layer, 2, g)))
    extra = {"resets": torch.rand(2, 13, generator=g) < 0.2} if name == "rglru" else {}
    gy = torch.randn(2, 13, 12, generator=g, dtype=F64)
    out = {}
    for backend in ("native", "reference"):
        with ops.use_backend(backend):
            y, end = layer(u, state, **extra)
        loss = (y * gy).sum() + sum(t.square().sum() for t in end)
        out[backend] = [y, *end, *torch.autograd.grad(loss, [u, *state, *layer.parameters()])]
    for a, b in zip(out["native"], out["reference"]):
        assert rel_err(a, b) < 1e-12


# ------------------------------------------- found by these tests on 2026-12-05 (they failed then; fixed since)


def _not_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout: a strided view for 1-d, else the last two dims transposed twice."""
    if t.dim() == 1:
        return torch.stack([t, t], 1)[:, 0]
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


# the parameters each fused step hands its kernel (ssmkit.ops.native.parallel.kernel_inputs; not the projections,
# which are called): a contiguous copy made inside the argument list was freed before the kernel read it
KERNEL_PARAMETERS = {
    "mamba": ["dt_bias", "A_log", "D", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight"],
    "mamba2": ["dt_bias", "A_log", "D", "conv.weight", "conv.bias", "norm.weight"],
    "rglru": ["Lambda", "conv.weight", "conv.bias", "gate_a.weight", "gate_a.bias", "gate_x.weight", "gate_x.bias"],
}


@pytest.mark.parametrize("name", NAMES)
def test_non_contiguous_parameters_are_read_by_the_fused_step(name):
    """Parameters loaded in a non-contiguous layout (load_state_dict(assign=True) of a checkpoint holding transposed or
    strided tensors) keep their values: the fused step must equal the PyTorch step."""
    layer = build(name, F64)
    state_dict = {k: (_not_contiguous(v) if k in KERNEL_PARAMETERS[name] else v) for k, v in layer.state_dict().items()}
    layer.load_state_dict(state_dict, assign=True)
    assert not any(dict(layer.named_parameters())[k].is_contiguous() for k in KERNEL_PARAMETERS[name])
    g = torch.Generator().manual_seed(1)
    x, state = torch.randn(3, 12, generator=g, dtype=F64), random_state(layer, 3, g)
    with torch.no_grad():
        fast = layer.step(x, state)
        slow = layer._step_torch(x, state)
    for a, b in zip((fast[0], *fast[1]), (slow[0], *slow[1])):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("which", ["D", "norm"])
def test_mamba2_fused_step_with_a_parameter_in_another_dtype(which):
    layer = build("mamba2", F64)
    if which == "norm":
        layer.norm.float()  # the norm's weight in float32
    else:
        layer.D.data = layer.D.data.float()
    g = torch.Generator().manual_seed(1)
    x, state = torch.randn(2, 12, generator=g, dtype=F64), random_state(layer, 2, g)
    with torch.no_grad():
        y_fwd = layer(x[:, None], state)[0][:, 0]  # the forward promotes (PyTorch ops)
        fast = layer.step(x, state)[0]
        slow = layer._step_torch(x, state)[0]
    assert rel_err(slow, y_fwd) < 1e-12
    assert rel_err(fast, slow) < 1e-6


def test_mamba_fused_step_with_a_parameter_in_another_dtype_raises_like_the_pytorch_step():
    layer = build("mamba", F64)
    layer.D.data = layer.D.data.float()
    x, state = torch.randn(2, 12, dtype=F64), layer.initial_state(2)
    with torch.no_grad():
        with pytest.raises(ValueError, match="D must have u's dtype"):
            layer._step_torch(x, state)
        with pytest.raises(ValueError):
            layer.step(x, state)
