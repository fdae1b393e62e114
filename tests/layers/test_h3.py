"""H3 (arXiv 2212.14052) against a float64 loop of its equations written here: the shift SSM as an N-entry shift
register x' = S x + B k, the diagonal SSM per head and (i, j) pair with bilinear Ā, B̄ formed here, the q gate and
the projections."""

from __future__ import annotations

import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
from tests.conftest import DEVICE, H, make_layer, rel_err, run_steps


def h3_loop(layer, x: torch.Tensor) -> torch.Tensor:
    """y (B, L, d_model) by one time step at a time, float64."""
    Bsz, L, d = x.shape
    P, Hh, N = layer.head_dim, layer.n_heads, layer.d_state
    W, b = layer.in_proj.weight.double(), layer.in_proj.bias.double()
    Bs, Cs, Dk = layer.B.double(), layer.C.double(), layer.D_k.double()
    ssm = layer.ssm
    Lam = torch.complex(-torch.exp(ssm.log_A_real.double()), ssm.A_imag.double())  # (Hh, M)
    dt = torch.exp(ssm.log_dt.double())[:, None]  # (Hh, 1)
    A_bar = (1 + dt * Lam / 2) / (1 - dt * Lam / 2)
    B_bar = dt * torch.view_as_complex(ssm.B.double()) / (1 - dt * Lam / 2)
    C = torch.view_as_complex(ssm.C.double())[0]  # (Hh, M)
    D = ssm.D.double()
    reg = torch.zeros(Bsz, d, N, dtype=torch.float64)  # shift register
    s = torch.zeros(Bsz, P, P, Hh, N // 2, dtype=torch.complex128)
    ys = []
    for t in range(L):
        q, k, v = (x[:, t].double() @ W.T + b).split(d, dim=-1)  # (B, d) each
        reg = torch.cat([torch.zeros_like(reg[..., :1]), reg[..., :-1]], dim=-1) + Bs * k[..., None]
        k = (Cs * reg).sum(-1) + Dk * k
        o = torch.zeros(Bsz, d, dtype=torch.float64)
        for h in range(Hh):
            for i in range(P):
                for j in range(P):
                    z = k[:, h * P + i] * v[:, h * P + j]  # (B,)
                    s[:, i, j, h] = A_bar[h] * s[:, i, j, h] + B_bar[h] * z[:, None]
                    out = 2 * (C[h] * s[:, i, j, h]).sum(-1).real + D[h] * z
                    o[:, j * Hh + h] += q[:, h * P + i] * out
        ys.append(o @ layer.out_proj.weight.double().T + layer.out_proj.bias.double())
    return torch.stack(ys, dim=1)


@pytest.mark.parametrize("opts", [{"d_state": 6, "head_dim": 1}, {"d_state": 4, "head_dim": 3}])
def test_forward_and_step_equal_the_loop_of_the_equations(opts):
    layer = make_layer("h3", opts)
    with torch.no_grad():  # random shift B (the init e₁ hides index errors in the shift SSM)
        layer.B.normal_()
    x = torch.randn(2, 11, H, device=DEVICE, dtype=torch.float64)
    y_ref = h3_loop(layer.cpu(), x.cpu()).to(DEVICE)
    layer.to(DEVICE)
    with torch.no_grad():
        for backend in ("auto", *layer.backends):
            with ops.use_backend(backend):
                assert rel_err(layer(x)[0], y_ref) < 1e-10, backend  # float64 throughout
        assert rel_err(run_steps(layer, x)[0], y_ref) < 1e-10


def test_shift_taps_of_the_initial_B_are_C():
    # B = e₁: the shift SSM's kernel is C itself (w_j = C_j), with D_k on the current tap (nn.Conv1d order).
    layer = make_layer("h3", {"d_state": 4})
    taps = layer.shift_taps()
    expected = layer.C.flip(-1).clone()
    expected[:, -1] += layer.D_k
    assert torch.equal(taps, expected)
    with torch.no_grad():
        layer.B.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64))  # B = e₂: a one-step delay
        C = layer.C
        assert torch.equal(layer.shift_taps()[:, :-1], torch.cat([torch.zeros_like(C[:, :1]), C[:, 1:].flip(-1)], -1)[:, :-1])


def test_state_has_the_pairs_of_every_head():
    layer = make_layer("h3", {"d_state": 6, "head_dim": 3})
    h = layer.initial_state(2)
    assert h.shift.shape == (2, H, 5) and h.ssm.shape == (2, 3, 3, 1, 3) and h.ssm.is_complex()
    assert layer.block_defaults == layers.BlockDefaults(None, None)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="d_model must be divisible by head_dim"):
        layers.build("h3", d_model=6, head_dim=4)
    with pytest.raises(ValueError, match="head_dim must be a positive int"):
        layers.build("h3", d_model=6, head_dim=0)
    with pytest.raises(ValueError, match="d_state must be an even int"):
        layers.build("h3", d_model=6, d_state=5)
    with pytest.raises(ValueError, match="discretization must be one of"):
        layers.build("h3", d_model=6, discretization="euler")
    with pytest.raises(NotImplementedError, match="not linear time-invariant"):
        layers.build("h3", d_model=6).state_space()
