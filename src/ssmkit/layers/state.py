"""Layer states and their specs: what a layer carries from one call (or step) to the next.

A layer describes its state with a spec (:meth:`SequenceLayer.state_spec`): a :class:`TensorSpec` for one tensor,
or a tuple of specs (a ``NamedTuple`` of specs for a state with named parts, such as a convolution state and an SSM
state). The base class builds ``initial_state`` from the spec and checks every state given to ``forward`` and
``step`` against it (structure, shape, dtype, device), so each layer reports a wrong state in the same words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.utils._pytree as pytree

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


def state_to_vector(state: Any, dtype: torch.dtype) -> torch.Tensor:
    """A state as one real matrix (B, n): its tensors (nested in lists, tuples and NamedTuples) in order, each
    flattened after the batch axis, a complex entry as an adjacent (real, imaginary) pair. The inverse of
    :func:`state_from_vector`; the state vector x of :class:`ssmkit.analysis.NonlinearSystem`.

    Args:
        state: every tensor (B, ...), real or complex.
        dtype: the real dtype of the vector (a complex tensor is first cast to its complex counterpart).
    """
    parts = []
    for t in pytree.tree_leaves(state):
        t = t.to(dtype.to_complex() if t.is_complex() else dtype)
        parts.append((torch.view_as_real(t) if t.is_complex() else t).reshape(t.shape[0], -1))
    return torch.cat(parts, 1)


def state_from_vector(v: torch.Tensor, like: Any) -> Any:
    """Real vectors v (B, n) as a state shaped like ``like``: :func:`state_to_vector`'s inverse.

    Args:
        v: (B, n) real; n = the real numbers of one sequence's ``like`` (complex entries count twice).
        like: a state of any batch size (tensors nested in lists, tuples and NamedTuples) whose structure, shapes
            after the batch axis and dtypes the result takes; it is on v's device.
    """
    leaves, structure = pytree.tree_flatten(like)
    sizes = [math.prod(t.shape[1:]) * (2 if t.is_complex() else 1) for t in leaves]
    if v.dim() != 2 or v.is_complex() or v.shape[1] != sum(sizes):
        raise ValueError(f"v must be real (B, {sum(sizes)}) for this state; got {tuple(v.shape)} {v.dtype}")
    parts, start = [], 0
    for t, size in zip(leaves, sizes):
        part = v[:, start:start + size]
        start += size
        if t.is_complex():
            part = torch.complex(part[:, 0::2], part[:, 1::2])
        parts.append(part.reshape(v.shape[0], *t.shape[1:]).to(t.dtype))
    return pytree.tree_unflatten(parts, structure)


def _batch_leaves(state: Any, name: str) -> tuple[list[torch.Tensor | None], Any]:
    """The leaves of a state (a layer's, or a model's list of per-block states; None entries kept) and its
    structure; every tensor must have the same batch size (axis 0)."""
    leaves, structure = pytree.tree_flatten(state)
    tensors = [t for t in leaves if t is not None]
    if not tensors or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in tensors):
        raise ValueError(f"{name} must be a state: tensors (B, ...) nested in tuples, NamedTuples and lists; got "
                         f"{type(state).__name__}")
    sizes = {t.shape[0] for t in tensors}
    if len(sizes) != 1:
        raise ValueError(f"{name}'s tensors must share their batch size (axis 0); got sizes {sorted(sizes)}")
    return leaves, structure


def select_state(state: Any, index: torch.Tensor | list[int] | slice) -> Any:
    """The streams ``index`` of a batched state: finished streams dropped, the rest reordered or repeated (beam search).

    The state continues exactly as the kept sequences would alone: every layer's state is per sequence along axis 0
    (attention's positions too), so row b of each tensor is stream b's.

    Args:
        state: a layer state or a model's list of per-block states (None entries kept), batch size B.
        index: which rows, in the order wanted: integer indices (a 1-D tensor or list, repeats allowed), a boolean
            mask of B entries, or a slice.

    Returns:
        the same structure with each tensor (B, ...) replaced by its rows (B', ...) (a copy for indices and masks, a
        view for a slice).
    """
    leaves, structure = _batch_leaves(state, "state")
    first = next(t for t in leaves if t is not None)
    B = first.shape[0]
    if not isinstance(index, slice):
        if isinstance(index, (list, tuple)):
            flags = bool(index) and all(isinstance(v, bool) for v in index)
            index = torch.tensor(index, dtype=torch.bool if flags else torch.long, device="cpu")
        if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.is_floating_point() or index.is_complex():
            raise ValueError(f"index must be 1-D integer indices, a boolean mask of {B} entries, or a slice; got "
                             f"{index!r}")
        index = index.to(first.device)
        if index.dtype == torch.bool and index.numel() != B:
            raise ValueError(f"a boolean index must have one entry per stream ({B}); got {index.numel()}")
        if index.dtype != torch.bool and index.numel() and not bool(((index >= -B) & (index < B)).all()):
            raise ValueError(f"index must lie in [-{B}, {B}) (the batch size is {B}); got {index.tolist()}")
    return pytree.tree_unflatten([None if t is None else t[index] for t in leaves], structure)


def cat_states(states: list[Any]) -> Any:
    """Several batches' states of one layer or model joined into one batch (new streams added to running ones).

    Args:
        states: a list of states of the same structure (a layer's, or a model's lists of per-block states; None
            entries where the first has them), batch sizes B_1, ..., B_k; a growing state (an attention cache, Hyena's
            inputs) must hold the same number of positions in each.

    Returns:
        the state of the B_1 + ... + B_k streams, in the order given (a new tensor each).
    """
    if not isinstance(states, (list, tuple)) or not states:
        raise ValueError(f"states must be a non-empty list of states; got {type(states).__name__}")
    flat = [_batch_leaves(s, f"states[{i}]") for i, s in enumerate(states)]
    leaves0, structure = flat[0]
    for i, (leaves, other) in enumerate(flat):
        if other != structure or [t is None for t in leaves] != [t is None for t in leaves0]:
            raise ValueError(f"states[{i}] has another structure than states[0] (another layer or model?)")
        for j, (t, first) in enumerate(zip(leaves, leaves0)):
            if t is not None and (t.shape[1:] != first.shape[1:] or t.dtype != first.dtype or t.device != first.device):
                raise ValueError(
                    f"states[{i}]'s tensor {j} is {tuple(t.shape[1:])} {t.dtype} on {t.device} per stream, states[0]'s "
                    f"{tuple(first.shape[1:])} {first.dtype} on {first.device} (a growing state, an attention "
                    "cache or Hyena's inputs, must hold the same number of positions)")
    joined = [None if parts[0] is None else torch.cat(parts) for parts in zip(*(leaves for leaves, _ in flat))]
    return pytree.tree_unflatten(joined, structure)
