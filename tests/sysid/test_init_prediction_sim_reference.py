"""sysid/prediction, sysid/init and sysid/boucwen against references written here (probe 40, mutation testing).

- prediction: the one-step-ahead record, the one-step predictions and the free run as explicit float64 loops over the
  model's ``step`` with the inputs [u_t, y_{t-1}] assembled here (measured y_{t-1} up to the warm-up's end, the
  loop's own ŷ_{t-1} after it), from rest at t = 1.
- init: PO-MOESP and ARX on known systems (the true poles; numpy least squares), the mode selection and the
  parametrisation inverses in closed form.
- boucwen: the benchmark's equations (Noël & Schoukens 2016; REFERENCE.md §4.4) by scipy's DOP853 and closed forms.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmkit.sysid import boucwen
from ssmkit.sysid.init import arx_poles, init_from_data, modes, ring_poles, set_discrete_poles, subspace_poles
from ssmkit.sysid.prediction import check_predictor, free_run, predict_one_step, prediction_record
from ssmkit.sysid.records import IORecord
from ssmkit.sysid.wiener import DeepWiener


# --------------------------------------------------------------------------------------------------------------------
# prediction


def _record(L: int, m: int, p: int, seed: int = 0) -> IORecord:
    """A random float64 record with offsets (m inputs, p outputs)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(L, m, generator=g, dtype=torch.float64) + 0.3
    y = torch.randn(L, p, generator=g, dtype=torch.float64) * 2.0 - 1.0
    return IORecord(u, y, 0.25, "rec")


