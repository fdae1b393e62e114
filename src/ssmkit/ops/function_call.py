"""Calling a ``torch.autograd.Function`` without taking the GIL and an autograd lock in the wrong order.

``Function.apply`` reads its inputs' gradient edges while holding the GIL, and for a leaf tensor that requires grad (a
parameter) that read takes the leaf's autograd lock (``grad_accumulator``). A built-in op on the same leaf in another
thread (``p.reshape``, ``p * x``) takes that lock with the GIL released and, when it makes the leaf's gradient
accumulator anew, asks for the GIL while holding the lock (the accumulator keeps the tensor's Python object alive).
Two threads sharing a model in grad mode can so wait on each other for ever, every other thread of the process with
them, pytest-timeout's timer included (PyTorch 2.11 and 2.13; found when a threaded serving test held stop 56's CI for
its whole 90 minutes). A view of the leaf, made by a built-in op (lock, then GIL: the safe order), reaches ``apply`` as
a non-leaf whose edge needs no lock, so every path takes the two in one order.

It is also where forward-mode AD finds a Function's forward derivative. Dynamo refuses to trace a Function that defines
``jvp`` ("Unsupported custom jvp": a graph break, an error under ``fullgraph=True``), so the Functions that torch.compile
traces define none; each that has a forward derivative gets a twin, a subclass that adds ``jvp`` (and saves what it
reads with ``ctx.save_for_forward``), registered by :func:`jvp_twin`. While forward-mode AD is active
(:func:`ssmkit.ops.backend.forward_ad_active`: never while torch.compile traces) :func:`apply_function` calls the twin.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ssmkit.ops.backend import forward_ad_active

_TWINS: dict[type, type] = {}


def jvp_twin(base: type[torch.autograd.Function]) -> Callable[[type], type]:
    """Register the decorated class as ``base``'s twin under forward-mode AD: a subclass of ``base`` that adds a ``jvp``
    staticmethod (see the module's docstring); :func:`apply_function` calls it in place of ``base`` there.

    Args:
        base: the Function, which defines no ``jvp`` of its own.

    Returns:
        a decorator that registers the twin and returns it unchanged.
    """

    def register(twin: type) -> type:
        if not (isinstance(twin, type) and issubclass(twin, base) and "jvp" in vars(twin)):
            raise TypeError(f"the twin of {base.__name__} must be a subclass of it that defines jvp; got {twin!r}")
        if "jvp" in vars(base):
            raise TypeError(f"{base.__name__} defines jvp itself (torch.compile could not trace it); move it to the twin")
        _TWINS[base] = twin
        return twin

    return register


def apply_function(function: type[torch.autograd.Function], *args: Any) -> Any:
    """``function.apply(*args)`` with each leaf tensor that requires grad passed as a view of itself (the same values
    and storage; its gradient reaches the leaf through the view's backward), when autograd records: see the module's
    docstring. Under ``torch.compile`` the arguments pass as they are (the traced graph is one Function of its own).
    Under forward-mode AD the Function's twin with a ``jvp`` (:func:`jvp_twin`) is called, where it has one.

    Args:
        function: the ``torch.autograd.Function`` subclass.
        args: its arguments, as ``function.apply`` takes them.
    """
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        args = tuple(a.view_as(a) if isinstance(a, torch.Tensor) and a.is_leaf and a.requires_grad else a
                     for a in args)
    if forward_ad_active():
        function = _TWINS.get(function, function)
    return function.apply(*args)
