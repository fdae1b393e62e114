"""Calling a ``torch.autograd.Function`` without taking the GIL and an autograd lock in the wrong order.

``Function.apply`` reads its inputs' gradient edges while holding the GIL, and for a leaf tensor that requires grad (a
parameter) that read takes the leaf's autograd lock (``grad_accumulator``). A built-in op on the same leaf in another
thread (``p.reshape``, ``p * x``) takes that lock with the GIL released and, when it makes the leaf's gradient
accumulator anew, asks for the GIL while holding the lock (the accumulator keeps the tensor's Python object alive).
Two threads sharing a model in grad mode can so wait on each other for ever, every other thread of the process with
them, pytest-timeout's timer included (PyTorch 2.11 and 2.13; found when a threaded serving test held stop 56's CI for
its whole 90 minutes). A view of the leaf, made by a built-in op (lock, then GIL: the safe order), reaches ``apply`` as
a non-leaf whose edge needs no lock, so every path takes the two in one order.
"""

from __future__ import annotations

from typing import Any

import torch


def apply_function(function: type[torch.autograd.Function], *args: Any) -> Any:
    """``function.apply(*args)`` with each leaf tensor that requires grad passed as a view of itself (the same values
    and storage; its gradient reaches the leaf through the view's backward), when autograd records: see the module's
    docstring. Under ``torch.compile`` the arguments pass as they are (the traced graph is one Function of its own).

    Args:
        function: the ``torch.autograd.Function`` subclass.
        args: its arguments, as ``function.apply`` takes them.
    """
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        args = tuple(a.view_as(a) if isinstance(a, torch.Tensor) and a.is_leaf and a.requires_grad else a
                     for a in args)
    return function.apply(*args)
