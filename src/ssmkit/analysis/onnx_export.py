"""Export of a model's one-step recurrent function to ONNX, for embedded controllers (onnxruntime, TensorRT, ...).

    info = ssmkit.analysis.export_onnx(model, "controller.onnx")      # a SequenceModel or a DeepWiener
    session = onnxruntime.InferenceSession("controller.onnx")
    state = info.initial_state(batch_size=4)                          # numpy zeros, one array per state part
    y, *state = session.run(None, {"u": u_t, **dict(zip(info.state_names, state))})

The exported graph computes ``y_t, state' = model.step(u_t, state)`` with real arithmetic only (ONNX and most runtimes
have no complex tensors). Every LTI layer (``supports("state_space")``) is replaced by its exported real realisation
in the control convention, x[k+1] = A x[k] + B u[k], y[k] = C x[k] + D u[k] (``layer.state_space()``), run as:

- **modal** when A is diagonal (complex) or block diagonal with 2×2 rotation blocks [[a, -b], [b, a]] (every
  diagonal layer: S4D, DSS, DLR, S5, LRU): the state is (B, G, M, 2), the real and imaginary parts of the M complex
  modes; each step costs O(G M (m + p)). For these layers the state equals ``torch.view_as_real`` of the layer's own
  state (the control state x[k] is the SSM papers' x_{k-1}), so a state from ``forward`` carries over
  (`onnx_state`).
- **diagonal** when A is real diagonal (Mega's EMA): the state is (B, G, n), the layer's own state, O(G n (m + p)).
- **dense** otherwise (S4's DPLR realisation): the state is (B, G, n) in the realisation's basis, O(G n²) per step;
  for S4 that basis is [Re x, Im x] of the layer's own complex state x, so a state from ``forward`` carries over too.

The LTI cores inside other layers (GSS's diagonal SSM, H3's S4D) are replaced the same way, and Liquid-S4 by
:class:`ssmkit.analysis.onnx_liquid.RealLiquidS4` (S4's real core driven by its liquid input). The other layers
(gated, time-varying mixers) keep their own ``step``, exported as traced; a layer whose state grows (attention's
cache, Mega, Hyena), or whose step the exporter cannot trace, makes `export_onnx` raise ``NotImplementedError`` naming
it; so does a bidirectional layer, up front: it reads the future and has no step (`export_onnx_sequence` with
``with_state=False`` writes its whole-sequence graph from rest).
The batch axis of the graph's input, state and outputs is dynamic (named ``batch``): a graph exported once runs with
any batch size (1 for a controller, more to simulate several scenarios). ``batch_size=B`` fixes it instead, for
runtimes that want static shapes. The trace uses an example batch of 2 (torch.export specialises a size-1 axis).

Samples that arrive with jitter or gaps: ``export_onnx(model, path, intervals=True)`` writes ``(u, interval, state_0,
...) -> (y, next_state_0, ...)``, ``interval`` (B,) the time since the previous sample in nominal sampling periods
(``model.step(u_t, state, interval=)``; ones are the regular step), for a model whose layers all take intervals. Its
LTI layers hold their continuous-time systems and form each step's coefficients from the gap
(:mod:`ssmkit.analysis.onnx_irregular`); the states are the regular graph's. ``OnnxExport.feed`` builds a run's
inputs and checks the gaps: onnxruntime refuses an interval of another rank or dtype, but a graph cannot check values
(a gap <= 0 runs, into a growing or meaningless state).

    info = ssmkit.analysis.export_onnx(model, "jitter.onnx", intervals=True)
    session = onnxruntime.InferenceSession("jitter.onnx")
    state = info.initial_state(batch_size=4)
    y, *state = session.run(None, info.feed(u_t, state, intervals=dt_since_last / Ts))   # gaps (B,) in periods
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ssmkit.analysis.statespace import StateSpace
from ssmkit.layers.protocol import float32_core

__all__ = ["OnnxExport", "RealLTIStep", "StepFunction", "export_onnx", "onnx_state", "real_step_model"]


def _is_diagonal(A: np.ndarray) -> bool:
    """Whether every A[g] (real) is diagonal."""
    n = A.shape[1]
    return n == 1 or not np.any(A[:, ~np.eye(n, dtype=bool)])


def _modal_form(system: StateSpace) -> tuple[np.ndarray, ...] | None:
    """(λ (G, M), B (G, M, m), C (G, p, M) complex, D (G, p, m) real) with y = Re(C x) + D u, or None if not modal."""
    A, B, C, D = system.A, system.B, system.C, system.D
    n = A.shape[1]
    if system.is_complex:
        if np.any(A[:, ~np.eye(n, dtype=bool)]):
            return None
        return np.diagonal(A, axis1=1, axis2=2), B, C, D.real
    if n % 2:
        return None
    M = n // 2
    mask = np.kron(np.eye(M, dtype=bool), np.ones((2, 2), dtype=bool))  # (n, n) the 2×2 diagonal blocks
    if np.any(A[:, ~mask]):
        return None
    a, b = A[:, 0::2, 0::2][:, np.arange(M), np.arange(M)], A[:, 1::2, 0::2][:, np.arange(M), np.arange(M)]  # (G, M)
    if not (np.array_equal(A[:, 1::2, 1::2][:, np.arange(M), np.arange(M)], a)
            and np.array_equal(A[:, 0::2, 1::2][:, np.arange(M), np.arange(M)], -b)):
        return None
    lam = a + 1j * b  # (G, M): the block acts on (Re x, Im x) as multiplication by λ
    B_c = B[:, 0::2, :] + 1j * B[:, 1::2, :]  # (G, M, m)
    C_c = C[:, :, 0::2] - 1j * C[:, :, 1::2]  # (G, p, M): Re(C_c x) = C_re-row · Re x + C_im-row · Im x
    return lam, B_c, C_c, D


class RealState:
    """The state bookkeeping of the real LTI modules that stand in for a layer in the exported graphs
    (`RealLTIStep`, :mod:`ssmkit.analysis.onnx_irregular`'s): zeros of ``state_shape()`` per sequence in ``dtype``,
    on the device of the buffer ``D``, described as a layer describes its state."""

    def state_spec(self):
        """The state of one sequence as a layer describes it (`ssmkit.layers.TensorSpec`): a mixer holding this
        realisation in place of its LTI core (GSS, H3) checks its state against it."""
        from ssmkit.layers.state import TensorSpec

        return TensorSpec(self.state_shape(), self.dtype)

    def state_device(self) -> torch.device:
        """The device of the buffers and the state."""
        return self.D.device

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """Zeros (B, *state_shape()) in the buffers' dtype and device.

        Args:
            batch_size: B.

        Returns:
            the rest state of B sequences.
        """
        return torch.zeros((batch_size,) + self.state_shape(), dtype=self.dtype, device=self.D.device)


class RealLTIStep(RealState, nn.Module):
    """One step of an LTI layer's exported realisation in real arithmetic: y = C x + D u, x' = A x + B u.

    Args:
        system: the layer's ``state_space()`` (G systems, n states, m inputs, p outputs; real or complex).
        dtype: real dtype of the buffers and the state (float32 or float64).

    The state is (B, G, M, 2) in the modal form and (B, G, n) in the diagonal and dense forms (module docstring);
    ``kind`` names the form and ``modal`` is True for the modal and diagonal ones (elementwise in the state).
    """

    def __init__(self, system: StateSpace, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.d_model = system.nsystems * system.ninputs
        self.G, self.m, self.p = system.nsystems, system.ninputs, system.noutputs
        self.dtype = dtype
        as_t = lambda a: torch.tensor(np.ascontiguousarray(a), dtype=dtype)  # noqa: E731
        real = system.to_real()
        n = real.nstates
        modal = None if _is_diagonal(real.A) else _modal_form(system)
        self.kind = "diagonal" if _is_diagonal(real.A) else ("modal" if modal is not None else "dense")
        self.modal = self.kind != "dense"
        if self.kind == "diagonal":
            self.n = n
            for name, value in (("a", np.diagonal(real.A, axis1=1, axis2=2)), ("B", real.B), ("C", real.C),
                                ("D", real.D)):
                self.register_buffer(name, as_t(value))
        elif self.kind == "modal":
            lam, B, C, D = modal
            self.M = lam.shape[1]
            for name, value in (("lam_re", lam.real), ("lam_im", lam.imag), ("B_re", B.real), ("B_im", B.imag),
                                ("C_re", C.real), ("C_im", C.imag), ("D", D)):
                self.register_buffer(name, as_t(value))
        else:
            self.n = n
            for name, value in (("A", real.A), ("B", real.B), ("C", real.C), ("D", real.D)):
                self.register_buffer(name, as_t(value))

    def state_shape(self) -> tuple[int, ...]:
        """The state of one sequence: (G, M, 2) modal, (G, n) dense."""
        return (self.G, self.M, 2) if self.kind == "modal" else (self.G, self.n)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t (B, G·m) -> y_t (B, G·p) and the next state (same shape as ``state``).

        Args:
            x_t: (B, G·m) input.
            state: (B, G, M, 2) or (B, G, n).

        Returns:
            y_t (B, G·p) in x_t's dtype, and the next state.
        """
        for name, t in (("x_t", x_t), ("state", state)):  # the buffers come from numpy: on the CPU until .to(device)
            if t.device != self.D.device:
                raise ValueError(f"{name} must be on the step's device {self.D.device} (move it with .to()); "
                                 f"got {t.device}")
        u = x_t.to(self.dtype).reshape(x_t.shape[0], self.G, self.m)  # (B, G, m)
        y = torch.einsum("gpm,bgm->bgp", self.D, u)  # (B, G, p)
        if self.kind == "diagonal":
            y = y + torch.einsum("gpn,bgn->bgp", self.C, state)
            new = self.a * state + torch.einsum("gnm,bgm->bgn", self.B, u)  # (B, G, n)
        elif self.kind == "modal":
            xr, xi = state[..., 0], state[..., 1]  # (B, G, M) each
            y = y + torch.einsum("gpk,bgk->bgp", self.C_re, xr) - torch.einsum("gpk,bgk->bgp", self.C_im, xi)
            xr_new = self.lam_re * xr - self.lam_im * xi + torch.einsum("gkm,bgm->bgk", self.B_re, u)  # (B, G, M)
            xi_new = self.lam_im * xr + self.lam_re * xi + torch.einsum("gkm,bgm->bgk", self.B_im, u)  # (B, G, M)
            new = torch.stack([xr_new, xi_new], dim=-1)  # (B, G, M, 2)
        else:
            y = y + torch.einsum("gpn,bgn->bgp", self.C, state)
            new = torch.einsum("gij,bgj->bgi", self.A, state) + torch.einsum("gnm,bgm->bgn", self.B, u)  # (B, G, n)
        return y.reshape(x_t.shape[0], self.G * self.p).to(x_t.dtype), new


def real_step_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) whose LTI layers are replaced by their `RealLTIStep`: its ``step`` and
    ``initial_state`` then use real states only, and its outputs equal ``model.step``'s.

    Args:
        model: a SequenceModel, a DeepWiener or any module whose ``step(u_t, state)`` calls its layers' ``step``.

    Returns:
        the converted copy (the original is untouched), without a SequenceModel's ``check_finite`` (a graph cannot
        raise; the check's data-dependent branch also stopped torch.export).

    Raises:
        ValueError: a layer's parameters are float16/bfloat16 (as its ``step`` does; convert with ``.float()``).
    """
    return _replace_lti_layers(model, lambda system, dtype: RealLTIStep(system, dtype=dtype))


def _replace_lti_layers(model: nn.Module, make, make_layer=None) -> nn.Module:
    """A copy of ``model`` (eval mode, no ``check_finite``) with each outer LTI layer replaced by
    ``make(layer.state_space(), dtype)`` on the layer's device (`real_step_model`), each LTI core of a mixer likewise,
    and each Liquid-S4 layer by a `RealLiquidS4` whose S4 core is made by ``make``; with ``make_layer``, the LTI
    layers by ``make_layer(layer, dtype)`` instead (the exports at irregular times, which read the layer itself)."""
    from ssmkit.analysis.onnx_liquid import RealLiquidS4
    from ssmkit.layers.liquid import LiquidS4

    for _, layer in _outer_layers(model):
        # as the layer's own step: half-precision weights are refused (their state_space() alone is computed, in
        # float64; a float16 graph ran the recurrence in float16, 1.5e-3 off the same weights in float32 at step 20)
        layer._check_parameter_dtype()
    copied = copy.deepcopy(model).eval()
    if getattr(copied, "check_finite", False):  # an ONNX graph cannot raise: the copy leaves the NaN/inf check out
        copied.check_finite = False
    liquid = [(n, m) for n, m in _outer_layers(copied) if isinstance(m, LiquidS4)]
    for name, layer in _outer_lti_layers(copied) + _inner_lti_layers(copied) + liquid:
        dtype = next((t.dtype for t in layer.parameters() if t.is_floating_point()), torch.float32)
        if isinstance(layer, LiquidS4):
            with float32_core(layer.state_device().type):
                replacement = RealLiquidS4(layer, make, dtype)
        elif make_layer is not None:
            replacement = make_layer(layer, dtype)
        else:
            replacement = make(layer.state_space(), dtype)
        replacement = replacement.to(layer.state_device())
        if not name:
            return replacement
        parent_name, _, child = name.rpartition(".")
        setattr(copied.get_submodule(parent_name) if parent_name else copied, child, replacement)
    return copied


def _outer_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The sequence layers of ``model`` that are not inside another one (a GSS's inner SSM is the GSS's business)."""
    from ssmkit.layers.protocol import SequenceLayer

    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, SequenceLayer) and not any(name.startswith(f"{outer}.") or not outer for outer, _ in found):
            found.append((name, module))
    return found


