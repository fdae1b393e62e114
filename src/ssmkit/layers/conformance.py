"""A conformance checker for sequence layers, yours included: :func:`check_layer` runs the layer protocol's checks
(docs/design.md, "The layer protocol") on any :class:`ssmkit.layers.SequenceLayer`, as scikit-learn's
``check_estimator`` does for estimators and gymnasium's ``check_env`` for environments.

A layer written outside this repository (a subclass of ``SequenceLayer``, registered or not) is checked with
``ssmkit.layers.check_layer(layer)``: on a copy converted to float64, in eval mode (training mode too for
``causality``), at small shapes (B = 2, L = 24 and the layer's own H by default), it runs the checks named in
:data:`CHECKS`, in that order, and raises a :class:`ConformanceError` (an ``AssertionError``, so pytest reports it as
a failed assertion) at the first one that fails, naming the check, what differed, the measured error and the
tolerance. It returns what each check found.

Every equality is measured as a relative error, max |a - b| / max |b| over the whole tensor (a state: the largest
over its tensors), against ``rtol`` (float64 1e-10, float32 1e-5: docs/design.md rule 1); gradients against
``grad_rtol``, 10 ``rtol`` unless given (a gradient sums many terms). A capability the layer lacks
(``layer.supports``) is not checked, but calling it must raise ``NotImplementedError`` as the protocol says; the
check's entry then says why it was skipped.

The checks:

- ``state_spec``: ``state_spec()`` is a TensorSpec or a tuple of them, none narrower than the parameters' dtype;
  ``initial_state(b)`` matches it and is zero.
- ``output``: y (B, L, H) finite and not all zero in x's dtype, the final state matching the spec (None when
  bidirectional), x left unchanged, ``return_state=False`` giving None and the same y; L = 1 works.
- ``purity``: ``forward`` and its backward write no parameter or buffer (no in-place write at all, even one that
  leaves the values as they were); the same call twice gives the same output.
- ``causality``: changing x from time t0 on leaves y before t0 unchanged (to rounding), for every t0, and changes y
  after it; in training mode too (``layer.train()``, at t0 = 1 and L/2, dropout masks drawn from one seed), where a
  leak would train the layer on the future.
- ``batch``: each batch item's output and final state equal the item run alone, while another item holds NaN and inf;
  forward leaves the state it is given unchanged.
- ``chunked``: ``forward(x, initial_state(B))`` equals ``forward(x)`` (state None means zeros), and
  ``forward(x[:, :k])`` continued by ``forward(x[:, k:], state)`` equals ``forward(x)``, output, final state and
  gradients.
- ``step``: ``step`` over x from a state equals ``forward(x, state)``, output and final state; it writes no
  parameter or buffer, and neither its input x_t nor the state it is given.
- ``gradients``: every trainable parameter, the input and the initial state receive a finite gradient (an exactly
  zero one is named in the result, not failed: a zero-initialised gate downstream gives one).
- ``gradcheck``: ``torch.autograd.gradcheck`` of y with respect to x and the parameters (float64 only).
- ``kernel``: y equals the exported kernel's convolution, y_t = Σ_{s≤t} K[t-s] u_s (+ Σ_{s>t} K_1[s-t-1] u_s when
  bidirectional).
- ``state_space``: simulating ``state_space()`` from a zero state reproduces y, and its real realisation (the ONNX
  graph's) started from a layer's state, in ``onnx_state``'s layout, reproduces y and the final state: an exported
  system continues a layer's state as the layer does.

What is not checked here, since an arbitrary layer need not have it: the agreement of the backends a layer declares
(each backend can be forced with ``ssmkit.ops.use_backend`` around a call of ``check_layer``), autocast, long
sequences, ``torch.compile`` and export.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Collection

import torch
from torch import nn
from torch.autograd.gradcheck import GradcheckError

from ssmkit.layers.protocol import SequenceLayer
from ssmkit.layers.state import State, StateSpec, TensorSpec, check_state, map_state, select_state

CHECKS = ("state_spec", "output", "purity", "causality", "batch", "chunked", "step", "gradients", "gradcheck",
          "kernel", "state_space")
"""The names of :func:`check_layer`'s checks, in the order they run: the properties of one ``forward`` call first,
then the continuation of a state, the gradients and the exports (so a layer that peeks at the future fails
``causality`` before its chunks, which see another future, fail ``chunked``)."""

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
"""The relative tolerance of every equality by dtype, unless ``rtol`` says otherwise (docs/design.md rule 1)."""

CAUSAL_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}
"""How much y before t0 may move, relative to max |y|, when x moves from t0 on: an FFT convolution mixes every time
step by rounding alone (~1e-16 relative in float64, ~1e-7 in float32); anything larger is a leak from the future."""

GRADCHECK_TOLERANCE = {"atol": 1e-7, "rtol": 1e-5}
"""The tolerances given to ``torch.autograd.gradcheck`` (finite differences in float64)."""

PREFIX = 5
"""Steps of the prefix whose final state starts the ``step``, ``batch`` and ``gradients`` checks: a state the layer
itself reached (a nonzero one, of the length a growing state has after 5 steps)."""


class ConformanceError(AssertionError):
    """A layer failed one of :func:`check_layer`'s checks (an ``AssertionError``: pytest reports it as a failed
    assertion).

    Args:
        check: the check's name, one of :data:`CHECKS`.
        message: what differed (it names the layer and the check).
        error: the measured error, or None where the failure is not a number (a wrong shape, an exception).
        tolerance: the tolerance the error exceeded, or None.
    """

    def __init__(self, check: str, message: str, error: float | None = None, tolerance: float | None = None) -> None:
        super().__init__(message)
        self.check = check
        self.error = error
        self.tolerance = tolerance


class _Failure(Exception):
    """Raised inside a check: what differed, and the measured error and tolerance when it is a number."""

    def __init__(self, message: str, error: float | None = None, tolerance: float | None = None) -> None:
        super().__init__(message)
        self.message, self.error, self.tolerance = message, error, tolerance


class _Skipped(Exception):
    """Raised inside a check that does not apply to the layer: the reason."""


@dataclass
class _Setup:
    """What every check reads: the layer (already on its device, in its dtype, in eval mode), the sizes, the
    tolerances and a seeded generator of the inputs."""

    layer: SequenceLayer
    dtype: torch.dtype
    device: torch.device
    B: int
    L: int
    H: int
    rtol: float
    grad_rtol: float
    seed: int

    def start(self, check: str) -> None:
        """A generator of the check's own, from the seed and the check's place in CHECKS: each check draws the same
        inputs whichever checks ran before it."""
        self.generator = torch.Generator().manual_seed(self.seed * len(CHECKS) + CHECKS.index(check))

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal numbers of ``shape`` in the layer's dtype and device (drawn in float64 on the CPU)."""
        return torch.randn(shape, generator=self.generator, dtype=torch.float64).to(self.device, self.dtype)

    def prefix_state(self) -> State | None:
        """The final state of ``forward`` over PREFIX random steps (None for a bidirectional layer)."""
        if self.layer.bidirectional:
            return None
        with torch.no_grad():
            _, h = self.layer(self.randn(self.B, PREFIX, self.H))
        return h


