"""Choice of execution path for the ops (one visible place).

Every dispatching op has ONE table from backend name to implementation, and every name means one thing:

    ``"reference"``  the op's ``<op>_reference`` oracle (a loop or the direct formula);
    ``"chunked"``    a time-domain, matmul-shaped algorithm (chunked scan, blocked GEMM, power-table GEMM);
    ``"fft"``        a frequency-domain (FFT) algorithm;
    ``"triton"``     a Triton GPU kernel (:mod:`ssmkit.ops.triton`; usable only where :mod:`ssmkit.ops.triton_gate`'s
                     smoke call succeeded: CUDA, or Triton's CPU interpreter under ``TRITON_INTERPRET=1``);
    ``"native"``     a C kernel for the CPU (:mod:`ssmkit.ops.native`; compiled on first use with the system's C
                     compiler and usable only where its smoke call succeeded);
    ``"auto"``       the op's own choice among the names of its table (``"triton"`` only on CUDA, where it runs;
                     ``"native"`` only on the CPU, where it runs, also under torch.compile (as custom ops), never
                     while torch.func transforms or torch.export trace, nor under forward-mode AD).

Forward-mode AD (``torch.autograd.forward_ad``, ``torch.func.jvp``, ``jacfwd``, ``hessian``; :func:`forward_ad_active`)
runs through every op: ``"auto"`` takes the PyTorch paths, whose ``torch.autograd.Function`` s have a ``jvp`` (a twin
class that :func:`ssmkit.ops.function_call.apply_function` calls there) or are bypassed by their composite ops, and a
forced ``"native"`` or ``"triton"`` raises (:func:`check_forward_ad`): their kernels compute no tangent.

The backend in force is a :class:`contextvars.ContextVar` (default ``"auto"``): :func:`set_backend` and
:func:`use_backend` change it for the current thread or asyncio task only, and :func:`use_backend` restores
it with the variable's token. Every op also takes a keyword-only ``backend=`` that overrides the context for
that call. An op forced to a name it does not have raises ``RuntimeError`` naming the op and its backends --
never a silent fallback. An op that calls other ops passes them an explicit backend, so a forced context
selects the path of the op called from outside only.

Under ``torch.compile`` the context backend is read once, when the graph is traced (dynamo cannot trace nor
guard a ``ContextVar``): a compiled function keeps the path it was traced with until it is recompiled. A
per-call ``backend=`` argument is a constant that dynamo guards, so it recompiles when it changes.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from typing import Callable, ContextManager, Iterator, Mapping, TypeVar

import torch
from torch.autograd import forward_ad

BACKENDS = ("auto", "reference", "chunked", "fft", "triton", "native")

_BACKEND: contextvars.ContextVar[str] = contextvars.ContextVar("ssmkit_ops_backend", default="auto")

F = TypeVar("F", bound=Callable)


def _check_name(name: object, argument: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"{argument} must be one of {BACKENDS}; got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Force an execution path for every op in the current context (thread or asyncio task).

    Args:
        name: one of
            ``"auto"`` (default) -- each op picks its fastest available path;
            ``"reference"`` -- plain loops / direct formulas (the test oracle);
            ``"chunked"`` -- time-domain matmul-shaped algorithms (CPU and GPU);
            ``"fft"`` -- frequency-domain (FFT) algorithms;
            ``"triton"`` -- Triton GPU kernels (ssm_scan and ssd; an op without one raises, and so does a forced
            ``"triton"`` where the kernels cannot run);
            ``"native"`` -- C kernels for the CPU (selective_scan; an op without one raises, and so does a forced
            ``"native"`` where the kernel cannot be built).
    """
    _BACKEND.set(_check_name(name, "backend"))


def constant_under_compile(fn: F) -> F:
    """``torch.compiler.assume_constant_result(fn)`` without importing ``torch._dynamo`` when ssmkit is imported (that
    import took 1.4 s of a 3.3 s ``import ssmkit``, and every process paid it, compiled or not). Torch's decorator only
    marks the function (``fn._dynamo_marked_constant = True``, which dynamo reads when it traces a call of ``fn``:
    called once while tracing, its answer kept in the graph); this one sets the same mark, and where ``torch._dynamo``
    is already loaded it is torch's own decorator. tests/test_import.py checks that both set the same attributes.

    Args:
        fn: a function whose answer a compiled graph may keep.

    Returns:
        ``fn``, marked.
    """
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


@constant_under_compile
def _context_backend() -> str:
    # dynamo cannot trace ContextVar.get; read it at trace time and bake the value in (see the module docstring)
    return _BACKEND.get()