def _outer_lti_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in _outer_layers(model) if m.supports("state_space")]


def _inner_lti_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The LTI cores of the other sequence layers (GSS's diagonal SSM, H3's S4D), each named from ``model``: they
    hold complex states, which an ONNX graph cannot, and are replaced like an outer LTI layer."""
    from ssmkit.layers.protocol import SequenceLayer

    found = []
    for outer, layer in _outer_layers(model):
        if layer.supports("state_space"):
            continue
        for name, module in layer.named_modules():
            if name and isinstance(module, SequenceLayer) and module.supports("state_space"):
                found.append((f"{outer}.{name}" if outer else name, module))
    return found


def _flatten(state: Any) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for part in state for t in _flatten(part)]


def _unflatten(template: Any, flat: list[torch.Tensor], start: int = 0) -> tuple[Any, int]:
    if isinstance(template, torch.Tensor):
        return flat[start], start + 1
    parts = []
    for part in template:
        value, start = _unflatten(part, flat, start)
        parts.append(value)
    if isinstance(template, list):
        return parts, start
    return (type(template)(*parts) if hasattr(template, "_fields") else tuple(parts)), start


class StepFunction(nn.Module):
    """``(u_t, *state parts) -> (y_t, *next state parts)``: a model's step with a flat list of real state tensors;
    with ``with_interval``, ``(u_t, interval, *state parts)`` and ``step(u_t, state, interval=interval)``.

    Args:
        model: a model with ``step(u_t, state)`` and ``initial_state(batch_size)`` (see `real_step_model`).
        with_interval: the second input is the interval (B,) handed to ``step``.
    """

    def __init__(self, model: nn.Module, with_interval: bool = False) -> None:
        super().__init__()
        self.model = model
        self.with_interval = with_interval
        self._template = model.initial_state(1)

    def forward(self, u_t: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One step: u_t (B, m) (or token ids (B,)), [the interval (B,)] and the flat state parts -> y_t (B, p) and
        the next parts."""
        if self.with_interval:
            structured, _ = _unflatten(self._template, list(inputs[1:]))
            y, new = self.model.step(u_t, structured, interval=inputs[0])
        else:
            structured, _ = _unflatten(self._template, list(inputs))
            y, new = self.model.step(u_t, structured)
        return (y, *_flatten(new))


