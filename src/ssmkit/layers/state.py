"""Layer states and their specs: what a layer carries from one call (or step) to the next.

A layer describes its state with a spec (:meth:`SequenceLayer.state_spec`): a :class:`TensorSpec` for one tensor,
or a tuple of specs (a ``NamedTuple`` of specs for a state with named parts, such as a convolution state and an SSM
state). The base class builds ``initial_state`` from the spec and checks every state given to ``forward`` and
``step`` against it (structure, shape, dtype, device), so each layer reports a wrong state in the same words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

State = Union[torch.Tensor, tuple["State", ...]]
"""A layer state: one tensor, or a tuple (possibly a NamedTuple) of states."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a layer state, per sequence: the full tensor is (B, *shape).

    Attributes:
        shape: the size of every axis after the batch axis.
        dtype: the tensor's dtype (complex64 for the modes of a float32 diagonal SSM, ...).
        growing: index into ``shape`` of an axis whose length grows with the sequence (an attention key/value
            cache): ``initial_state`` gives it length 0 and any length is accepted there; None for fixed states.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    growing: int | None = None


StateSpec = Union[TensorSpec, tuple["StateSpec", ...]]
"""A state spec: a TensorSpec, or a tuple (possibly a NamedTuple) of specs."""


def exportable_state(cls: type) -> type:
    """Class decorator for a layer's NamedTuple state: register it with torch's pytrees under a stable name, and as a
    safe global of ``torch.load(weights_only=True)``.

    Without the first, ``torch.export.save`` refused a program whose inputs or outputs hold the state ("Can't
    serialize TreeSpec of namedtuple class ... register using `_register_namedtuple`"); without the second,
    ``torch.export.load`` of a program exported with a state among its example inputs, and ``torch.load`` of a saved
    state (a recurrent session stopped and resumed), failed with "Unsupported global: GLOBAL ssmkit.layers....".
    A NamedTuple of tensors runs no code when unpickled. Both hold once the layer's module is imported.

    Args:
        cls: a ``NamedTuple`` class.

    Returns:
        cls, registered (each registration skipped where this torch lacks it).
    """
    from torch.utils import _pytree

    register = getattr(_pytree, "_register_namedtuple", None)  # (torch >= 2.3)
    if register is not None:
        register(cls, serialized_type_name=f"{cls.__module__}.{cls.__qualname__}")
    safe = getattr(torch.serialization, "add_safe_globals", None)  # (torch >= 2.4)
    if safe is not None:
        safe([cls])
    return cls


def _rebuild(spec: tuple, parts: list) -> tuple:
    """A tuple of ``parts`` of the same type as ``spec`` (a NamedTuple class or plain tuple)."""
    return tuple(parts) if type(spec) is tuple else type(spec)(*parts)


def zeros_from_spec(spec: StateSpec, batch_size: int, device: torch.device) -> State:
    """The zero state of ``batch_size`` sequences on ``device``, with the structure of ``spec``.

    Args:
        spec: the layer's state spec.
        batch_size: B.
        device: where to allocate the state.

    Returns:
        a tensor (B, *spec.shape) of zeros (a growing axis has length 0), or the tuple of such tensors.
    """
    if isinstance(spec, tuple):
        return _rebuild(spec, [zeros_from_spec(s, batch_size, device) for s in spec])
    shape = list(spec.shape)
    if spec.growing is not None:
        shape[spec.growing] = 0
    return torch.zeros(batch_size, *shape, dtype=spec.dtype, device=device)


def _describe(spec: TensorSpec, batch_size: int) -> str:
    dims = [str(batch_size)] + [("any" if i == spec.growing else str(n)) for i, n in enumerate(spec.shape)]
    return f"({', '.join(dims)}) {spec.dtype}"


def check_state(state: object, spec: StateSpec, batch_size: int, device: torch.device, name: str = "state") -> None:
    """Raise ``ValueError`` unless ``state`` has the structure, shapes, dtypes and device that ``spec`` describes.

    Args:
        state: the state to check (a tensor or a tuple of states).
        spec: the layer's state spec.
        batch_size: B, the batch size of the input the state goes with.
        device: the layer's device.
        name: the name used in the message (``state``, ``state[1]``, ...).
    """
    if isinstance(spec, tuple):
        if not isinstance(state, tuple) or len(state) != len(spec):
            found = f"a tuple of {len(state)}" if isinstance(state, tuple) else type(state).__name__
            raise ValueError(f"{name} must be a tuple of {len(spec)} states (as initial_state({batch_size})); got {found}")
        for i, (s, sp) in enumerate(zip(state, spec)):
            check_state(s, sp, batch_size, device, f"{name}[{i}]")
        return
    if not isinstance(state, torch.Tensor):
        raise ValueError(f"{name} must be a tensor like initial_state({batch_size}); got {type(state).__name__}")
    want = (batch_size, *spec.shape)
    if spec.growing is None:
        shape_ok = state.shape == want
    else:
        shape_ok = state.dim() == len(want) and all(
            s == w or i == spec.growing + 1 for i, (s, w) in enumerate(zip(state.shape, want))
        )
    if not shape_ok or state.dtype != spec.dtype:
        raise ValueError(
            f"{name} must be {_describe(spec, batch_size)} (as initial_state({batch_size})); "
            f"got {tuple(state.shape)} {state.dtype}"
        )
    if state.device != device:
        raise ValueError(f"{name} must be on the layer's device {device}; got {state.device}")


def map_state(fn, state: State) -> State:
    """Apply ``fn`` to every tensor of ``state``, keeping its structure (NamedTuples included)."""
    if isinstance(state, tuple):
        return _rebuild(state, [map_state(fn, s) for s in state])
    return fn(state)


def detach_state(state):
    """The state with every tensor detached from the graph (same structure; for truncated backpropagation through time).

    Training on a long sequence in chunks carries the final state of one chunk into the next; detaching it cuts the
    gradient at the chunk boundary (truncated BPTT, Williams & Peng 1990), so each chunk's backward covers that chunk
    only. ``h.detach()`` works for a layer whose state is one tensor; this also takes a layer's tuple of states
    (``MambaState``, ``KVCache``, ...) and a model's list of per-block states, keeping NamedTuples and None entries.

    Args:
        state: a layer state (a tensor of any shape, or nested tuples of tensors), a list of such states (one per
            block, as :meth:`ssmkit.models.SequenceModel.forward` returns), or None.

    Returns:
        the same structure with each tensor replaced by ``tensor.detach()`` (no copy: the values are shared).
    """
    if state is None:
        return None
    if isinstance(state, list):
        return [detach_state(s) for s in state]
    if isinstance(state, tuple):
        return _rebuild(state, [detach_state(s) for s in state])
    if not isinstance(state, torch.Tensor):
        raise ValueError(f"state must be a tensor, a tuple or list of states, or None; got {type(state).__name__}")
    return state.detach()