# ---------------------------------------------------------------------------------------------------------------------
# Measures


def _leaves(state: State | None) -> list[torch.Tensor]:
    """The tensors of a state (a tensor, or nested tuples of tensors), in order."""
    if state is None:
        return []
    if isinstance(state, (tuple, list)):
        return [t for s in state for t in _leaves(s)]
    return [state]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in float64 (complex128 where either is complex); 0 for two empty tensors of one shape,
    inf for tensors of different shapes."""
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    wide = torch.complex128 if (a.is_complex() or b.is_complex()) else torch.float64
    a, b = a.detach().to(wide), b.detach().to(wide)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _state_err(a: State | None, b: State | None) -> float:
    """The largest relative error over the tensors of two states (inf when their structures differ)."""
    la, lb = _leaves(a), _leaves(b)
    if len(la) != len(lb):
        return float("inf")
    return max((_rel_err(x, y) for x, y in zip(la, lb)), default=0.0)


def _require(err: float, tol: float, what: str) -> float:
    """Raise a failure unless err <= tol (a NaN error fails); return err."""
    if not err <= tol:
        raise _Failure(what, err, tol)
    return err


def _trainable(layer: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in layer.named_parameters() if p.requires_grad]


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype.to_real() if dtype.is_complex else dtype


def _passed(err: float, tol: float) -> str:
    return f"passed: max relative error {err:.2g} (tolerance {tol:.2g})"


# ---------------------------------------------------------------------------------------------------------------------
# The checks (each returns what it found, raises _Failure, or raises _Skipped with the reason)


def _check_state_spec(s: _Setup) -> str:
    """``state_spec()`` is a :class:`TensorSpec` or a (nested) tuple of them, no floating spec narrower than the
    parameters (a float64 layer keeps a float64 or complex128 state; a float32 layer may keep a float64 counter, as
    attention's position); ``initial_state(b)`` for b = 1 and B matches the spec (structure, shape (b, *shape),
    dtype, device) and is all zeros, a growing axis of length 0."""
    layer = s.layer
    spec = layer.state_spec()

    def walk(sp: StateSpec, path: str) -> None:
        if isinstance(sp, tuple):
            for i, part in enumerate(sp):
                walk(part, f"{path}[{i}]")
            return
        if not isinstance(sp, TensorSpec):
            raise _Failure(f"state_spec(){path} is a {type(sp).__name__}; expected a TensorSpec or a tuple of them")
        if sp.dtype.is_floating_point or sp.dtype.is_complex:
            if _real_dtype(sp.dtype).itemsize < s.dtype.itemsize:
                raise _Failure(f"state_spec(){path} is {sp.dtype} for a {s.dtype} layer: a state spec follows the "
                               "parameters' dtype (complex: its complex counterpart), or is wider")

    walk(spec, "")
    for b in (1, s.B):
        h = layer.initial_state(b)
        try:
            check_state(h, spec, b, s.device, f"initial_state({b})")
        except ValueError as err:
            raise _Failure(f"initial_state({b}) does not match state_spec(): {err}") from None
        if any(bool((t != 0).any()) for t in _leaves(h)):
            raise _Failure(f"initial_state({b}) is not zero")
    return "passed"


def _check_output(s: _Setup) -> str:
    """y, h = layer(x) gives y (B, L, H) in x's dtype, finite and not all zero for a random x, and h matching
    ``state_spec()`` (None when bidirectional); x is left unchanged; ``layer(x, return_state=False)`` gives (y, None)
    with the same y; L = 1 works."""
    layer = s.layer
    x = s.randn(s.B, s.L, s.H)
    before = x.clone()
    with torch.no_grad():
        out = layer(x)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise _Failure(f"forward must return a pair (y, state); got {type(out).__name__}")
        y, h = out
        if not torch.equal(x, before):
            raise _Failure("forward wrote into its input x")
        if not isinstance(y, torch.Tensor) or y.shape != x.shape or y.dtype != x.dtype:
            found = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise _Failure(f"y must be {tuple(x.shape)} {x.dtype} (the input's shape and dtype); got {found}")
        if not bool(torch.isfinite(y).all()):
            raise _Failure("y is not finite for a finite input")
        if not bool(y.any()):
            raise _Failure("y is zero for a random input, so every comparison of outputs would pass without checking "
                           "anything: give the layer nonzero weights first (a zero-initialised output projection: "
                           "fill it with random numbers)")
        if layer.bidirectional:
            if h is not None:
                raise _Failure("a bidirectional layer returns no state (None); got one")
        else:
            if h is None:
                raise _Failure("forward(x) returned no final state (None): a causal layer returns it")
            try:
                check_state(h, layer.state_spec(), s.B, s.device, "the final state")
            except ValueError as err:
                raise _Failure(f"forward's final state does not match state_spec(): {err}") from None
        y_no_state, none = layer(x, return_state=False)
        if none is not None:
            raise _Failure("forward(x, return_state=False) must return None as its state")
        err = _require(_rel_err(y_no_state, y), s.rtol, "return_state=False changed y")
        y1, _ = layer(x[:, :1])
        if y1.shape != (s.B, 1, s.H):
            raise _Failure(f"y must be {(s.B, 1, s.H)} for an input of length 1; got {tuple(y1.shape)}")
    return _passed(err, s.rtol)


def _kept(state: State | None) -> list[torch.Tensor]:
    """Copies of a state's tensors, to check afterwards that a call left the state it was given alone."""
    return [t.detach().clone() for t in _leaves(state)]


