"""A cache of a value computed from a layer's parameters, valid exactly while the parameters keep their values.

The recurrent step of an LTI layer needs the discrete matrices (Ā, B̄, ...), whose computation costs several
times the step's own arithmetic; generation and controllers call ``step`` thousands of times with unchanged
parameters. A cache keyed on ``Parameter._version`` or ``data_ptr`` goes stale: ``torch.optim.AdamW(fused=True)``
and edits through ``p.data`` (weight averaging, ``p.data.mul_()``) change values without bumping the version
counter. :class:`ValueCache` therefore keys on the values themselves: it keeps a copy of the tensors it was
computed from and compares them with ``torch.equal`` on every lookup. It is used only when no gradient is needed;
with autograd on, the value is recomputed, differentiably, and so it is inside ``torch.func`` transforms (``vmap`` over
an ensemble's stacked weights, ``grad``, ``jacrev``).

The comparison reads every parameter once per lookup, which at batch size 1 costs about as much as the step's
arithmetic. Inside :func:`frozen_parameters` (a promise that no parameter changes within the block, as in a
generation loop) a cache compares the values once, at its first lookup in the block, and then trusts the same
tensor objects on the same memory for the rest of it: a conversion inside the block (``model.double()``,
``model.to(dtype)``, ``model.to(device)``) keeps each ``Parameter`` object but gives it new memory, so the next
lookup compares again, sees another dtype or device and recomputes.

Under ``torch.compile`` the lookup of a cache built with its ``compute`` (``ValueCache(compute)``), when no gradient
can flow from the value, is one opaque op in the graph (``ssmkit::cached_value``, a ``torch.library`` custom op) that
runs the eager lookup when the compiled code runs: the graph stays whole (``fullgraph=True``), and a compiled
``step`` no longer recomputes the discretisation in every call (S4D's took 873 µs per token against 36 eager;
docs/design.md, "Compiled step"). A lookup with a key (S4's forward plan: the input length and the options) passes the
key's ints to the op as ints, symbolic for a dynamic length, and the rest as a string; the value's structure, its
non-tensor leaves and its tensors' shapes come from the cache's ``fake``, traced in the graph and run by the op's fake
implementation (without a ``fake``, the op's fake implementation computes the value once to see them, and a symbolic
int is specialised). Under ``torch.export`` and the
``torch.func`` transforms, and for a cache without
its ``compute``, the value is traced from the weights, as an exported program must compute from the weights it is
given.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import inspect
import itertools
import weakref
from typing import Callable, Generic, Hashable, Iterator, Sequence, TypeVar

import torch
import torch.utils._pytree as pytree

from ssmkit.ops.backend import tracing
from ssmkit.ops.opaque import custom_ops_allowed, eager_views_and_autograd

V = TypeVar("V")

_FROZEN: contextvars.ContextVar[int] = contextvars.ContextVar("ssmkit_frozen_parameters", default=0)
_SCOPES = itertools.count(1)


@contextlib.contextmanager
def frozen_parameters() -> Iterator[None]:
    """Promise that no parameter changes inside the block, so that step caches skip their per-step comparison.

    Each cache still compares the parameter values once, at its first lookup inside the block (so weights changed
    before the block are seen), and then reuses its value while it is given the same tensor objects on the same
    memory (``data_ptr``). Converting the model inside the block (``model.double()``, ``model.to(dtype)``,
    ``model.to(device)``) is allowed: a conversion gives each parameter new memory, so the caches compare again and
    recompute for the new dtype or device. Changing a parameter's values in place inside the block breaks the
    promise: ``step`` may then use the old values. The setting is per thread (a ``ContextVar``); blocks nest.

        with torch.no_grad(), ssmkit.layers.frozen_parameters():
            for t in range(L):
                y_t, h = model.step(x[:, t], h)
    """
    token = _FROZEN.set(next(_SCOPES))
    try:
        yield
    finally:
        _FROZEN.reset(token)


def module_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of ``module`` and of its sub-modules, and the current value of each tensor
    reparametrised there with ``torch.nn.utils.parametrize``: what a cache of a value computed by a sub-module must
    watch. (Its ``original`` alone is not enough: registering a parametrization changes the value the sub-module
    computes with while ``original`` keeps its own, and Hyena's step kept the filters of before the registration,
    8e-2 from a fresh layer holding the new values.)

    Args:
        module: the module whose tensors are watched.

    Returns:
        the tensors, in a fixed order for a fixed module tree.
    """
    return [t for m in module.modules() for t in own_tensors(m)]