@dataclass(frozen=True)
class OnnxExport:
    """What `export_onnx` wrote: the file, the graph's input/output names, and the state part shapes.

    Attributes:
        path: the ONNX file.
        input_name: the input's name (``"u"``).
        state_names: the state inputs, in order (``"state_0"``, ...).
        output_names: ``"y"`` then the next-state outputs (``"next_state_0"``, ...).
        state_shapes: each state part's shape for one sequence (without the batch axis).
        state_dtypes: each state part's numpy dtype.
        batch_size: the graph's fixed batch size, or None when its batch axis is dynamic (any B).
        interval_name: the sampling-interval input that follows ``u`` (``intervals=True``): ``"interval"`` (B,) in
            the step graph, ``"intervals"`` (B, L) in the sequence graph, the time since the previous sample in
            nominal sampling periods; None when the graph has none (the regularly sampled model).
        interval_dtype: that input's numpy dtype (the model's parameters' float dtype), or None.
        lengths_name: ``"lengths"`` for a sequence graph exported with ``lengths=True`` (after ``u`` and the
            intervals): int64 (B,), each right-padded sequence's length in [1, L], as ``SequenceModel.forward``'s
            ``lengths``; None when the graph has none.
    """

    path: str
    input_name: str
    state_names: tuple[str, ...]
    output_names: tuple[str, ...]
    state_shapes: tuple[tuple[int, ...], ...]
    state_dtypes: tuple[np.dtype, ...]
    batch_size: int | None = None
    interval_name: str | None = None
    interval_dtype: np.dtype | None = None
    lengths_name: str | None = None

    @property
    def input_names(self) -> tuple[str, ...]:
        """Every input of the graph, in order: ``u``, the interval input and the lengths when there are, the state
        parts."""
        return ((self.input_name,) + ((self.interval_name,) if self.interval_name else ())
                + ((self.lengths_name,) if self.lengths_name else ()) + self.state_names)

    def feed(self, u: np.ndarray, state: list[np.ndarray] | None = None, intervals=None,
             lengths=None) -> dict[str, np.ndarray]:
        """The inputs of one ``session.run`` by name, checked: ``session.run(None, info.feed(u, state, tau))``.

        onnxruntime itself refuses an input of another rank or dtype (and the graphs tested, an interval of another
        batch size, in one of their ops), but a graph cannot check values; here the gaps must have exactly the shape
        of ``u``'s leading axes ((B,) for the step graph, (B, L) for the sequence graph) and be finite and > 0, and
        every state part the shape (B, *its shape in ``state_shapes``) (onnxruntime broadcast a state of batch 1
        against a larger batch of ``u`` in the graphs with intervals).

        Args:
            u: the input, (B, m) (or (B,) token ids) for the step graph, (B, L, m) (or (B, L)) for the sequence graph.
            state: the state parts in the order of ``state_names``, or None for `initial_state` of u's batch.
            intervals: the gaps since the previous sample (array-like, converted to ``interval_dtype``), required
                exactly when the graph has an interval input.
            lengths: each right-padded sequence's length (B,) in [1, L] (integers, converted to int64), for a graph
                with the lengths input; None gives L to every sequence (no padding). A graph without that input
                refuses them.

        Returns:
            {input name: array} for every input of the graph.
        """
        u = np.asarray(u)
        if self.interval_name is None and intervals is not None:
            raise ValueError("this graph has no interval input (exported with intervals=False): it is the regularly "
                             "sampled model; export with intervals=True for irregular samples")
        feed = {self.input_name: u}
        if self.interval_name is not None:
            want = tuple(u.shape[:1] if self.interval_name == "interval" else u.shape[:2])
            if intervals is None:
                raise ValueError(f"this graph takes {self.interval_name!r} {want}: the time since the previous sample "
                                 "in nominal sampling periods (ones for regular samples)")
            tau = np.asarray(intervals, dtype=self.interval_dtype)
            if tau.shape != want:
                raise ValueError(f"{self.interval_name} must have the shape {want} of u's leading axes; got {tau.shape}")
            if not (np.isfinite(tau).all() and (tau > 0).all()):
                raise ValueError(f"{self.interval_name} must be finite and > 0 (the time since the previous sample); got "
                                 f"min {tau.min():.6g}, max {tau.max():.6g}")
            feed[self.interval_name] = tau
        if self.lengths_name is not None:
            feed[self.lengths_name] = self._lengths(u, lengths)
        elif lengths is not None:
            raise ValueError("this graph has no lengths input (exported with lengths=False): it reads every step of u; "
                             "export_onnx_sequence(..., lengths=True) writes one for right-padded batches")
        parts = self.initial_state(u.shape[0]) if state is None else list(state)
        if len(parts) != len(self.state_names):
            raise ValueError(f"state must hold {len(self.state_names)} parts ({', '.join(self.state_names)}); "
                             f"got {len(parts)}")
        for name, part, shape in zip(self.state_names, parts, self.state_shapes):
            # onnxruntime broadcasts a part of batch 1 (or of a size-1 axis) against u's batch in the graphs with
            # intervals: a state of another batch ran, every sequence starting from that one state
            found = tuple(np.shape(part))
            if found != (u.shape[0],) + tuple(shape):
                raise ValueError(f"{name} must have the shape {(u.shape[0],) + tuple(shape)} (u's batch, then the "
                                 f"state part's shape; initial_state(batch_size={u.shape[0]}) gives zeros of it); got {found}")
        feed.update(zip(self.state_names, parts))
        return feed

    def _lengths(self, u: np.ndarray, lengths) -> np.ndarray:
        """The lengths input of ``feed``: int64 (B,) in [1, L] of u (B, L, ...), checked (the graph cannot check values:
        a length above L read every step, one of 0 or below pooled nothing); None gives every sequence L."""
        if u.ndim < 2:
            raise ValueError(f"u must be (B, L, ...) for the sequence graph; got {u.shape}")
        B, L = u.shape[:2]
        return _checked_lengths(lengths, "(B,)", (B,), L, f"each right-padded sequence's length in [1, L = {L}]",
                               "sequence")

    def initial_state(self, batch_size: int | None = None) -> list[np.ndarray]:
        """Zero states, one numpy array (B, *shape) per state part (the rest state of the model).

        Args:
            batch_size: B (default: the graph's fixed batch size, else 1); a fixed-batch graph accepts only its own.

        Returns:
            the state parts, in the order of ``state_names``.
        """
        B = batch_size if batch_size is not None else (self.batch_size or 1)
        if not (isinstance(B, int) and B >= 1) or (self.batch_size is not None and B != self.batch_size):
            want = f"{self.batch_size} (the graph's fixed batch size)" if self.batch_size is not None else "an int >= 1"
            raise ValueError(f"batch_size must be {want}; got {batch_size!r}")
        return [np.zeros((B,) + s, dtype=d) for s, d in zip(self.state_shapes, self.state_dtypes)]


