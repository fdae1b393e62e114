"""A whole model as x[k+1] = f(x[k], u[k]), y[k] = h(x[k], u[k]) (``ssmkit.analysis.NonlinearSystem``) against
independent references: long simulations by the model's own forward (its scan, not its step) for equilibria, a
closed form of a one-block deep Wiener model's static characteristic through the layer's exported DC gain, central
differences of simulations for the linearisation, the blocks' exported poles for a linear model, and python-control's
own simulation, numerical linearisation and equilibrium search of the exported ``NonlinearIOSystem``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ssmkit.analysis.nonlinear as nonlinear
from ssmkit.analysis import NonlinearSystem
from ssmkit.models import SequenceModel
from ssmkit.sysid import DeepWiener
from tests.conftest import variants

F64 = torch.float64


def _wiener(layer="s4d", n_inputs=2, n_outputs=1, n_layers=3, activation="tanh", seed=0, **extra):
    """A float64 deep Wiener model with fast poles (τ 1-4 s at Ts = 1 s, LRU's |λ| <= 0.9: 4 000 samples settle every
    layer's to 1e-14) and normalisation that is not the identity."""
    torch.manual_seed(seed)
    fast = dict(layer_options={"r_min": 0.5, "r_max": 0.9}) if layer == "lru" else dict(timescale=(1.0, 4.0))
    model = DeepWiener(n_inputs, n_outputs, d_model=4, n_layers=n_layers, layer=layer, activation=activation,
                       dtype=F64, **fast, **extra)
    with torch.no_grad():
        model.u_mean.copy_(torch.linspace(-0.3, 0.2, n_inputs))
        model.u_std.copy_(torch.linspace(0.5, 2.0, n_inputs))
        model.y_mean.fill_(0.7)
        model.y_std.fill_(1.5)
        for skip in model.skips:
            skip.weight.normal_(0, 0.3)
    return model


def _simulate(model, u, state=None):
    y, final = model(torch.tensor(np.asarray(u), dtype=F64), state)
    return y.detach().numpy(), final


def _check_linearisation(model, sys, lin, x_star, u0, steps, seed, rel):
    """The linearised system simulated from δx under δu against the directional derivative of the model's forward
    (its convolution or scan path) from x* + ε δx under u0 + ε δu, by central differences with one Richardson step
    (error O(ε⁴); at ε = 1e-4 the rounding of the forward's FFT convolutions, ~1e-13 / ε, stays below ``rel``)."""
    rng = np.random.default_rng(seed)
    du, dx = rng.standard_normal((1, steps, sys.n_inputs)), rng.standard_normal(sys.n_states)

    def central(eps):
        plus, _ = _simulate(model, u0 + eps * du, sys.model_state(x_star + eps * dx))
        minus, _ = _simulate(model, u0 - eps * du, sys.model_state(x_star - eps * dx))
        return (plus - minus) / (2 * eps)

    want = (4 * central(5e-5) - central(1e-4)) / 3
    got = np.asarray(lin.simulate(du, x0=dx[None, None])).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=rel * np.abs(want).max())


@pytest.mark.parametrize("layer", ["s4d", "lru", "s5", "s4"])
def test_the_equilibrium_is_where_a_long_simulation_settles(layer):
    model = _wiener(layer)
    sys = NonlinearSystem(model)
    u0 = np.array([0.4, -0.8])
    x_star, y_star = sys.equilibrium(u0)
    assert x_star.shape == (1, sys.n_states) and y_star.shape == (1, 1)
    y, final = _simulate(model, np.broadcast_to(u0, (1, 4000, 2)))  # from rest, by the layers' forward
    np.testing.assert_allclose(sys.state_vector(final), x_star, rtol=0, atol=1e-11)
    np.testing.assert_allclose(y[0, -1], y_star[0], rtol=0, atol=1e-11)
    np.testing.assert_allclose(sys.update(x_star, u0), x_star, rtol=0, atol=1e-13)  # a fixed point of f