def own_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """``module``'s own parameters and buffers (not those of its sub-modules), and the current value of each of its
    tensors reparametrised with ``torch.nn.utils.parametrize`` (which has left ``_parameters`` for
    ``parametrizations.<name>.original``), read straight from the module's dicts (a step calls this every time).

    Args:
        module: the module.

    Returns:
        the tensors, in a fixed order.
    """
    own = [t for t in (*module._parameters.values(), *module._buffers.values()) if t is not None]
    if "parametrizations" in module._modules:
        own += [getattr(module, name) for name in module._modules["parametrizations"]]
    return own


_Refs = tuple[tuple[weakref.ref, int], ...]  # (weak reference, data_ptr) of each source tensor


def _same_objects(refs: _Refs, tensors: Sequence[torch.Tensor]) -> bool:
    """Whether ``tensors`` are the very objects ``refs`` point to (alive), each on the memory it had (``data_ptr``).

    Object ids are not enough: a weight made for one step (``functional_call`` with a hypernetwork's output) dies
    after it, and the next step's weight is often allocated at the same address, so it has the same id. The object is
    not enough either: ``module.double()`` and ``module.to(device)`` keep each ``Parameter`` object and swap its
    memory (``param.data = converted``), and a cache that trusted the object served float32 matrices to a float64
    step, which raised (S4D, S5, H3, LRU, DSS, EMA, Mega, DLR). A conversion allocates the new memory while the old
    is alive, so its address differs."""
    if len(refs) != len(tensors):
        return False
    for (ref, ptr), t in zip(refs, tensors):  # a loop, not all(...): this runs at every step inside the block
        if ref() is not t or t.data_ptr() != ptr:
            return False
    return True


def _references(tensors: Sequence[torch.Tensor]) -> _Refs:
    """Weak references to ``tensors`` with their memory addresses, for :func:`_same_objects`."""
    return tuple((weakref.ref(t), t.data_ptr()) for t in tensors)


def _same(snapshot: Sequence[torch.Tensor], tensors: Sequence[torch.Tensor]) -> bool:
    if len(snapshot) != len(tensors):
        return False
    for old, new in zip(snapshot, tensors):  # torch.equal is False for another shape, but raises across devices
        if old.dtype != new.dtype or old.device != new.device or not torch.equal(old, new):
            return False
    return True


