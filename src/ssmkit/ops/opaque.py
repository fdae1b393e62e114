"""Kernel calls (the C kernels, the Triton kernels) as ``torch.library`` custom ops while ``torch.compile`` traces, so
a compiled model runs them.

Dynamo cannot trace a :mod:`ctypes` call, so before this a compiled model took the chunked PyTorch paths, and compiling
made it slower: an S4D layer's forward+backward (B 8, L 4 096, H 128, N 64, 2 threads) took 3.6x its eager time, and a
Mamba layer's compilation did not end within 15 minutes (the chunked selective scan's loop over 512 chunks, unrolled).
The Triton kernels were kept out of compiled graphs for the same reason (``prefer_triton`` returned False while
tracing), so a compiled model on a GPU unrolled the same loops.

Each kernel module writes its kernel call -- allocate the outputs, run the kernel on them -- as a function of tensors,
ints and bools that returns a list of fresh tensors. :func:`kernel_op` registers that function as the custom op
``ssmkit::<name>`` with a fake implementation (the outputs' shapes and dtypes from the inputs', which is all that
FakeTensor tracing needs), and returns a function that calls the op while torch.compile traces and the plain function
otherwise: the same code runs in both, and eager calls pay no dispatcher overhead. The autograd around the kernels stays
in each module's ``torch.autograd.Function``, which dynamo traces into: its forward and backward call these ops.

``torch.export`` still takes the PyTorch paths (``prefer_native``, ``prefer_triton``): an exported program that named
these ops could not run without ssmkit (and a C compiler), nor go to ONNX. torch.func transforms (vmap, grad, jacrev)
take them too: the ops have no batching rule.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import torch

from ssmkit.ops.backend import forward_ad_active

NAMESPACE = "ssmkit"


def kernel_op(name: str, fake: Callable[..., list[torch.Tensor]]) -> Callable[[Callable], Callable]:
    """Decorate a kernel call ``fn(*args) -> list[Tensor]`` (annotated: ``torch.library`` infers the op's schema from
    the annotations) to run as the custom op ``ssmkit::<name>`` while torch.compile traces.

    Args:
        name: the op's name in the ``ssmkit`` namespace.
        fake: ``fake(*args)`` -> the outputs as empty tensors of the right shapes and dtypes (never reads data).

    Returns:
        a decorator; the decorated function keeps ``fn``'s signature and has the op as its ``op`` attribute.

    The op's body runs inside :func:`conjugate_and_negative_views`, so lazy views it makes read as in eager mode.
    """

    def wrap(fn: Callable[..., list[torch.Tensor]]) -> Callable[..., list[torch.Tensor]]:
        def body(*args):
            with conjugate_and_negative_views():
                return fn(*args)

        schema = torch.library.infer_schema(fn, mutates_args=())  # from fn's annotations, in fn's module
        op = torch.library.custom_op(f"{NAMESPACE}::{name}", body, mutates_args=(), schema=schema)
        op.register_fake(fake)

        @functools.wraps(fn)
        def call(*args):
            return op(*args) if torch.compiler.is_compiling() else fn(*args)

        call.op = op  # type: ignore[attr-defined]
        return call

    return wrap


@contextlib.contextmanager
def conjugate_and_negative_views() -> Iterator[None]:
    """The Conjugate and Negative dispatch keys back on while a custom op's body runs Python code.

    A custom op's implementation is called below those keys (they are in the thread's exclude set there), so the
    lazy conjugate and negative bits of the views that the code makes are ignored: ``x.conj()``, ``-x.imag`` and the
    like read the unconjugated, unnegated storage. The compute of a cached value ran so inside a compiled step: S4's
    C_true came out wrong (relative error 1.2 in C_true, 0.94 in the compiled step's output, probe 18), and since the
    value is cached, so did every eager step after it until the weights changed. Every ssmkit custom op's body runs
    inside this (:func:`kernel_op`, ``layers.cache``)."""
    with contextlib.ExitStack() as stack:
        for key in (torch._C.DispatchKey.Conjugate, torch._C.DispatchKey.Negative):
            stack.enter_context(torch._C._SetExcludeDispatchKeyGuard(key, False))
        yield


_AUTOGRAD_KEYS = tuple(getattr(torch._C.DispatchKey, name) for name in (
    "ADInplaceOrView", "AutogradFunctionality", "AutogradOther", "AutogradCPU", "AutogradCUDA")
    if hasattr(torch._C.DispatchKey, name))


@contextlib.contextmanager
def eager_views_and_autograd() -> Iterator[None]:
    """:func:`conjugate_and_negative_views` and the autograd dispatch keys back on, for a custom op's body that runs
    arbitrary eager code (the cached-value op of ``layers.cache``: a layer's whole plan). Below the autograd keys,
    ``torch.enable_grad()`` records nothing: the first use of a native kernel in a process runs a smoke test of its
    gradients (``ops.native.gate``), which failed there and marked the kernel unusable for the rest of the process
    (found when S4's compiled forward plan, the first Cauchy call of a process, ran inside the op)."""
    with conjugate_and_negative_views(), contextlib.ExitStack() as stack:
        for key in _AUTOGRAD_KEYS:
            stack.enter_context(torch._C._SetExcludeDispatchKeyGuard(key, False))
        yield


def exporting() -> bool:
    """Whether ``torch.export`` traces, as ``torch.compiler.is_exporting()`` means it, on every torch version.

    Read from torch.compiler's module flag, which ``torch.export`` sets while it traces. torch 2.11 (the version of
    the GPU sessions) constant-folds ``torch.compiler.is_exporting()`` to True inside every dynamo trace,
    torch.compile's included (2.13 reads the flag): there, :func:`custom_ops_allowed` said no under torch.compile, so
    compiled models left out every C and Triton kernel and ran the chunked PyTorch paths (found running the
    test-suite on torch 2.11 on the CPU: 34 of its 41 failures). Falls back to the public function where the flag
    does not exist, and to False where neither does (torch < 2.3 has no ``is_exporting``).
    """
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    if flag is None:
        public = getattr(torch.compiler, "is_exporting", None)
        return public is not None and public()
    return bool(flag)


def custom_ops_allowed() -> bool:
    """Whether ssmkit's custom ops (the kernel calls, the compiled value-cache lookup) may stand here: True in eager
    mode and while torch.compile traces, False while a torch.func transform (the ops have no batching rule) or
    ``torch.export`` (a program naming ssmkit's ops could not run without ssmkit) traces, and under forward-mode AD
    (:func:`ssmkit.ops.backend.forward_ad_active`: the kernels compute no tangent). The one test that
    ``prefer_native``, ``prefer_triton`` and ``layers.cache`` share."""
    return not (torch._C._are_functorch_transforms_active() or exporting() or forward_ad_active())


def absent_if_zero(grad: torch.Tensor | None) -> torch.Tensor | None:
    """None for an all-zero gradient: a compiled graph passes zeros for an output nothing used (eager autograd passes
    None), and the kernels skip the work an absent gradient needs (the diagonal scan's seeded adjoint pair cost a
    compiled S4D layer's backward 1.5x its eager time). Called inside the kernel calls, on real data (one reduction
    over a state-sized tensor)."""
    return None if grad is None or not bool(grad.any()) else grad