def test_the_static_characteristic_of_one_block_in_closed_form():
    """One block: y* = σ_y (W (tanh(G(1) v) + F v) + b) + μ_y with v = E (u - μ_u)/σ_u and G(1) the layer's DC gain
    from its exported realisation (per channel)."""
    model = _wiener("s4d", n_inputs=1, n_outputs=2, n_layers=1)
    sys = NonlinearSystem(model)
    u = np.linspace(-3.0, 3.0, 7)
    got = sys.static_characteristic(u)
    gain = model.layers[0].state_space().dcgain()[:, 0, 0].real  # (H,)
    E, F, W = (t.detach().numpy() for t in (model.encoder.weight, model.skips[0].weight, model.decoder.weight))
    v = (u[:, None] - model.u_mean.numpy()) / model.u_std.numpy() @ E.T + model.encoder.bias.detach().numpy()
    x = np.tanh(v * gain) + v @ F.T
    want = 1.5 * (x @ W.T + model.decoder.bias.detach().numpy()) + 0.7
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer", ["s4d", "s4", "lru"])
def test_the_linearisation_equals_central_differences_of_simulations(layer):
    """The linearisation at an equilibrium against Richardson central differences of the model's forward over 25
    samples (`_check_linearisation`)."""
    model = _wiener(layer)
    sys = NonlinearSystem(model)
    u0 = np.array([0.4, -0.8])
    x_star, _ = sys.equilibrium(u0)
    lin = sys.linearize(u0)
    assert lin.nsystems == 1 and lin.dt == 1.0 and not lin.is_complex
    _check_linearisation(model, sys, lin, x_star, u0, steps=25, seed=1, rel=1e-7)


def test_a_linear_model_linearises_to_its_blocks_poles_at_every_point():
    model = _wiener("s4d", activation=None)
    sys = NonlinearSystem(model)
    lin = sys.linearize(np.array([[0.0, 0.0], [2.0, -1.0]]), x0=np.random.default_rng(0).standard_normal(sys.n_states))
    assert lin.nsystems == 2
    np.testing.assert_allclose(lin.A[0], lin.A[1], rtol=0, atol=1e-14)
    np.testing.assert_allclose(lin.D[0], lin.D[1], rtol=0, atol=1e-14)
    blocks = np.concatenate([ss.to_real().poles().ravel() for ss in model.state_space()])
    got = np.linalg.eigvals(lin.A[0])
    key = lambda z: np.lexsort((np.round(z.imag, 9), np.round(z.real, 9)))  # noqa: E731
    np.testing.assert_allclose(got[key(got)], blocks[key(blocks)], rtol=0, atol=1e-11)


def test_many_points_at_once_equal_one_at_a_time_and_in_small_batches(monkeypatch):
    model = _wiener("s4d")
    sys = NonlinearSystem(model)
    u = np.array([[0.1, 0.2], [-1.0, 0.5], [2.0, 2.0]])
    x_all, y_all = sys.equilibrium(u)
    lin_all = sys.linearize(u)
    for k in range(3):
        x_k, y_k = sys.equilibrium(u[k])
        np.testing.assert_allclose(x_all[k], x_k[0], rtol=0, atol=1e-13)
        np.testing.assert_allclose(y_all[k], y_k[0], rtol=0, atol=1e-13)
    monkeypatch.setattr(nonlinear, "_JACOBIAN_ELEMENTS", 1)  # one point per backward pass
    lin_small = sys.linearize(u, x0=x_all)
    for name in "ABCD":
        np.testing.assert_allclose(getattr(lin_small, name), getattr(lin_all, name), rtol=0, atol=1e-13)


def test_the_model_is_left_as_it_was_and_states_travel_both_ways():
    torch.manual_seed(0)
    model = DeepWiener(1, 1, d_model=4, n_layers=2, layer="s4d")  # float32, trained-model like
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sys = NonlinearSystem(model)
    sys.equilibrium(0.5)
    sys.linearize(0.5)
    assert all(torch.equal(before[k], v) and before[k].dtype == v.dtype for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters()) and model.training
    _, state = model(torch.randn(3, 20, 1))
    x = sys.state_vector(state)
    assert x.shape == (3, sys.n_states) and x.dtype == np.float64
    back = sys.model_state(x)
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(back, state))


