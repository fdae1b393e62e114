"""Precision and dtypes of SequenceModel with every registered layer (probe 12, docs/design.md): a float64 model
computes in float64 (forward and step), bf16 autocast forward + backward gives float32 gradients within bf16 rounding
of the float64 model's, and low-precision parameters are refused by every entry point."""

from __future__ import annotations

import pytest
import torch

import ssmkit.layers as layers
from ssmkit.models import SequenceModel
from tests.conftest import DEVICE, H, leaves, rel_err, variants

NAMES = layers.available()
B, L = 2, 19


def model_for(name: str, dtype: torch.dtype, d_model: int = H) -> SequenceModel:
    torch.manual_seed(3)
    return SequenceModel(2, d_model, 2, name, variants(name)[0], 3, head="regress", pool="last", device=DEVICE,
                         dtype=dtype)


def last_step(model: SequenceModel, x: torch.Tensor) -> torch.Tensor:
    """The model's step over x (B, L, d_input) from zeros: its output at the last step (= pool "last")."""
    state = model.initial_state(x.shape[0])
    for t in range(x.shape[1]):
        out, state = model.step(x[:, t], state)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_float64_model_is_computed_in_float64(name):
    # the finite-difference test of tests/layers/test_precision.py on the whole model (encoder, norms, GLU, head):
    # steps 1e-9 and 1e-5 agree to ~1e-7 in float64 (measured <= 2.5e-7), O(1e-2..1) with a float32 rounding inside
    model = model_for(name, torch.float64)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, L, 2, dtype=torch.float64, generator=g).to(DEVICE)
    v = torch.randn(B, L, 2, dtype=torch.float64, generator=g).to(DEVICE)
    params = list(model.parameters())
    start = [p.detach().clone() for p in params]
    w = [torch.randn(p.shape, dtype=p.dtype, generator=g).to(DEVICE) * (p.detach().abs().mean() + 1e-3) for p in start]

    def at(t: float) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            for p, p0, d in zip(params, start, w):
                p.copy_(p0 + t * d)
            out = (model(x + t * v)[0],)
            return out + (last_step(model, x + t * v),) if model.blocks[0].layer.supports("step") else out

    coarse = [(a - b) / 2e-5 for a, b in zip(at(1e-5), at(-1e-5))]
    fine = [(a - b) / 2e-9 for a, b in zip(at(1e-9), at(-1e-9))]
    for c, f in zip(coarse, fine):
        assert rel_err(f, c) < 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_autocast_training_step_of_a_model(name):
    # forward + loss under bf16 autocast, backward outside it (as Lightning's "bf16-mixed" does): float32 gradients,
    # finite, within bf16 rounding of the float64 model's. Measured at d_model 16 (the encoder, the Block's GLU and
    # the head run in bf16): outputs <= 1.7e-2, all gradients as one vector <= 2.0e-2 (LRU, Mamba-2). At d_model 3
    # the LayerNorms over 3 channels amplify the rounding: gradients up to 2.2e-1 (attention), 1.1e-1 (GSS).
    model = model_for(name, torch.float32, d_model=16)
    ref = model_for(name, torch.float32, d_model=16).double()
    x = torch.randn(B, L, 2, device=DEVICE)
    target = torch.randn(B, 3, device=DEVICE)
    loss_ref = ((ref(x.double())[0] - target) ** 2).mean()
    grads_ref = torch.autograd.grad(loss_ref, list(ref.parameters()))
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out, states = model(x)
        loss = ((out.float() - target) ** 2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)
    err = rel_err(torch.cat([g.flatten() for g in grads]), torch.cat([r.flatten() for r in grads_ref]))
    # Mega (its whole layer in float32 under autocast) is ill-conditioned here: in float64, a 2^-9 relative change of
    # the input alone (bf16's rounding) moves the output by up to 7.9e-2 (CPU); bf16 autocast's output error up to
    # 1.0e-1 on the CPU over 16 draws of x (gradients <= 3.9e-2), 1.6e-1 on the H200
    out_tol = 2.5e-1 if name == "mega" else 5e-2
    assert rel_err(out.float(), ref(x.double())[0]) < out_tol and err < 6e-2
    assert [t.dtype for t in leaves(states)] == [t.dtype for t in leaves(model.initial_state(B))]


@pytest.mark.parametrize("name", NAMES)
def test_low_precision_model_is_refused(name):
    for dtype in (torch.float16, torch.bfloat16):
        model = model_for(name, torch.float32).to(dtype)
        x = torch.randn(B, 5, 2, device=DEVICE)
        for call in (lambda: model(x), lambda: model(x.to(dtype)), lambda: model.initial_state(B)):
            with pytest.raises(ValueError, match=rf"parameters are {dtype}, but ssmkit layers keep float32 or float64"):
                call()


@pytest.mark.parametrize("name", ["s4d", "mamba", "h3", "hyena"])
def test_an_input_of_another_dtype_under_autocast(name):
    # x is computed in the model's dtype under autocast too: a float64 model given float32 computes in float64 (autocast
    # leaves float64 alone), exactly as given x.double(); a float32 model given float64 runs in autocast's bf16. Before,
    # both raised "mat1 and mat2 must have the same dtype" in the encoder (x was cast only outside autocast).
    x = torch.randn(B, L, 2, device=DEVICE)
    model64 = model_for(name, torch.float64)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        y, _ = model64(x)
        y_t = last_step(model64, x)
    y_ref = model64(x.double())[0]
    assert y.dtype == torch.float64 and rel_err(y, y_ref) < 1e-12
    assert rel_err(y_t.double(), y_ref) < 1e-12  # pool "last": the step at the last sample
    model32 = model_for(name, torch.float32)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        y32, _ = model32(x.double())
    assert rel_err(y32.double(), model32(x)[0].double()) < 5e-2  # bf16 rounding of the encoder, GLU and head