def _layer_entries(state: list) -> list:
    """The per-layer entries of a (possibly nested) list of states: lists are flattened, a layer's own state (a
    tensor or a tuple of parts) is an entry."""
    return [e for part in state for e in (_layer_entries(part) if isinstance(part, list) else [part])]


def onnx_state(model: nn.Module, state: list) -> list[np.ndarray]:
    """The exported graph's state parts from a model state (``forward``/``step``'s), when every LTI layer is modal.

    The model's state list holds one entry per sequence layer, in module order (a SequenceModel's blocks, a
    DeepWiener's layers); nested lists are read in order (a WienerEnsemble's list of member states). A modal LTI
    layer's entry becomes ``view_as_real`` of it, shaped (B, G, M, 2) (module docstring); a dense realisation (S4)
    is written in the real basis z = [Re x, Im x] of the layer's complex state x (B, H, N/2) (``S4._state_space``),
    so its entry becomes (B, H, N) = cat(Re x, Im x); a real diagonal one is the layer's own state (EMA) or, for complex
    modes with real eigenvalues (S4D ``init="real"``), ``view_as_real`` of it flattened to (B, H, 2M); a mixer's real
    parts are copied, and the complex state of its LTI core (GSS, H3) becomes ``view_as_real`` of it, the layout of
    the core's modal realisation.

    Args:
        model: the model that was exported.
        state: its per-layer state list (a bare layer's: the layer's own state, or a list of it).

    Returns:
        the numpy state parts, in the order of ``OnnxExport.state_names``.
    """
    from ssmkit.layers.liquid import LiquidS4
    from ssmkit.layers.protocol import SequenceLayer

    layers = [m for _, m in _outer_layers(model)]
    if isinstance(model, SequenceLayer) and not isinstance(state, list):  # a bare layer's own state: one entry
        state = [state]
    if isinstance(state, list):
        state = _layer_entries(state)
    if not isinstance(state, (list, tuple)) or len(state) != len(layers):
        raise ValueError(f"state must be a list of {len(layers)} layer states (one per sequence layer, in order)")
    out = []
    for layer, entry in zip(layers, state):
        if layer.supports("state_space"):
            entry = realisation_state(RealLTIStep(layer.state_space()), entry, type(layer).__name__)
        elif isinstance(layer, LiquidS4):  # (S4's dense basis [Re x, Im x], the last inputs): RealLiquidS4's state
            entry = [torch.cat([entry.ssm.real, entry.ssm.imag], -1), entry.inputs]
        else:
            entry = [_mixer_part(layer, part) for part in _flatten(entry)]
        dtype = next((t.dtype for t in layer.parameters() if t.is_floating_point()), torch.float32)
        out += [part.detach().cpu().to(dtype if part.is_floating_point() else part.dtype).numpy()
                for part in _flatten(entry)]
    return out


