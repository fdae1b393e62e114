"""S5 beyond the protocol suite: the HiPPO-LegS block init, the exported poles, B̃ = V*B and C̃ = CV, both
discretisations, step_rescale, clip_eigs, bidirectional composed by hand, options and marks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ssmkit.layers as layers
from ssmkit.ops.backend import use_backend
from ssmkit.ops.hippo import s5_eigen
from tests.conftest import DEVICE, H, make_layer, rel_err

TRUNC = 2.0 / 0.87962566103423978  # the largest |entry| of a unit-variance normal truncated at ±2 std


def legs_normal_eigenvalues(n: int) -> np.ndarray:
    """Eigenvalues of the normal part of HiPPO-LegS (n × n) by numpy, built from the formulas (independent)."""
    k = np.arange(n)
    A = -np.sqrt(2 * k[:, None] + 1) * np.sqrt(2 * k[None, :] + 1)
    A = np.tril(A, -1) - np.diag(k + 1.0)
    P = np.sqrt(k + 0.5)
    return np.linalg.eigvals(A + np.outer(P, P))


def test_init_eigenvalues_are_the_legs_normal_blocks():
    layer = make_layer("s5", {"d_state": 16, "blocks": 2})
    Lambda = torch.complex(layer.A_real, layer.A_imag).detach().cpu().numpy()  # (8,)
    expect = legs_normal_eigenvalues(8)
    half = expect[expect.imag < 0]  # the kept half of each pair
    half = half[np.argsort(half.imag)]
    for block in (Lambda[:4], Lambda[4:]):  # the same block twice, in the official ascending order
        assert np.abs(block - half).max() < 1e-12
    assert np.allclose(Lambda.real, -0.5)


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_exported_poles_are_the_discretised_init_eigenvalues(discretization):
    layer = make_layer("s5", {"d_state": 16, "blocks": 2, "discretization": discretization})
    Lambda = torch.complex(layer.A_real, layer.A_imag).detach().cpu().numpy()  # (M,)
    dt = np.exp(layer.log_dt.detach().cpu().numpy())  # (M,)
    if discretization == "zoh":
        A_bar = np.exp(dt * Lambda)
    else:
        A_bar = (1 + dt * Lambda / 2) / (1 - dt * Lambda / 2)
    poles = layer.state_space().poles()[0]  # (2M,): each mode and its conjugate
    expect = np.concatenate([A_bar, A_bar.conj()])
    for p in poles:  # every pole is one of the discretised eigenvalues, and they pair up one to one
        assert np.abs(expect - p).min() < 1e-12
    assert np.abs(np.sort(poles.imag) - np.sort(expect.imag)).max() < 1e-12


@pytest.mark.parametrize("conj_sym", [True, False])
def test_B_and_C_are_the_projected_real_draws(conj_sym):
    torch.manual_seed(3)
    d_state, blocks = 32, 2
    layer = layers.build("s5", d_model=H, d_state=d_state, blocks=blocks, conj_sym=conj_sym, dtype=torch.float64)
    P = d_state if conj_sym else d_state // 2
    _, V = s5_eigen(P, blocks, conj_sym)  # (P, M)
    B_tilde = torch.view_as_complex(layer.B.detach())  # (M, H)
    # the real B back: V_f V_f* = I over both halves of each pair, so B = 2 Re(V B̃) (V B̃ without conj_sym)
    B = 2 * (V @ B_tilde).real if conj_sym else (V @ B_tilde).real
    assert rel_err(V.conj().T @ B.to(V.dtype), B_tilde) < 1e-12  # B̃ = V* B for this real B
    assert float(B.real.abs().max()) <= TRUNC / math.sqrt(P) + 1e-12  # truncated, variance 1/P
    assert abs(float(B.real.std()) * math.sqrt(P) - 1) < 0.3  # 96 draws
    if not conj_sym:  # V is square and unitary: C = C̃ V* is the complex draw, each part variance 1/P
        C = torch.view_as_complex(layer.C.detach()[0]) @ V.conj().T  # (H, P)
        assert float(torch.view_as_real(C).abs().max()) <= TRUNC / math.sqrt(P) + 1e-12


def test_bidirectional_equals_a_forward_and_a_reversed_pass_composed_by_hand():
    layer = make_layer("s5", bidirectional=True)
    x = torch.randn(2, 23, H, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        y, _ = layer(x)
        A_bar, B_bar, C = layer.discrete()  # (M,), (M, H), (2, H, M) with the factor 2 of conj_sym
        ref = torch.zeros_like(y)
        fwd = torch.zeros(2, layer.n_modes, dtype=A_bar.dtype, device=DEVICE)
        bwd = torch.zeros_like(fwd)
        for t in range(23):  # forward pass, and the backward pass over the reversed input, in one loop
            fwd = A_bar * fwd + x[:, t].to(A_bar.dtype) @ B_bar.T
            bwd = A_bar * bwd + x[:, 22 - t].to(A_bar.dtype) @ B_bar.T
            ref[:, t] += (fwd @ C[0].T).real + layer.D * x[:, t]
            ref[:, 22 - t] += (bwd @ C[1].T).real  # both passes include the current input (official S5)
        for backend in ("auto", "reference", "chunked"):
            with torch.no_grad(), use_backend(backend):
                assert rel_err(layer(x)[0], ref) < 1e-12, backend


def test_step_rescale_scales_every_step():
    base = make_layer("s5")
    rescaled = make_layer("s5", step_rescale=0.5)
    with torch.no_grad():
        rescaled.load_state_dict(base.state_dict())
        shifted = make_layer("s5")
        shifted.load_state_dict(base.state_dict())
        shifted.log_dt.add_(math.log(0.5))
    x = torch.randn(2, 19, H, device=DEVICE, dtype=torch.float64)
    assert rel_err(rescaled(x)[0], shifted(x)[0]) < 1e-14
    assert rel_err(rescaled(x)[0], base(x)[0]) > 1e-3


def test_clip_eigs_keeps_the_poles_inside_the_unit_circle():
    clipped = make_layer("s5", clip_eigs=True)
    free = make_layer("s5")
    with torch.no_grad():
        for layer in (clipped, free):
            layer.A_real.fill_(0.3)  # an unstable continuous-time system
    assert np.abs(clipped.state_space().poles()).max() < 1
    assert np.abs(free.state_space().poles()).max() > 1
    Lambda, _, _ = clipped.continuous()
    assert float(Lambda.real.max().detach()) == pytest.approx(-1e-4)


def test_hand_value_one_mode():
    # d_state = 2, one block: Λ = -1/2 (LegS of size 2 has eigenvalues -1/2 ± i√3/2... kept: Im < 0)
    layer = layers.build("s5", d_model=1, d_state=2, blocks=1, dtype=torch.float64)
    Lambda = complex(layer.A_real.item(), layer.A_imag.item())
    assert Lambda == pytest.approx(-0.5 - 0.5j * math.sqrt(3))  # eig of [[-1/2, -√3/2], [√3/2, -1/2]]
    with torch.no_grad():
        layer.log_dt.fill_(0.0)  # Δ = 1
        layer.B.copy_(torch.tensor([[[1.0, 0.0]]]))
        layer.C.copy_(torch.tensor([[[[1.0, 0.0]]]]))
        layer.D.fill_(0.0)
    A_bar = np.exp(Lambda)
    K = layer.kernel(3)[0, 0]  # K_l = 2 Re(C B̄ Ā^l), B̄ = (Ā - 1)/Λ
    expect = [2 * ((A_bar - 1) / Lambda * A_bar**k).real for k in range(3)]
    assert np.allclose(K.detach().numpy(), expect, atol=1e-14)


def test_options_are_validated():
    with pytest.raises(ValueError, match=r"d_state must be a positive multiple of 16"):
        layers.build("s5", d_model=H, d_state=24, blocks=8)
    with pytest.raises(ValueError, match=r"d_state must be a positive multiple of 8 \(4·blocks"):
        layers.build("s5", d_model=H, d_state=12, blocks=2, conj_sym=False)
    with pytest.raises(ValueError, match="C_init must be one of"):
        layers.build("s5", d_model=H, C_init="zeros")
    with pytest.raises(ValueError, match="discretization must be one of"):
        layers.build("s5", d_model=H, discretization="euler")
    with pytest.raises(ValueError, match="step_rescale must be a finite float > 0"):
        layers.build("s5", d_model=H, step_rescale=0.0)
    with pytest.raises(ValueError, match="blocks must be a positive int"):
        layers.build("s5", d_model=H, blocks=0)


def test_marks_follow_the_official_optimiser():
    layer = layers.build("s5", d_model=H)
    marks = layers.optim_marks(layer)
    assert set(marks) == {"A_real", "A_imag", "B", "log_dt"}  # ssm_lr, no weight decay; C and D are regular
    assert all(m == {"lr": 1e-3, "weight_decay": 0.0} for m in marks.values())
    assert layer.kernel(5).shape == (H, H, 5) and layer.initial_state(2).shape == (2, 32)
