"""New-user probe of 2026-12-06 of three features that landed that day, from README.md and the docstrings, each
result against an independent reference (python-control's ``sample_system``, scipy's ``solve_ivp``, a numpy
computation, the same sequence run alone):

1. continuous-time export: ``StateSpace.to_continuous`` / ``to_discrete``, ``ContinuousWiener`` and
   ``ssmkit.sysid.to_control(..., continuous=True)`` (S4's DPLR layer and float32 layers, which the layer tests of
   tests/analysis/test_continuous_export.py leave out; a one-block MIMO float32 DeepWiener with an output range);
2. float sequences of different lengths (``SequenceModel(...)(x, lengths=)`` with NaN padding; batch norm's
   training statistics; ``from_arrays(..., lengths_train=, intervals_train=)`` with held-out splits);
3. ``DeepWiener(encoder_mask=True)``: the encoder's features per window sample.

Found: no wrong answer and no misleading error in these features (see the report of that session for what was run
beyond these tests: every LTI layer's export against python-control and scipy, H∞ against a dense grid, Gramians and
Hankel singular values against scipy's Lyapunov solver, balanced truncation within its bound, a DeepWiener ensemble
trained on Cascaded Tanks through ``to_control(..., continuous=True, u0=)``, every registered layer with lengths and
each pool, pair models, activation checkpointing).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import torch

from ssmkit.analysis import StateSpace
from ssmkit.analysis.nonlinear import ContinuousWiener
from ssmkit.data import from_arrays
from ssmkit.layers import build
from ssmkit.models import SequenceModel
from ssmkit.sysid.wiener import DeepWiener
from ssmkit.sysid.workflow import to_control

control = pytest.importorskip("control")

DEVICE = torch.device(os.environ.get("SSMKIT_TEST_DEVICE", "cpu"))
F64 = torch.float64
TS = 0.5


def _transfer(A, B, C, D, points) -> np.ndarray:
    """C (sI − A)^{-1} B + D at each point, (W, p, m), by dense solves (numpy)."""
    A, B, C, D = (np.asarray(M) for M in (A, B, C, D))
    eye = np.eye(A.shape[0])
    return np.stack([C @ np.linalg.solve(s * eye - A, B) + D for s in points])


@pytest.mark.parametrize("name,options,dtype", [("s4", {"d_state": 6}, torch.float64),
                                                ("s4", {"d_state": 6}, torch.float32),
                                                ("lru", {"d_state": 6}, torch.float32)])
def test_python_control_sampling_of_the_continuous_export_is_the_discrete_export(name, options, dtype):
    torch.manual_seed(0)
    exported = build(name, d_model=2, **options).to(dtype).state_space()
    system = StateSpace(exported.A, exported.B, exported.C, exported.D, dt=TS)
    continuous = system.to_continuous()
    assert continuous.dt == 0
    theta = np.linspace(0.05, 0.95 * np.pi, 40)  # rad/sample, below Nyquist
    for g in range(system.nsystems):
        sampled = control.sample_system(continuous[g].to_control()[0], TS, "zoh")
        want = _transfer(system.A[g], system.B[g], system.C[g], system.D[g], np.exp(1j * theta))
        got = _transfer(sampled.A, sampled.B, sampled.C, sampled.D, np.exp(1j * theta))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * max(1.0, np.abs(want).max()))
        # H(jω) of the continuous bank against the dense solve on python-control's matrices
        ct = continuous[g].to_control()[0]
        np.testing.assert_allclose(np.moveaxis(continuous[g].frequency_response(theta / TS)[0], -1, 0),
                                   _transfer(ct.A, ct.B, ct.C, ct.D, 1j * theta / TS), rtol=0, atol=1e-10)


def test_s4d_time_constants_are_minus_one_over_the_real_part_of_delta_lambda_over_dt():
    torch.manual_seed(0)
    layer = build("s4d", d_model=2, d_state=4).double()
    Lambda, _, step = (t.detach().numpy() for t in layer.continuous())  # (H, N/2), (H,)
    exported = layer.state_space()
    continuous = StateSpace(exported.A, exported.B, exported.C, exported.D, dt=TS).to_continuous(hold="sample")
    for g in range(continuous.nsystems):
        want = -TS / (Lambda[g] * step[g]).real  # seconds; each mode and its conjugate
        got = -1.0 / continuous.poles()[g].real
        np.testing.assert_allclose(np.sort(got), np.sort(np.concatenate([want, want])), rtol=1e-9)


def _held_simulation(flow: ContinuousWiener, u: np.ndarray, dt: float) -> np.ndarray:
    """y_k = h(x(t_k), u_k), u_k held over (t_{k−1}, t_k], by scipy's DOP853 from rest."""
    x, out = np.zeros(flow.n_states), []
    for u_k in u:
        x = scipy.integrate.solve_ivp(lambda t, s: flow.derivative(s, u_k)[0], (0.0, dt), x, method="DOP853",
                                      rtol=1e-11, atol=1e-12).y[:, -1]
        out.append(flow.output(x, u_k)[0])
    return np.array(out)


