"""``ssmkit.analysis.NonlinearSystem`` on systems whose equilibria and Jacobians are written down by hand (probe 25):
a module with a nested state (a complex tensor and a list of a real one), two inputs and two outputs, its Jacobian
in closed form and its equilibrium from the closed form of the complex part and scipy's root finder for the real
part; Newton's stopping rule and iteration count as the docstring defines them; the ensemble's member-by-member path
against scipy and float64 central differences of its own update and output."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import nn

import ssmkit.analysis.nonlinear as nonlinear
from ssmkit.analysis import NonlinearSystem

F64 = torch.float64
LAM, BETA = 0.6 + 0.3j, 1.0 - 0.5j  # z' = λ z + β u0
GAMMA, DELTA = np.array([0.7, -1.2]), np.array([0.4, 0.9])  # w_j' = tanh(w_j) / 2 + γ_j Re z + δ_j u1


class _Hand(nn.Module):
    """x = (z complex (B, 1), [w real (B, 2)]) -> x = [Re z, Im z, w0, w1] (n = 4), u (B, 2), y (B, 2):

        z' = λ z + β u0,   w' = tanh(w) / 2 + γ Re z + δ u1,   y = [w0 w1 + u0, Im z + sin u1]
    """

    n_inputs = 2

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))  # the copy's dtype follows this one's
        self.register_buffer("gamma", torch.tensor(GAMMA))
        self.register_buffer("delta", torch.tensor(DELTA))

    def initial_state(self, batch_size):
        real = self.scale.dtype
        cplx = torch.complex128 if real == F64 else torch.complex64
        return (torch.zeros(batch_size, 1, dtype=cplx), [torch.zeros(batch_size, 2, dtype=real)])

    def step(self, u_t, state):
        z, (w,) = state
        z_next = LAM * z + BETA * u_t[:, :1]
        w_next = self.scale * torch.tanh(w) + self.gamma * z.real + self.delta * u_t[:, 1:]
        y = torch.stack([w[:, 0] * w[:, 1] + u_t[:, 0], z[:, 0].imag + torch.sin(u_t[:, 1])], 1)
        return y, (z_next, [w_next])


def _hand_jacobian(x, u):
    """[∂f/∂x ∂f/∂u; ∂h/∂x ∂h/∂u] (6, 6) of `_Hand` at x (4,), u (2,), by hand."""
    J = np.zeros((6, 6))
    J[0, :2] = [LAM.real, -LAM.imag]  # Re(λ z) = Re λ Re z - Im λ Im z
    J[1, :2] = [LAM.imag, LAM.real]
    J[0, 4], J[1, 4] = BETA.real, BETA.imag
    for j in range(2):
        J[2 + j, 0] = GAMMA[j]
        J[2 + j, 2 + j] = 0.5 / np.cosh(x[2 + j]) ** 2
        J[2 + j, 5] = DELTA[j]
    J[4, 2:4] = [x[3], x[2]]
    J[4, 4] = 1.0
    J[5, 1] = 1.0
    J[5, 5] = np.cos(u[1])
    return J


def _hand_equilibrium(u):
    """x* (4,) and y* (2,) of `_Hand` under u: z* = β u0 / (1 - λ) in closed form, each w_j* the root of
    w = tanh(w) / 2 + c_j (slope <= 1/2: one root) by scipy."""
    z = BETA * u[0] / (1 - LAM)
    w = np.array([scipy.optimize.brentq(lambda v, c=c: 0.5 * np.tanh(v) + c - v, -50, 50, xtol=1e-15)
                  for c in GAMMA * z.real + DELTA * u[1]])
    return np.array([z.real, z.imag, *w]), np.array([w[0] * w[1] + u[0], z.imag + np.sin(u[1])])


def test_the_equilibria_and_jacobians_of_a_system_written_by_hand():
    torch.manual_seed(0)
    sys = NonlinearSystem(_Hand().double())
    assert (sys.n_states, sys.n_inputs, sys.n_outputs, sys.dt) == (4, 2, 2, 1.0)
    u = np.array([[0.5, -1.0], [-2.0, 0.3], [1.5, 2.0]])
    x_star, y_star = sys.equilibrium(u, tol=1e-14)  # Newton converges quadratically: to rounding
    for k in range(3):
        x_want, y_want = _hand_equilibrium(u[k])
        np.testing.assert_allclose(x_star[k], x_want, rtol=0, atol=1e-12)
        np.testing.assert_allclose(y_star[k], y_want, rtol=0, atol=1e-12)
    x0 = np.array([[0.3, -0.2, 1.1, -0.7], [2.0, 1.0, -0.4, 0.9], [-1.0, 0.5, 0.0, 3.0]])  # off equilibrium
    for lin, x, atol in ((sys.linearize(u), x_star, 1e-10), (sys.linearize(u, x0), x0, 1e-13)):  # tol 1e-10
        assert lin.nsystems == 3 and lin.dt == 1.0
        for k in range(3):
            J = _hand_jacobian(x[k], u[k])
            for name, rows, cols in (("A", slice(0, 4), slice(0, 4)), ("B", slice(0, 4), slice(4, 6)),
                                     ("C", slice(4, 6), slice(0, 4)), ("D", slice(4, 6), slice(4, 6))):
                np.testing.assert_allclose(getattr(lin, name)[k], J[rows, cols], rtol=0, atol=atol, err_msg=name)
    # one state for several inputs and several states for one input
    x_one, y_one = sys.equilibrium(u[1], x0=x0, tol=1e-14)  # three starts, one equilibrium
    np.testing.assert_allclose(x_one, np.broadcast_to(x_star[1], (3, 4)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(y_one, np.broadcast_to(y_star[1], (3, 2)), rtol=0, atol=1e-12)
    lin = sys.linearize(u[1], x0)
    for k in range(3):
        np.testing.assert_allclose(lin.A[k], _hand_jacobian(x0[k], u[1])[:4, :4], rtol=0, atol=1e-13)
    lin = sys.linearize(u, x0[2])
    for k in range(3):
        np.testing.assert_allclose(lin.D[k], _hand_jacobian(x0[2], u[k])[4:, 4:], rtol=0, atol=1e-13)


def test_update_and_output_of_a_nested_complex_state_by_hand():
    sys = NonlinearSystem(_Hand().double())
    x = np.array([[0.3, -0.2, 1.1, -0.7], [2.0, 1.0, -0.4, 0.9]])
    u = np.array([[0.5, -1.0], [-2.0, 0.3]])
    z = x[:, 0] + 1j * x[:, 1]
    z_next = LAM * z + BETA * u[:, 0]
    w_next = 0.5 * np.tanh(x[:, 2:]) + GAMMA * z.real[:, None] + DELTA * u[:, 1:]
    np.testing.assert_allclose(sys.update(x, u), np.c_[z_next.real, z_next.imag, w_next], rtol=0, atol=1e-15)
    np.testing.assert_allclose(sys.output(x, u), np.c_[x[:, 2] * x[:, 3] + u[:, 0], x[:, 1] + np.sin(u[:, 1])],
                               rtol=0, atol=1e-15)
    # one point's state with two inputs broadcasts
    np.testing.assert_allclose(sys.update(x[0], u)[1, 2:], 0.5 * np.tanh(x[0, 2:]) + GAMMA * 0.3 + DELTA * 0.3,
                               rtol=0, atol=1e-15)
    state = sys.model_state(x)  # the model's own layout and dtypes, and back
    assert isinstance(state, tuple) and isinstance(state[1], list) and state[0].dtype == torch.complex128
    np.testing.assert_array_equal(state[0][:, 0].numpy(), z)
    np.testing.assert_array_equal(state[1][0].numpy(), x[:, 2:])
    np.testing.assert_array_equal(sys.state_vector(state), x)
    single = NonlinearSystem(_Hand())  # float32 (complex64) states out for a float32 model
    assert [t.dtype for t in (single.model_state(x[0])[0], single.model_state(x[0])[1][0])] == \
        [torch.complex64, torch.float32]
    with pytest.raises(ValueError, match="state must be shaped as the model's initial_state"):
        sys.state_vector((state[0], [state[1][0][:1]]))  # batch 2 and batch 1


class _Affine(nn.Module):
    """x' = a x + u, y = x (one state): Newton's first step lands on x* = u / (1 - a)."""

    n_inputs = 1

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=F64))

    def initial_state(self, batch_size):
        return torch.zeros(batch_size, 1, dtype=F64)

    def step(self, u_t, state):
        return state.clone(), self.a * state + u_t


def test_newton_stops_where_the_docstring_says():
    """Convergence when max |f(x, u0) - x| <= tol · (1 + max |x|): for x' = 0·x + u at u = 0 the residual at x0 is
    |x0|, so x0 = 0.8 (0.8 <= 0.9) and x0 = 1 (1 <= 1, the bound itself, exact in binary) are returned as they are,
    and x0 = 1.5 (1.5 > 1.25) is not. An affine system needs one Newton step, so max_iter = 1 is enough."""
    sys = NonlinearSystem(_Affine(0.0))
    for x0 in (0.8, 1.0):
        x, y = sys.equilibrium(0.0, x0=x0, tol=0.5)
        assert x[0, 0] == x0 and y[0, 0] == x0
    x, _ = sys.equilibrium(0.0, x0=1.5, tol=0.5)
    assert x[0, 0] == 0.0
    x, _ = sys.equilibrium(0.0, x0=1.5e-10)  # the default tol = 1e-10: 1.5e-10 > 1e-10 (1 + 1.5e-10)
    assert x[0, 0] == 0.0
    x, _ = sys.equilibrium([[0.0], [0.0]], x0=[[0.8], [1.5]], tol=0.5)  # a point that is done stays where it is
    np.testing.assert_array_equal(x[:, 0], [0.8, 0.0])
    x, y = NonlinearSystem(_Affine(0.5)).equilibrium([[3.0], [-1.0]], max_iter=1)  # x* = u / (1 - a)
    np.testing.assert_array_equal(x[:, 0], [6.0, -2.0])
    np.testing.assert_array_equal(y[:, 0], [6.0, -2.0])
    reset = NonlinearSystem(_Custom(lambda B: torch.zeros(B, 2, dtype=F64), n_inputs=2, reset=True))  # x' = u
    x, _ = reset.equilibrium([0.0, 0.0], x0=[1.0, 0.0], tol=0.5)  # max |x| = 1 <= 0.5 (1 + max |x|): done
    np.testing.assert_array_equal(x, [[1.0, 0.0]])
    for bad in (1, 1.0, -0.1, True, "1e-9"):
        with pytest.raises(ValueError, match=r"tol must be a number in \(0, 1\)"):
            sys.equilibrium(0.0, tol=bad)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="max_iter must be an int >= 1"):
            sys.equilibrium(0.0, max_iter=bad)


class _Arctan(nn.Module):
    """x' = x - arctan(x - u), y = x, elementwise over n = m states: the one equilibrium is x* = u; a full Newton
    step from |x - u| > 1.39 overshoots (x - u -> x - u - (1 + (x - u)²) arctan(x - u), farther out), so only a damped
    step converges."""

    def __init__(self, n: int = 1) -> None:
        super().__init__()
        self.n_inputs = n

    def initial_state(self, batch_size):
        return torch.zeros(batch_size, self.n_inputs, dtype=F64)

    def step(self, u_t, state):
        return state.clone(), state - torch.atan(state - u_t)


class _Quadratic(_Arctan):
    """x' = x + 1 + x² + u² elementwise: f(x) - x = 1 + x² + u² >= 1, no equilibrium; ∂f/∂x - 1 = 2 diag(x),
    singular where an x_i = 0."""

    def step(self, u_t, state):
        return state.clone(), state + 1 + state ** 2 + u_t ** 2


def test_the_last_iterate_is_checked_and_not_stepped_from():
    """From x0 = 1 Newton's step (x² - 1) / 2x lands on x = 0 (residual 1 < 2: taken), where ∂f/∂x - 1 = 0. With
    max_iter = 1 that iterate is the last: it is checked (not converged) and reported, no step is solved there."""
    sys = NonlinearSystem(_Quadratic())
    with pytest.raises(ValueError, match=r"no convergence in 1 Newton iterations at point 0 \(u0 = \[0.0\], "
                                         r"residual 1\)"):
        sys.equilibrium(0.0, x0=1.0, max_iter=1)
    with pytest.raises(ValueError, match="eigenvalue 1"):  # a second iteration solves at x = 0
        sys.equilibrium(0.0, x0=1.0, max_iter=2)
    with pytest.raises(ValueError, match="at point 1 "):  # the worst relative to 1 + |x|: 1 / (1 + 0) < 12.8 / 4.4
        sys.equilibrium([[0.0], [0.0]], x0=[[1.0], [-7.0]], max_iter=1)
    with pytest.raises(ValueError, match="at point 1 "):  # x = -3.4 (12.8 / 4.4) against x = 0 under u = 1.5 (3.25 / 1)
        sys.equilibrium([[0.0], [1.5]], x0=[[-7.0], [3.25 ** 0.5]], max_iter=1)
    with pytest.raises(ValueError, match="at point 1 "):  # relative to 1 + max |x|: x = (-3.4, 0) (12.8 / 4.4)
        NonlinearSystem(_Quadratic(2)).equilibrium([[0.0, 0.0], [1.5, 1.5]], x0=[[-7.0, 1.0], [3.25 ** 0.5] * 2],
                                                   max_iter=1)  # against x = (0, 0) under u = (1.5, 1.5) (3.25 / 1)
    with pytest.raises(ValueError, match="no convergence in 50 Newton iterations"):  # the default
        sys.equilibrium(0.0, x0=3.0)


def test_a_newton_step_that_overshoots_is_halved(monkeypatch):
    sys = NonlinearSystem(_Arctan())
    trials, f_h = [], sys._f_h
    monkeypatch.setattr(sys, "_f_h", lambda X, U: (trials.append(float(X[0, 0])) if len(X) == 1 else None)
                        or f_h(X, U))  # one row: a trial step (the Jacobians' passes have n + p = 2 rows)
    sys.equilibrium(2.0, x0=12.0)
    dx = -(1 + 10.0 ** 2) * np.arctan(10.0)  # Newton's step; |x - 2| < 10 first at half of half of half of it
    np.testing.assert_allclose(trials[:4], 12.0 + dx * np.array([1, 1 / 2, 1 / 4, 1 / 8]), rtol=1e-14)
    monkeypatch.undo()
    x, y = sys.equilibrium([[2.0], [-1.0]], x0=[[12.0], [-1.5]], tol=1e-14)  # the first needs halving, the second not
    np.testing.assert_allclose(x[:, 0], [2.0, -1.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(y[:, 0], [2.0, -1.0], rtol=0, atol=1e-12)
    # two states: the full step lowers state 1's residual and raises state 0's; the largest decides
    x, _ = NonlinearSystem(_Arctan(2)).equilibrium([2.0, -1.0], x0=[12.0, -0.5], tol=1e-14)
    np.testing.assert_allclose(x, [[2.0, -1.0]], rtol=0, atol=1e-12)


def test_the_backtracking_stops_at_the_first_step_that_does_not_raise_the_residual(monkeypatch):
    """x' = a x + u from x0 = (x*, 0) for two inputs: the first point is done at once, the second takes the full
    Newton step. Three evaluations of f: the Jacobians, the trial step (not worse for either point), the Jacobians
    at the answer."""
    sys = NonlinearSystem(_Affine(0.5))
    calls, f_h = [], sys._f_h
    monkeypatch.setattr(sys, "_f_h", lambda X, U: calls.append(X.shape[0]) or f_h(X, U))
    x, _ = sys.equilibrium([[2.0], [-1.0]], x0=[[4.0], [0.0]])
    np.testing.assert_array_equal(x[:, 0], [4.0, -2.0])
    assert calls == [4, 2, 4]  # G (n + p) rows for the Jacobians, G for a trial


class _Log(nn.Module):
    """x' = x - log x (+ 0·u): the one equilibrium is x* = 1; from x0 = 5 the full Newton step x (1 - log x) lands
    on -3.05, where log is NaN, and half of it on 0.98."""

    n_inputs = 1

    def initial_state(self, batch_size):
        return torch.ones(batch_size, 1, dtype=F64)

    def step(self, u_t, state):
        return state.clone(), state - torch.log(state) + 0 * u_t


def test_a_step_to_a_nan_residual_is_halved():
    """Probe 25's bug: a NaN residual compared as not worse, so the step to -3.05 was taken and every later iterate
    was NaN ("no convergence ... residual nan")."""
    x, y = NonlinearSystem(_Log()).equilibrium(0.0, x0=5.0)
    np.testing.assert_allclose(x, [[1.0]], rtol=0, atol=1e-10)
    np.testing.assert_allclose(y, [[1.0]], rtol=0, atol=1e-10)


class _Split(nn.Module):
    """Two inputs, two states: x' = u, y = u (``through``: f and h read no state) or x' = x / 2, y = x (f and h
    read no input)."""

    n_inputs = 2

    def __init__(self, through: bool) -> None:
        super().__init__()
        self.through = through

    def initial_state(self, batch_size):
        return torch.zeros(batch_size, 2, dtype=F64)

    def step(self, u_t, state):
        return (u_t.clone(), u_t.clone()) if self.through else (state.clone(), state / 2)


def test_a_jacobian_that_reads_no_state_or_no_input_is_zero_there():
    x, u = np.array([[0.3, -1.0], [2.0, 0.5]]), np.array([[1.0, 2.0], [-3.0, 4.0]])
    eye, zero = np.broadcast_to(np.eye(2), (2, 2, 2)), np.zeros((2, 2, 2))
    through = NonlinearSystem(_Split(True)).linearize(u, x)
    for got, want in zip((through.A, through.B, through.C, through.D), (zero, eye, zero, eye)):
        np.testing.assert_array_equal(got, want)
    decay = NonlinearSystem(_Split(False)).linearize(u, x)
    for got, want in zip((decay.A, decay.B, decay.C, decay.D), (eye / 2, zero, eye, zero)):
        np.testing.assert_array_equal(got, want)


def test_the_static_characteristic_of_one_point_with_two_inputs():
    sys = NonlinearSystem(_Hand().double())
    u = np.array([0.5, -1.0])  # (m,): one point, not two scalar inputs
    np.testing.assert_allclose(sys.static_characteristic(u), _hand_equilibrium(u)[1][None], rtol=0, atol=1e-10)
    one = NonlinearSystem(_Affine(0.5))  # m = 1: a 1-D sweep is G points; x* = y* = u / (1 - a)
    np.testing.assert_allclose(one.static_characteristic(torch.tensor([1.0, -2.0, 0.5])), [[2.0], [-4.0], [1.0]],
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(one.static_characteristic(1.5), [[3.0]], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"u0 must be \(n_inputs,\) = \(1,\)"):
        one.static_characteristic(np.zeros((2, 2)))  # not 4 scalar inputs


def test_a_partial_last_batch_of_jacobians(monkeypatch):
    """Five points, two per backward pass (the last pass holds one): the same Jacobians as the hand ones."""
    sys = NonlinearSystem(_Hand().double())
    rng = np.random.default_rng(3)
    x, u = rng.standard_normal((5, 4)), rng.standard_normal((5, 2))
    rows, f_h = [], sys._f_h

    def spy(X, U):
        rows.append(X.shape[0])
        return f_h(X, U)

    monkeypatch.setattr(sys, "_f_h", spy)
    sys.linearize(u, x)
    assert rows == [5 * 6]  # by default, every point's n + p copies in one pass
    rows.clear()
    monkeypatch.setattr(nonlinear, "_JACOBIAN_ELEMENTS", 2 * 6 * 6)  # points · (n + p) · (n + m)
    lin = sys.linearize(u, x)
    assert rows == [12, 12, 6]
    rows.clear()
    monkeypatch.setattr(nonlinear, "_JACOBIAN_ELEMENTS", 6 * 6 + 5)  # room for one point a pass
    sys.linearize(u, x)
    assert rows == [6] * 5
    for k in range(5):
        J = _hand_jacobian(x[k], u[k])
        np.testing.assert_allclose(np.block([[lin.A[k], lin.B[k]], [lin.C[k], lin.D[k]]]), J, rtol=0, atol=1e-13)


def _central(fun, x, u, eps=1e-5):
    """[∂fun/∂x ∂fun/∂u] (q, n + m) at one point by float64 central differences with one Richardson step."""
    z = np.r_[x, u]

    def diff(h):
        cols = []
        for j in range(len(z)):
            e = np.zeros(len(z))
            e[j] = h
            plus, minus = z + e, z - e
            cols.append((fun(plus[:len(x)], plus[len(x):])[0] - fun(minus[:len(x)], minus[len(x):])[0]) / (2 * h))
        return np.stack(cols, 1)

    return (4 * diff(eps / 2) - diff(eps)) / 3


def test_an_ensemble_of_two_sizes_against_scipy_and_central_differences():
    """Members of 4 and 12 states (widths 2 and 3, depths 1 and 2): the member-by-member equilibrium against scipy's
    root of the ensemble's own update (one system of 16 states), the output there the members' mean, and the
    member-by-member linearisation against central differences of the ensemble's update and output."""
    from ssmkit.sysid import DeepWiener, WienerEnsemble

    members = []
    for seed, width, depth in ((0, 2, 1), (1, 3, 2)):
        torch.manual_seed(seed)
        members.append(DeepWiener(2, 2, d_model=width, n_layers=depth, layer="s4d", layer_options={"d_state": 2},
                                  activation="tanh", timescale=(1.0, 3.0), dtype=F64))
    sys = NonlinearSystem(WienerEnsemble(members))
    assert [m.n_states for m in sys.members] == [4, 12] and sys.n_states == 16  # 2 complex states a channel
    u = np.array([[0.4, -0.8], [1.5, 0.3]])
    calls = []
    for member in sys.members:  # each member solves its own (the whole's Newton would give the same values)
        member._settle = lambda *args, _solve=member._settle: calls.append(1) or _solve(*args)
    x_star, y_star = sys.equilibrium(u, tol=1e-13)
    assert len(calls) == 2
    assert x_star.shape == (2, 16) and y_star.shape == (2, 2)
    for k in range(2):
        root = scipy.optimize.root(lambda x: sys.update(x, u[k])[0] - x, np.zeros(16), tol=1e-14)
        np.testing.assert_allclose(x_star[k], root.x, rtol=0, atol=1e-11)
        np.testing.assert_allclose(y_star[k], sys.output(root.x, u[k])[0], rtol=0, atol=1e-11)
        y_members = [NonlinearSystem(m).output(xi, u[k])[0] for m, xi in zip(members, np.split(root.x, [4]))]
        np.testing.assert_allclose(y_star[k], np.mean(y_members, 0), rtol=0, atol=1e-11)
    x0 = x_star + np.random.default_rng(0).standard_normal(x_star.shape) * 0.5  # off the equilibria too
    sys._f_h = None  # the ensemble's Jacobian is assembled from its members', never formed whole
    lins = [sys.linearize(u, x) for x in (x_star, x0)]
    del sys._f_h
    for x, lin in zip((x_star, x0), lins):
        for k in range(2):
            got = np.block([[lin.A[k], lin.B[k]], [lin.C[k], lin.D[k]]])
            want = np.r_[_central(sys.update, x[k], u[k]), _central(sys.output, x[k], u[k])]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-8)
    # from given starting states, one for both inputs
    x_again, _ = sys.equilibrium(u, x0=x0[0], tol=1e-13)
    np.testing.assert_allclose(x_again, x_star, rtol=0, atol=1e-11)