def realisation_state(real: RealLTIStep, entry: torch.Tensor, owner: str) -> torch.Tensor:
    """An LTI layer's state as the state of its exported real realisation ``real`` (:func:`onnx_state`'s layouts):
    a modal form's (B, G, M, 2) ``view_as_real`` of the complex modes; a dense realisation (S4) in the real basis
    z = [Re x, Im x] of the layer's complex state (B, H, N/2) -> (B, H, N); a real diagonal one the layer's own state,
    or, for complex modes with real eigenvalues (S4D ``init="real"``), ``view_as_real`` flattened to (B, H, 2M).
    The conformance kit checks that the realisation continues from it as the layer does (``check_layer``'s
    ``state_space``).

    Args:
        real: the layer's realisation, ``RealLTIStep(layer.state_space())``.
        entry: the layer's state, one tensor (B, ...).
        owner: the layer's name, for the error.

    Raises:
        NotImplementedError: the state has no counterpart in the realisation (start the graph from zeros).
    """
    if real.kind == "dense" and entry.is_complex() and 2 * entry.shape[-1] == real.n:
        entry = torch.cat([entry.real, entry.imag], -1)  # (B, H, N/2) -> (B, H, N): the basis [Re x, Im x]
    elif real.kind == "diagonal" and entry.is_complex() and 2 * entry.shape[-1] == real.n:
        # complex modes with real eigenvalues (S4D init="real"): their 2x2 blocks [[a, 0], [0, a]] are
        # diagonal, in the basis (Re x_1, Im x_1, Re x_2, ...) of the modal form
        entry = torch.view_as_real(entry).flatten(-2)  # (B, H, M) complex -> (B, H, 2M)
    elif entry.is_complex() != (real.kind == "modal"):
        raise NotImplementedError(
            f"{owner}'s state {tuple(entry.shape)} has no direct counterpart in the exported graph's {real.kind} "
            "realisation: start the ONNX graph from zeros"
        )
    elif entry.is_complex():
        entry = torch.view_as_real(entry)  # (..., 2): the modal form's (Re, Im) pairs
    shape = (entry.shape[0],) + real.state_shape()
    if entry.numel() != math.prod(shape):
        raise NotImplementedError(f"{owner}'s state {tuple(entry.shape)} has no direct counterpart in the exported "
                                  f"graph's {real.kind} realisation {shape[1:]}: start the ONNX graph from zeros")
    return entry.reshape(shape)  # (B, G, M, 2) or (B, G, n)