def test_continuous_wiener_of_a_one_block_mimo_float32_s4_model_with_an_output_range_samples_to_it():
    torch.manual_seed(0)
    model = DeepWiener(2, 3, d_model=3, n_layers=1, layer="s4", layer_options={"d_state": 4}, dt=TS,
                       output_range=[(-0.4, 0.4)] * 3).eval()  # float32 parameters
    u = torch.randn(1, 8, 2, dtype=F64)
    with torch.no_grad():
        y = model(u.float())[0][0].double().numpy()  # (8, 3)
    got = _held_simulation(ContinuousWiener(model), u[0].numpy(), TS)
    assert np.abs(y).max() > 1e-3  # not a trivially zero output
    np.testing.assert_allclose(got, y, rtol=0, atol=2e-6)  # float32 model


def test_continuous_linearisation_has_the_discrete_ones_poles_over_ts_and_dc_gain():
    torch.manual_seed(1)
    model = DeepWiener(1, 1, d_model=3, n_layers=2, layer="s4d", layer_options={"d_state": 4}, dt=TS, dtype=F64)
    model.name_signals(["pump"], ["level"])
    lin_c = to_control(model, u0=[0.3], continuous=True)[0]
    lin_d = to_control(model, u0=[0.3])[0]
    assert lin_c.dt == 0 and lin_d.dt == TS
    z = np.linalg.eigvals(np.asarray(lin_d.A)).astype(complex)
    want, got = np.log(z) / TS, np.linalg.eigvals(np.asarray(lin_c.A))
    cost = np.abs(got[:, None] - want[None, :])  # as sets: equal real parts leave sort_complex's order to rounding
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    assert got.shape == want.shape and cost[rows, cols].max() <= 1e-9
    dc_d = _transfer(lin_d.A, lin_d.B, lin_d.C, lin_d.D, [1.0])
    dc_c = _transfer(lin_c.A, lin_c.B, lin_c.C, lin_c.D, [0.0])
    np.testing.assert_allclose(dc_c, dc_d, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layer,options,pool", [("mega", {}, "last"), ("hyena", {}, None),
                                                ("s4", {"bidirectional": True}, "mean"),
                                                ("s5", {"bidirectional": True}, None)])
def test_nan_padded_float_sequences_get_their_unpadded_answers(layer, options, pool):
    torch.manual_seed(0)
    model = SequenceModel(2, 8, 2, layer, layer_options=options, d_output=3, pool=pool, dtype=F64,
                          device=DEVICE).eval()
    lengths = torch.tensor([9, 4, 1], device=DEVICE)
    x = torch.randn(3, 9, 2, dtype=F64, device=DEVICE)
    padded = torch.where(torch.arange(9, device=DEVICE)[None, :, None] < lengths[:, None, None], x, float("nan"))
    with torch.no_grad():
        out = model(padded, lengths=lengths)[0]
        for b, n in enumerate(lengths.tolist()):
            alone = model(x[b:b + 1, :n])[0][0]
            got = out[b] if pool is not None else out[b, :n]
            torch.testing.assert_close(got, alone, rtol=0, atol=1e-12)