class ValueCache(Generic[V]):
    """Holds one value computed from a list of tensors, returned again while the tensors hold the same values.

    Thread-safe in the sense PyTorch modules need: an entry is one tuple replaced atomically, and a lookup that
    races with an update either sees the old entry (and recomputes) or the new one.
    """

    def __init__(self, compute: Callable[..., V] | None = None, fake: Callable[..., V | None] | None = None) -> None:
        """Args:
            compute: what every lookup computes (the one given to :meth:`get`), for lookups inside a compiled graph:
                ``compute()`` for a lookup without a key, ``compute(*key)`` for one with a tuple key (whose items
                are ints, bools, strings, floats or None); None: a compiled graph computes the value itself.
            fake: for a keyed lookup inside a compiled graph (its key's ints concrete, or symbolic for a dynamic
                length): ``fake(*key)`` -> the value's structure with empty tensors of its (symbolic) shapes and its
                non-tensor leaves, or None where it has none. It runs in the op's fake implementation and is traced
                by dynamo in the graph (which takes the leaves from it: its empty tensors are dead code), so it must
                be traceable. Without it (or on None) the op's fake implementation computes the value to see its
                structure, and a symbolic int is specialised (a guard on its value: the graph is compiled again for
                another value)."""
        # (key, snapshot of the values, the value, the frozen scope it was last checked in, weak references to the
        # source tensors with their memory addresses: the objects themselves, whose ids a later tensor may reuse once
        # they are freed, on the memory they had, which a conversion such as module.double() replaces)
        self._entry: tuple[Hashable, tuple[torch.Tensor, ...], V, int, _Refs] | None = None
        self._set_compute(compute, fake)
        self._register()

    def _set_compute(self, compute: Callable[..., V] | None, fake: Callable[..., V | None] | None = None) -> None:
        # a layer's bound method held weakly: a strong one would make the layer and its cache a reference cycle,
        # freed only by the garbage collector
        self._compute_ref = weakref.WeakMethod(compute) if inspect.ismethod(compute) else (lambda: compute)
        self._fake_ref = weakref.WeakMethod(fake) if inspect.ismethod(fake) else (lambda: fake)
        # the fake as a plain function and its owner as a weak reference, both of which dynamo traces (it cannot
        # trace the call of a WeakMethod): a compiled lookup calls it in the graph (_graph_lookup)
        self._fake_func = fake.__func__ if inspect.ismethod(fake) else fake
        self._fake_owner = weakref.ref(fake.__self__) if inspect.ismethod(fake) else None
        self._in_graph = compute is not None  # a plain flag: dynamo cannot trace the call of a WeakMethod

    @property
    def _compute(self) -> Callable[..., V] | None:
        return self._compute_ref()

    @property
    def _fake(self) -> Callable[..., V | None] | None:
        return self._fake_ref()

    def _structure(self, key: tuple):
        """``fake(*key)`` (the value's structure for ``key``), or None without a fake; traceable by dynamo."""
        if self._fake_func is None:
            return None
        if self._fake_owner is None:
            return self._fake_func(*key)
        return self._fake_func(self._fake_owner(), *key)

    def _register(self) -> None:
        """Give this cache its number in :data:`_CACHES`, by which the op of a compiled graph finds it."""
        self._number = next(_NUMBERS)
        _CACHES[self._number] = self

    def get(self, tensors: Sequence[torch.Tensor], compute: Callable[[], V], key: Hashable = None) -> V:
        """``compute()``, reused while every tensor of ``tensors`` equals (value, shape, dtype, device) the copy
        taken when it was computed (inside :func:`frozen_parameters`: checked once per block) and ``key`` is the same.

        Args:
            tensors: the tensors the value depends on (the layer's parameters and buffers).
            compute: recomputes the value; called without autograd.
            key: what else the value depends on (an input length, a backend); another key replaces the entry.

        Returns:
            the cached or freshly computed value.
        """
        # Inside vmap / grad / jacrev (an ensemble's stacked weights) the tensors are wrapped for that call only:
        # torch.equal has no batching rule, and a wrapped snapshot kept here made every later lookup raise. Under
        # torch.compile and torch.export the value is traced from the weights: a comparison of values cannot be
        # traced (export failed on aten.equal, fullgraph=True on the ContextVar; without fullgraph it was a graph
        # break per cached call), and an exported program must compute it from the weights it is given. Under
        # torch.compile, with no gradient to carry and the cache's compute known, the lookup is the run-time op below
        # (``compute`` must then be what the cache's own compute gives for this key).
        if tracing():
            if self._in_graph and (key is None or isinstance(key, tuple)) and _lookup_in_graph(tensors):
                return _graph_lookup(self, tensors, key)
            return compute()
        entry, scope = self._entry, _FROZEN.get()
        if entry is not None and entry[0] == key:
            _, snapshot, value, checked_in, refs = entry
            if scope and checked_in == scope and _same_objects(refs, tensors):
                return value
            if _same(snapshot, tensors):
                if scope:
                    self._entry = (key, snapshot, value, scope, _references(tensors))
                return value
        # never inference tensors, even when filled inside torch.inference_mode(): a later step with autograd on (a
        # frozen layer, gradients wanted for its input) must be able to save the cached value for backward. Leaving
        # inference mode turns grad mode back on, hence no_grad inside it.
        with torch.inference_mode(False), torch.no_grad():
            value = compute()
            snapshot = tuple(t.detach().clone() for t in tensors)
        self._entry = (key, snapshot, value, scope, _references(tensors))
        return value

    def get_unless_grad(self, tensors: Sequence[torch.Tensor], compute: Callable[[], V], key: Hashable = None) -> V:
        """``compute()`` with autograd (not cached) when grad mode is on and a tensor requires grad, else :meth:`get`:
        the step of a layer stays differentiable and is cached for generation.

        Args:
            tensors: the tensors the value depends on (the layer's parameters and buffers).
            compute: computes the value.
            key: what else the value depends on (see :meth:`get`).

        Returns:
            the value.
        """
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return compute()
        return self.get(tensors, compute, key)

    def clear(self) -> None:
        """Drop the cached value."""
        self._entry = None

    def __getstate__(self) -> dict:
        """Pickled (``torch.save`` of a whole module, ``copy.deepcopy``) empty: a cached value is recomputed on
        demand, so it never enlarges a saved module (S4's forward plan is ~6 MB at H 128, N 64, L 4 096)."""
        return {"_entry": None, "compute": self._compute, "fake": self._fake}

    def __setstate__(self, state: dict) -> None:
        self._entry = state.get("_entry")
        self._set_compute(state.get("compute"), state.get("fake"))  # None when pickled before caches held them
        self._register()


# ---------------------------------------------------------------------------------------------------------------------
# The lookup inside a compiled graph


