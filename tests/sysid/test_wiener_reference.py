"""DeepWiener and WienerEnsemble against independent references (probe 26, mutation testing): a float64 NumPy loop of
the Wiener equations of the module docstring,

    ū = (u - μ_u) / σ_u,   x⁰ = E ū + e,
    block ℓ:  h_t = Ā ⊙ h_{t-1} + B̄ x_t,  η_t = Re(Σ C h_t) + D x_t,   x^ℓ = σ_ℓ(η) + F_ℓ x^{ℓ-1},
    y = σ_y (W x^L + b) + μ_y   (clipped to ``output_range``),

with the S4D blocks' Ā, B̄, C from their own ``discrete()`` (the diagonal layers' convention, layers/diagonal.py);
the encoder's state by hand; the exported state space simulated in the control convention; the ensemble as the
plain mean of separately simulated members."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssmkit.sysid.ensemble import WienerEnsemble
from ssmkit.sysid.wiener import DeepWiener

SIGMA = {"elu": lambda v: np.where(v > 0, v, np.expm1(np.minimum(v, 0))), "tanh": np.tanh, None: lambda v: v,
         "relu": lambda v: np.maximum(v, 0.0)}


def _randomised(seed: int = 0, **kw) -> DeepWiener:
    """A float64 S4D DeepWiener with every parameter and buffer away from its initial value: normalisations with
    σ ≠ 1 and μ ≠ 0, a skip F that is not the identity, a nonzero encoder bias."""
    torch.manual_seed(seed)
    opts = dict(n_inputs=2, n_outputs=3, d_model=4, n_layers=2, layer="s4d", layer_options={"d_state": 4},
                dtype=torch.float64)
    opts.update(kw)
    m = DeepWiener(**opts)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        m.u_mean.copy_(torch.randn(m.n_inputs, generator=g, dtype=torch.float64))
        m.u_std.copy_(torch.rand(m.n_inputs, generator=g, dtype=torch.float64) * 2 + 0.3)
        m.y_mean.copy_(torch.randn(m.n_outputs, generator=g, dtype=torch.float64) * 3)
        m.y_std.copy_(torch.rand(m.n_outputs, generator=g, dtype=torch.float64) * 2 + 0.3)
        m.encoder.bias.copy_(torch.randn(m.d_model, generator=g, dtype=torch.float64))
        m.decoder.bias.copy_(torch.randn(m.n_outputs, generator=g, dtype=torch.float64))
        for skip in m.skips:
            skip.weight.copy_(torch.randn(m.d_model, m.d_model, generator=g, dtype=torch.float64) * 0.5)
    return m


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _reference(m: DeepWiener, u: np.ndarray, states=None, activations=None, clip=True):
    """The Wiener equations in a float64 loop: (y (B, L, p), final block states (B, H, M) complex)."""
    activations = activations or [m.arguments["activation"]] * len(m.layers)
    Bsz, L, _ = u.shape
    x = ((u - _np(m.u_mean)) / _np(m.u_std)) @ _np(m.encoder.weight).T + _np(m.encoder.bias)  # (B, L, H)
    finals = []
    for k, (layer, skip, act) in enumerate(zip(m.layers, m.skips, activations)):
        A_bar, B_bar, C = (_np(t) for t in layer.discrete())
        C, D = C[0], _np(layer.D)
        h = np.zeros((Bsz,) + A_bar.shape, complex) if states is None else _np(states[k]).astype(complex)
        eta = np.empty_like(x)
        for t in range(L):
            h = A_bar * h + B_bar * x[:, t, :, None]
            eta[:, t] = (C * h).sum(-1).real + D * x[:, t]
        finals.append(h)
        x = SIGMA[act](eta) + x @ _np(skip.weight).T
    y = (x @ _np(m.decoder.weight).T + _np(m.decoder.bias)) * _np(m.y_std) + _np(m.y_mean)
    if clip and m.output_range is not None:
        lo, hi = m.output_range
        y = np.clip(y, -np.inf if lo is None else lo, np.inf if hi is None else hi)
    return y, finals


def _random_states(m: DeepWiener, batch: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *layer.state_spec().shape, generator=g, dtype=torch.complex128) for layer in m.layers]


@pytest.mark.parametrize("activation", ["elu", "tanh", None])
def test_forward_step_and_final_states_equal_the_float64_loop(activation):
    m = _randomised(activation=activation)
    u = torch.randn(2, 9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    s0 = _random_states(m, 2, 2)
    want, want_states = _reference(m, _np(u), s0)
    want_rest, _ = _reference(m, _np(u))
    with torch.no_grad():
        y, finals = m(u, s0)
        y_rest, none = m(u, return_state=False)
        steps, s = [], s0
        for t in range(u.shape[1]):
            y_t, s = m.step(u[:, t], s)
            steps.append(y_t)
    assert none is None and len(finals) == 2
    np.testing.assert_allclose(_np(y), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(y_rest), want_rest, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(torch.stack(steps, 1)), want, rtol=1e-12, atol=1e-12)
    for got, got_step, ref in zip(finals, s, want_states):
        np.testing.assert_allclose(_np(got), ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(_np(got_step), ref, rtol=1e-12, atol=1e-12)


def test_block_activations_and_the_sensor_clip_equal_the_loop():
    m = _randomised(seed=3, n_layers=3, block_activations=("tanh", None, "relu"), output_range=(-1.0, 2.0))
    u = torch.randn(3, 7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 3
    s0 = _random_states(m, 3, 5)
    want, _ = _reference(m, _np(u), s0, activations=["tanh", None, "relu"])
    raw, _ = _reference(m, _np(u), s0, activations=["tanh", None, "relu"], clip=False)
    assert (raw > 2.0).any() and (raw < -1.0).any()  # the clip is exercised on both sides
    with torch.no_grad():
        y, _ = m(u, s0)
        y_raw, _ = m(u, s0, saturate=False)
        y_t, _ = m.step(u[:, 0], s0)
    np.testing.assert_allclose(_np(y), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(y_raw), raw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(y_t), want[:, 0], rtol=1e-12, atol=1e-12)


def test_estimate_state_is_the_encoder_network_by_hand():
    n = 3
    m = _randomised(seed=6, encoder_window=n, encoder_hidden=5)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # the last layer starts small with a zero bias: move it so every output matters
        m.state_encoder[-1].weight.copy_(torch.randn(m.state_encoder[-1].weight.shape, generator=g, dtype=torch.float64))
        m.state_encoder[-1].bias.copy_(torch.randn(m.state_encoder[-1].bias.shape, generator=g, dtype=torch.float64))
    u_past = torch.randn(2, n, 2, generator=g, dtype=torch.float64) * 2 + 1
    y_past = torch.randn(2, n, 3, generator=g, dtype=torch.float64) * 3 - 1
    # features per past sample: [ū_t, ȳ_t], time-major; a tanh MLP; block ℓ's state from the next 2·H·M numbers,
    # (H, M) complex as (re, im) pairs
    f = np.concatenate([(_np(u_past) - _np(m.u_mean)) / _np(m.u_std), (_np(y_past) - _np(m.y_mean)) / _np(m.y_std)], -1)
    f = f.reshape(2, -1)
    first, last = m.state_encoder[0], m.state_encoder[-1]
    v = np.tanh(f @ _np(first.weight).T + _np(first.bias)) @ _np(last.weight).T + _np(last.bias)
    assert v.shape == (2, 2 * 2 * 4 * 2)
    states = m.estimate_state(u_past, y_past)
    for k, s in enumerate(states):
        part = v[:, k * 16:(k + 1) * 16].reshape(2, 4, 2, 2)
        assert s.dtype == torch.complex128 and s.shape == (2, 4, 2)
        np.testing.assert_allclose(_np(s), part[..., 0] + 1j * part[..., 1], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"u_past must be \(B, 3, 2\) and y_past \(B, 3, 3\)"):
        m.estimate_state(u_past[:, :2], y_past[:, :2])
    with pytest.raises(ValueError, match=r"u_past must be \(B, 3, 2\)"):
        m.estimate_state(u_past, y_past[:1])


def test_set_normalisation_pools_every_record():
    m = _randomised()
    g = torch.Generator().manual_seed(8)
    u = [torch.randn(30, 2, generator=g, dtype=torch.float64) * 3 + 1, torch.randn(11, 2, generator=g, dtype=torch.float64) - 4]
    y = [torch.randn(30, 3, generator=g, dtype=torch.float64) * 0.1 - 2, torch.randn(11, 3, generator=g, dtype=torch.float64) + 5]
    m.set_normalisation(u, y)
    uu, yy = np.concatenate([_np(t) for t in u]), np.concatenate([_np(t) for t in y])
    for got, want in ((m.u_mean, uu.mean(0)), (m.u_std, uu.std(0)), (m.y_mean, yy.mean(0)), (m.y_std, yy.std(0))):
        np.testing.assert_allclose(_np(got), want, rtol=1e-12)
    # a constant channel gets the scale 1 (scikit-learn's convention), so the model stays finite
    m.set_normalisation([torch.ones(5, 2, dtype=torch.float64)], [torch.full((5, 3), 2.0, dtype=torch.float64)])
    assert _np(m.u_std).tolist() == [1.0, 1.0] and _np(m.y_std).tolist() == [1.0, 1.0, 1.0]
    assert _np(m.u_mean).tolist() == [1.0, 1.0] and _np(m.y_mean).tolist() == [2.0, 2.0, 2.0]
    with torch.no_grad():
        assert torch.isfinite(m(torch.randn(1, 4, 2, dtype=torch.float64))[0]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_constant_channel_is_scaled_by_one_and_a_small_varying_one_keeps_its_std(dtype):
    # channel 0 held at 3.0 (constant), channel 1 varies by 1e-6 around 0 (small but real, as Bouc-Wen's metres are):
    # a std of ~0 would map u = 3.01 to ~1e10 inside the model; the varying channel must keep its own std
    m = DeepWiener(n_inputs=2, n_outputs=1, d_model=2, n_layers=1, layer="s4d", layer_options={"d_state": 2},
                   dtype=dtype)
    t = torch.arange(64, dtype=torch.float64)
    small = 1e-6 * torch.sin(0.3 * t)
    u = torch.stack([torch.full_like(t, 3.0), small], -1).to(dtype)
    y = (1e-6 * torch.cos(0.2 * t))[:, None].to(dtype)
    m.set_normalisation([u], [y])
    assert float(m.u_std[0]) == 1.0
    np.testing.assert_allclose(float(m.u_std[1]), float(small.to(dtype).double().std(correction=0)), rtol=1e-5)
    np.testing.assert_allclose(float(m.y_std[0]), float(y.double().std(correction=0)), rtol=1e-5)
    with torch.no_grad():
        near = m(torch.tensor([[[3.01, 0.0]]], dtype=dtype))[0]
    assert torch.isfinite(near).all() and near.abs().max() < 1e3


def test_exported_state_space_reproduces_the_linear_part():
    # σ = identity and F = 0: y = σ_y (W LTI(E ū + e) + b) + μ_y, the LTI block simulated from its exported realisation
    # (control convention: x_{k+1} = A x_k + B v_k, η_k = C x_k + D v_k) with Ts = dt
    m = _randomised(seed=9, activation=None, n_layers=1, dt=0.25)
    with torch.no_grad():
        m.skips[0].weight.zero_()
    (ss,) = m.state_space()
    assert ss.dt == 0.25
    u = np.random.default_rng(10).standard_normal((2, 12, 2))
    v = ((u - _np(m.u_mean)) / _np(m.u_std)) @ _np(m.encoder.weight).T + _np(m.encoder.bias)  # (B, L, H)
    eta = np.empty_like(v)
    for b in range(2):
        for h in range(4):
            x = np.zeros(ss.A.shape[-1])
            for t in range(12):
                eta[b, t, h] = (ss.C[h] @ x + ss.D[h] @ v[b, t, h:h + 1]).item()
                x = ss.A[h] @ x + ss.B[h][:, 0] * v[b, t, h]
    want = (eta @ _np(m.decoder.weight).T + _np(m.decoder.bias)) * _np(m.y_std) + _np(m.y_mean)
    with torch.no_grad():
        y, _ = m(torch.from_numpy(u))
    np.testing.assert_allclose(_np(y), want, rtol=1e-11, atol=1e-11)


def test_spectral_radius_is_the_largest_pole_over_every_block_and_a_unit_pole_is_not_stable():
    m = _randomised(seed=11, n_layers=3)
    poles = [np.abs(_np(layer.discrete()[0])) for layer in m.layers]  # the diagonal Ā (and their conjugates)
    with torch.no_grad():  # make the middle block the slowest, so neither the first nor the last decides
        m.layers[1].log_A_real.fill_(math.log(1e-3))
        poles[1] = np.abs(_np(m.layers[1].discrete()[0]))
    assert max(p.max() for p in poles) == poles[1].max() > max(poles[0].max(), poles[2].max())
    assert m.spectral_radius() == pytest.approx(max(p.max() for p in poles), rel=1e-12, abs=0)
    assert m.is_stable()
    with torch.no_grad():  # Re λ = -exp(-1000) = 0 and Im λ = 0: Ā = 1, a pole on the unit circle
        m.layers[2].log_A_real.fill_(-1000.0)
        m.layers[2].A_imag.zero_()
    assert m.spectral_radius() == 1.0 and not m.is_stable()


def test_a_fresh_model_starts_as_a_residual_stack_with_unit_normalisation():
    m = DeepWiener(2, 3, d_model=4, n_layers=2, layer_options={"d_state": 4}, encoder_window=2, dtype=torch.float64)
    for skip in m.skips:
        assert torch.equal(skip.weight, torch.eye(4, dtype=torch.float64))
    assert torch.equal(m.u_mean, torch.zeros(2, dtype=torch.float64)) and torch.equal(m.u_std, torch.ones(2, dtype=torch.float64))
    assert torch.equal(m.y_mean, torch.zeros(3, dtype=torch.float64)) and torch.equal(m.y_std, torch.ones(3, dtype=torch.float64))
    assert torch.equal(m.state_encoder[-1].bias, torch.zeros(32, dtype=torch.float64))  # 2 blocks × H·M complex
    assert m.state_encoder[0].in_features == 2 * (2 + 3) and m.state_encoder[-1].out_features == 32


def test_integer_inputs_are_read_in_the_parameters_dtype():
    m = _randomised(seed=12)
    u = torch.randint(-3, 4, (2, 6, 2))
    with torch.no_grad():
        y, _ = m(u)
        y_t, _ = m.step(u[:, 0], m.initial_state(2))
        y_f, _ = m(u.double())
    assert y.dtype == torch.float64 and y_t.dtype == torch.float64 and torch.equal(y, y_f)
    np.testing.assert_allclose(_np(y_t), _np(y_f[:, 0]), rtol=1e-12)
    m32 = _randomised(seed=12, dtype=torch.float32)
    with torch.no_grad():
        assert m32(u)[0].dtype == torch.float32 and m32.step(u[:, 0], m32.initial_state(2))[0].dtype == torch.float32


def test_ensemble_is_the_plain_mean_of_its_members_run_apart():
    ms = [_randomised(seed=s, encoder_window=2, dt=0.5) for s in (20, 21, 22)]
    ens = WienerEnsemble(ms)
    assert len(ens) == 3 and ens.n_inputs == 2 and ens.n_outputs == 3 and ens.dt == 0.5 and ens.encoder_window == 2
    assert ens.u_mean is ms[0].u_mean
    u = torch.randn(2, 8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(23))
    states = [_random_states(m, 2, 30 + k) for k, m in enumerate(ms)]
    refs = [_reference(m, _np(u), s) for m, s in zip(ms, states)]
    want = sum(r[0] for r in refs) / 3
    with torch.no_grad():
        y, finals = ens(u, states)
        y_none, none = ens(u, states, return_state=False)
        y_rest, _ = ens(u)
        steps, s = [], states
        for t in range(8):
            y_t, s = ens.step(u[:, t], s)
            steps.append(y_t)
    assert none is None
    np.testing.assert_allclose(_np(y), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(y_none), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(torch.stack(steps, 1)), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(y_rest), sum(_reference(m, _np(u))[0] for m in ms) / 3, rtol=1e-12, atol=1e-12)
    for k in range(3):  # member k's final states are its own loop's
        for got, got_step, ref in zip(finals[k], s[k], refs[k][1]):
            np.testing.assert_allclose(_np(got), ref, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(_np(got_step), ref, rtol=1e-12, atol=1e-12)
    rest = ens.initial_state(2)
    assert len(rest) == 3 and all(torch.equal(r, torch.zeros(2, 4, 2, dtype=torch.complex128)) for st in rest for r in st)
    u_past, y_past = torch.randn(2, 2, 2, dtype=torch.float64), torch.randn(2, 2, 3, dtype=torch.float64)
    for got, m in zip(ens.estimate_state(u_past, y_past), ms):
        for a, b in zip(got, m.estimate_state(u_past, y_past)):
            assert torch.equal(a, b)


def test_ensemble_analysis_covers_every_member():
    ms = [_randomised(seed=s, n_layers=k) for s, k in ((40, 1), (41, 2))]
    with torch.no_grad():  # member 1's second block the slowest of all
        ms[1].layers[1].log_A_real.fill_(math.log(1e-4))
    ens = WienerEnsemble(ms)
    assert len(ens.state_space()) == 3
    radius = max(float(np.abs(_np(layer.discrete()[0])).max()) for m in ms for layer in m.layers)
    assert ens.spectral_radius() == pytest.approx(radius, rel=1e-12) and ens.is_stable()
    with torch.no_grad():  # member 0 gets a pole at 1: the ensemble is not certified
        ms[0].layers[0].log_A_real.fill_(-1000.0)
        ms[0].layers[0].A_imag.zero_()
    assert ens.spectral_radius() == 1.0 and not ens.is_stable()


def test_constructor_defaults_are_the_documented_ones():
    m = DeepWiener(2, 1)
    assert m.arguments == {"n_inputs": 2, "n_outputs": 1, "d_model": 8, "n_layers": 4, "layer": "s4d",
                           "layer_options": {}, "activation": "elu", "dt": 1.0, "timescale": None,
                           "encoder_window": 0, "encoder_hidden": 64}
    assert m.d_model == 8 and len(m.layers) == 4 and len(m.skips) == 4 and m.layer_name == "s4d" and m.dt == 1.0
    assert isinstance(m.activation, torch.nn.ELU) and m.block_activations is None and m.output_range is None
    assert m.state_encoder is None and m.encoder_window == 0 and m.lti and m.u_mean.dtype == torch.float32
    assert DeepWiener(2, 1, encoder_window=1).state_encoder[0].out_features == 64  # encoder_hidden


def test_checks_of_the_constructor_and_of_the_inputs(monkeypatch):
    for name in ("n_inputs", "n_outputs", "d_model", "n_layers"):
        for bad in (0, 2.0, True):
            with pytest.raises(ValueError, match=name):
                DeepWiener(**{"n_inputs": 1, "n_outputs": 1, name: bad})
    for bad in ((2.0, 2.0), (0.0, 5.0), (-1.0, 5.0)):  # τ_min = 0 divided by zero in Δ_max = Ts/τ_min
        with pytest.raises(ValueError, match="0 < τ_min < τ_max"):
            DeepWiener(1, 1, timescale=bad)
    from ssmkit.layers import registry
    from ssmkit.layers.protocol import Capabilities
    from ssmkit.layers.s4d import S4D

    class NoStep(S4D):  # a realisation but no recurrent step
        capabilities = Capabilities(kernel=True, state_space=True, step=False)

    monkeypatch.setitem(registry._REGISTRY, "s4d_no_step", NoStep)
    with pytest.raises(ValueError, match="'s4d_no_step' has no step"):
        DeepWiener(1, 1, layer="s4d_no_step")
    acts = ["tanh", "elu"]
    m = _randomised(block_activations=acts)
    acts[0] = "relu"  # the caller's list changed afterwards: the model's arguments (a checkpoint's) are not
    assert m.arguments["block_activations"] == ("tanh", "elu")
    for bad, found in (([[0.5, 0.5]], "list"), (torch.zeros(2, 0, 2), r"\(2, 0, 2\)"), (torch.zeros(2, 3), r"\(2, 3\)")):
        with pytest.raises(ValueError, match=rf"u must be \(B, L, 2\) for n_inputs=2; got {found}"):
            m(bad)
    for bad, found in ((torch.zeros(2, 3, 2), r"\(2, 3, 2\)"), (torch.zeros(0, 2), r"\(0, 2\)"), ([0.5, 0.5], "list")):
        with pytest.raises(ValueError, match=rf"u must be \(B, 2\) for n_inputs=2; got {found}"):
            m.step(bad, m.initial_state(2))


def test_drop_encoder_leaves_a_model_that_simulates_from_rest():
    m = _randomised(seed=13, encoder_window=3)
    u = torch.randn(2, 6, 2, dtype=torch.float64)
    with torch.no_grad():
        y, _ = m(u)
    m.drop_encoder()
    assert m.state_encoder is None and m.encoder_window == 0 and m.arguments["encoder_window"] == 0
    with pytest.raises(ValueError, match="no state encoder"):
        m.estimate_state(u[:, :3], torch.zeros(2, 3, 3, dtype=torch.float64))
    back = DeepWiener.from_checkpoint(m.checkpoint())  # loads strictly: no encoder weights expected
    assert back.state_encoder is None and back.encoder_window == 0
    with torch.no_grad():
        assert torch.equal(back(u)[0], y) and torch.equal(m(u)[0], y)


def test_ensemble_construction_checkpoint_and_time_varying_members():
    ms = [_randomised(seed=s) for s in (50, 51)]
    ens = WienerEnsemble(tuple(ms))  # a tuple of members, as a list
    assert len(ens) == 2 and all(a is b for a, b in zip(ens.members, ms))
    # the message names the member that differs and the value it has (the third here, not the second)
    with pytest.raises(ValueError, match=r"must share dt: members\[0\] has 1\.0, members\[2\] has 0\.5"):
        WienerEnsemble([ms[0], ms[1], _randomised(seed=53, dt=0.5)])
    with pytest.raises(ValueError, match=r"members\[0\] is torch\.float64, members\[2\] is torch\.float32"):
        WienerEnsemble([ms[0], ms[1], _randomised(seed=53, dtype=torch.float32)])
    for key in ("wiener_ensemble", "deep_wiener", "state_dict"):
        with pytest.raises(ValueError, match=f"metadata must not set '{key}'"):
            ens.checkpoint(**{key: 1})
    ck = ens.checkpoint(benchmark="x")
    assert ck["benchmark"] == "x" and ck["wiener_ensemble"] == [m.arguments for m in ms]
    for bad in ({"wiener_ensemble": [], "state_dict": {}}, {"wiener_ensemble": ms[0].arguments, "state_dict": {}},
                {"wiener_ensemble": [ms[0].arguments]}, [ck]):
        with pytest.raises(ValueError, match="a WienerEnsemble checkpoint is a dict with 'wiener_ensemble'"):
            WienerEnsemble.from_checkpoint(bad)
    back = WienerEnsemble.from_checkpoint(ck)
    u = torch.randn(1, 5, 2, dtype=torch.float64)
    with torch.no_grad():
        assert back.members[0].u_mean.dtype == torch.float64 and torch.equal(back(u)[0], ens(u)[0])
    # a member with time-varying blocks has no realisation (radius nan): the ensemble's radius is the LTI members'
    torch.manual_seed(52)
    tv = DeepWiener(2, 3, d_model=4, n_layers=1, layer="rglru", time_varying=True, dtype=torch.float64)
    mixed = WienerEnsemble([tv, ms[1]])
    assert mixed.spectral_radius() == ms[1].spectral_radius() and len(mixed.state_space()) == 2
    assert not mixed.is_stable() and math.isnan(WienerEnsemble([tv]).spectral_radius())


def test_output_range_is_stored_as_floats_and_an_empty_range_is_refused():
    for bad in ((1.0, 1.0), (math.nan, 1.0), (None, math.nan), [2, "3"]):  # lo = hi leaves no range to measure in
        with pytest.raises(ValueError, match="output_range must be None or"):
            DeepWiener(1, 1, output_range=bad)
    for given, stored in (([0, 1], (0.0, 1.0)), ((None, 3), (None, 3.0)), ((-2, None), (-2.0, None))):
        m = DeepWiener(1, 1, output_range=given)
        assert m.output_range == stored and m.arguments["output_range"] == stored
        assert all(type(v) is float for v in m.output_range if v is not None)


def test_estimate_state_fills_a_structured_state_part_after_part():
    # a time-varying Mamba block's state is MambaState(conv (E, K-1), ssm (E, N)): its parts take consecutive slices
    # of the encoder's output, the first block's before the second's
    torch.manual_seed(60)
    m = DeepWiener(2, 3, d_model=4, n_layers=2, layer="mamba", layer_options={"d_state": 4}, time_varying=True,
                   encoder_window=2, encoder_hidden=6, dtype=torch.float64)
    last = m.state_encoder[-1]
    with torch.no_grad():
        last.weight.normal_()
        last.bias.normal_()
    u_past = torch.randn(3, 2, 2, dtype=torch.float64)
    y_past = torch.randn(3, 2, 3, dtype=torch.float64)
    f = torch.cat([u_past, y_past], -1).reshape(3, -1).numpy()  # unit normalisation
    v = np.tanh(f @ _np(m.state_encoder[0].weight).T + _np(m.state_encoder[0].bias)) @ _np(last.weight).T + _np(last.bias)
    states = m.estimate_state(u_past, y_past)
    start = 0
    for s in states:
        assert type(s).__name__ == "MambaState"
        for part in s:
            n = math.prod(part.shape[1:])
            np.testing.assert_allclose(_np(part), v[:, start:start + n].reshape(part.shape), rtol=1e-12, atol=1e-12)
            start += n
    assert start == v.shape[1] == 2 * (8 * 3 + 8 * 4)


def test_censored_error_with_a_one_sided_range():
    y = torch.tensor([10.0, 10.0, 5.0, 5.0, 0.0, 0.0], dtype=torch.float64)[:, None]
    y_hat = torch.tensor([11.0, 9.0, 11.0, -1.0, -2.0, 1.0], dtype=torch.float64)[:, None]
    upper = DeepWiener(1, 1, output_range=(None, 10.0), dtype=torch.float64)
    lower = DeepWiener(1, 1, output_range=(0.0, None), dtype=torch.float64)
    # only the set limit censors: at 10 (upper) min(ŷ − 10, 0), at 0 (lower) max(ŷ − 0, 0); elsewhere ŷ − y
    assert upper.censored_error(y_hat, y)[:, 0].tolist() == [0.0, -1.0, 6.0, -6.0, -2.0, 1.0]
    assert lower.censored_error(y_hat, y)[:, 0].tolist() == [1.0, -1.0, 6.0, -6.0, 0.0, 1.0]
    assert upper.saturate(y_hat)[:, 0].tolist() == [10.0, 9.0, 10.0, -1.0, -2.0, 1.0]
    assert lower.saturate(y_hat)[:, 0].tolist() == [11.0, 9.0, 11.0, 0.0, 0.0, 1.0]


def test_estimate_state_names_a_window_that_is_not_a_real_tensor():
    # a list raised AttributeError ('list' object has no attribute 'dim' / 'shape'), and a complex window was cast to
    # real with a ComplexWarning, its imaginary part dropped, where forward refuses a complex u by name
    m = DeepWiener(1, 1, d_model=2, n_layers=1, encoder_window=2, dtype=torch.float64)
    u, y = torch.zeros(1, 2, 1, dtype=torch.float64), torch.zeros(1, 2, 1, dtype=torch.float64)
    for u_past, y_past, name, found in (([[[0.0], [0.0]]], y, "u_past", "list"), (u, [[[0.0], [0.0]]], "y_past", "list"),
                                        (u.to(torch.complex128), y, "u_past", "torch.complex128"),
                                        (u, y.to(torch.complex128), "y_past", "torch.complex128")):
        with pytest.raises(ValueError, match=rf"{name} must be a real tensor; got {found}"):
            m.estimate_state(u_past, y_past)