def _mixer_part(layer: nn.Module, part: torch.Tensor) -> torch.Tensor:
    """A part of a mixer's state in the exported graph: a real part as it is; the complex state of the mixer's LTI core
    as (..., M, 2) pairs, when the core's realisation is modal (`_inner_lti_layers` replaced it)."""
    if not part.is_complex():
        return part
    cores = [m for _, m in _inner_lti_layers(layer)]
    kinds = [RealLTIStep(core.state_space()).kind for core in cores]
    if kinds != ["modal"]:
        raise NotImplementedError(
            f"{type(layer).__name__}'s complex state {tuple(part.shape)} has no direct counterpart in the exported graph "
            f"(its LTI cores' realisations: {kinds}): start the ONNX graph from zeros"
        )
    return torch.view_as_real(part)


def export_onnx(
    model: nn.Module, path: str, batch_size: int | None = None, opset_version: int = 18, intervals: bool = False
) -> OnnxExport:
    """Write ``model.step`` as an ONNX graph ``(u, state_0, ...) -> (y, next_state_0, ...)`` (module docstring), with a
    dynamic batch axis unless ``batch_size`` is given. Without ``intervals`` the graph is the regularly sampled model.
    With ``intervals=True`` it is ``(u, interval, state_0, ...) -> (y, next_state_0, ...)`` computing
    ``model.step(u_t, state, interval=interval)``: ``interval`` (B,) in the parameters' float dtype, the time since the
    previous sample in nominal sampling periods (as ``step``'s; ones give the regular step), for a model whose layers
    all take intervals (S5, S4D, DSS, DLR, LRU, EMA, S4, Mamba, Mamba-2, RG-LRU): the LTI layers hold their
    continuous-time systems and form each step's coefficients from the gap (:mod:`ssmkit.analysis.onnx_irregular`),
    the gated layers keep their own ``step`` with the interval. The states are the regular graph's.

    Needs ``onnx`` and ``onnxscript`` (``pip install ssmkit[onnx]``).

    Args:
        model: a SequenceModel (real inputs (B, d_input) or token ids (B,)), a DeepWiener or a bare sequence layer
            (its d_model channels in and out; `onnx_state` takes its own state), in eval mode or not
            (the exported copy is put in eval mode), on any device (the graph is traced from a CPU copy).
        path: the ONNX file to write.
        batch_size: None (default) for a dynamic batch axis (any B at run time); an int B fixes it.
        opset_version: the ONNX opset.
        intervals: add the input ``interval`` (module docstring of :mod:`ssmkit.analysis.onnx_irregular`).

    Returns:
        an :class:`OnnxExport` describing the graph (``interval_name`` says whether it has the interval input).

    Raises:
        ValueError: with ``intervals=True``, a layer that takes no intervals (or a bidirectional one).
        NotImplementedError: a bidirectional layer (it reads the future: no step), a pair model (``pair=True``: no
            step), or a layer whose state is complex or grows, or whose step could not be converted (the message
            names it).
    """
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be None (a dynamic batch axis) or an int >= 1; got {batch_size!r}")
    if not isinstance(intervals, bool):
        raise ValueError(f"intervals must be a bool; got {intervals!r}")
    if getattr(model, "pair", False) is True:  # (before: a long torch.export traceback about (B, 2, L) pairs)
        raise NotImplementedError(
            f"{type(model).__name__}.step cannot be exported: a pair model (pair=True) classifies whole pairs of "
            "documents, so it has no step; export_onnx_sequence(model, path, with_state=False, lengths=True) writes "
            "its whole-pair graph, and a model built with pair=False (its tower) has a step")
    example = batch_size or 2  # a size-1 axis would be specialised by torch.export
    # traced on the CPU whatever the model's device (an ONNX file holds no device; the runtime picks its own): the
    # graph of a CUDA model is the one its CPU copy gives, and the model itself stays where it is
    u = _example_input(model, example).cpu()
    if intervals:
        from ssmkit.analysis.onnx_irregular import irregular_model

        converted = irregular_model(model).cpu()
        interval = ("interval", torch.ones(example, dtype=_float_dtype(model)))
    else:
        _refuse_bidirectional(model, f"{type(model).__name__}.step", "export_onnx_sequence(model, path, "
                              "with_state=False) would be the whole-sequence graph from rest")
        converted, interval = real_step_model(model).cpu(), None
    state = _state_parts(converted, example)
    dynamic = None
    if batch_size is None:
        batch = torch.export.Dim("batch")
        # (u_t, *inputs), inputs = ([interval], *state): the batch axis of every input
        dynamic = ({0: batch}, tuple({0: batch} for _ in range(len(state) + intervals)))
    # with autograd on: the step caches compare parameter values (torch.equal) when it is off, which is not traceable
    return _write_graph(StepFunction(converted, with_interval=intervals).eval(), u, state, path, dynamic,
                        opset_version, batch_size, grad=True, what=f"{type(model).__name__}.step", interval=interval)