def test_points_are_read_and_refused_as_documented():
    sys = NonlinearSystem(_Hand().double())
    x = np.array([0.3, -0.2, 1.1, -0.7])
    want = sys.update(x[None], np.array([[1.0, 2.0]]))
    for u in ([1, 2], np.array([1.0, 2.0], dtype=np.float32), torch.tensor([1.0, 2.0]), ((1.0, 2.0),)):
        np.testing.assert_array_equal(sys.update(x, u), want)  # ints, float32, a tensor, a nested tuple
    one = NonlinearSystem(_Affine(0.5))
    np.testing.assert_array_equal(one.update(2.0, 1.0), [[2.0]])  # numbers when n = m = 1: 0.5 · 2 + 1
    np.testing.assert_array_equal(one.update(np.array(2.0), np.array([[1.0], [3.0]])), [[2.0], [4.0]])
    for bad, message in ((np.array([True, False]), "u must be real numbers; got dtype bool"),
                         (np.array([1 + 1j, 2]), "u must be real numbers; got dtype complex128"),
                         (["a", "b"], "u must be real numbers"),
                         ({"a": 1}, "u must be real numbers; got dtype object"),
                         (np.zeros((0, 2)), r"u must be \(n_inputs,\) = \(2,\) for one point or \(G, 2\) for G >= 1 "
                                            r"points; got shape \(0, 2\)"),
                         (np.zeros(3), r"got shape \(3,\)"), (np.zeros((2, 2, 1)), r"got shape \(2, 2, 1\)"),
                         (1.0, r"got shape \(\)"), ([1.0, np.inf], "u must be finite")):
        with pytest.raises(ValueError, match=message):
            sys.update(x, bad)
    with pytest.raises(ValueError, match=r"x must be \(n_states,\) = \(4,\)"):
        sys.output(x[:3], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"same number of points \(or one of them one\); got 2 and 3"):
        sys.output(np.zeros((2, 4)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"got 3 and 2"):
        sys.update(np.zeros((3, 4)), np.zeros((2, 2)))


class _Custom(nn.Module):
    """A module with a chosen state, input width, output and attributes, for the constructor's refusals."""

    def __init__(self, state, n_inputs=1, y_shape=None, grow=False, **attrs) -> None:
        super().__init__()
        self.state, self.y_shape, self.grow = state, y_shape, grow
        if n_inputs is not None:  # None: no n_inputs attribute
            self.n_inputs = n_inputs
        self.__dict__.update(attrs)

    def initial_state(self, batch_size):
        return self.state(batch_size)

    def step(self, u_t, state):
        y = u_t if self.y_shape is None else torch.zeros(self.y_shape(u_t.shape[0]), dtype=u_t.dtype)
        nxt = [torch.cat([s, s], 1) for s in state] if self.grow else state
        if getattr(self, "reset", False):  # x' = u, y = x
            return state.clone(), u_t.clone()
        return y, nxt


def test_what_the_constructor_refuses_and_accepts():
    real = lambda B: [torch.zeros(B, 2, dtype=F64)]  # noqa: E731
    ok = NonlinearSystem(_Custom(real, n_inputs=3))
    assert (ok.n_states, ok.n_inputs, ok.n_outputs, ok.members) == (2, 3, 3, None)
    assert NonlinearSystem(_Custom(real, d_input=2, n_inputs=None)).n_inputs == 2  # d_input when no n_inputs
    flat = NonlinearSystem(_Custom(lambda B: [torch.zeros(B, dtype=F64)]))  # a state (B,): one number per sample
    assert flat.n_states == 1 and flat.model_state([2.0])[0].shape == (1,)
    assert NonlinearSystem(_Custom(real, dt=0.25)).dt == 0.25 and NonlinearSystem(_Custom(real), 2.0).dt == 2.0
    with pytest.raises(ValueError, match=r"dt = 2\.0 s disagrees with the model.s own sampling time Ts = 0\.25 s"):
        NonlinearSystem(_Custom(real, dt=0.25), 2.0)
    for bad in (0, True, 2.0, None):
        with pytest.raises(ValueError, match=rf"n_inputs or d_input \(an int >= 1\); got {bad!r}"):
            NonlinearSystem(_Custom(real, n_inputs=bad))
    with pytest.raises(ValueError, match="token ids"):
        NonlinearSystem(_Custom(real, vocab_size=5))
    assert NonlinearSystem(_Custom(real, vocab_size=None)).n_inputs == 1
    for state, what in ((lambda B: [torch.zeros(B, 2, dtype=torch.int64)], r"state\[0\] is \(1, 2\) torch.int64"),
                        (lambda B: (torch.zeros(B, 1), torch.tensor(0.0)), r"state\[1\] is \(\) torch.float32"),
                        (lambda B: [torch.zeros(2 * B, 1)], r"state\[0\] is \(2, 1\)")):
        with pytest.raises(ValueError, match="real or complex state tensors with a batch axis first; " + what):
            NonlinearSystem(_Custom(state))
    with pytest.raises(ValueError, match=r"a state of tensors \(nested in lists and tuples\); state\[0\]\[1\] is dict"):
        NonlinearSystem(_Custom(lambda B: [[torch.zeros(B, 1), {}]]))
    with pytest.raises(ValueError, match=r"fixed size; state\[0\] grows"):
        NonlinearSystem(_Custom(real, grow=True))
    for shape in (lambda B: (B,), lambda B: (B, 1, 1), lambda B: (1, 1)):
        with pytest.raises(ValueError, match=r"model.step must give y_t \(B, p\)"):
            NonlinearSystem(_Custom(real, y_shape=shape))
    with pytest.raises(ValueError, match="a module with step and initial_state; got int"):
        NonlinearSystem(3)


def test_to_control_names_and_refusals():
    pytest.importorskip("control")  # an optional dependency (ssmkit[control]); the GPU machine lacks it
    sys = NonlinearSystem(_Hand().double())
    plant = sys.to_control(name="hand", inputs=("a", "b"), outputs=["p", "q"])
    assert plant.name == "hand" and plant.input_labels == ["a", "b"] and plant.output_labels == ["p", "q"]
    assert plant.state_labels == [f"x[{i}]" for i in range(4)] and plant.dt == 1.0
    x, u = np.array([0.3, -0.2, 1.1, -0.7]), np.array([0.5, -1.0])
    np.testing.assert_array_equal(plant.updfcn(0, x, u, {}), sys.update(x, u)[0])
    np.testing.assert_array_equal(plant.outfcn(0, x, u, {}), sys.output(x, u)[0])
    default = sys.to_control()
    assert default.input_labels == ["u[0]", "u[1]"] and default.output_labels == ["y[0]", "y[1]"]
    for kind, bad in (("inputs", ["a"]), ("inputs", ["a", "a"]), ("inputs", ["a", ""]), ("outputs", "pq"),
                      ("outputs", ["p", 1]), ("outputs", ["p", "q", "r"])):
        with pytest.raises(ValueError, match=f"{kind} must be None or 2 distinct non-empty names"):
            sys.to_control(**{kind: bad})
    with pytest.raises(ValueError, match="name must be a str or None; got 3"):
        sys.to_control(name=3)
