"""Helpers of the tests that compile ops: a recording torch.compile backend, a loss and its gradients, a comparison."""

from __future__ import annotations

import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

from tests.conftest import rel_err


class Recorder:
    """A torch.compile backend (AOT autograd without code generation) that records the ops of the forward and
    backward graphs it compiles."""

    def __init__(self):
        self.forward: set[str] = set()
        self.backward: set[str] = set()

        def recording(into):
            def compiler(gm, example_inputs):
                into.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
                return make_boxed_func(gm.forward)
            return compiler

        self.backend = aot_autograd(fw_compiler=recording(self.forward), bw_compiler=recording(self.backward))

    def ssmkit_ops(self, graph: set[str]) -> set[str]:
        """The names of the ``ssmkit::`` custom ops in one of the recorded graphs."""
        return {t.split(".")[1] for t in graph if t.startswith("ssmkit.")}


def run_loss(fn, backend, inputs, use_state):
    """Outputs of ``fn(backend, *inputs)`` and the gradients of Σ|outputs|² over the inputs (the final state, the
    second output, left out of the loss unless ``use_state``)."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    outs = [o for o in fn(backend, *leaves) if o is not None]
    loss = sum((o.abs() ** 2).sum() for o in (outs if use_state else outs[:1]))
    return [o.detach() for o in outs], list(torch.autograd.grad(loss, leaves, allow_unused=True))


def assert_close(got, want, tol):
    """Pairwise: both None, or the same shape and a relative error below ``tol``."""
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.shape == b.shape and rel_err(a, b) < tol


def compile_recorded(fn):
    """``fn`` compiled with ``fullgraph=True`` (static shapes) through a new :class:`Recorder`: (recorder, compiled)."""
    rec = Recorder()
    torch._dynamo.reset()
    return rec, torch.compile(fn, fullgraph=True, backend=rec.backend, dynamic=False)


def check_compiled_run(rec, compiled, fn, inputs, op, backend, kernel, use_state):
    """Run ``compiled`` (``fn`` by :func:`compile_recorded`, with ``rec``) at ``backend``: its forward graph must hold
    exactly the custom op ``<op>_forward`` and its backward graph ``<op>_backward``; its outputs and gradients must
    equal ``fn(kernel, ...)``'s, eager (1e-12: the same kernel, float64), and the reference's (1e-9)."""
    got = run_loss(compiled, backend, inputs, use_state)
    assert rec.ssmkit_ops(rec.forward) == {f"{op}_forward"}
    assert rec.ssmkit_ops(rec.backward) == {f"{op}_backward"}
    eager = run_loss(fn, kernel, inputs, use_state)
    ref = run_loss(fn, "reference", inputs, use_state)
    assert_close([*got[0], *got[1]], [*eager[0], *eager[1]], 1e-12)
    assert_close([*got[0], *got[1]], [*ref[0], *ref[1]], 1e-9)


def check_compiled_kernel(fn, inputs, op, backend, kernel, use_state):
    """Compile ``fn(backend, *inputs)`` (:func:`compile_recorded`) and check it (:func:`check_compiled_run`)."""
    check_compiled_run(*compile_recorded(fn), fn, inputs, op, backend, kernel, use_state)