def _predictor(m: int, p: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> DeepWiener:
    """A 2-block predictor (m + p inputs, p outputs), every parameter moved off its init, normalisation set."""
    torch.manual_seed(seed)
    model = DeepWiener(m + p, p, d_model=3, n_layers=2, layer="s4d", layer_options={"d_state": 4}, dt=0.25,
                       dtype=dtype)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    r = _record(50, m + p, p, seed=seed + 100)
    model.set_normalisation([r.u.to(dtype)], [r.y.to(dtype)])
    return model


def _loop(model: DeepWiener, record: IORecord, n_measured: int, n_returned: int) -> torch.Tensor:
    """ŷ by an explicit loop: from rest, for t ≥ 1 the model steps on [u_t, y_{t-1}] with the measured y_{t-1} while
    t ≤ n_measured and its own ŷ_{t-1} after; the measured y_t is returned for t < n_returned (≥ 1)."""
    u, y = record.u, record.y
    state = model.initial_state(1)
    out = [y[0]]
    previous = y[0]
    with torch.no_grad():
        for t in range(1, len(record)):
            fed = y[t - 1] if t <= n_measured else previous
            y_t, state = model.step(torch.cat([u[t], fed])[None], state)
            previous = y_t[0]
            out.append(y[t] if t < n_returned else previous)
    return torch.stack(out)


def test_the_one_step_record_shifts_every_input_and_output():
    r = _record(7, 2, 3)
    s = prediction_record(r)
    assert len(s) == 6 and s.dt == 0.25 and s.name == "rec (one-step-ahead)"
    for t in range(1, 7):
        assert torch.equal(s.u[t - 1], torch.cat([r.u[t], r.y[t - 1]])) and torch.equal(s.y[t - 1], r.y[t])
    two = prediction_record(_record(2, 1, 1))  # the shortest record that has a one-step pair
    assert len(two) == 1
    with pytest.raises(ValueError, match="record 'one' needs at least 2 samples for one-step-ahead prediction; got 1"):
        prediction_record(IORecord(torch.zeros(1, 1), torch.zeros(1, 1), 1.0, "one"))


def test_a_predictor_of_the_wrong_width_is_refused_by_every_entry_point():
    record = _record(12, 1, 2)
    check_predictor(_predictor(1, 2), 1, 2)  # m + p = 3 inputs, p = 2 outputs
    for bad in (DeepWiener(3, 1, d_model=2, n_layers=1), DeepWiener(4, 2, d_model=2, n_layers=1),
                DeepWiener(2, 2, d_model=2, n_layers=1)):
        message = (f"a one-step-ahead predictor of an 1-input 2-output system needs n_inputs = m \\+ p = 3 and "
                   f"n_outputs = 2; got {bad.n_inputs} and {bad.n_outputs}")
        with pytest.raises(ValueError, match=message):
            check_predictor(bad, 1, 2)
        with pytest.raises(ValueError, match=message):
            predict_one_step(bad, record)
        with pytest.raises(ValueError, match=message):
            free_run(bad, record, n_warm=3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_step_predictions_equal_an_explicit_loop(dtype):
    record = _record(17, 2, 3, seed=1)
    model = _predictor(2, 3, dtype=dtype, seed=2)
    got = predict_one_step(model, record)
    ref = _loop(model, record, n_measured=len(record), n_returned=1)
    assert got.shape == (17, 3) and got.dtype == dtype
    assert torch.equal(got[0], record.y[0].to(dtype))  # ŷ_0 is the measured y_0
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(got, ref.to(dtype), rtol=0, atol=tol * float(ref.abs().max()))


@pytest.mark.parametrize("n_warm", [1, 2, 6, 16])
def test_the_free_run_equals_an_explicit_loop_fed_its_own_outputs(n_warm):
    record = _record(17, 2, 3, seed=3)
    model = _predictor(2, 3, seed=4)
    got = free_run(model, record, n_warm=n_warm)
    ref = _loop(model, record, n_measured=n_warm, n_returned=n_warm)
    assert got.shape == (17, 3)
    assert torch.equal(got[:n_warm], record.y[:n_warm])  # the warm-up window returned as measured
    assert torch.allclose(got, ref, rtol=0, atol=1e-12 * float(ref.abs().max()))
    one = predict_one_step(model, record)
    assert torch.allclose(got[n_warm], one[n_warm], rtol=0, atol=1e-12)  # the first free sample reads y_{n_warm-1}
    if n_warm < 15:
        assert (got[n_warm + 1:] - one[n_warm + 1:]).abs().max() > 1e-6  # then it reads its own outputs


def test_the_free_run_in_float32_reads_a_float64_record():
    record = _record(11, 1, 2, seed=5)
    model = _predictor(1, 2, dtype=torch.float32, seed=6)
    got = free_run(model, record, n_warm=4)
    assert got.dtype == torch.float32
    assert torch.allclose(got, _loop(model, record, 4, 4).float(), rtol=0, atol=1e-5)


def test_the_warm_up_length_is_checked():
    record = _record(9, 1, 1)
    model = _predictor(1, 1)
    assert free_run(model, record, n_warm=8).shape == (9, 1)  # the largest: one free sample
    for bad in (0, 9, -1, 2.0, "3"):
        with pytest.raises(ValueError, match=r"n_warm must be an int in \[1, 8\] \(samples read from the measurement\)"):
            free_run(model, record, n_warm=bad)


def test_the_free_run_has_no_usable_default_warm_up():
    # n_warm's default 0 is outside [1, L-1]: a caller must choose the warm-up (the benchmark's init window)
    with pytest.raises(ValueError, match=r"n_warm must be an int in \[1, 8\]; got 0|n_warm must be an int in \[1, 8\] .*got 0"):
        free_run(_predictor(1, 1), _record(9, 1, 1))


# --------------------------------------------------------------------------------------------------------------------
# init


def _ks_uniform(x: np.ndarray, lo: float, hi: float) -> float:
    """The Kolmogorov-Smirnov p-value of x against U[lo, hi]."""
    from scipy import stats

    return float(stats.kstest(x, stats.uniform(loc=lo, scale=hi - lo).cdf).pvalue)


def test_the_ring_draws_squared_radii_and_phases_uniformly():
    # LRU, arXiv 2303.06349 App. A: |z|² ~ U[r_min², r_max²], arg z ~ U[0, max_phase)
    z = ring_poles(4000, r_min=0.4, r_max=0.8, max_phase=2.0, seed=11)
    assert z.shape == (4000,) and z.dtype == np.complex128
    assert _ks_uniform(np.abs(z) ** 2, 0.16, 0.64) > 1e-3 and _ks_uniform(np.abs(z), 0.4, 0.8) < 1e-6
    assert _ks_uniform(np.angle(z), 0.0, 2.0) > 1e-3
    assert np.array_equal(z, ring_poles(4000, 0.4, 0.8, 2.0, seed=11)) and not np.array_equal(z, ring_poles(4000, 0.4, 0.8, 2.0, seed=12))
    d = ring_poles(3000, seed=0)  # the defaults: r in [0.5, 0.99], phase in [0, π)
    assert _ks_uniform(np.abs(d) ** 2, 0.25, 0.99 ** 2) > 1e-3 and _ks_uniform(np.angle(d), 0.0, np.pi) > 1e-3
    assert np.all(np.abs(ring_poles(50, r_min=0.0, r_max=0.1)) <= 0.1)  # r_min = 0 is allowed
    for r_min, r_max in ((-0.1, 0.5), (0.5, 0.5), (0.2, 1.0)):
        with pytest.raises(ValueError, match="need 0 <= r_min < r_max < 1"):
            ring_poles(4, r_min=r_min, r_max=r_max)


def test_modes_keep_one_per_pair_sorted_by_radius_and_clipped():
    pair = 0.7 * np.exp(0.9j)
    z = np.array([0.5, np.conj(pair), -0.5, 0.3 + 1e-12j, pair, 0.0, 1.5 * np.exp(-2.0j), 1.5 * np.exp(2.0j), 0.02j,
                  -0.02j])
    m = modes(z, 10)
    # reals first in their order, then the upper half-plane ones, each group stably sorted by |z| descending;
    # |z| clipped to [1e-3, 0.9999]; 0.3 + 1e-12j is real (|Im| ≤ 1e-9 |z|), 0 gets the floor on the real axis
    expected = np.array([0.9999 * np.exp(2.0j), pair, 0.5, -0.5, 0.3, 0.02j, 1e-3])
    assert m.shape == (7,)
    np.testing.assert_allclose(m, expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(modes(z, 3), expected[:3], rtol=0, atol=1e-15)
    np.testing.assert_allclose(modes(z, 10, r_min=0.4, r_max=0.6), [0.6 * np.exp(2.0j), 0.6 * np.exp(0.9j), 0.5, -0.5,
                                                                    0.4, 0.4j, 0.4], rtol=0, atol=1e-15)
    near = modes(np.array([0.3 + 2e-10j]), 1)  # |Im| = 6.7e-10 |z|: real to the 1e-9 tolerance
    assert near[0] == 0.3 and modes(np.array([0.3 + 1e-9j]), 1)[0].imag > 0
    assert modes(np.array([0.3 + 4.5e-10j]), 1)[0].imag > 0  # |Im| = 1.5e-9 |z|


def _layer(name: str, options: dict, seed: int = 0) -> torch.nn.Module:
    """A float64 layer (d_model 3) with its step sizes moved off their init."""
    from ssmkit.layers import build

    torch.manual_seed(seed)
    layer = build(name, d_model=3, dtype=torch.float64, **options)
    if hasattr(layer, "log_dt"):
        with torch.no_grad():
            layer.log_dt.add_(0.3 * torch.randn_like(layer.log_dt))
    return layer


Z3 = np.array([0.97 * np.exp(0.05j), 0.6 * np.exp(2.0j), 0.4 * np.exp(3.0j)])


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s4d_eigenvalues_are_the_inverse_of_each_discretisation(discretization):
    layer = _layer("s4d", {"d_state": 10, "discretization": discretization})
    before = (layer.log_A_real.detach().clone(), layer.A_imag.detach().clone())
    set_discrete_poles(layer, Z3)
    dt = np.exp(layer.log_dt.detach().numpy())[:, None]  # (H, 1)
    lam = np.log(Z3) / dt if discretization == "zoh" else (2 / dt) * (Z3 - 1) / (Z3 + 1)
    np.testing.assert_allclose(layer.log_A_real.detach().numpy()[:, :3], np.log(-lam.real), rtol=1e-13)
    np.testing.assert_allclose(layer.A_imag.detach().numpy()[:, :3], lam.imag, rtol=1e-13)
    assert torch.equal(layer.log_A_real[:, 3:], before[0][:, 3:]) and torch.equal(layer.A_imag[:, 3:], before[1][:, 3:])


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s5_eigenvalues_use_the_per_mode_rescaled_step(discretization):
    layer = _layer("s5", {"d_state": 8, "blocks": 1, "discretization": discretization, "step_rescale": 0.7})
    before = (layer.A_real.detach().clone(), layer.A_imag.detach().clone())
    set_discrete_poles(layer, Z3)
    dt = 0.7 * np.exp(layer.log_dt.detach().numpy()[:3])  # (3,): Δ of each written mode
    lam = np.log(Z3) / dt if discretization == "zoh" else (2 / dt) * (Z3 - 1) / (Z3 + 1)
    np.testing.assert_allclose(layer.A_real.detach().numpy()[:3], lam.real, rtol=1e-13)
    np.testing.assert_allclose(layer.A_imag.detach().numpy()[:3], lam.imag, rtol=1e-13)
    assert torch.equal(layer.A_real[3:], before[0][3:]) and torch.equal(layer.A_imag[3:], before[1][3:])


def test_dlr_and_lru_parameters_are_the_closed_form_inverses():
    dlr = _layer("dlr", {"d_state": 8})
    set_discrete_poles(dlr, Z3)
    np.testing.assert_allclose(dlr.A_sqrt_neg_real.detach().numpy()[:3], np.sqrt(-np.log(np.abs(Z3))), rtol=1e-13)
    np.testing.assert_allclose(dlr.A_imag.detach().numpy()[:3], np.angle(Z3), rtol=1e-13)
    lru = _layer("lru", {"d_state": 8})
    rest = lru.log_gamma.detach().clone()
    z = np.array([0.9 * np.exp(0.5j), 0.8 + 0j, -0.3 + 0j])  # a real pole keeps the phase floor 1e-4
    set_discrete_poles(lru, z)
    np.testing.assert_allclose(lru.log_nu.detach().numpy()[:3], np.log(-np.log(np.abs(z))), rtol=1e-13)
    np.testing.assert_allclose(lru.log_theta.detach().numpy()[:3], np.log([0.5, 1e-4, np.pi]), rtol=1e-13)
    np.testing.assert_allclose(lru.log_gamma.detach().numpy()[:3], 0.5 * np.log(1 - np.abs(z) ** 2), rtol=1e-13)
    assert torch.equal(lru.log_gamma[3:], rest[3:])


def test_set_discrete_poles_refuses_modes_it_cannot_write():
    layer = _layer("s4d", {"d_state": 4})  # M = 2 modes
    for bad in (np.array([]), np.array([0.5, 0.4, 0.3]), np.array([0.5, 1.0]), np.array([0.0]), np.array([-1.2])):
        with pytest.raises(ValueError, match=r"z must hold 1\.\.2 modes with 0 < \|z\| < 1 \(use modes\(\)\)"):
            set_discrete_poles(layer, bad)
    set_discrete_poles(layer, np.array([0.5, -0.4]))  # exactly M modes
    set_discrete_poles(layer, np.array([0.3j]))  # and one
    np.testing.assert_allclose(layer.discrete()[0].detach().numpy()[:, :2], [[0.3j, -0.4]] * 3, rtol=0, atol=1e-12)


def _mimo_system(seed: int, L: int = 1500):
    """A 2-input 2-output 4th-order system (poles 0.9 e^{±0.4i}, 0.7, -0.5), inputs of unequal scales, a float64
    loop from rest; returns (record, true poles)."""
    rng = np.random.default_rng(seed)
    blocks = np.zeros((4, 4))
    blocks[:2, :2] = 0.9 * np.array([[np.cos(0.4), -np.sin(0.4)], [np.sin(0.4), np.cos(0.4)]])
    blocks[2, 2], blocks[3, 3] = 0.7, -0.5
    T = rng.standard_normal((4, 4))
    A = T @ blocks @ np.linalg.inv(T)
    B, C, D = rng.standard_normal((4, 2)), rng.standard_normal((2, 4)), rng.standard_normal((2, 2))
    u = rng.standard_normal((L, 2)) * np.array([3.0, 0.2]) + np.array([1.0, -2.0])
    x, ys = np.zeros(4), []
    for t in range(L):
        ys.append(C @ x + D @ u[t])
        x = A @ x + B @ u[t]
    truth = np.array([0.9 * np.exp(0.4j), 0.9 * np.exp(-0.4j), 0.7, -0.5])
    return IORecord(torch.tensor(u), torch.tensor(np.array(ys)) * torch.tensor([1.0, 50.0]), 1.0), truth


def _nearest(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Largest distance from a true pole to its nearest estimate."""
    return float(max(np.abs(np.asarray(estimate) - t).min() for t in truth))


def _lstsq_arx(records: IORecord | list[IORecord], n: int, output: int) -> np.ndarray:
    """Least-squares ARX of one output on every input (lags 0..n) with an intercept per record, in numpy: the poles."""
    records = [records] if isinstance(records, IORecord) else records
    blocks, targets = [], []
    for k, record in enumerate(records):
        u, y = record.u.numpy(), record.y[:, output].numpy()
        t = np.arange(n, len(y))
        cols = [-y[t - i] for i in range(1, n + 1)] + [u[t - i, j] for i in range(n + 1) for j in range(u.shape[1])]
        cols += [np.full(t.size, float(j == k)) for j in range(len(records))]
        blocks.append(np.stack(cols, axis=1))
        targets.append(y[t])
    theta = np.linalg.lstsq(np.concatenate(blocks), np.concatenate(targets), rcond=None)[0]
    return np.roots(np.concatenate([[1.0], theta[:n]]))


def test_arx_of_each_output_of_a_mimo_system_recovers_the_common_poles():
    record, truth = _mimo_system(0)
    for output in (0, 1):
        assert _nearest(_lstsq_arx(record, 4, output), truth) < 1e-8  # the reference is exact
        got = arx_poles(record, 4, output_index=output)
        assert got.dtype == np.complex128 and got.shape == (4,)
        assert _nearest(got, truth) < 1e-8 and _nearest(truth, got) < 1e-8
    assert _nearest(arx_poles([record, _mimo_system(0, L=700)[0]], 4, output_index=1), truth) < 1e-8


@pytest.mark.parametrize("horizon", [None, 3, 7])
def test_po_moesp_recovers_a_mimo_system_at_each_horizon(horizon):
    record, truth = _mimo_system(1)
    got = subspace_poles(record, 4, horizon=horizon)
    assert got.dtype == np.complex128 and got.shape == (4,)
    assert _nearest(got, truth) < 1e-8 and _nearest(truth, got) < 1e-8
    assert len(subspace_poles(record, None, horizon=horizon if horizon != 3 else 5, max_order=5)) == 4
    with pytest.raises(ValueError, match=r"horizon must be an int with horizon · p > order \(4, p = 2\); got 2"):
        subspace_poles(record, 4, horizon=2)


def test_init_from_data_by_arx_with_a_given_order_and_r_max():
    record, truth = _mimo_system(2)
    siso = IORecord(record.u, record.y[:, 1:], 1.0)
    model = DeepWiener(2, 1, d_model=2, n_layers=2, layer="lru", layer_options={"d_state": 6}, dtype=torch.float64)
    written = init_from_data(model, siso, method="arx", order=4, r_max=0.8, layers=2)
    expected = np.array([0.8 * np.exp(0.4j), 0.7, -0.5])  # 0.9 clipped to r_max; reals before the pair at one radius
    np.testing.assert_allclose(written, expected, rtol=0, atol=1e-9)
    lru = np.abs(expected) * np.exp(1j * np.maximum(np.angle(expected), 1e-4))  # the LRU's phase floor
    for layer in model.layers:
        got = layer.discrete()[0].detach().numpy()
        np.testing.assert_allclose(got[..., :3], np.broadcast_to(lru, got[..., :3].shape), rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------------------------------
# boucwen (Noël & Schoukens 2016; REFERENCE.md §4.4)


def _scipy_decimate(y: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """The benchmark's decimation: 30th-order zero-phase FIR stages, one per factor, scipy directly."""
    from scipy import signal

    for q in factors:
        y = signal.decimate(y, q, n=30, ftype="fir", zero_phase=True)
    return y


def _bouc_wen_dop853(force, t: np.ndarray, p: boucwen.BoucWenParameters) -> np.ndarray:
    """y(t) of m ÿ + c ẏ + k y + z = u(t), ż = α ẏ − β (γ |ẏ| |z|^(ν−1) z + δ ẏ |z|^ν), from rest, by DOP853."""
    from scipy.integrate import solve_ivp

    def rate(s, x):
        v, z = x[1], x[2]
        zdot = p.alpha * v - p.beta * (p.gamma * abs(v) * abs(z) ** (p.nu - 1.0) * z + p.delta * v * abs(z) ** p.nu)
        return [v, (force(s) - p.c * v - p.k * x[0] - z) / p.m, zdot]

    return solve_ivp(rate, (0.0, t[-1]), [0.0, 0.0, 0.0], method="DOP853", t_eval=t, rtol=1e-8, atol=1e-13).y[0]


def test_a_periodic_input_is_simulated_from_rest_and_its_requested_period_returned():
    # a band-limited period (100 samples at 750 Hz, lines 2..10 of f0 = 7.5 Hz, 50 N RMS): its interpolant is the
    # trigonometric sum itself; DOP853 on the benchmark's ODE over periods + 1 = 3 periods, scipy's decimation, and the
    # second period returned (the transient has not died out: the three periods differ by 32 % and 4 %)
    n, k = 100, np.arange(2, 11)
    phase = np.random.default_rng(8).uniform(0, 2 * np.pi, k.size)
    period, amplitude = n / boucwen.FS, 50.0 * np.sqrt(2.0 / k.size)

    def force(s):
        return amplitude * np.cos(2 * np.pi * np.multiply.outer(np.asarray(s), k) / period + phase).sum(-1)

    u = force(np.arange(n) / boucwen.FS)
    t = np.arange(3 * n * 20) / (boucwen.FS * 20)
    ref = _scipy_decimate(_bouc_wen_dop853(force, t, boucwen.BoucWenParameters()), (2, 2, 5))
    y = boucwen.simulate(u, periodic=True, periods=2)
    assert y.shape == (n,)
    assert rel_rms(y, ref[n: 2 * n]) < 1e-3  # Newmark at 15 kHz: 1.1e-4 seen
    assert rel_rms(ref[:n], ref[n: 2 * n]) > 1e-2 and rel_rms(ref[2 * n:], ref[n: 2 * n]) > 1e-2
    np.testing.assert_array_equal(boucwen.simulate(list(u[:, None]), periodic=True), y)  # (n, 1), a list; 2 periods


def rel_rms(a: np.ndarray, b: np.ndarray) -> float:
    """RMS of a − b relative to the RMS of b."""
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2)))


def test_decimation_is_one_fir_stage_per_prime_factor():
    x = np.random.default_rng(3).standard_normal(6000)
    for factor, stages in ((20, (2, 2, 5)), (12, (2, 2, 3)), (7, (7,)), (9, (3, 3))):
        np.testing.assert_allclose(boucwen.decimate(x, factor), _scipy_decimate(x, stages), rtol=0, atol=1e-15)
    np.testing.assert_allclose(boucwen.decimate(x), _scipy_decimate(x, (2, 2, 5)), rtol=0, atol=1e-15)


def test_the_multisine_excites_exactly_the_benchmark_lines_with_equal_amplitudes():
    # f0 = 15000 / (n·20); lines 1..⌈fmax/f0⌉ that are ≥ ⌊fmin/f0⌋, unit amplitude, scaled to the RMS
    for n, fmin, fmax, rms in ((512, 5.0, 150.0, 50.0), (300, 12.0, 40.0, 7.0)):
        f0 = 15000.0 / (n * 20)
        fine, coarse = boucwen.multisine(3, n=n, fmin=fmin, fmax=fmax, rms=rms, seed=2)
        assert fine.shape == (3 * n * 20,) and np.array_equal(coarse, fine[::20])
        one = fine[: n * 20]
        assert np.array_equal(fine, np.tile(one, 3)) and np.sqrt(np.mean(one ** 2)) == pytest.approx(rms, rel=1e-12)
        spectrum = np.abs(np.fft.rfft(one))
        lines = np.flatnonzero(spectrum > 1e-9 * spectrum.max())
        expected = np.arange(int(np.floor(fmin / f0)), int(np.ceil(fmax / f0)) + 1)
        assert np.array_equal(lines, expected)
        assert np.ptp(spectrum[lines]) < 1e-9 * spectrum.max()  # flat amplitude spectrum
    a, b = boucwen.multisine(1, n=128, seed=0)[0], boucwen.multisine(1, n=128, seed=1)[0]
    assert not np.allclose(a, b)
    assert boucwen.multisine(1)[0].shape == (8192 * 20,)


def test_the_sine_sweep_is_its_closed_form():
    t = np.arange(600 * 20) / 15000.0
    fine, coarse = boucwen.sine_sweep(600, amplitude=3.0, f_start=5.0, rate=20.0)
    np.testing.assert_allclose(fine, 3.0 * np.sin(2 * np.pi * (5.0 * t + 10.0 * t * t)), rtol=0, atol=1e-12)
    assert np.array_equal(coarse, fine[::20])
    default = boucwen.sine_sweep(400)[0]  # 40 N, 18 Hz, 10 Hz/min
    t = np.arange(400 * 20) / 15000.0
    np.testing.assert_allclose(default, 40.0 * np.sin(2 * np.pi * (18.0 * t + t * t / 12.0)), rtol=0, atol=1e-11)


def test_a_training_record_is_the_decimated_simulation_of_one_extra_period(monkeypatch):
    # the integrator stood in for by a fast linear filter: what training_record does around it (the 15 kHz step,
    # the parameters, P + 1 periods, the decimation, the first P · 8192 samples kept, the noise of seed + 1)
    from scipy import signal

    seen = []

    def fake(u, h, params):
        seen.append((u.shape[0], h, params))
        return signal.lfilter([1e-6, 2e-6], [1.0, -0.9], u)

    monkeypatch.setattr(boucwen, "integrate_newmark", fake)
    p = boucwen.BoucWenParameters(c=12.0)
    fine, coarse = boucwen.multisine(2, seed=4)
    u, y = boucwen.training_record(periods=1, seed=4, noise_rms=3e-6, params=p)
    assert seen == [(2 * 8192 * 20, 1.0 / 15000.0, p)]
    assert np.array_equal(u, coarse[:8192])
    clean = _scipy_decimate(signal.lfilter([1e-6, 2e-6], [1.0, -0.9], fine), (2, 2, 5))[:8192]
    np.testing.assert_allclose(y, clean + 3e-6 * np.random.default_rng(5).standard_normal(8192), rtol=0, atol=1e-18)
    u0, y0 = boucwen.training_record(periods=1, seed=4)
    np.testing.assert_allclose(y0, clean, rtol=0, atol=1e-18)


def test_subspace_refuses_an_invalid_order_by_name():
    record, _ = _mimo_system(3, L=200)
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match=r"order must be an int >= 1 \(the number of poles\); got"):
            subspace_poles(record, bad)