def _checked_lengths(lengths, layout: str, shape: tuple[int, ...], L: int, meaning: str, item: str) -> np.ndarray:
    """The ``lengths`` input of a sequence graph's ``feed``: integers of ``shape`` in [1, L], checked (the graph cannot
    check values: a length above L read every step, one of 0 or below pooled nothing), as int64; None gives every
    item L.

    Args:
        lengths: the lengths given to ``feed``, or None.
        layout: the shape in letters for the message (``"(B,)"``, ``"(B, 2)"``).
        shape: the shape they must have.
        L: the length of u.
        meaning: what each length is, for the message.
        item: what keeps at least one step (``"sequence"``, ``"document"``), for the message.

    Returns:
        int64 of ``shape``.
    """
    if lengths is None:
        return np.full(shape, L, dtype=np.int64)
    found = np.asarray(lengths)
    if found.dtype.kind not in "iu" or found.shape != shape:
        raise ValueError(f"lengths must be integers {layout} = {shape}, {meaning}; got {found.shape} {found.dtype}")
    if found.size and (found.min() < 1 or found.max() > L):
        raise ValueError(f"lengths must be in [1, L = {L}] (each {item} keeps at least one step); found "
                         f"{found.min()} to {found.max()}")
    return found.astype(np.int64)


def _bidirectional_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The sequence layers of ``model`` (outer or nested, ``model`` itself included) built with ``bidirectional=True``."""
    from ssmkit.layers.protocol import SequenceLayer

    return [(name, layer) for name, layer in model.named_modules()
            if isinstance(layer, SequenceLayer) and getattr(layer, "bidirectional", False)]


def _refuse_bidirectional(model: nn.Module, what: str, hint: str) -> None:
    """Raise NotImplementedError naming the first bidirectional layer of ``model``: its output at time t reads the
    inputs after t (arXiv 2111.00396's two-sided kernel), so it has no causal step and no state; ``hint`` says what to
    do instead. Before, the step export failed later with a misleading "state part 0 is complex"."""
    found = _bidirectional_layers(model)
    if found:
        name, layer = found[0]
        raise NotImplementedError(
            f"{what} cannot be exported: layer {name or '(the model)'!r} ({type(layer).__name__}) is bidirectional: its "
            f"output at time t reads the inputs after t (the future), so it has no causal step and no state; {hint}"
        )


def _float_dtype(model: nn.Module) -> torch.dtype:
    """The model's parameters' float dtype (float32 for a model without one): the dtype of the interval input."""
    return next((t.dtype for t in model.parameters() if t.is_floating_point()), torch.float32)


def _state_parts(converted: nn.Module, batch_size: int) -> list[torch.Tensor]:
    """The converted model's zero state as a flat list of real tensors, or NotImplementedError for a part that a
    fixed-shape real graph cannot hold."""
    state = _flatten(converted.initial_state(batch_size))
    for i, part in enumerate(state):
        if 0 in part.shape:
            raise NotImplementedError(
                f"state part {i} {tuple(part.shape)} has a growing axis (a key/value cache or a long-convolution history): "
                "a fixed-shape ONNX graph cannot hold it"
            )
        if part.is_complex():
            raise NotImplementedError(
                f"state part {i} is complex ({part.dtype}): ONNX has no complex tensors, and the layer holding it has no "
                "state-space realisation of its own to export in real arithmetic"
            )
    return state


def _write_graph(
    fn: nn.Module,
    u: torch.Tensor,
    state: list[torch.Tensor],
    path: str,
    dynamic,
    opset_version: int,
    batch_size: int | None,
    grad: bool,
    what: str,
    check=None,
    interval: tuple[str, torch.Tensor] | None = None,
    lengths: torch.Tensor | None = None,
) -> OnnxExport:
    """Export ``fn(u, [interval], [lengths], *state)`` to ``path`` (written under a temporary name, renamed once whole
    and checked by ``check(partial_path)``) and describe it; the exporter's errors become NotImplementedError naming
    ``what``. ``interval``: (its input name, an example) for a graph with sampling intervals, else None; ``lengths``:
    an example (B,) int64 for a sequence graph with the input ``lengths``, else None."""
    names = tuple(f"state_{i}" for i in range(len(state)))
    outputs = ("y",) + tuple(f"next_state_{i}" for i in range(len(state)))
    extra_names, extra = ([interval[0]], (interval[1],)) if interval is not None else ([], ())
    if lengths is not None:
        extra_names, extra = extra_names + ["lengths"], extra + (lengths,)
    target = Path(path)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with torch.set_grad_enabled(grad):
            try:
                torch.onnx.export(fn, (u, *extra, *state), str(partial), input_names=["u", *extra_names, *names],
                                  output_names=list(outputs), opset_version=opset_version, dynamo=True,
                                  external_data=False, optimize=True, verbose=False, dynamic_shapes=dynamic)
            except ImportError:
                raise
            except Exception as err:  # the exporter's own errors name the op it could not convert
                raise NotImplementedError(f"{what} could not be exported to ONNX: {err}") from err
        if check is not None:
            check(partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return OnnxExport(
        path=str(path), input_name="u", state_names=names, output_names=outputs,
        state_shapes=tuple(tuple(p.shape[1:]) for p in state),
        state_dtypes=tuple(np.dtype(str(p.dtype).removeprefix("torch.")) for p in state),
        batch_size=batch_size,
        interval_name=interval[0] if interval is not None else None,
        interval_dtype=np.dtype(str(interval[1].dtype).removeprefix("torch.")) if interval is not None else None,
        lengths_name="lengths" if lengths is not None else None,
    )


def _example_input(model: nn.Module, batch_size: int) -> torch.Tensor:
    """A zero input (B, width) of ``model``'s step: token ids for a token model; the width is ``d_input`` (a
    SequenceModel), ``n_inputs`` (a DeepWiener) or, for a bare sequence layer, its ``d_model`` channels (before,
    a bare layer was refused as having no input width, though its export is the layer's own step and forward)."""
    from ssmkit.layers.protocol import SequenceLayer

    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    if getattr(model, "vocab_size", None) is not None:
        return torch.zeros(batch_size, dtype=torch.int64, device=device)
    width = getattr(model, "d_input", None) or getattr(model, "n_inputs", None)
    if width is None and isinstance(model, SequenceLayer):
        width = model.d_model
    if width is None:
        raise ValueError(f"cannot tell the input width of {type(model).__name__}: export a SequenceModel (d_input), a "
                         "DeepWiener (n_inputs) or a sequence layer (d_model)")
    dtype = next((t.dtype for t in model.parameters() if t.is_floating_point()), torch.float32)
    return torch.zeros(batch_size, width, dtype=dtype, device=device)