def test_a_sequence_model_with_real_inputs_and_a_time_varying_block():
    torch.manual_seed(0)
    model = SequenceModel(2, 8, 2, "mamba", layer_options={"dt_min": 0.05, "dt_max": 0.2}, d_output=1,
                          head="regress", pool=None, dtype=F64).eval()  # Δ >= 0.05: 4 000 samples settle it
    sys = NonlinearSystem(model)
    u0 = np.array([0.3, -0.1])
    x_star, y_star = sys.equilibrium(u0)
    y, final = _simulate(model, np.broadcast_to(u0, (1, 4000, 2)))
    np.testing.assert_allclose(sys.state_vector(final), x_star, rtol=0, atol=1e-10)
    np.testing.assert_allclose(y[0, -1], y_star[0], rtol=0, atol=1e-10)


class _Scalar(nn.Module):
    """x' = a x + u, y = x + u: the equilibrium x* = u / (1 - a) exists for every a != 1."""

    n_inputs = 1

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def initial_state(self, batch_size):
        return torch.zeros(batch_size, 1)

    def step(self, u_t, state):
        return state + u_t, self.a * state + u_t


def test_equilibria_of_a_scalar_system_and_what_is_refused():
    sys = NonlinearSystem(_Scalar(2.0))  # unstable: the equilibrium exists (Newton needs no stability)
    x, y = sys.equilibrium(3.0)
    assert x[0, 0] == pytest.approx(-3.0, abs=1e-14) and y[0, 0] == pytest.approx(0.0, abs=1e-14)
    assert sys.linearize(3.0).poles()[0, 0] == pytest.approx(2.0, abs=1e-14)
    with pytest.raises(ValueError, match="eigenvalue 1"):
        NonlinearSystem(_Scalar(1.0)).equilibrium(1.0)  # an integrator
    with pytest.raises(ValueError, match=r"u0 must be \(n_inputs,\) = \(1,\)"):
        sys.equilibrium(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="u0 must be finite"):
        sys.equilibrium(float("nan"))
    with pytest.raises(ValueError, match="tol"):
        sys.equilibrium(1.0, tol=0)
    with pytest.raises(ValueError, match="max_iter"):
        sys.equilibrium(1.0, max_iter=True)
    with pytest.raises(ValueError, match="same number of points"):
        sys.update(np.zeros((2, 1)), np.zeros((3, 1)))


class _Stuck(_Scalar):
    def step(self, u_t, state):  # x' = x + 1 + x² + 0·u: f(x) - x >= 1 everywhere, no equilibrium
        return state, state + 1 + state ** 2 + 0 * u_t


def test_no_equilibrium_is_reported_by_name():
    with pytest.raises(ValueError, match="no convergence in 5 Newton iterations at point 0"):
        NonlinearSystem(_Stuck(0.0)).equilibrium(0.0, x0=0.5, max_iter=5)


@pytest.mark.parametrize("layers", [["attention"], ["mega"], ["hyena"]])
def test_a_growing_state_is_refused_by_name(layers):
    model = SequenceModel(d_input=1, d_output=1, d_model=8, n_layers=1, layer=layers[0])
    with pytest.raises(ValueError, match="fixed size"):
        NonlinearSystem(model)


def test_token_models_and_other_modules_are_refused():
    with pytest.raises(ValueError, match="token ids"):
        NonlinearSystem(SequenceModel(1, 8, 1, "s4d", vocab_size=10, d_output=3))
    with pytest.raises(ValueError, match="step and initial_state"):
        NonlinearSystem(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="dt"):
        NonlinearSystem(_Scalar(0.5), dt=0.0)


control = pytest.importorskip("control")