def test_subspace_fits_the_order_it_is_given():
    record, truth = _mimo_system(4)
    for order in (2, 3, 6):
        assert subspace_poles(record, order).shape == (order,)
    assert _nearest(subspace_poles(record, 6), truth) < 1e-6  # the true poles among the six


def test_set_discrete_poles_reads_real_lists_and_arrays_of_any_shape():
    expected = np.array([0.5, -0.4, 0.3 * np.exp(1j)])
    for z in ([0.5, -0.4, 0.3 * np.exp(1j)], expected[None, :], np.array([0.5, -0.4])):
        layer = _layer("dlr", {"d_state": 8})
        set_discrete_poles(layer, z)
        got = layer.discrete()[0].detach().numpy()[..., : np.size(z)]  # (H, k)
        np.testing.assert_allclose(got, np.broadcast_to(expected[: np.size(z)], got.shape), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# surrogates/wh


def _difference_equation(b: np.ndarray, a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y_t = (Σ_k b_k x_{t−k} − Σ_{k≥1} a_k y_{t−k}) / a_0 from rest, a float64 loop."""
    y = np.zeros(len(x))
    for t in range(len(x)):
        acc = sum(b[k] * x[t - k] for k in range(len(b)) if t - k >= 0)
        acc -= sum(a[k] * y[t - k] for k in range(1, len(a)) if t - k >= 0)
        y[t] = acc / a[0]
    return y


@pytest.mark.parametrize("clamp,order", [(0.3, 3), (0.05, 4)])
def test_the_wiener_hammerstein_surrogate_is_filter_clamp_filter(clamp, order):
    # Chebyshev I (ripple, edge) → f(x) = x (x ≤ 0), s tanh(x/s) (x > 0) → Chebyshev II (stop dB, stop edge), at 51.2 kHz
    from scipy import signal

    from ssmkit.sysid.surrogates import wh

    p = wh.WHParameters(order=order, ripple_db=1.0, edge_hz=3000.0, stop_db=30.0, stop_hz=6000.0, clamp=clamp)
    g1 = signal.cheby1(order, 1.0, 3000.0 / 25600.0)
    g2 = signal.cheby2(order, 30.0, 6000.0 / 25600.0)
    for got, want in zip(wh.filters(p), (g1, g2)):
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-15)
    u = wh.excitation(400, rms=0.8, band_hz=8000.0, seed=6)
    x = _difference_equation(*g1, u)
    w = np.array([clamp * np.tanh(v / clamp) if v > 0 else v for v in x])
    assert (x > clamp).any() and (x < 0).any()  # the clamp acts, and the negative side passes
    np.testing.assert_allclose(wh.simulate(u, p), _difference_equation(*g2, w), rtol=0, atol=1e-12)


def test_the_wiener_hammerstein_excitation_is_band_limited_gaussian_noise_at_its_rms():
    from scipy import signal

    from ssmkit.sysid.surrogates import wh

    b, a = signal.butter(4, 6000.0 / 25600.0)
    raw = np.random.default_rng(9).standard_normal(3000)
    want = _difference_equation(b, a, raw)
    got = wh.excitation(3000, rms=0.25, band_hz=6000.0, seed=9)
    np.testing.assert_allclose(got, want * 0.25 / want.std(), rtol=0, atol=1e-12)
    default = wh.excitation(3000, seed=9)  # 0.5 V RMS, 10 kHz
    b, a = signal.butter(4, 10000.0 / 25600.0)
    want = _difference_equation(b, a, raw)
    np.testing.assert_allclose(default, want * 0.5 / want.std(), rtol=0, atol=1e-12)
    assert wh.FS == 51200.0


def test_init_from_data_uses_the_estimator_it_names():
    # subspace reads every output; ARX the first one only. Output 0 sees the pair 0.9 e^{±0.4i}, output 1 the real
    # poles 0.7 and −0.5 (a block-diagonal system): PO-MOESP finds all four, ARX of order 4 on output 0 cannot
    rng = np.random.default_rng(5)
    A = np.zeros((4, 4))
    A[:2, :2] = 0.9 * np.array([[np.cos(0.4), -np.sin(0.4)], [np.sin(0.4), np.cos(0.4)]])
    A[2, 2], A[3, 3] = 0.7, -0.5
    B, C = rng.standard_normal((4, 1)), np.array([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.8]])
    u, x, ys = rng.standard_normal((1500, 1)), np.zeros(4), []
    for t in range(1500):
        ys.append(C @ x)
        x = A @ x + B @ u[t]
    y = np.array(ys) + 1e-3 * rng.standard_normal((1500, 2))  # a little noise: ARX's rank is full
    record = IORecord(torch.tensor(u), torch.tensor(y), 1.0)
    truth = np.array([0.9 * np.exp(0.4j), 0.7, -0.5])

    def model():
        return DeepWiener(1, 2, d_model=2, n_layers=1, layer="dlr", layer_options={"d_state": 8}, dtype=torch.float64)

    sub = init_from_data(model(), record, method="subspace", order=4)
    assert _nearest(sub, truth) < 1e-2 and _nearest(truth, sub) < 1e-2
    arx = init_from_data(model(), record, method="arx", order=4)
    reference = modes(_lstsq_arx(record, 4, 0), 4)  # numpy least squares on output 0
    np.testing.assert_allclose(np.sort_complex(arx), np.sort_complex(reference), rtol=0, atol=1e-9)
    assert _nearest(arx, truth[1:]) > 5e-2  # output 0 does not show the real poles


def test_the_ring_default_seed_is_zero():
    assert np.array_equal(ring_poles(20), ring_poles(20, seed=0))


def test_the_real_pole_tolerance_is_inclusive():
    # |Im z| ≤ 1e-9 |z| makes z real: at equality too
    z = np.array([0.3 + 1j * (1e-9 * 0.3)])
    assert np.abs(z[0]) == 0.3 and z[0].imag == 1e-9 * np.abs(z[0])
    assert modes(z, 1)[0] == 0.3 and modes(z, 1)[0].imag == 0.0


def _noisy_mimo(scale_u: np.ndarray, scale_y: np.ndarray) -> IORecord:
    """_mimo_system(6) with 2 % output noise, its channels multiplied by the given units."""
    record, _ = _mimo_system(6, L=1200)
    y = record.y.numpy()
    y = y + 0.02 * y.std(0) * np.random.default_rng(7).standard_normal(y.shape)
    return IORecord(torch.tensor(record.u.numpy() * scale_u), torch.tensor(y * scale_y), 1.0)


def test_the_estimates_do_not_depend_on_the_channels_units():
    # every input and output is scaled by its standard deviation first, so a change of units (here ×1e-3 and ×1e4)
    # leaves the noisy estimates unchanged; unscaled, least squares and the SVD would weigh the channels differently
    a = _noisy_mimo(np.ones(2), np.ones(2))
    b = _noisy_mimo(np.array([1e-3, 1.0]), np.array([1.0, 1e4]))
    for f in (lambda r: subspace_poles(r, 4), lambda r: subspace_poles(r, None, max_order=6),
              lambda r: arx_poles(r, 4, output_index=1), lambda r: arx_poles(r, 3, output_index=0)):
        pa, pb = np.sort_complex(f(a)), np.sort_complex(f(b))
        assert pa.shape == pb.shape
        np.testing.assert_allclose(pa, pb, rtol=0, atol=1e-9)


def test_the_default_horizon_and_order_limit_show_in_the_short_record_error():
    # defaults: max_order 16, horizon max(2 · 16, 10) = 32; 80 + 70 samples give 17 + 7 Hankel columns
    record, _ = _mimo_system(7, L=80)
    other, _ = _mimo_system(8, L=70)
    with pytest.raises(ValueError, match=r"order 16 exceeds the 0 singular values available: the records give 24 "
                                         r"Hankel columns for 256 block rows \(horizon 32\)"):
        subspace_poles([record, other])


def test_as_many_singular_values_as_the_order_suffice():
    # m = p = 1, horizon 3: 12 block rows; 10 samples give 5 Hankel columns, so the future-output block has exactly 2
    # singular values: order 2 is estimated; 9 samples (4 columns) leave 1, and order 2 is refused
    record = IORecord(torch.randn(10, 1, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64), 1.0)
    assert subspace_poles(record, 2, horizon=3).shape == (2,)
    with pytest.raises(ValueError, match="order 2 exceeds the 1 singular values available: the records give 4 Hankel"):
        subspace_poles(IORecord(record.u[:9], record.y[:9], 1.0), 2, horizon=3)


class _Stack(torch.nn.Module):
    """A model with a ``layers`` list (what init_from_data reads)."""

    def __init__(self, layers: list[torch.nn.Module]) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)


def test_every_chosen_layer_is_checked_before_any_is_written_and_the_first_bounds_the_modes():
    record, _ = _mimo_system(9)
    first = _layer("s4d", {"d_state": 8})
    kept = first.log_A_real.detach().clone()
    with pytest.raises(ValueError, match="supports the layers"):
        init_from_data(_Stack([first, _layer("dss", {"d_state": 8})]), record, layers=2)
    assert torch.equal(first.log_A_real, kept)  # nothing written
    small, large = _layer("s4d", {"d_state": 4}), _layer("s4d", {"d_state": 10})  # M = 2 and 5
    written = init_from_data(_Stack([small, large]), record, order=4, layers=2)
    assert written.shape == (2,)  # the first layer's M modes (of the 3 estimated)
    for layer in (small, large):
        got = layer.discrete()[0].detach().numpy()[:, :2]
        np.testing.assert_allclose(got, np.broadcast_to(written, got.shape), rtol=0, atol=1e-12)


def test_a_first_order_system_and_the_shortest_usable_record():
    # y_t = 0.6 y_{t−1} + u_t − 0.3 u_{t−1}: order 1 is valid for both estimators
    rng = np.random.default_rng(10)
    u = rng.standard_normal(400)
    y = np.zeros(400)
    for t in range(1, 400):
        y[t] = 0.6 * y[t - 1] + u[t] - 0.3 * u[t - 1]
    record = IORecord(torch.tensor(u[:, None]), torch.tensor(y[:, None]), 1.0)
    np.testing.assert_allclose(arx_poles(record, 1), [0.6], rtol=0, atol=1e-10)
    np.testing.assert_allclose(subspace_poles(record, 1), [0.6], rtol=0, atol=1e-10)
    # a record of exactly 2 · horizon samples gives one Hankel column: used (then too few for the order), not skipped
    with pytest.raises(ValueError, match="the records give 1 Hankel columns for 20 block rows"):
        subspace_poles(IORecord(record.u[:10], record.y[:10], 1.0), 2, horizon=5)
    with pytest.raises(ValueError, match=r"the records give 1 Hankel columns for 40 block rows \(horizon 10\)"):
        subspace_poles(IORecord(record.u[:20], record.y[:20], 1.0), 2)  # the default horizon: max(2 · 2, 10)


def test_output_index_p_is_refused_and_the_automatic_order_looks_at_2m_values():
    record, _ = _mimo_system(11, L=24)
    with pytest.raises(ValueError, match=r"output_index must be an int in \[0, 2\) \(the records have p = 2 outputs\); got 2"):
        arx_poles(record, 2, output_index=2)
    # a layer of M = 2 modes: the order is read among the first 2M = 4 singular values, so the default horizon is
    # max(2 · 4, 10) = 10, which the 24 samples' 5 Hankel columns cannot serve
    with pytest.raises(ValueError, match=r"order 4 exceeds the 0 singular values available: the records give 5 Hankel "
                                         r"columns for 60 block rows \(horizon 10\)"):
        init_from_data(_layer("s4d", {"d_state": 4}), IORecord(record.u, record.y[:, :1], 1.0))


def test_the_benchmark_constants_are_the_published_ones():
    # Noël & Schoukens 2016, Table 1 (REFERENCE.md §4.4): m, c, k, α, β, γ, δ, ν; 750 Hz, integrated at 20 × 750 Hz
    p = boucwen.BoucWenParameters()
    assert (p.m, p.c, p.k, p.alpha, p.beta, p.gamma, p.delta, p.nu) == (2.0, 10.0, 5e4, 5e4, 1e3, 0.8, -1.1, 1.0)
    assert boucwen.FS == 750.0 and boucwen.UPSAMPLE == 20
    # the multisine's defaults: 8 192 samples per period, 5-150 Hz, 50 N RMS, seed 0
    np.testing.assert_array_equal(boucwen.multisine(1)[0], boucwen.multisine(1, 8192, 5.0, 150.0, 50.0, 0)[0])


def test_one_sample_short_of_a_column_and_a_single_singular_value():
    record = IORecord(torch.randn(30, 1, dtype=torch.float64), torch.randn(30, 1, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match=r"every record is shorter than 2 · horizon = 20 samples"):
        subspace_poles(IORecord(record.u[:19], record.y[:19], 1.0), 2, horizon=10)  # 0 Hankel columns
    # max_order 1 (horizon 10): 30 samples give 11 columns, so the future-output block has one singular value,
    # and the automatic order is 1
    assert subspace_poles(record, None, max_order=1).shape == (1,)


def test_a_record_of_order_plus_two_samples_adds_its_two_rows():
    # noisy data, so every row moves the least-squares estimate: the intercept ARX in numpy over the same rows
    record, _ = _mimo_system(12, L=600)
    y = record.y.numpy() + 0.05 * np.random.default_rng(13).standard_normal(record.y.shape)
    noisy = IORecord(record.u, torch.tensor(y), 1.0)
    short = IORecord(record.u[:6] * 3.0, torch.tensor(y[:6] * 2.0 + 1.0), 1.0)  # n + 2 = 6 samples: two rows
    got = np.sort_complex(arx_poles([noisy, short], 4))
    np.testing.assert_allclose(got, np.sort_complex(_lstsq_arx([noisy, short], 4, 0)), rtol=0, atol=1e-9)
    assert np.abs(got - np.sort_complex(arx_poles(noisy, 4))).max() > 1e-7


def _po_moesp_by_projections(records: list[IORecord], n: int | None, i: int, max_order: int) -> np.ndarray:
    """PO-MOESP (Verhaegen 1994) written with projections instead of an LQ factorisation: the future outputs with the
    future inputs projected out, projected onto the row space of the past data (with the future inputs projected out
    too); its left singular vectors are the extended observability matrix Γ_i, A = Γ_i[:-p]⁺ Γ_i[p:]. Channels
    scaled by their pooled std, Hankel rows centred per record (as the module documents for offsets)."""
    us = np.concatenate([r.u.numpy() for r in records]).std(0)
    ys = np.concatenate([r.y.numpy() for r in records]).std(0)
    parts = {"uf": [], "up": [], "yp": [], "yf": []}
    for r in records:
        u, y = r.u.numpy() / us, r.y.numpy() / ys
        cols = len(u) - 2 * i + 1

        def hankel(x, first):
            return np.concatenate([x[first + j: first + j + cols].T for j in range(i)], axis=0)

        for key, x, first in (("uf", u, i), ("up", u, 0), ("yp", y, 0), ("yf", y, i)):
            block = hankel(x, first)
            parts[key].append(block - block.mean(axis=1, keepdims=True))
    uf, up, yp, yf = (np.concatenate(parts[k], axis=1) for k in ("uf", "up", "yp", "yf"))
    wp = np.concatenate([up, yp])
    yf_perp = yf - (yf @ np.linalg.pinv(uf)) @ uf
    wp_perp = wp - (wp @ np.linalg.pinv(uf)) @ uf
    U, s, _ = np.linalg.svd(yf_perp @ np.linalg.pinv(wp_perp) @ wp_perp)
    if n is None:
        n = int(np.argmax(s[:max_order] / s[1: max_order + 1])) + 1
    gamma = U[:, :n] * np.sqrt(s[:n])
    p = records[0].y.shape[1]
    return np.linalg.eigvals(np.linalg.lstsq(gamma[:-p], gamma[p:], rcond=None)[0])


def test_po_moesp_on_noisy_data_equals_a_projection_form_of_the_algorithm():
    # with noise every detail moves the estimate (which past samples, which future ones, the centring, the order)
    records = []
    for seed, L in ((14, 700), (15, 500)):
        record, _ = _mimo_system(seed, L=L)
        y = record.y.numpy()
        y = y + 0.05 * y.std(0) * np.random.default_rng(seed + 50).standard_normal(y.shape)
        records.append(IORecord(record.u, torch.tensor(y), 1.0))
    for n, i in ((4, 6), (3, 5), (None, 8)):
        got = np.sort_complex(subspace_poles(records, n, horizon=i, max_order=6))
        want = np.sort_complex(_po_moesp_by_projections(records, n, i, max_order=6))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-8)


def test_the_automatic_order_reads_exactly_max_order_singular_value_ratios():
    # noise-free: a 4th-order system has 4 nonzero singular values, so max_order 4 still sees the drop after the 4th
    # (the ratio σ₄/σ₅ is the last one read); a 5th-order one read with max_order 4 gets at most 4 poles
    record, truth = _mimo_system(16, L=800)
    got = subspace_poles(record, None, max_order=4)
    assert got.shape == (4,) and _nearest(got, truth) < 1e-8
    a = np.real(np.poly([0.9, 0.8 * np.exp(0.7j), 0.8 * np.exp(-0.7j), -0.6, 0.3]))
    u = np.random.default_rng(17).standard_normal(800)
    from scipy import signal

    y = signal.lfilter([0.0, 1.0, 0.4, -0.2, 0.1, 0.05], a, u)
    fifth = IORecord(torch.tensor(u[:, None]), torch.tensor(y[:, None]), 1.0)
    assert len(subspace_poles(fifth, None, max_order=6)) == 5
    assert len(subspace_poles(fifth, None, max_order=4)) <= 4


def test_init_from_data_clips_at_r_max_0_9999_by_default():
    # a noise-free first-order system with its pole at 0.99995: the estimate finds it, the layer gets |z| = 0.9999
    rng = np.random.default_rng(18)
    u = rng.standard_normal(300)
    y = np.zeros(300)
    for t in range(1, 300):
        y[t] = 0.99995 * y[t - 1] + u[t - 1]
    record = IORecord(torch.tensor(u[:, None]), torch.tensor(y[:, None]), 1.0)
    np.testing.assert_allclose(subspace_poles(record, 1), [0.99995], rtol=0, atol=1e-9)
    written = init_from_data(_layer("dlr", {"d_state": 4}), record, order=1)
    np.testing.assert_allclose(written, [0.9999], rtol=0, atol=1e-15)


def test_a_force_present_from_the_first_sample_starts_from_its_acceleration():
    # the linear limit (α = β = 0) under a step force F applied from t = 0: m ÿ + c ẏ + k y = F from rest,
    # y = F/k (1 − e^{−ζωt}(cos ω_d t + ζ/√(1−ζ²) sin ω_d t)); Newmark starts from ÿ(0) = F/m (5e-5 seen; starting
    # from ÿ(0) = 0 gives 2.6e-3)
    p = boucwen.BoucWenParameters(alpha=0.0, beta=0.0)
    h, F = 1 / 15000, 10.0
    t = np.arange(1500) * h
    wn, zeta = np.sqrt(p.k / p.m), p.c / (2 * np.sqrt(p.k * p.m))
    wd = wn * np.sqrt(1 - zeta ** 2)
    exact = F / p.k * (1 - np.exp(-zeta * wn * t) * (np.cos(wd * t) + zeta / np.sqrt(1 - zeta ** 2) * np.sin(wd * t)))
    y = boucwen.integrate_newmark(np.full(1500, F), h, p)
    assert np.abs(y - exact).max() < 5e-4 * np.abs(exact).max()


def test_newmark_of_an_empty_input_is_empty():
    # probe 40: the initial acceleration was guarded for an empty input, the next line then raised IndexError
    assert boucwen.integrate_newmark(np.zeros(0), 1 / 15000).shape == (0,)


def test_newmark_in_the_linear_case_is_the_average_acceleration_recurrence():
    # with β = 0 the hysteresis is ż = α ẏ, so (trapezoidal rule for z) z = α y and the system is linear with stiffness
    # k + α; Newmark's average acceleration (a = 1/2, b = 1/4) from rest with ÿ(0) = u(0)/m is then the recurrence
    # (m + ch/2 + Kh²/4) y_{n+1} − (2m − Kh²/2) y_n + (m − ch/2 + Kh²/4) y_{n−1} = h²/4 (u_{n+1} + 2u_n + u_{n−1})
    p = boucwen.BoucWenParameters(beta=0.0, c=40.0)
    h, K = 1 / 15000, p.k + p.alpha
    u = 30.0 * np.random.default_rng(19).standard_normal(800)
    y = boucwen.integrate_newmark(u, h, p)
    lhs = (p.m + p.c * h / 2 + K * h * h / 4) * y[2:] - (2 * p.m - K * h * h / 2) * y[1:-1] \
        + (p.m - p.c * h / 2 + K * h * h / 4) * y[:-2]
    rhs = h * h / 4 * (u[2:] + 2 * u[1:-1] + u[:-2])
    assert np.abs(lhs - rhs).max() < 1e-9 * np.abs(rhs).max()
    # the first step from y_0 = ẏ_0 = 0, ÿ_0 = u_0/m: m ÿ_1 + c ẏ_1 + K y_1 = u_1, ẏ_1 = h(ÿ_0 + ÿ_1)/2, y_1 = h²(ÿ_0 + ÿ_1)/4
    a0 = u[0] / p.m
    a1 = (u[1] - a0 * (p.c * h / 2 + K * h * h / 4)) / (p.m + p.c * h / 2 + K * h * h / 4)
    assert y[0] == 0.0 and y[1] == pytest.approx(h * h / 4 * (a0 + a1), rel=1e-9)


def test_the_parameters_are_frozen_and_a_fractional_exponent_is_finite_at_zero():
    p = boucwen.BoucWenParameters()
    with pytest.raises(Exception, match="cannot assign"):
        p.m = 3.0
    # ν < 1: |z|^(ν−1) z → 0 and |z|^ν → 0 as z → 0, so ż(ẏ, 0) = α ẏ
    q = boucwen.BoucWenParameters(nu=0.5)
    assert boucwen._z_rate(q, 0.02, 0.0)[0] == pytest.approx(q.alpha * 0.02, rel=1e-15)
    assert np.all(np.isfinite(boucwen.integrate_newmark(np.full(200, 20.0), 1 / 15000, q)))


def test_the_default_sweep_and_training_record_lengths(monkeypatch):
    fine, coarse = boucwen.sine_sweep()
    assert coarse.shape == (153000,) and fine.shape == (153000 * 20,)
    seen = []
    monkeypatch.setattr(boucwen, "integrate_newmark", lambda u, h, params: seen.append(u.shape[0]) or u * 1e-6)
    u, y = boucwen.training_record()  # 5 periods kept of 6 simulated, seed 0, no noise
    assert seen == [6 * 8192 * 20] and u.shape == y.shape == (5 * 8192,)
    np.testing.assert_array_equal(u, boucwen.multisine(6, seed=0)[1][: 5 * 8192])
    np.testing.assert_allclose(y, _scipy_decimate(boucwen.multisine(6, seed=0)[0] * 1e-6, (2, 2, 5))[: 5 * 8192],
                               rtol=0, atol=1e-18)


def test_newmark_solves_its_hysteresis_step_to_convergence():
    # from the output alone: the trapezoidal rules give ẏ_{n+1} = 2(y_{n+1} − y_n)/h − ẏ_n and
    # ÿ_{n+1} = 2(ẏ_{n+1} − ẏ_n)/h − ÿ_n (from rest, ÿ_0 = u_0/m), the equation of motion z_n = u_n − mÿ_n − cẏ_n − ky_n,
    # and then z must obey its trapezoidal rule z_{n+1} − z_n = h/2 (ż(ẏ_n, z_n) + ż(ẏ_{n+1}, z_{n+1})) to the Newton
    # tolerance (2.6e-5 of |z| ≤ 64 N, the differencing's rounding; one Newton iteration per step leaves 3.4e-3)
    p, h = boucwen.BoucWenParameters(), 1 / 15000
    t = np.arange(2500) * h
    u = 50 * np.sin(2 * np.pi * 20 * t) + 20 * np.sin(2 * np.pi * 57 * t + 1)
    y = boucwen.integrate_newmark(u, h, p)
    v, a = np.zeros_like(y), np.zeros_like(y)
    a[0] = u[0] / p.m
    for i in range(len(y) - 1):
        v[i + 1] = 2 * (y[i + 1] - y[i]) / h - v[i]
        a[i + 1] = 2 * (v[i + 1] - v[i]) / h - a[i]
    z = u - p.m * a - p.c * v - p.k * y
    f = p.alpha * v - p.beta * (p.gamma * np.abs(v) * z + p.delta * v * np.abs(z))
    assert np.abs(z).max() > 30.0  # the hysteresis is at work
    assert np.abs(z[1:] - z[:-1] - h / 2 * (f[1:] + f[:-1])).max() < 3e-4
    assert boucwen.integrate_newmark(np.array([5.0]), h).tolist() == [0.0]  # one sample: the state at rest


def test_the_lowest_lines_the_interpolator_length_and_small_decimations():
    # fmin below f0: every line from 1 (never the mean) up to ⌈fmax/f0⌉
    fine, _ = boucwen.multisine(1, n=512, fmin=0.0, fmax=10.0, rms=2.0, seed=4)
    spectrum = np.abs(np.fft.rfft(fine))
    assert np.array_equal(np.flatnonzero(spectrum > 1e-9 * spectrum.max()), np.arange(1, int(np.ceil(10.0 / (15000 / 10240))) + 1))
    assert abs(fine.mean()) < 1e-12
    assert boucwen._interpolator().shape == (2 * 20 * 40 + 1,)  # ±40 input samples at 20 ×
    x = np.random.default_rng(20).standard_normal(500)
    for factor, stages in ((2, (2,)), (8, (2, 2, 2)), (6, (2, 3))):
        np.testing.assert_allclose(boucwen.decimate(x, factor), _scipy_decimate(x, stages), rtol=0, atol=1e-15)


def test_the_multisine_phases_are_uniform_on_the_circle():
    fine, _ = boucwen.multisine(1, seed=21)  # the 8 192-sample period: lines 54..1639 of f0 = 15000 / 163840 Hz
    spectrum = np.fft.rfft(fine[: 8192 * 20])
    lines = np.flatnonzero(np.abs(spectrum) > 1e-9 * np.abs(spectrum).max())
    phases = np.mod(np.angle(spectrum[lines]), 2 * np.pi)
    assert lines.size == 1586 and _ks_uniform(phases, 0.0, 2 * np.pi) > 1e-3


@pytest.mark.parametrize("nu", [0.5, 1.5])
def test_the_hysteresis_rate_inside_the_unit_interval_of_z(nu):
    # |z| < 1 (where |z|^(ν−1) differs most from 1): ż = α ẏ − β (γ |ẏ| |z|^(ν−1) z + δ ẏ |z|^ν)
    p = boucwen.BoucWenParameters(nu=nu)
    for v, z in ((0.03, 0.4), (-0.02, -0.7)):
        want = p.alpha * v - p.beta * (p.gamma * abs(v) * abs(z) ** (nu - 1) * z + p.delta * v * abs(z) ** nu)
        assert boucwen._z_rate(p, v, z)[0] == pytest.approx(want, rel=1e-13)


def test_the_wh_defaults_put_g1s_edge_at_4_4_khz_and_the_nonlinearity_reads_any_array():
    # a Chebyshev I response leaves its ripple band exactly at the edge: |G₁(4.4 kHz)| = 10^(−0.5/20), |G₁(0)| = 1 (odd order)
    from scipy import signal

    from ssmkit.sysid.surrogates import wh

    (b1, a1), _ = wh.filters()
    gain = np.abs(signal.freqz(b1, a1, worN=[0.0, 4400.0], fs=wh.FS)[1])
    np.testing.assert_allclose(gain, [1.0, 10 ** (-0.5 / 20)], rtol=1e-9)
    p = wh.WHParameters()
    assert (p.order, p.ripple_db, p.edge_hz, p.stop_db, p.stop_hz, p.clamp) == (3, 0.5, 4400.0, 40.0, 5000.0, 0.3)
    for clamp in (None, 0.3):
        out = wh.nonlinearity([-2, 0, 1], clamp)
        assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_array_equal(wh.nonlinearity([-2, 0, 1], None), [-2.0, 0.0, 1.0])
    np.testing.assert_array_equal(wh.excitation(200), wh.excitation(200, seed=0))  # the default seed
    with pytest.raises(Exception, match="cannot assign"):
        p.clamp = 0.5  # frozen, as BoucWenParameters


# --------------------------------------------------------------------------------------------------------------------
# surrogates/tanks


def test_the_tanks_excitation_is_a_clipped_multisine_of_the_given_lines():
    from ssmkit.sysid.surrogates import tanks

    u = tanks.excitation(400, mean=2.0, amplitude=1.5, periods_per_record=3.0, lines=5, seed=2)
    assert np.abs(u - 2.0).max() == pytest.approx(1.5, rel=1e-12)  # ±amplitude around the mean
    spectrum = np.abs(np.fft.rfft(u - 2.0))
    assert np.array_equal(np.flatnonzero(spectrum > 1e-9 * spectrum.max()), 3 * np.arange(1, 6))
    assert np.ptp(spectrum[3 * np.arange(1, 6)]) < 1e-9 * spectrum.max()  # equal amplitudes
    clipped = tanks.excitation(400, mean=1.0, amplitude=3.0, seed=2)
    assert clipped.min() == 0.0 and np.mean(clipped == 0.0) > 0.05
    d = tanks.excitation(400)  # defaults: 5 V ± 3 V, 8 lines of 4 cycles per record, seed 0
    spectrum = np.abs(np.fft.rfft(d - 5.0))
    assert np.abs(d - 5.0).max() == pytest.approx(3.0, rel=1e-12)
    assert np.array_equal(np.flatnonzero(spectrum > 1e-9 * spectrum.max()), 4 * np.arange(1, 9))
    np.testing.assert_array_equal(d, tanks.excitation(400, seed=0))


def test_the_tanks_start_at_rest_for_the_first_input_and_steady_states_cap_at_the_heights():
    from ssmkit.sysid.surrogates import tanks

    p = tanks.TanksParameters()
    assert (p.k1, p.k2, p.k3, p.k4, p.h1, p.h2, p.spill, tanks.TS) == (0.045, 0.045, 0.045, 0.02, 10.0, 10.0, 0.5, 4.0)
    x1, x2 = tanks.simulate([3.0] * 40)  # x0 None: (k₄u/k₁)², (k₂/k₃)² x₁ from the first sample
    e1 = (0.02 * 3.0 / 0.045) ** 2
    np.testing.assert_allclose(x1, e1, rtol=1e-9)
    np.testing.assert_allclose(x2, e1, rtol=1e-9)
    q = tanks.TanksParameters(k2=0.06, h2=4.0)
    u = 30.0  # the upper tank overflows; the lower one would settle above h₂ = 4
    inflow = 0.06 * np.sqrt(10.0) + 0.5 * (0.02 * u - 0.045 * np.sqrt(10.0))
    assert (inflow / 0.045) ** 2 > 4.0
    assert tanks.steady_state(u, q) == (10.0, 4.0)
    with pytest.raises(Exception, match="cannot assign"):
        p.k1 = 0.1


def test_the_upper_tank_spills_into_a_lower_tank_that_is_not_full():
    # probe 22's event-driven DOP853 reference (tests/sysid/test_surrogates.py) with the lower tank kept below h₂:
    # the spilled water must arrive in it (RK4 spills the excess at the step that crosses h₁: first order there)
    from ssmkit.sysid.surrogates import tanks
    from tests.sysid.test_surrogates import _tanks_reference

    p = tanks.TanksParameters(k2=0.02, spill=0.3)
    u = tanks.excitation(200, mean=12.0, amplitude=6.0, seed=3)
    ref = _tanks_reference(u, p)
    x1, x2 = tanks.simulate(u, p)
    assert np.mean(ref[:, 0] >= p.h1 - 1e-9) > 0.2 and ref[:, 1].max() < p.h2 - 0.5  # overflow into a non-full tank
    assert np.abs(x1 - ref[:, 0]).max() < 1e-6 and np.abs(x2 - ref[:, 1]).max() < 1e-3
    e2 = ((p.k2 * np.sqrt(p.h1) + p.spill * (p.k4 * 12.0 - p.k1 * np.sqrt(p.h1))) / p.k3) ** 2
    assert tanks.steady_state(12.0, p) == pytest.approx((p.h1, e2), rel=1e-12)
    np.testing.assert_array_equal(tanks.simulate(u, p)[1], tanks.simulate(u, p, substeps=8, dt=4.0)[1])  # defaults


def test_the_tanks_initial_levels_and_the_excitation_phase_law():
    from ssmkit.sysid.surrogates import tanks

    x1, x2 = tanks.simulate(np.full(5, 4.0), x0=(2.0, 5.0))
    assert (x1[0], x2[0]) == (2.0, 5.0) and x1[1] > 2.0 and x2[1] < 5.0
    # the phases of the 8 lines (bins 4, 8, …, 32 of 400 samples) over 60 seeds: uniform on [0, 2π)
    phases = np.concatenate([np.angle(np.fft.rfft(tanks.excitation(400, mean=9.0, seed=s) - 9.0)[4:33:4])
                             for s in range(60)])
    assert _ks_uniform(np.mod(phases, 2 * np.pi), 0.0, 2 * np.pi) > 1e-3