def _left_alone(state: State | None, before: list[torch.Tensor], call: str) -> None:
    """Raise a failure unless the tensors of ``state`` still hold the values ``before`` (:func:`_kept`): ``call``
    must return a new state and leave its argument as it was (a caller may continue one state twice: beam search,
    several continuations of one prompt)."""
    for i, (now, was) in enumerate(zip(_leaves(state), before)):
        if not _same(now.detach(), was):
            raise _Failure(f"{call} wrote into the state it was given (state tensor {i}): a layer must return a new "
                           "state and leave its argument alone (a caller may continue one state twice)")


def _snapshot(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in (*layer.named_parameters(), *layer.named_buffers())}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bits, NaN equal to NaN."""
    return a.shape == b.shape and bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


def _versions(layer: nn.Module) -> dict[str, int]:
    """The version counter of every parameter and buffer: an in-place write moves it even where it leaves the
    values as they were (``clamp_`` of weights inside the clamp's range)."""
    return {name: t._version for name, t in (*layer.named_parameters(), *layer.named_buffers())}


def _unchanged(layer: nn.Module, before: dict[str, torch.Tensor], during: str,
               versions: dict[str, int] | None = None) -> None:
    """Raise a failure unless the layer's parameters and buffers hold the values of the snapshot ``before`` and,
    where ``versions`` (:func:`_versions`) is given, were not written in place at all."""
    for name, value in _snapshot(layer).items():
        if name not in before or not _same(value, before[name]):
            raise _Failure(f"{name} changed during {during}: a layer must not write its parameters or buffers")
    now = _versions(layer)
    for name, version in (versions or {}).items():
        if now.get(name) != version:
            raise _Failure(f"{name} was written in place during {during} (its values happen to be unchanged at "
                           "these weights): a layer must not write its parameters or buffers")


def _check_purity(s: _Setup) -> str:
    """``forward`` (with and without gradients) and its backward write no parameter or buffer (forward is a function
    of the parameters and the input: docs/design.md rule 5), and the same call twice gives the same y. (The ``step``
    check asserts the same of ``step``.)"""
    layer = s.layer
    before, versions = _snapshot(layer), _versions(layer)
    x = s.randn(s.B, s.L, s.H)
    y, _ = layer(x)
    if y.requires_grad:
        y.square().sum().backward()
    with torch.no_grad():
        y_again, _ = layer(x)
    layer.zero_grad(set_to_none=True)
    _unchanged(layer, before, "forward and backward", versions)
    err = _require(_rel_err(y_again, y), s.rtol, "the same forward call twice gave different outputs")
    return _passed(err, s.rtol)


def _check_causality(s: _Setup) -> str:
    """For every t0 in 1..L-1: x' = x with x'[:, t0:] moved by noise gives max |y'[:, :t0] - y[:, :t0]| <= tol max |y|
    (CAUSAL_TOLERANCE: rounding only), and for t0 in {1, L/2} y'[:, t0:] != y[:, t0:] (the check sees the layer
    respond); then, for t0 in {1, L/2}, the leak again in training mode (each call's dropout masks from one seed).
    Skipped for a bidirectional layer."""
    layer = s.layer
    if layer.bidirectional:
        raise _Skipped("bidirectional: the output depends on later inputs by design")
    tol = CAUSAL_TOLERANCE[s.dtype]
    x = s.randn(s.B, s.L, s.H)
    worst = 0.0
    with torch.no_grad():
        y, _ = layer(x)
        scale = float(y.abs().max().clamp_min(1e-300))
        for t0 in range(1, s.L):  # every t0: a leak at an internal chunk's boundary shows at that t0 alone
            moved = x.clone()
            moved[:, t0:] += s.randn(s.B, s.L - t0, s.H)
            y2, _ = layer(moved)
            leak = float((y2[:, :t0] - y[:, :t0]).abs().max()) / scale
            worst = max(worst, _require(leak, tol, f"y before t0={t0} changed when x changed from t0 on: the layer "
                                                   "sees the future"))
            # (the response from t0 on is asked for at t0 = 1 and L/2 only: a layer without a skip, y_t = C h_{t-1},
            # answers x_{L-1} after the end of the sequence)
            if t0 in (1, s.L // 2) and not float((y2[:, t0:] - y[:, t0:]).abs().max()) / scale > tol:
                raise _Failure(f"y from t0={t0} on did not change when x did: the layer ignores its input, so "
                               "causality cannot be checked")
    # training mode, where the layer is trained: the same at t0 = 1 and L/2, each call's dropout masks from one seed
    layer.train()
    try:
        with torch.no_grad():
            y = _seeded(lambda: layer(x)[0], s)
            scale = float(y.abs().max().clamp_min(1e-300))
            for t0 in sorted({1, s.L // 2}):
                moved = x.clone()
                moved[:, t0:] += s.randn(s.B, s.L - t0, s.H)
                y2 = _seeded(lambda v=moved: layer(v)[0], s)
                leak = float((y2[:, :t0] - y[:, :t0]).abs().max()) / scale
                worst = max(worst, _require(leak, tol, f"in training mode (layer.train()), y before t0={t0} changed "
                                                       "when x changed from t0 on: the layer sees the future while "
                                                       "it is trained"))
    finally:
        layer.eval()
    return f"passed: max relative leak {worst:.2g} (tolerance {tol:.2g})"


def _seeded(call: Callable[[], torch.Tensor], s: _Setup) -> torch.Tensor:
    """``call()`` with the random number generators seeded from ``s.seed`` and restored afterwards: two calls draw
    the same dropout masks."""
    with torch.random.fork_rng(devices=[s.device] if s.device.type == "cuda" else []):
        torch.manual_seed(s.seed)
        return call()


def _check_batch(s: _Setup) -> str:
    """Item 0 of the batch holds a NaN and an inf; every other item b's output and final state, from a state h_0,
    equal forward(x[b:b+1], h_0[b]) run alone (``rtol``) and are finite: items do not see each other."""
    layer = s.layer
    x = s.randn(s.B, s.L, s.H)
    h0 = s.prefix_state()
    bad = x.clone()
    bad[0, 1, 0], bad[0, s.L // 2, s.H - 1] = float("nan"), float("inf")
    worst = 0.0
    with torch.no_grad():
        before = _kept(h0)
        y, h = layer(bad, h0)
        _left_alone(h0, before, "forward")
        for b in range(1, s.B):
            alone_state = None if h0 is None else select_state(h0, [b])
            y_b, h_b = layer(x[b:b + 1], alone_state)
            if not bool(torch.isfinite(y[b]).all()):
                raise _Failure(f"a NaN in batch item 0 reached item {b}'s output")
            worst = max(worst, _require(_rel_err(y[b:b + 1], y_b), s.rtol,
                                        f"batch item {b}'s output differs from the item run alone"))
            if h is not None:
                worst = max(worst, _require(_state_err(select_state(h, [b]), h_b), s.rtol,
                                            f"batch item {b}'s final state differs from the item run alone"))
    return _passed(worst, s.rtol)


def _grads(loss: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def _check_chunked(s: _Setup) -> str:
    """y, h = forward(x) equals forward(x, initial_state(B)) (``rtol``: None means the zero state, which forward
    leaves unchanged); for k in {1, L/2, L-1}: forward(x[:, :k]) = (y_1, h_1), forward(x[:, k:], h_1) = (y_2,
    h_2) with cat(y_1, y_2) = y and h_2 = h (``rtol``), and the gradients of Σ g ⊙ y with respect to x and the
    parameters agree between the one pass and the two chunks (``grad_rtol``)."""
    layer = s.layer
    if layer.bidirectional:
        raise _Skipped("bidirectional: no state to continue from")
    x = s.randn(s.B, s.L, s.H).requires_grad_()
    params = [p for _, p in _trainable(layer)]
    worst = 0.0
    with torch.no_grad():
        y, h = layer(x)
        for k in sorted({1, s.L // 2, s.L - 1}):
            y1, h1 = layer(x[:, :k])
            y2, h2 = layer(x[:, k:], h1)
            worst = max(worst, _require(_rel_err(torch.cat([y1, y2], 1), y), s.rtol,
                                        f"forward(x[:, :{k}]) continued by forward(x[:, {k}:], state) differs from "
                                        "forward(x) in y"))
            worst = max(worst, _require(_state_err(h2, h), s.rtol,
                                        f"the final state after chunks split at {k} differs from forward(x)'s"))
        h0 = layer.initial_state(s.B)  # the empty first chunk: state=None means the zero state initial_state gives
        before = _kept(h0)
        y0, h_0 = layer(x, h0)
        _left_alone(h0, before, "forward")
        worst = max(worst, _require(_rel_err(y0, y), s.rtol, f"forward(x, initial_state({s.B})) differs from "
                                    "forward(x) in y: state=None must mean the zero state initial_state gives"))
        worst = max(worst, _require(_state_err(h_0, h), s.rtol, f"forward(x, initial_state({s.B})) differs from "
                                    "forward(x) in the final state: state=None must mean the zero state "
                                    "initial_state gives"))
    g = s.randn(s.B, s.L, s.H)
    k = s.L // 2
    one = _grads((layer(x)[0] * g).sum(), [x, *params])
    y1, h1 = layer(x[:, :k])
    y2, _ = layer(x[:, k:], h1)
    two = _grads((torch.cat([y1, y2], 1) * g).sum(), [x, *params])
    names = ["x", *(name for name, _ in _trainable(layer))]
    worst_grad = 0.0
    for name, a, b in zip(names, two, one):
        if (a is None) != (b is None):
            raise _Failure(f"the gradient of {name} is None in one of the one-pass and chunked runs only")
        if a is not None:
            worst_grad = max(worst_grad, _require(_rel_err(a, b), s.grad_rtol,
                                                  f"the gradient of {name} through two chunks differs from the one "
                                                  "pass"))
    return f"{_passed(worst, s.rtol)}; gradients {worst_grad:.2g} (tolerance {s.grad_rtol:.2g})"


def _check_step(s: _Setup) -> str:
    """From a state h_0 (a prefix's final state), y_t, h_t = step(x_t, h_{t-1}) for t = 1..L gives forward(x, h_0)'s
    y (each y_t (B, H) in x's dtype) and final state (``rtol``), and writes no parameter or buffer. Without the
    capability, ``step`` raises ``NotImplementedError``."""
    layer = s.layer
    x = s.randn(s.B, s.L, s.H)
    if not layer.supports("step"):
        _expect_not_implemented(lambda: layer.step(x[:, 0], layer.initial_state(s.B)), "step")
        raise _Skipped(layer.unsupported("step"))
    h0 = s.prefix_state()
    with torch.no_grad():
        y, h = layer(x, h0)
        before, versions = _snapshot(layer), _versions(layer)
        x_before = x.clone()
        state, ys = h0, []
        for t in range(s.L):
            given = _kept(state)
            y_t, next_state = layer.step(x[:, t], state)
            _left_alone(state, given, f"step (at t={t})")
            state = next_state
            if t == 0 and (y_t.shape != (s.B, s.H) or y_t.dtype != x.dtype):
                raise _Failure(f"step's y_t must be {(s.B, s.H)} {x.dtype}; got {tuple(y_t.shape)} {y_t.dtype}")
            ys.append(y_t)
        if not torch.equal(x, x_before):
            raise _Failure("step wrote into its input x_t")
    _unchanged(layer, before, "step", versions)
    err = _require(_rel_err(torch.stack(ys, 1), y), s.rtol, "stepping token by token differs from forward in y")
    err = max(err, _require(_state_err(state, h), s.rtol, "the state after stepping differs from forward's"))
    return _passed(err, s.rtol)


def _expect_not_implemented(call: Callable[[], object], capability: str) -> None:
    """Raise a failure unless ``call`` raises ``NotImplementedError`` (the protocol's answer for a missing
    capability)."""
    try:
        call()
    except NotImplementedError:
        return
    except Exception as err:  # noqa: BLE001 (any other exception is the failure reported)
        raise _Failure(f"the layer lacks {capability} (supports({capability!r}) is False) but calling it raised "
                       f"{type(err).__name__} instead of NotImplementedError: {err}") from err
    raise _Failure(f"the layer lacks {capability} (supports({capability!r}) is False) but calling it returned")


def _check_gradients(s: _Setup) -> str:
    """The loss Σ w ⊙ y + Σ |h|² of y, h = forward(x, h_0) gives every trainable parameter, x and each non-empty
    floating tensor of h_0 a gradient (not None) that is finite."""
    layer = s.layer
    x = s.randn(s.B, s.L, s.H).requires_grad_()
    h0 = s.prefix_state()
    if h0 is not None:
        h0 = map_state(lambda t: t.detach().clone().requires_grad_(t.is_floating_point() or t.is_complex()), h0)
    y, h = layer(x, h0)
    loss = (y * s.randn(s.B, s.L, s.H)).sum() + sum(t.abs().square().sum() for t in _leaves(h)
                                                     if t.is_floating_point() or t.is_complex())
    named = [("x", x), *((f"state tensor {i}", t) for i, t in enumerate(_leaves(h0)) if t.requires_grad and t.numel()),
             *((f"parameter {n}", p) for n, p in _trainable(layer))]
    grads = _grads(loss, [t for _, t in named])
    zero = []
    for (name, _), g in zip(named, grads):
        if g is None:
            raise _Failure(f"{name} gets no gradient (it does not reach the output or the final state)")
        if not bool(torch.isfinite(g).all()):
            raise _Failure(f"{name}'s gradient is not finite")
        if not bool(g.any()):
            zero.append(name)
    # an exactly zero gradient is reported, not failed: a zero-initialised gate or projection downstream gives one
    return f"passed: {len(named)} tensors" + (f"; exactly zero gradient: {', '.join(zero)}" if zero else "")


def _check_gradcheck(s: _Setup) -> str:
    """``torch.autograd.gradcheck`` (fast mode: one random direction, GRADCHECK_TOLERANCE) of y = forward(x) with
    respect to x (1, min(L, 9), H) and every trainable parameter: the analytic gradients equal finite differences.
    float64 only."""
    layer = s.layer
    if s.dtype != torch.float64:
        raise _Skipped("gradcheck needs float64")
    names = [n for n, _ in _trainable(layer)]
    inputs = (s.randn(1, min(s.L, 9), s.H).requires_grad_(),
              *(p.detach().clone().requires_grad_() for _, p in _trainable(layer)))

    def run(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,), {"return_state": False})[0]

    try:
        torch.autograd.gradcheck(run, inputs, fast_mode=True, **GRADCHECK_TOLERANCE)
    except GradcheckError as err:
        raise _Failure(f"gradcheck failed: {err}") from None
    return f"passed: x and {len(names)} parameters"


def _check_kernel(s: _Setup) -> str:
    """K = kernel(L) in the parameters' dtype, (H, L) or (H_out, H_in, L) with a leading 2 when bidirectional, and
    forward(x) = Σ_{s≤t} K[t-s] u_s (+ Σ_{s>t} K_1[s-t-1] u_s, bidirectional) (``rtol``). Without the capability,
    ``kernel`` raises ``NotImplementedError``."""
    layer = s.layer
    if not layer.supports("kernel"):
        _expect_not_implemented(lambda: layer.kernel(s.L), "kernel")
        raise _Skipped(layer.unsupported("kernel"))
    x = s.randn(s.B, s.L, s.H)
    with torch.no_grad():
        K = layer.kernel(s.L)
        y, _ = layer(x)
    sides = 2 if layer.bidirectional else 1
    shapes = [(s.H, s.L), (s.H, s.H, s.L)]
    shapes = [(2, *shape) for shape in shapes] if sides == 2 else shapes
    if not isinstance(K, torch.Tensor) or tuple(K.shape) not in shapes or K.dtype != s.dtype:
        found = f"{tuple(K.shape)} {K.dtype}" if isinstance(K, torch.Tensor) else type(K).__name__
        raise _Failure(f"kernel({s.L}) must be one of {shapes} in {s.dtype}; got {found}")
    K = K if sides == 2 else K.unsqueeze(0)  # (C, H, L) or (C, H_out, H_in, L)
    if K.dim() == 3:
        K = torch.diag_embed(K.transpose(1, 2)).permute(0, 2, 3, 1)  # (C, H, L) -> (C, H_out, H_in, L), diagonal
    err = _require(_rel_err(_convolve(K, x), y), s.rtol, "forward differs from the convolution with kernel(L)")
    return _passed(err, s.rtol)


def _convolve(K: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """y_t = Σ_{s≤t} K[0][t-s] u_s (+ Σ_{s>t} K[1][s-t-1] u_s when C = 2), by a Toeplitz product.

    Args:
        K: (C, H_out, H_in, L) kernels, C = 1 causal or 2 (causal, then anti-causal from lag -1).
        u: (B, L, H_in) input.

    Returns:
        (B, L, H_out).
    """
    L = u.shape[1]
    t = torch.arange(L, device=u.device)
    lag = t[:, None] - t[None, :]  # (L, L): t - s
    T = K[0][..., lag.clamp(min=0)] * (lag >= 0)  # (H_out, H_in, L, L)
    if K.shape[0] == 2:
        T = T + K[1][..., (-lag - 1).clamp(min=0)] * (lag < 0)
    return torch.einsum("oits,bsi->bto", T, u)  # (B, L, H_out)


def _check_state_space(s: _Setup) -> str:
    """S = state_space() has G·m = G·p = H, and S.simulate(x) from x[0] = 0 equals forward(x) (``rtol``); from a
    reachable state h_0 (:meth:`_Setup.prefix_state`), S's real realisation (``RealLTIStep``, the exported graph's)
    stepped from h_0 in ``onnx_state``'s layout (``realisation_state``) equals forward(x, h_0), output and final
    state (not checked, and said so, for a state without such a layout). Without the capability,
    ``state_space`` raises ``NotImplementedError``."""
    layer = s.layer
    if not layer.supports("state_space"):
        _expect_not_implemented(layer.state_space, "state_space")
        raise _Skipped(layer.unsupported("state_space"))
    from ssmkit.analysis.statespace import StateSpace

    ss = layer.state_space()
    if not isinstance(ss, StateSpace):
        raise _Failure(f"state_space() must return an ssmkit.analysis.StateSpace (A, B, C, D in the control "
                       f"convention, dt); got {type(ss).__name__}")
    if ss.nsystems * ss.ninputs != s.H or ss.nsystems * ss.noutputs != s.H:
        raise _Failure(f"state_space() must map H = {s.H} inputs to H outputs; got {ss.nsystems} systems of "
                       f"{ss.ninputs} inputs and {ss.noutputs} outputs")
    x = s.randn(s.B, s.L, s.H)
    with torch.no_grad():
        y, _ = layer(x)
    y_sim = ss.simulate(x.detach().double().cpu())
    err = _require(_rel_err(y_sim, y.double().cpu()), s.rtol, "simulating state_space() differs from forward")
    h0 = s.prefix_state()
    if h0 is None:
        return _passed(err, s.rtol)
    from ssmkit.analysis.onnx_export import RealLTIStep, realisation_state

    real = RealLTIStep(ss, torch.float64)
    if not isinstance(h0, torch.Tensor):
        return f"{_passed(err, s.rtol)}; from a state: not checked (the state is not one tensor)"
    def f64(state: torch.Tensor) -> torch.Tensor:
        return state.detach().cpu().to(torch.complex128 if state.is_complex() else torch.float64)

    try:
        z = realisation_state(real, f64(h0), type(layer).__name__)
    except NotImplementedError as why:
        return f"{_passed(err, s.rtol)}; from a state: not checked ({why})"
    with torch.no_grad():
        y, h = layer(x, h0)
        ys = []
        for t in range(s.L):
            y_t, z = real.step(x[:, t].detach().double().cpu(), z)
            ys.append(y_t)
    from_state = "from the layer's state (onnx_state's layout)"
    err = max(err, _require(_rel_err(torch.stack(ys, 1), y.double().cpu()), s.rtol,
                            f"stepping the real realisation of state_space() {from_state} differs from forward(x, "
                            "state): an exported graph started from a layer's state (onnx_state, a controller) "
                            "would continue it wrongly"))
    err = max(err, _require(_rel_err(z, realisation_state(real, f64(h), type(layer).__name__)),
                            s.rtol, f"the final state of the realisation stepped {from_state} differs from forward's"))
    return _passed(err, s.rtol)


_RUN = {
    "state_spec": _check_state_spec,
    "output": _check_output,
    "purity": _check_purity,
    "causality": _check_causality,
    "batch": _check_batch,
    "chunked": _check_chunked,
    "step": _check_step,
    "gradients": _check_gradients,
    "gradcheck": _check_gradcheck,
    "kernel": _check_kernel,
    "state_space": _check_state_space,
}


# ---------------------------------------------------------------------------------------------------------------------
# The entry point


def _prepare(layer: object, dtype: torch.dtype, device: torch.device | str | None) -> SequenceLayer:
    """The layer to check: a deep copy of an instance, or a factory's new layer, on ``device`` in ``dtype`` (complex
    tensors in its complex counterpart), in eval mode."""
    if isinstance(layer, nn.Module):
        built = copy.deepcopy(layer)
    elif callable(layer):
        built = layer()
    else:
        raise ValueError(f"layer must be a SequenceLayer or a callable returning one; got {type(layer).__name__}")
    if not isinstance(built, SequenceLayer):
        what = "the factory returned" if not isinstance(layer, nn.Module) else "got"
        raise ValueError(f"layer must be a ssmkit.layers.SequenceLayer (or a callable returning one); {what} "
                         f"{type(built).__name__}")
    if device is not None:
        built = built.to(device)
    complex_dtype = dtype.to_complex()
    # Module.to(dtype) would drop the imaginary part of complex tensors: cast each tensor by its kind
    built._apply(lambda t: t.to(complex_dtype if t.is_complex() else dtype) if t.is_floating_point() or t.is_complex()
                 else t)
    return built.eval()


def check_layer(
    layer: SequenceLayer | Callable[[], SequenceLayer],
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    batch_size: int = 2,
    length: int = 24,
    rtol: float | None = None,
    grad_rtol: float | None = None,
    seed: int = 0,
    skip: Collection[str] = (),
) -> dict[str, str]:
    """Check that a layer follows the layer protocol: run :data:`CHECKS` in order and raise at the first failure.

    The checks run on a copy of the layer (the caller's layer is not changed), converted to ``dtype`` and ``device``,
    in eval mode (dropout off; ``causality`` also looks at training mode), on random inputs x (B, L, H) with
    H = ``layer.d_model``, drawn from ``seed``. Each check, with the equation or property it asserts, is described in
    this module's docstring.

    Args:
        layer: a :class:`SequenceLayer` (registered or not), or a callable without arguments that builds one (e.g.
            ``functools.partial(ssmkit.layers.build, "s4d", d_model=3)``).
        dtype: torch.float64 (equalities to 1e-10; ``gradcheck`` runs) or torch.float32 (1e-5; no ``gradcheck``).
        device: where to run; None keeps the layer's device.
        batch_size: B, an int >= 2 (the ``batch`` check compares items).
        length: L, an int >= 4: the sequence length of every check (the prefix that makes a starting state is 5 steps,
            ``gradcheck`` takes min(L, 9)). Exceed your layer's internal chunk length to check the chunk boundaries.
        rtol: the relative tolerance of the equalities, max |a - b| / max |b|; None takes 1e-10 for float64 and
            1e-5 for float32.
        grad_rtol: the relative tolerance of the gradients' equalities (the ``chunked`` check); None takes 10 rtol
            (a gradient sums many terms).
        seed: seed of the random inputs (a generator of their own: the global random state is left alone).
        skip: names of checks not to run (from :data:`CHECKS`), e.g. ``("gradcheck",)`` for a slow layer.

    Returns:
        for each check, in order, ``"passed"`` (with the measured error where it is a number) or ``"skipped: "`` and
        why (a capability the layer lacks, a bidirectional layer, or ``skip``).

    Raises:
        ConformanceError: the first check that fails, with its name (``.check``), the measured error (``.error``) and
            the tolerance (``.tolerance``); an exception the layer raised inside a check is its cause.
        ValueError: an argument out of range, or ``layer`` not a SequenceLayer.
    """
    if dtype not in TOLERANCE:
        raise ValueError(f"dtype must be torch.float64 or torch.float32; got {dtype}")
    for name, value, low in (("batch_size", batch_size, 2), ("length", length, 4)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    for name, value in (("rtol", rtol), ("grad_rtol", grad_rtol)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1):
            raise ValueError(f"{name} must be a float in (0, 1) or None; got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int; got {seed!r}")
    if isinstance(skip, str) or not all(isinstance(n, str) for n in skip):
        raise ValueError(f"skip must be a collection of check names from {CHECKS}; got {skip!r}")
    unknown = sorted(set(skip) - set(CHECKS))
    if unknown:
        raise ValueError(f"skip must name checks from {CHECKS}; got unknown {unknown}")
    built = _prepare(layer, dtype, device)
    who = type(built).__name__
    H = getattr(built, "d_model", None)
    if isinstance(H, bool) or not isinstance(H, int) or H < 1:  # every check needs it: the input's width
        raise ConformanceError("output", f"{who} fails check 'output': d_model must be a positive int (the input's "
                                         f"H); got {H!r}")
    rtol = TOLERANCE[dtype] if rtol is None else float(rtol)
    grad_rtol = 10 * rtol if grad_rtol is None else float(grad_rtol)
    setup = _Setup(built, dtype, built.state_device(), batch_size, length, H, rtol, grad_rtol, seed)
    results: dict[str, str] = {}
    for check in CHECKS:
        if check in skip:
            results[check] = "skipped: asked (skip)"
            continue
        setup.start(check)
        try:
            results[check] = _RUN[check](setup)
        except _Skipped as why:
            results[check] = f"skipped: {why}"
        except _Failure as failure:
            measured = "" if failure.error is None else f" (error {failure.error:.3g} > {failure.tolerance:.3g})"
            raise ConformanceError(check, f"{who} fails check {check!r}: {failure.message}{measured}",
                                   failure.error, failure.tolerance) from failure.__cause__
        except Exception as err:  # noqa: BLE001 (the layer's own error, reported as this check's failure)
            message = f"{who} fails check {check!r}: it raised {type(err).__name__}: {err}"
            raise ConformanceError(check, message) from err
    return results