def test_python_control_simulates_linearises_and_finds_the_equilibrium_as_ssmkit():
    model = _wiener("lru", n_inputs=1, n_outputs=2, n_layers=2, dt=0.5)
    sys = NonlinearSystem(model)
    plant = sys.to_control(name="plant")
    assert (plant.ninputs, plant.noutputs, plant.nstates, plant.dt, plant.name) == (1, 2, sys.n_states, 0.5, "plant")
    T = 0.5 * np.arange(40)
    U = np.sin(0.7 * T)[None]
    x0 = np.random.default_rng(0).standard_normal(sys.n_states) * 0.3
    response = control.input_output_response(plant, T, U, X0=x0)  # python-control's own loop over f and h
    y, _ = _simulate(model, U.T[None], sys.model_state(x0))
    np.testing.assert_allclose(response.outputs, y[0].T, rtol=0, atol=1e-12)
    x_star, _ = sys.equilibrium(0.6)
    numeric = control.linearize(plant, x_star[0], [0.6])  # finite differences
    exact = sys.linearize(0.6)
    for name in "ABCD":
        np.testing.assert_allclose(getattr(numeric, name), getattr(exact, name)[0], rtol=0, atol=1e-5)
    assert numeric.dt == 0.5
    found, u_found = control.find_eqpt(plant, np.zeros(sys.n_states), [0.6])  # scipy's root finder
    np.testing.assert_allclose(found, x_star[0], rtol=0, atol=1e-9)


def _every_layer():
    from ssmkit.layers import available

    return available()


@pytest.mark.parametrize("layer", _every_layer())
def test_every_registered_layer_in_a_model_has_equilibria_and_a_linearisation(layer):
    """For every layer, in a real-input SequenceModel: a state that grows is refused by name; otherwise the equilibrium
    is a fixed point of the model's forward (its convolution or scan path, not the step: y* at every sample from x*
    under u0, and x* again at the end), and the linearisation equals Richardson central differences of that forward."""
    torch.manual_seed(0)
    model = SequenceModel(2, 8, 2, layer, layer_options=variants(layer)[0], d_output=2, head="regress", pool=None,
                          dtype=F64).eval()  # the layers' small test options (SGConv's default window: 2 × 8 × 1024)
    try:
        sys = NonlinearSystem(model)
    except ValueError as err:
        assert layer in ("attention", "mega", "hyena") and "fixed size" in str(err)
        return
    assert layer not in ("attention", "mega", "hyena")
    u0 = np.array([0.3, -0.5])
    x_star, y_star = sys.equilibrium(u0)
    y, final = _simulate(model, np.broadcast_to(u0, (1, 6, 2)), sys.model_state(x_star))
    np.testing.assert_allclose(y[0], np.broadcast_to(y_star, (6, 2)), rtol=0, atol=1e-10 * (1 + np.abs(y_star).max()))
    np.testing.assert_allclose(sys.state_vector(final), x_star, rtol=0, atol=1e-10 * (1 + np.abs(x_star).max()))
    _check_linearisation(model, sys, sys.linearize(u0), x_star, u0, steps=8, seed=0, rel=1e-6)


def test_a_closed_loop_in_python_control_equals_the_loop_by_hand_and_settles_on_the_characteristic():
    """The model wired by name to an integral controller (strictly proper: no algebraic loop through the model's
    feedthrough) with ``control.interconnect``; python-control's simulation equals the same loop run by hand with
    ``model.step``, and the loop settles where the static characteristic gives the reference."""
    model = _wiener("s4d", n_inputs=1, n_outputs=1, n_layers=2, activation="elu", dt=0.5)  # y* rises with u
    plant = NonlinearSystem(model)
    r = plant.static_characteristic(0.4)[0, 0]  # a reachable reference; the loop starts near it (z = 0.3)
    local = plant.linearize(0.4)  # feedthrough D = -1.2 against a DC gain of +1.1: a slow integral gain suits it
    ki = 0.02 / local.dcgain()[0, 0, 0]
    P = plant.to_control(name="plant", inputs=["u"], outputs=["y"])
    C = control.nlsys(lambda t, z, e, p: z + ki * e, lambda t, z, e, p: z, inputs=["e"], outputs=["u"], states=1,
                      dt=0.5, name="integral")
    S = control.summing_junction(inputs=["r", "-y"], output="e", dt=0.5)
    loop = control.interconnect([P, C, S], inplist=["r"], outlist=["y", "u"], dt=0.5)
    T = 0.5 * np.arange(800)
    response = control.input_output_response(loop, T, np.full(T.shape, r), X0=np.r_[np.zeros(plant.n_states), 0.3])
    state, z, ys, us = model.initial_state(1), 0.3, [], []
    with torch.no_grad():
        for _ in T:
            y, state = model.step(torch.tensor([[z]], dtype=F64), state)
            ys.append(float(y))
            us.append(z)
            z += ki * (r - float(y))
    np.testing.assert_allclose(response.outputs, [ys, us], rtol=0, atol=1e-12)
    assert abs(ys[-1] - r) < 1e-9 and us[-1] == pytest.approx(0.4, abs=1e-8)  # back to the input that gave r
    with pytest.raises(ValueError, match="inputs must be None or 1 distinct non-empty names"):
        plant.to_control(inputs=["a", "b"])