def get_backend() -> str:
    """The backend of the current context, set by :func:`set_backend` or :func:`use_backend` (``"auto"`` unless changed)."""
    return _context_backend()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Use backend ``name`` inside the ``with`` block in the current context; restore the previous one on exit.

    The previous value is restored with the ContextVar token, so the block never changes what another thread or
    asyncio task sees, and concurrent blocks in different threads or tasks each restore their own backend.

    Args:
        name: a backend name, as for :func:`set_backend`.
    """
    token = _BACKEND.set(_check_name(name, "backend"))
    try:
        yield
    finally:
        _BACKEND.reset(token)


def checkpoint_contexts() -> tuple[ContextManager[None], ContextManager[None]]:
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint(fn, ..., use_reentrant=False, context_fn=...)``: the
    forward and its recomputation both under the backend in force where the checkpoint is called.

    The backend is per thread (a ContextVar), and PyTorch runs a CUDA backward, where a checkpoint recomputes its
    forward, on its own device thread, which sees ``"auto"``: a forward under a forced backend was then recomputed by
    another path and the checkpoint refused it ("A different number of tensors was saved", an H200). Under
    ``"auto"`` nothing differs; the reentrant checkpoint takes no ``context_fn``, and recomputes under ``"auto"`` there.

    Both contexts can be entered again (a backward after ``backward(retain_graph=True)`` recomputes once more; a
    ``use_backend`` block, a generator, could be entered once and failed there).

    Returns:
        (the forward's context, the recomputation's context).
    """
    name = get_backend()
    return BackendContext(name), BackendContext(name)


def checkpointed_chunks(chunk: Callable, u: torch.Tensor, intervals: torch.Tensor, state, T: int,
                        *params) -> tuple[torch.Tensor, object]:
    """Run ``chunk(u_c, tau_c, state, *params) -> (y_c, state)`` over the chunks of T steps of u (B, L, ...) and
    ``intervals`` (B, L), the state carried from chunk to chunk: each chunk under a non-reentrant activation checkpoint
    when autograd records (the backward keeps a chunk's inputs and start state, and recomputes it under the backend
    in force here, :func:`checkpoint_contexts`; no randomness), plainly otherwise and inside torch.func transforms,
    which refuse the checkpoint's hooks. The irregularly sampled scans' chunk loop.

    Args:
        chunk: the function of one chunk.
        u: (B, L, ...) the input, chunked along dim 1.
        intervals: (B, L) the gaps, chunked alike.
        state: the state before the first chunk.
        T: the chunk length (>= 1).
        params: the chunk function's other arguments, the same for every chunk.

    Returns:
        the chunks' outputs concatenated along dim 1, and the state after the last chunk.
    """
    from torch.utils.checkpoint import checkpoint

    recompute = torch.is_grad_enabled() and not torch._C._are_functorch_transforms_active()
    ys = []
    for t0 in range(0, u.shape[1], T):
        args = (u[:, t0:t0 + T], intervals[:, t0:t0 + T], state, *params)
        if recompute:
            y_c, state = checkpoint(chunk, *args, use_reentrant=False, context_fn=checkpoint_contexts,
                                    preserve_rng_state=False)
        else:
            y_c, state = chunk(*args)
        ys.append(y_c)
    return torch.cat(ys, dim=1), state


class BackendContext:
    """A ``with`` block under one backend that can be entered any number of times, nested or from several threads
    (each entry restores, on its exit, the backend its own thread had)."""

    def __init__(self, name: str) -> None:
        self._name = _check_name(name, "backend")
        self._tokens = threading.local()

    def __enter__(self) -> None:
        stack = self._tokens.__dict__.setdefault("stack", [])
        stack.append(_BACKEND.set(self._name))

    def __exit__(self, *exc: object) -> None:
        _BACKEND.reset(self._tokens.stack.pop())


def dispatch(op: str, table: Mapping[str, F], backend: str | None, auto: str | Callable[[], str]) -> F:
    """The implementation of ``op`` for ``backend`` (None: the context's backend), from the op's table.

    Args:
        op: the op's name, for the error message.
        table: backend name -> implementation; the keys are the backends the op has (never ``"auto"``).
        backend: the per-call override, or None for :func:`get_backend`.
        auto: the key of ``table`` that ``"auto"`` selects, or a function returning it, called only under ``"auto"``
            (a forced backend then builds and smoke-tests no kernel it does not run).

    Returns:
        the implementation (a callable with the signature of the op's reference).

    Raises:
        ValueError: ``backend`` is not one of :data:`BACKENDS`.
        RuntimeError: the op has no such backend (names the op and the backends it has), or a kernel backend
            (``"native"``, ``"triton"``) was forced while forward-mode AD is active (:func:`check_forward_ad`).
    """
    if backend is None:
        name, how = get_backend(), "by ssmkit.ops.set_backend/use_backend"
    else:
        name, how = _check_name(backend, "backend"), "by its backend= argument"
    if name == "auto":
        return table[auto() if callable(auto) else auto]
    impl = table.get(name)
    if impl is None:
        has = ", ".join(repr(b) for b in ("auto", *table))
        raise RuntimeError(f"{op}: backend {name!r} was forced {how} but {op} has only the backends {has}")
    check_forward_ad(op, name)
    return impl


