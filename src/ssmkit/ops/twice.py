"""The backward of a kernel (Triton, C) when that backward is itself differentiated (``create_graph=True``).

A kernel's backward computes its gradients outside autograd, so under ``create_graph`` (a gradient penalty
‖∂L/∂x‖², a Hessian-vector product, MAML) they entered the graph as constants and the second-order part was lost
without an error. In that case the kernels' ``backward`` calls :func:`graph_backward` instead: autograd through the
op's differentiable torch path (the chunked scan), on the original inputs, so the gradients carry their history.
The ops that path calls run their reference backend (plain autograd, the oracle every fast path is tested against),
so a second derivative never routes back into a kernel. The inputs are differentiated through fresh aliases, so
each gradient is the partial derivative through this op alone, also where one input was computed from another.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ssmkit.ops.backend import use_backend


def wants_grad(*tensors: object) -> bool:
    """Whether autograd records a call on ``tensors``: grad mode is on and one of them (None and other non-tensors
    ignored) requires grad -- what decides if a kernel keeps data for its backward. Asked before ``Function.apply``:
    inside a Function's forward grad mode is off, and ``ctx.needs_input_grad`` ignores it (True under
    ``torch.no_grad()`` for an input that requires grad)."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def graph_backward(
    path: Callable[..., Sequence[torch.Tensor | None]],
    inputs: Sequence[torch.Tensor | None],
    needs: Sequence[bool],
    grads: Sequence[torch.Tensor | None],
) -> list[torch.Tensor | None]:
    """The vector-Jacobian product of ``path`` at ``inputs`` with ``grads``, differentiable (``create_graph``).

    Args:
        path: the op's differentiable torch path, ``path(*inputs)`` -> its outputs in the kernel's order.
        inputs: the kernel's tensor inputs as given to its forward (with their history), None where absent.
        needs: ``ctx.needs_input_grad`` for those inputs.
        grads: the incoming gradient of each output (None where the output is unused).

    Returns:
        one gradient per input (None where not needed), each with history.
    """
    device_type = next(t for t in inputs if t is not None).device.type
    # Fresh aliases (views with the inputs' history): the gradient with respect to an alias is the partial derivative
    # through this op alone. With the inputs themselves, a path from one input to another (Mamba's Δ, B and C are
    # computed from its u) would be counted too, and the result would be a total derivative.
    inputs = [None if t is None else t.view_as(t) for t in inputs]
    with torch.autocast(device_type, enabled=False), use_backend("reference"):
        outputs = path(*inputs)
    pairs = [(o, g) for o, g in zip(outputs, grads) if o is not None and g is not None]
    wanted = [i for i, (t, need) in enumerate(zip(inputs, needs)) if need and t is not None]
    result: list[torch.Tensor | None] = [None] * len(inputs)
    if not pairs or not wanted:
        return result
    found = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted], [g for _, g in pairs],
                                create_graph=True, allow_unused=True)
    for i, g in zip(wanted, found):
        result[i] = g
    return result