def test_an_ensemble_is_solved_member_by_member_as_the_whole_would_be():
    """A WienerEnsemble's equilibria and linearisation, solved per member, equal those of the whole ensemble taken
    as one system (the generic path: one Newton iteration over every member's state, one dense Jacobian)."""
    from ssmkit.sysid import WienerEnsemble

    # 16 states per channel (the default 64 made the whole's dense Jacobian 2 305 rows: 14 s, with nothing more tested)
    small = {"layer_options": {"d_state": 16}}
    ensemble = WienerEnsemble([_wiener("s4d", seed=s, **small) for s in range(3)])
    split = NonlinearSystem(ensemble)
    whole = NonlinearSystem(ensemble)
    whole._members = None  # the generic path
    assert [m.n_states for m in split.members] == [split.n_states // 3] * 3
    u = np.array([[0.4, -0.8], [1.5, 0.3]])
    x_split, y_split = split.equilibrium(u)
    x_whole, y_whole = whole.equilibrium(u)
    np.testing.assert_allclose(x_split, x_whole, rtol=0, atol=1e-12)
    np.testing.assert_allclose(y_split, y_whole, rtol=0, atol=1e-12)
    a, b = split.linearize(u, x_split), whole.linearize(u, x_split)
    for name in "ABCD":
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=1e-13)
    y, final = _simulate(ensemble, np.broadcast_to(u[0], (1, 4000, 2)))  # and where the ensemble settles
    np.testing.assert_allclose(split.state_vector(final), x_split[:1], rtol=0, atol=1e-11)
    np.testing.assert_allclose(y[0, -1], y_split[0], rtol=0, atol=1e-11)
    assert NonlinearSystem(_wiener("s4d")).members is None


@pytest.mark.parametrize("ensemble", [False, True])
def test_an_operating_point_is_the_equilibrium_and_its_linearisation_for_one_jacobian_pass_less(ensemble, monkeypatch):
    """``operating_point`` returns exactly ``equilibrium`` then ``linearize`` at x* (Newton's last Jacobian is the
    linearisation), and computes one Jacobian fewer; ``linearize(u0)`` without x0 takes it too."""
    from ssmkit.sysid import WienerEnsemble

    model = WienerEnsemble([_wiener("s4d", seed=0), _wiener("lru", seed=1)]) if ensemble else _wiener("s4", seed=3)
    sys = NonlinearSystem(model)
    u = np.array([[0.4, -0.8], [1.5, 0.3], [-2.0, 1.0]])
    passes = []
    target = sys.members[0] if ensemble else sys  # an ensemble's passes are its members'
    original = type(target)._values_and_jacobians
    monkeypatch.setattr(type(target), "_values_and_jacobians",
                        lambda self, x, uu: passes.append(self is target) or original(self, x, uu))
    x_eq, y_eq = sys.equilibrium(u)
    lin = sys.linearize(u, x_eq)
    separate = passes.count(True)
    passes.clear()
    x_op, y_op, lin_op = sys.operating_point(u)
    assert passes.count(True) == separate - 1
    assert np.array_equal(x_op, x_eq) and np.array_equal(y_op, y_eq)
    lin_none = sys.linearize(u)
    for name in "ABCD":
        assert np.array_equal(getattr(lin_op, name), getattr(lin, name))
        assert np.array_equal(getattr(lin_none, name), getattr(lin, name))
    assert lin_op.dt == lin.dt and lin_op.A.shape == (3, sys.n_states, sys.n_states)
    with pytest.raises(ValueError, match="tol must be a number in"):
        sys.operating_point(u, tol=0)