def test_batch_norm_training_statistics_are_those_of_the_steps_within_the_lengths():
    torch.manual_seed(0)
    model = SequenceModel(2, 4, 1, "s4d", d_output=2, norm="batch", dtype=F64).train()
    lengths = torch.tensor([6, 2, 4])
    x = torch.randn(3, 6, 2, dtype=F64)
    within = torch.arange(6)[None, :] < lengths[:, None]
    model(torch.where(within[..., None], x, 1e6), lengths=lengths)
    weight, bias = model.encoder.weight.detach().numpy(), model.encoder.bias.detach().numpy()
    h = (x.numpy() @ weight.T + bias)[within.numpy()]  # (12, 4): the first (pre-norm) block's norm reads these
    norm = model.blocks[0].norm
    momentum = 0.1
    np.testing.assert_allclose(norm.running_mean.numpy(), momentum * h.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(norm.running_var.numpy(), (1 - momentum) + momentum * h.var(0, ddof=1), rtol=0,
                               atol=1e-12)


def test_from_arrays_float_lengths_and_intervals_follow_the_held_out_rows():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 8, 2))
    lengths = rng.integers(1, 9, 20)
    y = rng.integers(0, 3, (20, 8))
    gaps = rng.uniform(0.5, 2.0, (20, 8))
    pad = np.arange(8)[None, :] >= lengths[:, None]
    x[pad], gaps[pad] = np.nan, -5.0  # padding may hold anything
    splits = {k: v.tensors for k, v in from_arrays(x, y, lengths_train=lengths, intervals_train=gaps).splits().items()}
    perm = np.random.default_rng(0).permutation(20)  # the module docstring's hold-out rule
    rows = {"test": np.sort(perm[:4]), "val": np.sort(perm[4:6]), "train": np.sort(perm[6:])}
    train_steps = x[rows["train"]][~pad[rows["train"]]]  # (steps, 2)
    mean, std = train_steps.mean(0), train_steps.std(0)
    for split, idx in rows.items():
        xs, ys, gs, ns = (t.numpy() for t in splits[split])
        keep = ~pad[idx]
        np.testing.assert_array_equal(ns, lengths[idx])
        np.testing.assert_array_equal(ys, np.where(keep, y[idx], -100))
        np.testing.assert_array_equal(gs, np.where(keep, gaps[idx], 1.0))
        np.testing.assert_allclose(xs[keep], (x[idx][keep] - mean) / std, rtol=0, atol=1e-6)  # float32 inputs
        assert not xs[~keep].any()


def _flat(states: list) -> torch.Tensor:
    """Per-block states as one (B, Σ sizes) real tensor (complex states as their real and imaginary parts)."""
    return torch.cat([torch.view_as_real(t).flatten(1) if t.is_complex() else t.flatten(1)
                      for s in states for t in (s if isinstance(s, (list, tuple)) else [s])], 1)


def test_encoder_mask_features_are_inputs_outputs_and_the_measured_indicators():
    torch.manual_seed(0)
    model = DeepWiener(2, 2, d_model=3, n_layers=1, layer_options={"d_state": 4}, encoder_window=3,
                       encoder_mask=True, dt=TS, dtype=F64)
    mu_u, sd_u = torch.tensor([0.3, -0.1], dtype=F64), torch.tensor([2.0, 0.5], dtype=F64)
    mu_y, sd_y = torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.5, 3.0], dtype=F64)
    with torch.no_grad():
        model.u_mean.copy_(mu_u), model.u_std.copy_(sd_u), model.y_mean.copy_(mu_y), model.y_std.copy_(sd_y)
    u, y = torch.randn(2, 3, 2, dtype=F64), torch.randn(2, 3, 2, dtype=F64)
    y[0, 1, 0], y[1, :, 1] = float("nan"), float("nan")
    measured = ~torch.isnan(y)
    features = torch.cat([(u - mu_u) / sd_u, torch.where(measured, (y - mu_y) / sd_y, 0.0), measured.to(F64)], -1)
    with torch.no_grad():
        want = model.state_encoder(features.flatten(1))  # (2, Σ state sizes)
        states = model.estimate_state(u, y)
    torch.testing.assert_close(_flat(states), want, rtol=0, atol=1e-12)
    y_at_mean = torch.where(measured, y, mu_y)  # a missing sample and a measured one at the mean now differ
    with torch.no_grad():
        other = model.estimate_state(u, y_at_mean)
    assert float((_flat(states) - _flat(other))[0].abs().max()) > 1e-6  # item 0 has a missing sample
