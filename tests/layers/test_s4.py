"""S4 (DPLR) specifics: kernel vs dense matrices and HiPPO, step vs forward at L = 4096, state forwarding,
attuned C̃ beyond l_max (functional: no parameter is written, threads and mixed lengths are safe), state-space
poles, parameters and options. (The generic protocol is in test_protocol.py.)"""

from __future__ import annotations

import copy
import math
import threading

import pytest
import torch

import ssmkit.ops as ops
from ssmkit.layers import optim_marks
from ssmkit.layers.s4 import INITS, S4
from ssmkit.ops.cauchy import dplr_kernel_reference
from ssmkit.ops.hippo import nplr, transition
from tests.conftest import rel_err, run_steps

F64, C128 = torch.float64, torch.complex128
H = 3


def make(device, dtype=F64, seed=0, **opts) -> S4:
    torch.manual_seed(seed)
    return S4(H, **{"d_state": 8, "l_max": 32, **opts}, device=device, dtype=dtype)


def without_skip(layer, K):
    """The kernel without the skip D on tap 0 (the dplr kernel op's K)."""
    K = K.clone()
    K[..., 0] -= layer.D
    return K


def parameters_c128(layer):
    """(Λ, P, B, C̃, Δ) of every channel in complex128/float64, read from the stored parameters."""
    rep = layer.d_model // layer.log_A_real.shape[0]
    Lambda = torch.complex(-torch.exp(layer.log_A_real.double()), layer.A_imag.double()).repeat(rep, 1)
    P = torch.view_as_complex(layer.P.double()).repeat(1, rep, 1)
    B = torch.view_as_complex(layer.B.double()).repeat(rep, 1)
    return Lambda, P, B, torch.view_as_complex(layer.C_tilde.double()), torch.exp(layer.log_dt.double())


def dense_A_bar(layer):
    """Ā (H, N, N) of the full conjugate-pair state by a dense float64 solve, independent of the layer's code."""
    Lambda, P, B, C_t, dt = parameters_c128(layer)
    full = lambda x: torch.cat([x, x.conj()], -1)  # noqa: E731
    A = torch.diag_embed(full(Lambda)) - torch.einsum("ihn,ihm->hnm", full(P), full(P).conj())
    eye = torch.eye(A.shape[-1], dtype=C128, device=A.device)
    return torch.linalg.solve(eye - dt[:, None, None] / 2 * A, eye + dt[:, None, None] / 2 * A)


def c_true_full(layer):
    """C_true (C, H, N) from C̃ (attuned to l_max) by a dense float64 solve, independent of the layer's code."""
    C_t = parameters_c128(layer)[3]
    A_bar = dense_A_bar(layer)
    eye = torch.eye(A_bar.shape[-1], dtype=C128, device=A_bar.device)
    A_L = torch.linalg.matrix_power(A_bar, layer.l_max)
    full = torch.cat([C_t, C_t.conj()], -1)
    return torch.linalg.solve((eye - A_L).mT, full.unsqueeze(-1)).squeeze(-1)


# ---------------------------------------------------------------------------------------------------------------
# Kernel


@pytest.mark.parametrize("init", INITS)
def test_kernel_equals_dense_reference(init, device):
    layer = make(device, init=init)
    Lambda, P, B, C_t, dt = parameters_c128(layer)
    K_ref = dplr_kernel_reference(Lambda, P, B[None], C_t, dt, layer.l_max)[0, 0, :, :20]
    K = layer.kernel(20)
    assert K.shape == (H, 20) and K.dtype == F64
    assert rel_err(without_skip(layer, K), K_ref) < 1e-10  # float64, Cauchy + Woodbury vs dense powers (measured <= 3e-12 for FouT)


@pytest.mark.parametrize("init", ["legs", "legt"])
def test_kernel_is_the_hippo_system(init, device):
    # Without the B clip the full conjugate-pair DPLR system is the HiPPO system (A, B) in the unitary basis
    # V_f = [V, conj V]; with Re λ shifted from 0 to -1e-4 (LegT) the matrix is A - 1e-4 I. So K_l = cᵀ Ā^l B̄ for
    # the real HiPPO matrices, with c = conj(V_f) C_f (x_hippo = V_f x_f and y = C_fᵀ x_f).
    N = 8
    layer = make(device, init=init, B_clip=None, d_state=N)
    A, B = (t.to(device) for t in transition(init, N))
    A = A - (0.0 if init == "legs" else 1e-4) * torch.eye(N, dtype=F64, device=device)
    V = nplr(init, N).V.to(device)
    V_f = torch.cat([V, V.conj()], 1)  # (N, N) unitary
    c = (V_f.conj() @ c_true_full(layer)[0].T).T  # (H, N), real up to rounding
    assert c.imag.abs().max() < 1e-10
    dt = torch.exp(layer.log_dt.double())
    eye = torch.eye(N, dtype=F64, device=device)
    L = 15
    for h in range(H):
        A_bar = torch.linalg.solve(eye - dt[h] / 2 * A, eye + dt[h] / 2 * A)
        x, taps = torch.linalg.solve(eye - dt[h] / 2 * A, dt[h] * B), []
        for _ in range(L):
            taps.append(c[h].real @ x)
            x = A_bar @ x
        K = without_skip(layer, layer.kernel(L))
        assert rel_err(K[h], torch.stack(taps)) < 1e-10  # float64 (measured ~1e-13)


