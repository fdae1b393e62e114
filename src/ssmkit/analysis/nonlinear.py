"""A whole model as a discrete-time nonlinear state-space system: equilibria, linearisation, the static
characteristic, and export to python-control.

    x[k+1] = f(x[k], u[k]),   y[k] = h(x[k], u[k])

``(y[k], x[k+1]) = model.step(u[k], x[k])``: x is every block's recurrent state as one real vector of n numbers (the
real and imaginary parts of a complex state as adjacent pairs, the blocks in order), u (m) and y (p) are the model's
per-sample input and output in their units (a :class:`ssmkit.sysid.DeepWiener`'s physical units), and one sample
lasts the model's ``dt`` (Ts seconds; 1.0, in samples, for a model without one). x[k] is the state before u[k] is
read, the control convention of :meth:`ssmkit.analysis.StateSpace.simulate`, and y[k] depends on u[k] (the layers'
direct feedthrough). This is the view a control engineer takes of a deep Wiener model (Bonassi et al., arXiv
2312.06211): its LTI blocks alone are analysed by :meth:`DeepWiener.state_space`; here the static nonlinearities,
skips and normalisations are in, so the answers hold for the model as it simulates.

- **Equilibrium** x* with f(x*, u0) = x* under a constant input u0, and its output y* = h(x*, u0): Newton's method
  on f(x, u0) - x with the exact Jacobian, halving a step that does not reduce the residual (or makes it NaN, where
  f is undefined). For a deep Wiener model of Schur-stable blocks the equilibrium exists and is unique (each block is
  an LTI system driven by the block before it), and Newton reaches it in at most one iteration per block plus one (the
  Jacobian is block lower triangular and each block is affine in its own state).
- **Linearisation** at an operating point, a state x0 and an input u0: A = ∂f/∂x, B = ∂f/∂u, C = ∂h/∂x,
  D = ∂h/∂u, exact (reverse-mode autodiff, one backward pass for all n + p rows: the point is repeated n + p times
  along the batch axis, whose rows a model computes independently, and the output gradient is the identity), as a
  :class:`StateSpace` bank with one system per point and dt = Ts: poles, margins, Bode plots and the export to scipy
  and python-control of the small-signal model, which varies with the operating point where the nonlinearities bend.
  :meth:`NonlinearSystem.operating_point` gives the equilibria and the linearisations there from one Newton solve
  (its last Jacobian, computed at x* to test convergence, is the linearisation).
- **Static characteristic** u0 -> y*(u0): the steady-state output under constant inputs (for a single-block deep
  Wiener model σ(G(1) u) + F u through the normalisations, with G(1) the block's DC gain).
- **python-control**: :meth:`NonlinearSystem.to_control` gives a ``control.NonlinearIOSystem`` (``control.nlsys``,
  discrete time, dt = Ts) whose update and output functions run the model's step, for ``control.interconnect`` with a
  controller, ``control.input_output_response``, ``control.find_eqpt`` and ``control.linearize``.

Everything is computed on the CPU in float64 by a copy of the model (the model itself is not touched). A
:class:`ssmkit.sysid.WienerEnsemble` is solved member by member (its Jacobian is block diagonal, its output the
members' mean): the same answers at k times one member's cost instead of (k n)³. Layers whose
state grows with time (attention's cache, Mega, Hyena) have no finite state vector and are refused by name.

**Continuous time** (:class:`ContinuousWiener`): a deep Wiener model of LTI blocks is the sampling of an ODE,

    ẋ_ℓ = A_ℓ x_ℓ + B_ℓ v_ℓ,   η_ℓ = C_ℓ x_ℓ + D_ℓ v_ℓ,   v_{ℓ+1} = σ_ℓ(η_ℓ) + S_ℓ v_ℓ,
    v_1 = E (u − μ_u)/s_u + b_E,   y = sat(W v_{L+1} + b_W) ⊙ s_y + μ_y,

with each block's (A_ℓ, B_ℓ, C_ℓ, D_ℓ) its exported system converted by
``to_continuous("zoh", hold="sample")``: the layer's own continuous system (Λ, B, C, D) in seconds, since the
models hold each input u_k over the interval (t_{k−1}, t_k] that ends at sample k. Sampled that way, one block
gives the model's outputs exactly; between stacked blocks the discrete model holds each block's input over the
interval too (its value at the interval's end), where the ODE passes the signal on as it moves, so the two differ by
O(Ts) and the discrete model run on finer sample times (``forward(..., intervals=)``) tends to the ODE.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import nn

from ssmkit.analysis.layerwise import sampling_time
from ssmkit.analysis.statespace import StateSpace, check_signal_names
from ssmkit.layers.state import state_from_vector, state_to_vector

__all__ = ["ContinuousWiener", "NonlinearSystem"]

F64 = torch.float64
_JACOBIAN_ELEMENTS = 1 << 24  # the Jacobian rows computed in one batch: points · (n + p) · (n + m) at most this


def _leaves(state: Any, path: str = "state") -> list[tuple[str, torch.Tensor]]:
    """The tensors of a (nested) state with their paths, in order."""
    if isinstance(state, torch.Tensor):
        return [(path, state)]
    if isinstance(state, (list, tuple)):
        return [leaf for i, part in enumerate(state) for leaf in _leaves(part, f"{path}[{i}]")]
    raise ValueError(f"NonlinearSystem needs a state of tensors (nested in lists and tuples); {path} is "
                     f"{type(state).__name__}")


def _as_points(value: Any, width: int, name: str, width_name: str) -> torch.Tensor:
    """A (G, width) float64 tensor of G points from a scalar (width 1), a (width,) vector or a (G, width) array."""
    try:
        arr = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be numbers; got {type(value).__name__}") from err
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be real numbers; got dtype {arr.dtype}")
    if arr.ndim == 0 and width == 1:
        arr = arr.reshape(1, 1)
    elif arr.ndim == 1 and arr.shape[0] == width:
        arr = arr.reshape(1, width)
    if arr.ndim != 2 or arr.shape[1] != width or arr.shape[0] == 0:
        raise ValueError(f"{name} must be ({width_name},) = ({width},) for one point or (G, {width}) for G >= 1 "
                         f"points; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return torch.as_tensor(arr, dtype=F64)


def _paired(x: Any, u: Any, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """States (G, n) and inputs (G, m) as float64 tensors of one number G of points: one state or one input is
    paired with every point of the other."""
    xs = _as_points(x, n, "x", "n_states")
    us = _as_points(u, m, "u", "n_inputs")
    if xs.shape[0] != us.shape[0]:
        if xs.shape[0] != 1 and us.shape[0] != 1:
            raise ValueError(f"x and u must give the same number of points (or one of them one); got "
                             f"{xs.shape[0]} and {us.shape[0]}")
        G = max(xs.shape[0], us.shape[0])
        xs, us = xs.expand(G, -1), us.expand(G, -1)
    return xs, us


def _control_and_names(owner: str, system: Any, name: Any, inputs: Any, outputs: Any) -> tuple[Any, dict]:
    """python-control (ImportError naming ``owner``'s to_control and how to install it) and the nlsys signal
    arguments {"inputs": names or m, "outputs": names or p} of ``system`` (its n_inputs, n_outputs), ``name``
    checked (a str or None)."""
    try:
        import control
    except ImportError as err:
        raise ImportError(f"{owner}.to_control needs python-control: pip install control "
                          "(or pip install ssmkit[control])") from err
    if name is not None and not isinstance(name, str):
        raise ValueError(f"name must be a str or None; got {name!r}")
    names = {}
    for kind, given, count in (("inputs", inputs, system.n_inputs), ("outputs", outputs, system.n_outputs)):
        names[kind] = count if given is None else check_signal_names(kind, given, count)
    return control, names


def _sigmas(member: nn.Module) -> list[nn.Module]:
    """σ_ℓ of every block of a DeepWiener (its ``block_activations``, else ``activation`` for each)."""
    if member.block_activations is not None:
        return list(member.block_activations)
    return [member.activation] * len(member.layers)


class NonlinearSystem:
    """A model with ``step`` and a fixed-size state as x[k+1] = f(x[k], u[k]), y[k] = h(x[k], u[k]) (module docstring).

    Args:
        model: a :class:`ssmkit.sysid.DeepWiener`, or a :class:`ssmkit.models.SequenceModel` with real inputs
            (``d_input``; not token ids), or any module with ``initial_state(batch_size)``, ``step(u_t, state)`` ->
            (y_t (B, p), next state) and ``n_inputs`` or ``d_input``. Its layers must have ``step`` and a state of
            fixed size, and its parameters finite (a ValueError names those that are not). A float64 copy on the CPU,
            in eval mode, is what is analysed.
        dt: the sampling time in seconds; None takes the model's ``dt`` (a DeepWiener's Ts), else 1.0 in samples.
            For a model with a ``dt`` of its own it must agree with it: the model steps at its Ts, so another dt
            would re-time ``to_control`` and every linearisation (a ValueError names both values; set
            ``model.dt`` first where the model's Ts is wrong); it is used as given for a model without one.

    Attributes:
        n_states, n_inputs, n_outputs: n, m and p.
        dt: the sampling time (seconds, or 1.0 in samples).
    """

    def __init__(self, model: nn.Module, dt: float | None = None) -> None:
        if not isinstance(model, nn.Module) or not callable(getattr(model, "step", None)) \
                or not callable(getattr(model, "initial_state", None)):
            raise ValueError(f"model must be a module with step and initial_state; got {type(model).__name__}")
        self.dt, _ = sampling_time(model, dt)
        if getattr(model, "vocab_size", None) is not None:
            raise ValueError("NonlinearSystem needs real inputs; this model reads token ids (vocab_size is set)")
        m = getattr(model, "n_inputs", getattr(model, "d_input", None))
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise ValueError(f"model must say its input width as n_inputs or d_input (an int >= 1); got {m!r}")
        self.n_inputs = m
        user_state = model.initial_state(1)
        _leaves(user_state)  # refuses a part that is not a tensor, by its path
        self._user_like = pytree.tree_map(lambda t: t.detach().cpu(), user_state)  # the user's dtypes, for states out
        self._model = copy.deepcopy(model).to(device="cpu", dtype=F64).eval().requires_grad_(False)
        broken = [name for name, p in self._model.named_parameters() if not bool(torch.isfinite(p).all())]
        if broken:  # else Newton's "no convergence ... residual nan" or LAPACK's "must not contain infs or NaNs"
            verb = "holds" if len(broken) == 1 else "hold"
            raise ValueError(f"NonlinearSystem needs a model with finite parameters; {', '.join(broken[:3])}"
                             f"{' …' if len(broken) > 3 else ''} {verb} NaN or inf (a diverged training?)")
        template = self._model.initial_state(1)
        leaves = _leaves(template)
        for path, t in leaves:
            if not (t.is_floating_point() or t.is_complex()) or t.dim() < 1 or t.shape[0] != 1:
                raise ValueError(f"NonlinearSystem needs real or complex state tensors with a batch axis first; "
                                 f"{path} is {tuple(t.shape)} {t.dtype}")
        self._template = pytree.tree_map(lambda t: t.to(torch.complex128 if t.is_complex() else F64), template)
        self._shapes = [tuple(t.shape[1:]) for _, t in leaves]
        self.n_states = state_to_vector(self._template, F64).shape[1]
        with torch.no_grad():
            y, nxt = self._model.step(torch.zeros(2, m, dtype=F64), self._model.initial_state(2))
        grown = [path for (path, t), shape in zip(_leaves(nxt), self._shapes) if tuple(t.shape[1:]) != shape]
        if len(_leaves(nxt)) != len(leaves) or grown:
            raise ValueError(f"NonlinearSystem needs a state of fixed size; {', '.join(grown) or 'the state'} grows "
                             f"with time (attention's cache, Mega, Hyena have no finite state vector)")
        if y.dim() != 2 or y.shape[0] != 2:
            raise ValueError(f"model.step must give y_t (B, p); got {tuple(y.shape)}")
        self.n_outputs = y.shape[1]
        from ssmkit.sysid.ensemble import WienerEnsemble

        # an ensemble's output is its members' mean and their states are apart (its Jacobian is block diagonal):
        # each member is solved on its own, k systems of n states costing k times one instead of (k n)³
        self._members = ([NonlinearSystem(member, self.dt) for member in model.members]
                         if isinstance(model, WienerEnsemble) else None)

    @property
    def members(self) -> list["NonlinearSystem"] | None:
        """A :class:`ssmkit.sysid.WienerEnsemble`'s members as systems of their own (None for another model): the
        ensemble's state vector is theirs in order, its output their mean."""
        return self._members

    def _split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """An ensemble's state vectors (G, n) as its members' (G, n_i), in order."""
        return list(torch.split(x, [member.n_states for member in self._members], dim=1))

    # ------------------------------------------------------------------------------------------------------------
    # the state vector

    def _to_vector(self, state: Any) -> torch.Tensor:
        return state_to_vector(state, F64)

    def _from_vector(self, x: torch.Tensor) -> Any:
        return state_from_vector(x, self._template)

    def state_vector(self, state: Any) -> np.ndarray:
        """The model's state (``initial_state``, ``step``, ``forward``, ``estimate_state``) as x (B, n), float64."""
        leaves = _leaves(state)
        if [tuple(t.shape[1:]) for _, t in leaves] != self._shapes or len({t.shape[0] for _, t in leaves}) != 1:
            raise ValueError(f"state must be shaped as the model's initial_state(B): parts "
                             f"{[('B', *s) for s in self._shapes]}; got {[tuple(t.shape) for _, t in leaves]}")
        return self._to_vector([t.detach().cpu() for _, t in leaves]).numpy()

    def model_state(self, x: Any) -> Any:
        """x (n,) or (B, n) as the model's state (B = 1 for a vector), in the model's dtypes, on the CPU: for
        ``model(u, state)`` or ``model.step`` from an equilibrium."""
        xs = _as_points(x, self.n_states, "x", "n_states")
        return state_from_vector(xs, self._user_like)

    # ------------------------------------------------------------------------------------------------------------
    # f, h and their Jacobians

    def _f_h(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, nxt = self._model.step(u, self._from_vector(x))
        return self._to_vector(nxt), y

    def update(self, x: Any, u: Any) -> np.ndarray:
        """f: the next states x[k+1] = f(x[k], u[k]) of G points.

        Args:
            x: the states, (G, n) or one (n,) (a number when n = 1).
            u: the inputs, (G, m) or one (m,) (a number when m = 1); one state or one input is paired with every
                point of the other.

        Returns:
            (G, n) float64 (G = 1 for one point).
        """
        xs, us = self._pair(x, u)
        with torch.no_grad():
            return self._f_h(xs, us)[0].numpy()

    def output(self, x: Any, u: Any) -> np.ndarray:
        """h: the outputs y[k] = h(x[k], u[k]) of G points.

        Args:
            x: the states, (G, n) or one (n,) (a number when n = 1).
            u: the inputs, (G, m) or one (m,) (a number when m = 1); one state or one input is paired with every
                point of the other.

        Returns:
            (G, p) float64 (G = 1 for one point).
        """
        xs, us = self._pair(x, u)
        with torch.no_grad():
            return self._f_h(xs, us)[1].numpy()

    def _pair(self, x: Any, u: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return _paired(x, u, self.n_states, self.n_inputs)

    def _join(self, parts: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        """An ensemble's (state or f (G, n), h (G, p), Jacobian (G, n + p, n + m)) from its members' in order: states
        side by side, h their mean, the Jacobian block diagonal in the members' states with the h rows averaged."""
        n, m, p = self.n_states, self.n_inputs, self.n_outputs
        k, G = len(parts), parts[0][0].shape[0]
        J = torch.zeros(G, n + p, n + m, dtype=F64)
        start = 0
        for member, (_, _, Ji) in zip(self._members, parts):
            ni = member.n_states
            J[:, start:start + ni, start:start + ni] = Ji[:, :ni, :ni]  # ∂f_i/∂x_i
            J[:, start:start + ni, n:] = Ji[:, :ni, ni:]  # ∂f_i/∂u
            J[:, n:, start:start + ni] = Ji[:, ni:, :ni] / k  # ∂h/∂x_i = ∂h_i/∂x_i / k
            J[:, n:, n:] += Ji[:, ni:, ni:] / k  # ∂h/∂u, the members' mean
            start += ni
        return torch.cat([f for f, _, _ in parts], 1), torch.stack([h for _, h, _ in parts]).mean(0), J

    def _values_and_jacobians(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """f (G, n), h (G, p) and [∂f/∂x ∂f/∂u; ∂h/∂x ∂h/∂u] (G, n + p, n + m) at G points, exactly."""
        n, m, p = self.n_states, self.n_inputs, self.n_outputs
        if self._members is not None:  # block diagonal in the members' states; h and its rows averaged
            return self._join([member._values_and_jacobians(xi, u) for member, xi in zip(self._members,
                                                                                         self._split(x))])
        q, G = n + p, x.shape[0]
        per_chunk = max(1, _JACOBIAN_ELEMENTS // (q * (n + m)))
        values, jacobians = [], []
        for start in range(0, G, per_chunk):
            k = min(per_chunk, G - start)
            X = x[start:start + k].repeat_interleave(q, 0).requires_grad_()  # (k q, n): each point q times
            U = u[start:start + k].repeat_interleave(q, 0).requires_grad_()
            with torch.enable_grad():
                out = torch.cat(self._f_h(X, U), 1)  # (k q, q): every row of a point holds f and h there
                seed = torch.eye(q, dtype=F64).repeat(k, 1)  # copy i of a point is asked for output i's gradient
                gx, gu = torch.autograd.grad(out, (X, U), seed, allow_unused=True)
            gx = torch.zeros_like(X) if gx is None else gx
            gu = torch.zeros_like(U) if gu is None else gu
            values.append(out.detach().view(k, q, q)[:, 0])
            jacobians.append(torch.cat([gx.view(k, q, n), gu.view(k, q, m)], 2))
        value, jac = torch.cat(values), torch.cat(jacobians)
        return value[:, :n], value[:, n:], jac

    def linearize(self, u0: Any, x0: Any | None = None) -> StateSpace:
        """The small-signal model at operating points: δx[k+1] = A δx[k] + B δu[k], δy[k] = C δx[k] + D δu[k].

        Args:
            u0: the input at the points, (m,) or (G, m) (a number when m = 1).
            x0: the states there, (n,) or (G, n); None: the equilibria under u0 (:meth:`equilibrium`).

        Returns:
            A real :class:`StateSpace` bank of G systems, one per point, with A = ∂f/∂x, B = ∂f/∂u, C = ∂h/∂x,
            D = ∂h/∂u at each point and dt = Ts.
        """
        if x0 is None:
            return self.operating_point(u0)[2]
        xs, us = self._pair(x0, u0)
        return self._small_signal(self._values_and_jacobians(xs, us)[2])

    def _small_signal(self, J: torch.Tensor) -> StateSpace:
        n = self.n_states
        J = J.numpy()
        return StateSpace(J[:, :n, :n], J[:, :n, n:], J[:, n:, :n], J[:, n:, n:], dt=self.dt)

    def operating_point(self, u0: Any, x0: Any | None = None, tol: float = 1e-10,
                        max_iter: int = 50) -> tuple[np.ndarray, np.ndarray, StateSpace]:
        """The equilibria under u0 and the small-signal models there, from one Newton solve: x* (G, n), y* (G, p) and
        the :class:`StateSpace` bank of :meth:`linearize` at (x*, u0).

        The same numbers as ``equilibrium(u0, x0, tol, max_iter)`` followed by ``linearize(u0, x*)``, for one
        Jacobian pass less: Newton's last iteration computes the Jacobian at x* to test convergence, and that
        Jacobian is the linearisation. Errors as :meth:`equilibrium`.

        Args:
            u0: the constant input, (m,) or (G, m) for G points at once (a number when m = 1).
            x0: the starting guesses, (n,) or (G, n); None: the state at rest (zeros).
            tol: convergence when max |f(x, u0) - x| <= tol · (1 + max |x|) at every point.
            max_iter: Newton iterations at most.

        Returns:
            x* (G, n) and y* (G, p), float64, and the :class:`StateSpace` bank of G systems at (x*, u0).
        """
        x, y, J = self._settle(u0, x0, tol, max_iter)
        return x.numpy(), y.numpy(), self._small_signal(J)

    # ------------------------------------------------------------------------------------------------------------
    # equilibria

    def equilibrium(self, u0: Any, x0: Any | None = None, tol: float = 1e-10,
                    max_iter: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """The state x* with f(x*, u0) = x* and the output y* = h(x*, u0), by Newton's method (module docstring).

        Args:
            u0: the constant input, (m,) or (G, m) for G points at once (a number when m = 1).
            x0: the starting guesses, (n,) or (G, n); None: the state at rest (zeros).
            tol: convergence when max |f(x, u0) - x| <= tol · (1 + max |x|) at every point.
            max_iter: Newton iterations at most.

        Returns:
            x* (G, n) and y* (G, p), float64.

        Newton's method finds unstable equilibria too (which a simulation leaves): ``linearize(u0, x*).is_stable()``
        says which kind a point is.

        Raises:
            ValueError: when a point does not converge within ``max_iter`` iterations (no equilibrium near x0), or
                when ∂f/∂x has an eigenvalue 1 at an iterate (a pole at z = 1: an integrator has no unique
                equilibrium).
        """
        x, y, _ = self._settle(u0, x0, tol, max_iter)
        return x.numpy(), y.numpy()

    def _settle(self, u0: Any, x0: Any | None, tol: float, max_iter: int) -> tuple[torch.Tensor, ...]:
        """x* (G, n), y* (G, p) and the Jacobian there (G, n + p, n + m): :meth:`equilibrium`'s Newton iteration."""
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
            raise ValueError(f"tol must be a number in (0, 1); got {tol!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1; got {max_iter!r}")
        us = _as_points(u0, self.n_inputs, "u0", "n_inputs")
        x = torch.zeros(us.shape[0], self.n_states, dtype=F64) if x0 is None else self._pair(x0, us)[0].clone()
        us = us.expand(x.shape[0], -1)
        if self._members is not None:  # each member settles on its own; the ensemble's output is their mean
            return self._join([member._settle(us, xi, tol, max_iter) for member, xi in zip(self._members,
                                                                                         self._split(x))])
        eye = torch.eye(self.n_states, dtype=F64)

        def residual(x):
            with torch.no_grad():
                return self._f_h(x, us)[0] - x

        for iteration in range(max_iter + 1):
            fx, y, J = self._values_and_jacobians(x, us)
            g = fx - x
            size = g.abs().amax(1)
            done = size <= tol * (1 + x.abs().amax(1))
            if bool(done.all()):
                return x, y, J
            if iteration == max_iter:
                break
            try:
                dx = torch.linalg.solve(J[:, :self.n_states, :self.n_states] - eye, -g.unsqueeze(2)).squeeze(2)
            except RuntimeError as err:  # torch's singular-matrix error
                raise ValueError("equilibrium: ∂f/∂x has an eigenvalue 1 at the iterate (an integrator, or a pole "
                                 "on the unit circle at z = 1): no unique equilibrium") from err
            dx = torch.where(done.unsqueeze(1), torch.zeros_like(dx), dx)
            step = torch.ones(x.shape[0], 1, dtype=F64)
            for _halving in range(30):  # backtrack where the full step does not reduce the residual
                trial = x + step * dx
                worse = ~(residual(trial).abs().amax(1) <= size)  # a NaN residual (f undefined there) too
                if not bool(worse.any()):
                    break
                step = torch.where(worse.unsqueeze(1), step / 2, step)
            x = trial
        worst = int(torch.argmax(size / (1 + x.abs().amax(1))))
        raise ValueError(f"equilibrium: no convergence in {max_iter} Newton iterations at point {worst} "
                         f"(u0 = {us[worst].tolist()}, residual {float(size[worst]):.3g}); the model may have no "
                         f"equilibrium there or be unstable: check linearize(u0, x0).poles()")

    def static_characteristic(self, u0: Any) -> np.ndarray:
        """The steady-state output y*(u0) under constant inputs: (G, p) for u0 (G, m) (or (G,) when m = 1).

        A 1-D u0 of length G is read as G scalar inputs when m = 1 (a sweep); otherwise as one point of width m.
        """
        if self.n_inputs == 1:
            arr = np.asarray(u0.detach().cpu() if isinstance(u0, torch.Tensor) else u0)
            if arr.ndim == 1:
                u0 = arr.reshape(-1, 1)
        return self.equilibrium(u0)[1]

    # ------------------------------------------------------------------------------------------------------------
    # python-control

    def to_control(self, name: str | None = None, inputs: Sequence[str] | None = None,
                   outputs: Sequence[str] | None = None) -> Any:
        """The model as a discrete-time ``control.NonlinearIOSystem`` (``control.nlsys``, dt = Ts) whose update and
        output functions are :meth:`update` and :meth:`output` at one point, for ``control.interconnect`` (signals
        are wired by name), ``input_output_response``, ``find_eqpt`` and ``linearize``. Needs python-control
        (``pip install control``).

        Its signals are the model's (a DeepWiener's physical units: it normalises inside) and its zero state is the
        model's rest state, in general no equilibrium: simulate from ``X0`` = x* of :meth:`operating_point`. The
        output reads the same sample's input (D = ∂h/∂u ≠ 0 in general), so ``control.interconnect`` with a
        controller that has direct feedthrough too (P, PI, PID) raises "algebraic loop detected": close the loop
        with a strictly proper controller (u[k] from the errors up to k − 1, a controller computing during the
        sample), or close it on the linearisation (:meth:`linearize`) with ``control.feedback``, which solves the
        loop as a linear equation.

        Args:
            name: the system's name (python-control's default when None).
            inputs: the m input signals' names (default u[0] .. u[m-1]).
            outputs: the p output signals' names (default y[0] .. y[p-1]). The n states are x[0] .. x[n-1].
        """
        control, names = _control_and_names("NonlinearSystem", self, name, inputs, outputs)

        recent: dict[tuple[bytes, bytes], tuple[np.ndarray, np.ndarray]] = {}  # (x, u) -> (f, h) of the last few
        # points: one model step serves the update and the output at a point, and interconnect's signal passes ask
        # for the outputs at each sample several times (9 model steps a sample before in a PI loop, 2 now)

        def point(x, u) -> tuple[np.ndarray, np.ndarray]:
            xs, us = self._pair(np.atleast_1d(x), np.atleast_1d(u))
            key = (xs.numpy().tobytes(), us.numpy().tobytes())
            if key not in recent:
                if len(recent) >= 4:
                    del recent[next(iter(recent))]  # the oldest
                with torch.no_grad():
                    f, h = self._f_h(xs, us)
                recent[key] = (f[0].numpy(), h[0].numpy())
            return recent[key]

        def updfcn(t, x, u, params):
            return point(x, u)[0].copy()

        def outfcn(t, x, u, params):
            return point(x, u)[1].copy()

        return control.nlsys(updfcn, outfcn, inputs=names["inputs"], outputs=names["outputs"], states=self.n_states,
                             dt=self.dt, name=name)


# ----------------------------------------------------------------------------------------------------------------
# continuous time


def _block_diagonal(system: StateSpace) -> tuple[torch.Tensor, ...]:
    """A real bank of G systems (n, m, p) as one system on the G m channels: A (G n, G n), B (G n, G m),
    C (G p, G n), D (G p, G m) block diagonal, float64 (channels g m .. (g + 1) m − 1 drive system g)."""
    import scipy.linalg

    return tuple(torch.from_numpy(scipy.linalg.block_diag(*M)) for M in (system.A, system.B, system.C, system.D))


class ContinuousWiener:
    """A deep Wiener model (or a :class:`ssmkit.sysid.WienerEnsemble` of them) as the continuous-time nonlinear system
    ẋ(t) = f(x(t), u(t)), y(t) = h(x(t), u(t)) whose sampling it is (module docstring, "Continuous time").

    The state x is every block's continuous state, the blocks in order (an ensemble: its members in order), each in
    the coordinates of the block's exported system (:meth:`ssmkit.analysis.StateSpace.to_continuous`; at a sample
    time t_k it is the block's exported state after sample k), in the model's units of time: seconds when ``dt`` is
    Ts in seconds. u and y are the model's inputs and outputs in physical units. An ensemble's output is its members'
    mean.

    Sampling convention: hold each input u_k over (t_{k−1}, t_k] and read y_k = h(x(t_k), u_k). For a model of one
    block this reproduces ``model(u)`` exactly; for stacked blocks within O(Ts) (the module docstring).

    Args:
        model: a :class:`ssmkit.sysid.DeepWiener` (or ``WienerEnsemble``) of LTI blocks (no ``time_varying`` layer)
            whose exported systems convert (no eigenvalue 0 or on the negative real axis: ``to_continuous``).

    Attributes:
        n_states, n_inputs, n_outputs: n, m and p.
        dt: the sampling time Ts the blocks were converted at (the model's ``dt``).
        blocks: the continuous-time :class:`StateSpace` bank of every block, in the state's order.

    Raises:
        ValueError: for another model, a time-varying (selective) block, or a block whose system does not convert,
            naming the block.
    """

    def __init__(self, model: nn.Module) -> None:
        from ssmkit.sysid.ensemble import WienerEnsemble
        from ssmkit.sysid.wiener import DeepWiener

        members = list(model.members) if isinstance(model, WienerEnsemble) else [model]
        if not all(isinstance(member, DeepWiener) for member in members):
            raise ValueError(f"ContinuousWiener needs a DeepWiener or a WienerEnsemble; got {type(model).__name__}")
        self.dt, _ = sampling_time(model)
        self.n_inputs, self.n_outputs = model.n_inputs, model.n_outputs
        self._members = [copy.deepcopy(member).to(device="cpu", dtype=F64).eval().requires_grad_(False)
                         for member in members]
        self.blocks: list[StateSpace] = []
        self._systems: list[list[tuple[torch.Tensor, ...]]] = []  # per member, per block: (A, B, C, D)
        for i, member in enumerate(self._members):
            where = f"member {i}, " if len(members) > 1 else ""
            systems = []
            for ell, layer in enumerate(member.layers):
                if not layer.supports("state_space"):
                    raise ValueError(f"ContinuousWiener needs LTI blocks: {where}block {ell} ({type(layer).__name__}) "
                                     f"is time-varying (its step or gate depends on the input), so it has no "
                                     f"continuous-time LTI system; export such a model in discrete time")
                exported = layer.state_space()  # dt = 1: in samples
                try:
                    system = StateSpace(exported.A, exported.B, exported.C, exported.D, dt=self.dt).to_real()
                    system = system.to_continuous("zoh", hold="sample")
                except ValueError as err:
                    raise ValueError(f"ContinuousWiener: {where}block {ell} ({type(layer).__name__}): {err}") from err
                self.blocks.append(system)
                systems.append(_block_diagonal(system))
            self._systems.append(systems)
        self.n_states = sum(A.shape[0] for systems in self._systems for A, _, _, _ in systems)

    def _f_h(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f (G, n) and h (G, p) at G points x (G, n), u (G, m): the module docstring's equations, member by member."""
        rates, outputs, start = [], [], 0
        for member, systems in zip(self._members, self._systems):
            v = member.encoder((u - member.u_mean) / member.u_std)  # (G, H): v_1
            for (A, B, C, D), skip, sigma in zip(systems, member.skips, _sigmas(member)):
                x_ell = x[:, start:start + A.shape[0]]  # (G, n_ℓ)
                start += A.shape[0]
                rates.append(x_ell @ A.T + v @ B.T)  # (G, n_ℓ): A x + B v
                v = sigma(x_ell @ C.T + v @ D.T) + skip(v)  # (G, H): σ(C x + D v) + S v
            outputs.append(member.saturate(member.decoder(v) * member.y_std + member.y_mean))  # (G, p)
        return torch.cat(rates, 1), torch.stack(outputs).mean(0)

    def _pair(self, x: Any, u: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return _paired(x, u, self.n_states, self.n_inputs)

    def derivative(self, x: Any, u: Any) -> np.ndarray:
        """f: the state's rate of change ẋ(t) = f(x(t), u(t)) at G points.

        Args:
            x: the states, (G, n) or one (n,) (a number when n = 1).
            u: the inputs, (G, m) or one (m,) (a number when m = 1); one state or one input is paired with every
                point of the other.

        Returns:
            (G, n) float64, per unit of the model's time (per second when ``dt`` is in seconds).
        """
        with torch.no_grad():
            return self._f_h(*self._pair(x, u))[0].numpy()

    def output(self, x: Any, u: Any) -> np.ndarray:
        """h: the outputs y(t) = h(x(t), u(t)) at G points.

        Args:
            x: the states, (G, n) or one (n,) (a number when n = 1).
            u: the inputs, (G, m) or one (m,) (a number when m = 1); one state or one input is paired with every
                point of the other.

        Returns:
            (G, p) float64.
        """
        with torch.no_grad():
            return self._f_h(*self._pair(x, u))[1].numpy()

    def operating_point(self, u0: Any) -> tuple[np.ndarray, np.ndarray, StateSpace]:
        """The equilibria f(x*, u0) = 0 under constant inputs, their outputs y* = h(x*, u0), and the small-signal
        models there, δẋ = A δx + B δu, δy = C δx + D δu with A = ∂f/∂x, B = ∂f/∂u, C = ∂h/∂x, D = ∂h/∂u (exact,
        reverse-mode autodiff).

        The equilibrium is solved block by block: x_ℓ* = −A_ℓ^{-1} B_ℓ v_ℓ, so η_ℓ = (D_ℓ − C_ℓ A_ℓ^{-1} B_ℓ) v_ℓ,
        the block's DC gain; y* is the discrete model's (:meth:`NonlinearSystem.equilibrium`), whose blocks have the
        same DC gains.

        Args:
            u0: the constant input, (m,) or (G, m) for G points (a number when m = 1).

        Returns:
            x* (G, n) and y* (G, p), float64, and the continuous-time :class:`StateSpace` bank of G systems at
            (x*, u0).

        Raises:
            ValueError: when a block has a pole at s = 0 (an integrator: no unique equilibrium), naming it.
        """
        us = _as_points(u0, self.n_inputs, "u0", "n_inputs")
        parts = []
        with torch.no_grad():
            for i, (member, systems) in enumerate(zip(self._members, self._systems)):
                v = member.encoder((us - member.u_mean) / member.u_std)  # (G, H)
                for ell, ((A, B, C, D), skip, sigma) in enumerate(zip(systems, member.skips, _sigmas(member))):
                    if bool((torch.linalg.eigvals(A).abs() <= 1e-12 * max(1.0, float(A.abs().max()))).any()):
                        where = f"member {i}, " if len(self._members) > 1 else ""
                        raise ValueError(f"operating_point: {where}block {ell} has a pole at s = 0 (an integrator): "
                                         f"no unique equilibrium")
                    x_ell = torch.linalg.solve(A, -(v @ B.T).T).T  # (G, n_ℓ): A x + B v = 0
                    parts.append(x_ell)
                    v = sigma(x_ell @ C.T + v @ D.T) + skip(v)
        x = torch.cat(parts, 1)  # (G, n)
        n = self.n_states
        jacobians, outputs = [], []
        for point in range(x.shape[0]):
            def joint(xu):
                f, h = self._f_h(xu[None, :n], xu[None, n:])
                return torch.cat([f[0], h[0]])  # (n + p,)

            xu = torch.cat([x[point], us[point]])  # (n + m,)
            jacobians.append(torch.autograd.functional.jacobian(joint, xu))  # (n + p, n + m)
            with torch.no_grad():
                outputs.append(joint(xu)[n:])
        J = torch.stack(jacobians).numpy()  # (G, n + p, n + m)
        system = StateSpace.from_continuous(J[:, :n, :n], J[:, :n, n:], J[:, n:, :n], J[:, n:, n:])
        return x.numpy(), torch.stack(outputs).numpy(), system

    def to_control(self, name: str | None = None, inputs: Sequence[str] | None = None,
                   outputs: Sequence[str] | None = None) -> Any:
        """The model as a continuous-time ``control.NonlinearIOSystem`` (``control.nlsys``, dt = 0) whose update
        function is ẋ = :meth:`derivative` and output function :meth:`output`, for ``control.input_output_response``
        (solve_ivp), ``control.find_eqpt``, ``control.linearize`` and ``control.interconnect``. Needs python-control.

        Its state is at rest at x = 0 (the model's rest state), in general no equilibrium: start from x* of
        :meth:`operating_point`. python-control interpolates the input linearly between the time points it is given;
        a sampled command is held exactly by simulating interval by interval.

        Args:
            name: the system's name (python-control's default when None).
            inputs: the m input signals' names (default u[0] .. u[m-1]).
            outputs: the p output signals' names (default y[0] .. y[p-1]). The n states are x[0] .. x[n-1].

        Returns:
            a ``control.NonlinearIOSystem`` with dt = 0.
        """
        control, names = _control_and_names("ContinuousWiener", self, name, inputs, outputs)

        def updfcn(t, x, u, params):
            return self.derivative(np.atleast_1d(x), np.atleast_1d(u))[0]

        def outfcn(t, x, u, params):
            return self.output(np.atleast_1d(x), np.atleast_1d(u))[0]

        return control.nlsys(updfcn, outfcn, inputs=names["inputs"], outputs=names["outputs"], states=self.n_states,
                             dt=0, name=name)