KERNEL_BACKENDS = ("native", "triton")  # the backends whose kernels have no forward-mode derivative


def check_forward_ad(op: str, name: str) -> None:
    """Raise ``RuntimeError`` when backend ``name`` is a kernel backend (:data:`KERNEL_BACKENDS`) and forward-mode AD
    is active (:func:`forward_ad_active`): a C or Triton kernel computes no tangent, so its result would carry none
    (a wrong, zero derivative) or fail inside PyTorch with a message about custom Functions.

    Args:
        op: the op's name, first in the message.
        name: the backend about to run.
    """
    if name in KERNEL_BACKENDS and forward_ad_active():
        raise RuntimeError(
            f"{op}: backend {name!r} cannot run under forward-mode AD (torch.autograd.forward_ad, torch.func.jvp, "
            f"jacfwd, hessian): its kernels have no forward derivative; use 'auto', 'chunked' or 'reference' there"
        )


def forward_ad_active() -> bool:
    """True while forward-mode automatic differentiation may run through the ops: inside a
    ``torch.autograd.forward_ad.dual_level()`` block, or while a ``torch.func.jvp`` transform is active (alone, or inside
    ``jacfwd``, ``hessian`` = ``jacfwd(jacrev)``, or nested in ``vmap`` / ``grad``).

    What it checks, exactly: (1) ``torch.autograd.forward_ad._current_level >= 0``, the level that ``dual_level``
    enters (``torch.func.jvp`` enters one too, at its outermost nesting); (2) when a functorch transform is active,
    whether functorch's interpreter stack holds a ``Jvp`` interpreter (``torch._C._functorch.get_interpreter_stack()``,
    each entry's ``key()``), which covers a jvp nested where no dual level is open. It is a property of the context, not
    of the tensors: a plain tensor computed inside a dual level takes the forward-AD paths too. False while
    torch.compile traces (dynamo does not trace forward-mode AD; the check is kept out of its graphs).

    Under forward AD no op calls a C or Triton kernel (they have no forward derivative): ``"auto"`` takes the PyTorch
    paths (:func:`ssmkit.ops.opaque.custom_ops_allowed` is False), a forced ``"native"`` or ``"triton"`` raises
    (:func:`dispatch`), every fast path takes its out-of-place form (:func:`tracing` is True: ``out=`` ops have no
    forward derivative), and every ``torch.autograd.Function`` of the ops either has a ``jvp`` or is bypassed by its
    composite ops (docs/design.md, "Forward-mode AD").
    """
    if torch.compiler.is_compiling():
        return False
    if getattr(forward_ad, "_current_level", -1) >= 0:
        return True
    if not torch._C._are_functorch_transforms_active():
        return False
    stack = torch._C._functorch.get_interpreter_stack() or ()
    return any(level.key() == _JVP for level in stack)


_JVP = getattr(getattr(torch._C._functorch, "TransformType", None), "Jvp", None)


def tracing() -> bool:
    """True while torch.func transforms (vmap, grad, jacrev, jvp, ...) or torch.compile trace the ops, or forward-mode
    AD runs through them (:func:`forward_ad_active`).

    Fast paths that write into fresh buffers in place (``out=``, blocked slice copies) take their functional
    form then, which vmap batches, dynamo captures and forward-mode AD differentiates (an ``out=`` op has no forward
    derivative); in eager mode the in-place form saves memory traffic. This is the one place where that choice is made.
    """
    return (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or getattr(forward_ad, "_current_level", -1) >= 0)


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is enabled for ``device_type`` (``torch.is_autocast_enabled(device_type)``), and False for a
    device type autocast does not know (``"meta"``: asking torch raised "unknown device type for autocast"). The one
    place where the ops, layers and models ask; under torch.compile dynamo folds both queries to constants.

    Args:
        device_type: a tensor's ``device.type`` (``"cpu"``, ``"cuda"``, ``"meta"``, ...).

    Returns:
        True where autocast is available for that device type and enabled there.
    """
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