# ---------------------------------------------------------------------------------------------------------------
# Step vs forward


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_step_equals_forward_L4096_legs(dtype, device):
    # Default options (N = 64, l_max = 1024, so the forward doubles C̃ twice). Measured on CPU: float32 output
    # 1e-7 and final state 2e-7 relative (kernel and step coefficients in float64, the step itself in float64
    # with the state rounded once per step); float64 ~1e-14. For comparison, the official "diagonal" step
    # (eig of Ā, then a diagonal recurrence) is off by 0.29 in float32 and 4e-3 in float64 here: the
    # eigenvectors of the HiPPO-LegS Ā have condition numbers 4e7 (float32) to 8e14 (float64).
    torch.manual_seed(0)
    layer = S4(H, device=device, dtype=dtype)
    x = torch.randn(1, 4096, H, device=device, dtype=dtype)
    with torch.no_grad():
        y, h = layer(x)
        y_step, h_step = run_steps(layer, x)
    tol = 1e-5 if dtype == torch.float32 else 1e-10  # DESIGN.md rule 1
    assert rel_err(y, y_step) < tol and rel_err(h, h_step) < tol


def test_reference_backend_is_the_step_loop(device):
    layer = make(device, init="legt")
    x = torch.randn(2, 40, H, device=device, dtype=F64)
    with torch.no_grad():
        with ops.use_backend("reference"):
            y, h = layer(x)
        y_step, h_step = run_steps(layer, x)
    assert rel_err(y, y_step) < 1e-14 and rel_err(h, h_step) < 1e-14  # same arithmetic


def test_state_contribution_by_hand(device):
    # Zero input: y_l = C_trueᵀ Ā^{l+1} s_f and the final state is Ā^L s_f (half kept).
    layer = make(device, init="legs")
    s = torch.randn(1, H, 4, dtype=C128, device=device)
    y, h = layer(torch.zeros(1, 6, H, dtype=F64, device=device), s)
    Lambda, P, B, C_t, dt = parameters_c128(layer)
    full = lambda x: torch.cat([x, x.conj()], -1)  # noqa: E731
    A = torch.diag_embed(full(Lambda)) - torch.einsum("ihn,ihm->hnm", full(P), full(P).conj())
    eye = torch.eye(8, dtype=C128, device=device)
    A_bar = torch.linalg.solve(eye - dt[:, None, None] / 2 * A, eye + dt[:, None, None] / 2 * A)
    x, C_f = full(s)[0], c_true_full(layer)[0]
    for l in range(6):
        x = torch.einsum("hnm,hm->hn", A_bar, x)
        assert rel_err(y[0, l], (C_f * x).sum(-1).real) < 1e-12
    assert rel_err(h[0], x[:, :4]) < 1e-12


# ---------------------------------------------------------------------------------------------------------------
# Attuned length and doubling


def test_inputs_beyond_l_max_use_the_attuned_c_tilde(device):
    layer = make(device, init="legs", l_max=16)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(1, 50, H, device=device, dtype=F64)
    y, _ = layer(x)  # 50 > 16: C̃ attuned to 64 = 16·2² is computed, not stored
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in before.items())
    # the kernel equals the dense kernel of the same C_true at length 64: C̃_64 = (I - Ā^64)ᵀ C_true
    Lambda, P, B, C_t, dt = parameters_c128(layer)
    A_bar = dense_A_bar(layer)
    eye = torch.eye(8, dtype=C128, device=device)
    C_64 = ((eye - torch.linalg.matrix_power(A_bar, 64)).mT @ c_true_full(layer)[0].unsqueeze(-1)).squeeze(-1)
    K_ref = dplr_kernel_reference(Lambda, P, B[None], C_64[None, :, :4], dt, 64)[0, 0, :, :50]
    assert rel_err(without_skip(layer, layer.kernel(50)), K_ref) < 1e-10
    with torch.no_grad():
        y_step, _ = run_steps(layer, x)
    assert rel_err(y, y_step) < 1e-10