_NUMBERS = itertools.count(1)
_CACHES: "weakref.WeakValueDictionary[int, ValueCache]" = weakref.WeakValueDictionary()


def _lookup_in_graph(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether a lookup being traced becomes the run-time op: under torch.compile only (not torch.export, not a
    torch.func transform), and only where no gradient can flow from the value (the op has no derivative)."""
    if not custom_ops_allowed():
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _is_int(k) -> bool:
    return isinstance(k, int) and not isinstance(k, bool)


def _split_key(key: tuple | None) -> tuple[str, list[int]]:
    """A lookup key as the op's arguments: its ints (symbolic where the length is dynamic) and the repr of the rest
    (the ints' places as None)."""
    if key is None:
        return "", []
    return repr(tuple(None if _is_int(k) else k for k in key)), [k for k in key if _is_int(k)]


def _join_key(static: str, ints: list) -> tuple | None:
    """Inverse of :func:`_split_key` (the ints may be SymInts inside the fake implementation)."""
    if not static:
        return None
    rest = iter(ints)
    return tuple(next(rest) if k is None else k for k in ast.literal_eval(static))


def _compute_for(cache: "ValueCache", key: tuple | None):
    return cache._compute() if key is None else cache._compute(*key)


@torch.library.custom_op("ssmkit::cached_value", mutates_args=())
def _cached_value(tensors: list[torch.Tensor], number: str, static: str, ints: list[int]) -> list[torch.Tensor]:
    """The tensors of cache ``number``'s value for ``tensors`` (and the key of ``static`` and ``ints``, see
    :func:`_split_key`) by its eager lookup, at run time; copies, since a graph may reuse an op's outputs as scratch
    space and the cached tensors must stay as they are. (The number is passed as a string: dynamo makes an int
    argument that takes several values symbolic, and a symbol cannot pick the cache.)"""
    cache = _CACHES[int(number)]
    key = _join_key(static, ints)
    with eager_views_and_autograd():
        value = cache.get(tensors, lambda: _compute_for(cache, key), key)
    return [t.clone() for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


@_cached_value.register_fake
def _(tensors: list[torch.Tensor], number: str, static: str, ints: list[int]) -> list[torch.Tensor]:
    # runs for real while the graph is traced: the value is computed once, eagerly, from the weights, for its
    # structure, its non-tensor leaves and its tensors' shapes (the traced code around the op cannot compute it).
    # A symbolic int of the key (a dynamic length) takes the cache's fake structure, or is specialised.
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.fx.experimental.symbolic_shapes import guard_int, is_concrete_int

    cache = _CACHES[int(number)]
    value = None if not static else cache._structure(_join_key(static, ints))  # (a keyed lookup only)
    if value is None and not all(is_concrete_int(i) for i in ints):
        ints = [guard_int(i) for i in ints]
    if value is None:
        key = _join_key(static, [int(i) for i in ints])
        with unset_fake_temporarily(), eager_views_and_autograd(), torch.no_grad():
            value = _compute_for(cache, key)
    leaves, cache._spec = pytree.tree_flatten(value)
    # (is a tensor, the leaf if not): a None leaf (an absent table) is not a tensor's place
    cache._template = [(True, None) if isinstance(t, torch.Tensor) else (False, t) for t in leaves]
    return [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in leaves if isinstance(t, torch.Tensor)]


def _graph_lookup(cache: ValueCache, tensors: Sequence[torch.Tensor], key: tuple | None = None):
    """``cache``'s value for ``tensors`` (and ``key``) through :func:`_cached_value`, traced as one op.

    With the cache's ``fake`` the value's structure and non-tensor leaves (S4's attuned length L_k, the final-state
    tables' L: the traced, possibly symbolic, length) are traced here from the key, and the op's outputs fill its
    tensor places. Without one they come from the template the op's fake implementation left on the cache: dynamo
    guards on the template's leaves as it reads them, and the template is overwritten by every trace, so a graph
    compiled for one key failed its guards once another key had been traced (S4: a return to an earlier attuned
    length recompiled)."""
    static, ints = _split_key(key)
    outputs = _cached_value(list(tensors), str(cache._number), static, ints)
    structure = None if key is None else cache._structure(key)
    if structure is None:
        leaves, spec = [None if is_tensor else t for is_tensor, t in cache._template], cache._spec
        places = [is_tensor for is_tensor, _ in cache._template]
    else:
        leaves, spec = pytree.tree_flatten(structure)
        places = [isinstance(t, torch.Tensor) for t in leaves]
    flat = iter(outputs)
    return pytree.tree_unflatten([next(flat) if place else t for place, t in zip(places, leaves)], spec)
