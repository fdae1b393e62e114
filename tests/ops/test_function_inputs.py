"""No ``torch.autograd.Function`` of ssmkit is handed a leaf tensor that requires grad (ssmkit/ops/function_call.py).

``Function.apply`` takes a leaf's autograd lock while holding the GIL; a built-in op on the same leaf in another thread
takes them in the other order, and two threads sharing a model in grad mode deadlocked (stop 56's CI: the threaded
serving probe held the whole 90 minutes). Parametrised over ``ssmkit.layers.available()``, each variant, backend and
dtype, the forward, a chunked continuation, the step loop and the backward; and over a model per layer in training (the
Block's dropout and norms). A reproduction of the deadlock itself runs in a subprocess with a time limit.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import ssmkit.layers as layers
import ssmkit.ops as ops
from ssmkit.models import SequenceModel
from tests.conftest import DEVICE, H, NEEDED_AT_TINY_WIDTH, make_layer, runnable_backends, variants

NAMES = layers.available()
CASES = [(name, i, backend) for name in NAMES for i in range(len(variants(name)))
         for backend in ("auto", *runnable_backends(layers.layer_class(name)))]
# Function.apply as defined (a Python classmethod before torch 2.14, a C classmethod_descriptor since), bound to cls
ORIGINAL = torch.autograd.Function.__dict__["apply"]


@pytest.fixture
def leaves_handed_over(monkeypatch) -> list[str]:
    """Record every ssmkit Function called with a leaf tensor that requires grad (while autograd records)."""
    seen: list[str] = []

    def apply(cls, *args, **kwargs):
        if cls.__module__.startswith("ssmkit") and torch.is_grad_enabled():
            for k, a in enumerate(args):
                if isinstance(a, torch.Tensor) and a.is_leaf and a.requires_grad:
                    seen.append(f"{cls.__module__}.{cls.__name__} argument {k} {tuple(a.shape)}")
        return ORIGINAL.__get__(None, cls)(*args, **kwargs)

    monkeypatch.setattr(torch.autograd.Function, "apply", classmethod(apply))
    return seen


def test_the_recorder_sees_a_leaf_handed_to_a_function(leaves_handed_over):
    from ssmkit.ops.powers import _PowerTable

    a = torch.rand(3, dtype=torch.float64, requires_grad=True)
    _PowerTable.apply(a, 4).sum().backward()  # directly, as a call site that forgot apply_function would
    assert leaves_handed_over == ["ssmkit.ops.powers._PowerTable argument 0 (3,)"]
    assert torch.allclose(a.grad, sum(k * a.detach() ** (k - 1) for k in range(1, 4)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,variant,backend", CASES, ids=[f"{n}-{i}-{b}" for n, i, b in CASES])
def test_no_function_gets_a_parameter_itself(name, variant, backend, dtype, leaves_handed_over):
    layer = make_layer(name, variants(name)[variant], dtype=dtype)
    x = torch.randn(2, 11, H, dtype=dtype, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    x.requires_grad_(True)  # an input that requires grad is a leaf too
    with ops.use_backend(backend):
        y, h = layer(x)
        loss = y.square().sum()
        y2, _ = layer(x[:, :4], state=h)  # a chunked continuation
        loss = loss + y2.sum()
        if layer.supports("step") and backend == "auto":
            state = layer.initial_state(2)
            for t in range(3):
                y_t, state = layer.step(x[:, t], state)
                loss = loss + y_t.sum()
        loss.backward()
    assert leaves_handed_over == []
    grads = [p.grad for p in layer.parameters() if p.requires_grad]
    assert x.grad is not None and any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_no_function_in_a_training_model_gets_a_parameter_itself(name, leaves_handed_over):
    torch.manual_seed(0)
    model = SequenceModel(d_input=2, d_model=H * 2, n_layers=2, layer=name,
                          layer_options={**variants(name)[0], **NEEDED_AT_TINY_WIDTH.get(name, {})},
                          d_output=3, dropout=0.1, norm="batch", device=DEVICE, dtype=torch.float64).train()
    out, _ = model(torch.randn(2, 9, 2, dtype=torch.float64, device=DEVICE), return_state=False)
    out.square().sum().backward()
    assert leaves_handed_over == []
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


DEADLOCK = textwrap.dedent("""
    import threading
    import torch
    from ssmkit.ops.function_call import apply_function

    class Scale(torch.autograd.Function):  # x * w, as a Function
        @staticmethod
        def forward(ctx, x, w):
            return x * w

        @staticmethod
        def backward(ctx, g):
            return g, g

    p = torch.nn.Parameter(torch.rand(4, dtype=torch.float64))

    def through_a_function():
        for _ in range(50000):
            y = apply_function(Scale, torch.ones(4), p)
            del y  # the graph goes, and with it the parameter's gradient accumulator: the next call makes a new one

    def through_a_builtin_op():
        for _ in range(50000):
            y = p.reshape(2, 2)
            del y

    threads = [threading.Thread(target=f) for f in (through_a_function, through_a_builtin_op) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("finished")
""")


def test_threads_sharing_a_parameter_between_a_function_and_a_builtin_op_finish():
    # with ``Scale.apply(torch.ones(4), p)`` in place of apply_function this hung within a minute here (2 cores, PyTorch
    # 2.13 and 2.11): a hang is ended by the time limit and fails the test
    run = subprocess.run([sys.executable, "-c", DEADLOCK], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "finished", run.stderr[-2000:]


def test_every_function_in_the_source_is_called_through_apply_function():
    # the parametrised tests reach the Functions the layers use; this reads the source for any other call site
    import ast
    import pathlib

    import ssmkit

    root = pathlib.Path(ssmkit.__file__).parent
    functions, calls = set(), []
    trees = {path: ast.parse(path.read_text()) for path in sorted(root.rglob("*.py"))}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith("autograd.Function") for b in node.bases):
                functions.add(node.name)
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "apply"
                    and ast.unparse(node.func.value) in functions):
                calls.append(f"{path.relative_to(root)}:{node.lineno} {ast.unparse(node.func)}")
    assert len(functions) >= 25, functions  # the reader finds the Functions at all
    assert calls == []