def test_state_dict_holds_only_parameters(device):
    layer = make(device, l_max=8)
    layer.kernel(20)
    state = copy.deepcopy(layer.state_dict())
    assert set(state) == {"log_dt", "log_A_real", "A_imag", "P", "B", "C_tilde", "D"}
    other = make(device, l_max=8, seed=5)
    other.load_state_dict(state)
    assert torch.equal(other.kernel(20), layer.kernel(20))


def test_forward_never_writes_a_parameter_and_threads_agree(device):
    # The earlier design doubled C̃ in place on the first long input: four threads doing that at once corrupted the
    # layer for good (6 of 10 trials). Now every thread computes the attuned C̃ for itself.
    layer = make(device, torch.float32, init="legs", l_max=16)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(2, 200, H, device=device)
    with torch.no_grad():
        expected, _ = layer(x)
    for _ in range(5):  # five trials, each with a fresh layer whose first forward is the long one
        layer = make(device, torch.float32, init="legs", l_max=16)
        barrier, results, errors = threading.Barrier(4), [None] * 4, []

        def run(i):
            try:
                barrier.wait()
                with torch.no_grad():
                    results[i] = layer(x)[0]
            except Exception as err:  # reported below
                errors.append(err)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for y in results:
            assert torch.equal(y, expected)
        assert all(torch.equal(v, layer.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_mixed_lengths_in_one_graph_have_exact_gradients(dtype, device):
    # A short and a long input (beyond l_max) in one autograd graph: the earlier in-place doubling gave gradients
    # off by 0.8-3.9 % (float32) or an in-place error (float64). Compare with each loss differentiated alone.
    layer = make(device, dtype, init="legt", l_max=16)
    short, long = (torch.randn(2, L, H, device=device, dtype=dtype) for L in (10, 70))
    params = list(layer.parameters())

    def loss(x):
        return (layer(x)[0] * torch.linspace(-1, 1, x.shape[1], device=device, dtype=dtype)[:, None]).sum()

    together = torch.autograd.grad(loss(short) + loss(long), params)
    alone = [a + b for a, b in zip(torch.autograd.grad(loss(short), params), torch.autograd.grad(loss(long), params))]
    for a, b in zip(together, alone):
        assert rel_err(a, b) < (1e-5 if dtype == torch.float32 else 1e-12)  # one graph = two graphs, to rounding


def test_default_options_on_a_short_input(device):
    layer = S4(H, device=device)  # default l_max (1024) and a length-40 input: nothing to set by hand
    x = torch.randn(2, 40, H, device=device)
    with torch.no_grad():
        y, h = layer(x)
        y_step, h_step = run_steps(layer, x)
        y1, h1 = layer(x[:, :13])
        y2, h2 = layer(x[:, 13:], h1)
    assert rel_err(y_step, y) < 1e-5 and rel_err(h_step, h) < 1e-5
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-5 and rel_err(h2, h) < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# State-space export


def test_state_space_poles_are_the_dplr_eigenvalues(device):
    layer = make(device, init="legs")
    Lambda, P, B, C_t, dt = parameters_c128(layer)
    full = lambda x: torch.cat([x, x.conj()], -1)  # noqa: E731
    A = torch.diag_embed(full(Lambda)) - torch.einsum("ihn,ihm->hnm", full(P), full(P).conj())
    poles = torch.linalg.eigvals(A)  # continuous-time; bilinear maps λ -> (1 + Δλ/2)/(1 - Δλ/2)
    want = (1 + dt[:, None] * poles / 2) / (1 - dt[:, None] * poles / 2)
    got = torch.as_tensor(layer.state_space().poles())
    for h in range(H):  # LegS: A is the HiPPO matrix in a unitary basis, with real eigenvalues -1..-N
        a = torch.sort(got[h].real).values
        b = torch.sort(want[h].real.cpu()).values
        assert rel_err(a, b) < 1e-6  # eigenvalues of a non-normal matrix: ~sqrt(eps)-level sensitivity


# ---------------------------------------------------------------------------------------------------------------
# Options, parameters, dtypes


def test_init_values(device):
    layer = make(device, init="legs", d_state=16)
    assert torch.allclose(-torch.exp(layer.log_A_real), torch.full((1, 8), -0.5, dtype=F64, device=device))
    init = nplr("legs", 16)
    assert torch.allclose(layer.A_imag[0], init.Lambda.imag.to(device))
    assert torch.allclose(torch.view_as_complex(layer.B)[0], init.B.to(device))
    legt = make(device, init="legt", n_ssm=None)
    assert legt.P.shape == (2, H, 4, 2)  # rank 2, one copy per channel
    assert torch.allclose(torch.exp(legt.log_A_real), torch.full((H, 4), 1e-4, dtype=F64, device=device))
    dt = torch.exp(layer.log_dt)
    assert bool(((dt >= 1e-3) & (dt <= 1e-1)).all())
    C_f = c_true_full(make(device, d_state=64, l_max=64))  # C ~ CN(0, 1): E|C|^2 = 1
    assert 0.7 < float((C_f[..., :32].detach().abs() ** 2).mean()) < 1.3


def test_optimizer_marks_and_tying(device):
    layer = make(device, lr=1e-3)
    marks = optim_marks(layer)
    assert set(marks) == {"log_dt", "log_A_real", "A_imag", "P", "B"}
    for name in marks:
        assert marks[name] == {"lr": 1e-3, "weight_decay": 0.0}
    assert "C_tilde" not in marks and "D" not in marks
    assert layer.log_A_real.shape == (1, 4) and layer.log_dt.shape == (H,) and layer.C_tilde.shape == (1, H, 4, 2)
    frozen = make(device, lr=0.0)
    assert {name for name, _ in frozen.named_parameters()} == {"C_tilde", "D"}
    assert "log_A_real" in dict(frozen.named_buffers())
    grouped = S4(6, d_state=4, n_ssm=2, device=device, dtype=F64)
    assert grouped.log_A_real.shape == (2, 2)


def test_bad_options_raise(device):
    with pytest.raises(ValueError, match=r"init must be one of \('legs', 'legt', 'lagt', 'fout'\)"):
        S4(4, init="glagt")
    with pytest.raises(ValueError, match="d_model must be divisible by n_ssm"):
        S4(4, n_ssm=3)
    with pytest.raises(ValueError, match="n_ssm must be a positive int"):
        S4(4, n_ssm=0)
    with pytest.raises(ValueError, match="d_state must be an even int"):
        S4(4, d_state=7)
    with pytest.raises(ValueError, match="dt_min and dt_max"):
        S4(4, dt_min=0.1, dt_max=0.01)
    with pytest.raises(ValueError, match="l_max must be a positive int"):
        S4(4, l_max=0)
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        S4(4, dtype=torch.float16)
    with pytest.raises(ValueError, match="B_clip must be a finite float > 0, or None for no clip"):
        S4(4, B_clip=0.0)


def test_bidirectional(device):
    layer = make(device, bidirectional=True)
    assert layer.C_tilde.shape == (2, H, 4, 2) and layer.kernel(10).shape == (2, H, 10)
    y, h = layer(torch.randn(2, 40, H, device=device, dtype=F64))
    assert h is None and y.shape == (2, 40, H)
    with pytest.raises(NotImplementedError, match="not causal"):
        layer.state_space()
    x = torch.randn(2, 50, H, device=device, dtype=F64)
    with ops.use_backend("reference"):  # dense kernel + two-sided convolution loop
        y_ref, _ = layer(x)
    assert rel_err(layer(x)[0], y_ref) < 1e-10


def test_reset_parameters_redraws(device):
    layer = make(device)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.reset_parameters()
    assert not torch.equal(before["C_tilde"], layer.C_tilde) and not torch.equal(before["log_dt"], layer.log_dt)
    assert torch.equal(before["log_A_real"], layer.log_A_real)  # deterministic HiPPO part


def test_double_and_autocast(device):
    layer = make(device, torch.float32)
    x = torch.randn(2, 20, H, device=device)
    y32, _ = layer(x)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        y_ac, h_ac = layer(x)
    assert y_ac.dtype == torch.float32 and h_ac.dtype == torch.complex64
    assert torch.allclose(y_ac, y32)  # the SSM core ignores autocast
    layer64 = copy.deepcopy(layer).double()
    y64, h64 = layer64(x.double())
    assert h64.dtype == C128 and layer64.initial_state(1).dtype == C128
    assert rel_err(y32, y64) < 1e-5  # the same parameters in both precisions
    x16 = x.to(torch.bfloat16)
    y16, _ = layer(x16)
    assert y16.dtype == torch.bfloat16  # output cast back to the input's dtype


def test_log_dt_is_log_uniform(device):
    # log Δ is uniform on [log dt_min, log dt_max]: the mean of log Δ over many channels is near the middle.
    layer = S4(2000, d_state=2, l_max=4, dt_min=1e-3, dt_max=1e-1, device=device, dtype=F64)
    mid = (math.log(1e-3) + math.log(1e-1)) / 2
    assert abs(float(layer.log_dt.detach().mean()) - mid) < 0.1  # std of the mean: 1.33/sqrt(2000) = 0.03
