"""Layers saved and loaded the ways a deployment does: half-precision weights in the analysis path.

A model shipped in float16/bfloat16 (``.half()`` before ``torch.save``, or a state dict loaded with ``assign=True``)
is analysed as it is: ``state_space()`` computes from exactly those weights in float64, as python-control converts
whatever numbers it is given; the tensor helpers that ``forward`` uses (``discrete()``, ``eigenvalues()``,
``continuous()``) refuse such weights with the protocol's ValueError, as ``forward`` does (docs/design.md, Probe 15).
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

import ssmkit.layers as layers
from tests.conftest import DEVICE, leaves, make_layer, variants

HALF = [torch.float16, torch.bfloat16]
WITH_STATE_SPACE = [n for n in layers.available() if layers.layer_class(n).capabilities.state_space]
HELPERS = ("discrete", "eigenvalues", "continuous")


def _helpers(layer) -> list:
    """The tensor helpers of ``layer`` and of its sub-layers (H3's S4D, Mega's EMA, GSS's diagonal SSM)."""
    return [getattr(m, h) for m in layer.modules() for h in HELPERS if callable(getattr(m, h, None))]


WITH_HELPERS = [n for n in layers.available() if _helpers(make_layer(n))]


def _matrices(ss) -> list[np.ndarray]:
    return [np.asarray(m) for m in (ss.A, ss.B, ss.C, ss.D)]


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", WITH_STATE_SPACE)
def test_state_space_of_half_precision_weights_is_their_float64_system(name, dtype):
    layer = make_layer(name, dtype=torch.float32)
    half = copy.deepcopy(layer).to(dtype)
    # the reference: a float64 layer of another seed holding the same (rounded) weights, through a weights_only file
    buffer = io.BytesIO()
    torch.save(half.state_dict(), buffer)
    buffer.seek(0)
    reference = make_layer(name, dtype=torch.float64, seed=7)
    reference.load_state_dict(torch.load(buffer, weights_only=True))  # upcasts exactly
    got, want = half.state_space(), reference.state_space()
    for g, w in zip(_matrices(got), _matrices(want)):
        assert g.dtype in (np.float64, np.complex128) and g.shape == w.shape
        np.testing.assert_array_equal(g, w)  # the same float64 computation on the same numbers
    # and it is the rounded weights' system, not the float32 original's (rounding moves a matrix by >= 1e-5)
    assert max(np.abs(g - f).max() for g, f in zip(_matrices(got), _matrices(layer.state_space()))) > 1e-5
    assert next(half.parameters()).dtype == dtype  # the layer itself is left as it was


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
def test_half_precision_s4d_poles_are_the_closed_form_of_its_weights(dtype):
    # S4D-ZOH: the poles are exp(Δ λ) with λ = -exp(log A_real) + i A_imag (arXiv 2206.11893 §2), here from the
    # rounded weights in numpy float64 (independent of the layer's code)
    layer = make_layer("s4d", {"d_state": 8, "init": "legs"}, dtype=torch.float32).to(dtype)
    w = {k: v.double().cpu().numpy() for k, v in layer.state_dict().items()}
    lam = -np.exp(w["log_A_real"]) + 1j * w["A_imag"]  # (H, M)
    dt = np.exp(w["log_dt"])[:, None]  # (H, 1)
    want = np.exp(dt * lam)  # (H, M)
    got = layer.state_space().poles()  # (H, 2M): each mode and its conjugate
    for g, row in zip(got, want):
        expected = np.sort_complex(np.concatenate([row, row.conj()]))
        np.testing.assert_allclose(np.sort_complex(g), expected, rtol=1e-12, atol=1e-14)  # eigvals of 2x2 blocks


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", WITH_HELPERS)
def test_tensor_helpers_refuse_half_precision_weights(name, dtype):
    # before: S4D/DSS/DLR/S5/LRU failed deep in torch ("exp_vml_cpu" not implemented for 'ComplexHalf', "Expected both
    # inputs to be Half, Float or Double tensors"), EMA's discrete() returned bfloat16 matrices silently
    for opts in variants(name):
        for helper in _helpers(make_layer(name, opts, dtype=torch.float32).to(dtype)):
            with pytest.raises(ValueError, match=f"parameters are {dtype}.*state_space\\(\\) analyses"):
                helper()


@pytest.mark.parametrize("name", ["s4d", "s5", "ema"])
def test_state_space_after_assign_load_of_a_half_state_dict(name):
    # load_state_dict(assign=True) keeps the saved tensors' dtype: the layer then holds float16 weights
    layer = make_layer(name, dtype=torch.float32)
    saved = {k: v.half() for k, v in layer.state_dict().items()}
    loaded = make_layer(name, dtype=torch.float32, seed=3)
    loaded.load_state_dict(saved, assign=True)
    reference = make_layer(name, dtype=torch.float64, seed=4)
    reference.load_state_dict(saved)
    for g, w in zip(_matrices(loaded.state_space()), _matrices(reference.state_space())):
        np.testing.assert_array_equal(g, w)
    with pytest.raises(ValueError, match="parameters are torch.float16"):
        loaded(torch.randn(2, 5, 3, device=DEVICE))


@pytest.mark.parametrize("name", layers.available())
def test_a_saved_state_loads_with_weights_only_and_continues_the_sequence(name):
    """A recurrent session stopped and resumed: the state after a forward goes through ``torch.save`` and the default
    ``torch.load(weights_only=True)``; the loaded state has the same type (NamedTuples included) and the continued
    output equals the one from the state that never left memory (a NamedTuple state failed before 2026-12-02:
    "Unsupported global: GLOBAL ssmkit.layers.mamba.MambaState")."""
    layer = make_layer(name).eval()
    with torch.no_grad():
        _, state = layer(torch.randn(2, 6, layer.d_model, dtype=torch.float64, device=DEVICE), return_state=True)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=True)
        assert type(loaded) is type(state)
        x = torch.randn(2, 5, layer.d_model, dtype=torch.float64, device=DEVICE)
        (y_loaded, h_loaded), (y_kept, h_kept) = layer(x, loaded), layer(x, state)
    assert torch.equal(y_loaded, y_kept)
    assert all(torch.equal(a, b) for a, b in zip(leaves(h_loaded), leaves(h_kept)))
