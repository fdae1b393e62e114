"""The backend context (ssmkit.ops.backend): per thread and per asyncio task, restored by token, one table per op."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

import ssmkit.ops as ops
from ssmkit.ops.backend import BACKENDS, dispatch, get_backend, set_backend, use_backend
from ssmkit.ops.native import native_available
from ssmkit.ops.triton_gate import triton_available


def run_threads(*targets):
    """Run each target in its own thread; re-raise the first exception (an assert) in the caller."""
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001  (reported in the main thread)
                errors.append(e)
        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a thread hung (an Event was never set)"
    if errors:
        raise errors[0]


def test_use_backend_does_not_leak_into_another_thread():
    # Thread A holds use_backend("reference") open while thread B reads the backend: B must still see "auto".
    entered, read = threading.Event(), threading.Event()
    seen = {}

    def a():
        with use_backend("reference"):
            entered.set()
            assert read.wait(10)
            seen["a_inside"] = get_backend()
        seen["a_after"] = get_backend()

    def b():
        assert entered.wait(10)
        seen["b"] = get_backend()
        read.set()

    run_threads(a, b)
    assert seen == {"a_inside": "reference", "a_after": "auto", "b": "auto"}
    assert get_backend() == "auto"


def test_set_backend_in_a_thread_stays_in_that_thread():
    done = threading.Event()

    def worker():
        set_backend("reference")
        assert get_backend() == "reference"
        done.set()

    run_threads(worker)
    assert done.is_set() and get_backend() == "auto"


def test_interleaved_blocks_in_two_threads_restore_correctly():
    # T1 enters "reference", T2 enters "fft", T1 leaves while T2 is still inside, then T2 leaves. With one
    # process-global value T2 would see "auto" after T1 left, and the process would end on "reference".
    t1_in, t2_in, t1_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def t1():
        with use_backend("reference"):
            t1_in.set()
            assert t2_in.wait(10)
            seen["t1_inside"] = get_backend()
        seen["t1_after"] = get_backend()
        t1_out.set()

    def t2():
        assert t1_in.wait(10)
        with use_backend("fft"):
            t2_in.set()
            assert t1_out.wait(10)
            seen["t2_inside_after_t1_left"] = get_backend()
        seen["t2_after"] = get_backend()

    run_threads(t1, t2)
    assert seen == {"t1_inside": "reference", "t1_after": "auto", "t2_inside_after_t1_left": "fft", "t2_after": "auto"}
    assert get_backend() == "auto"


def test_interleaved_blocks_in_two_asyncio_tasks():
    # Each task runs in its own copy of the context, so its block is its own even when the blocks interleave.
    seen = {}

    async def task(name, backend, first: asyncio.Event, second: asyncio.Event):
        with use_backend(backend):
            first.set()
            await second.wait()
            seen[name] = get_backend()
        seen[name + "_after"] = get_backend()

    async def main():
        e1, e2 = asyncio.Event(), asyncio.Event()
        await asyncio.gather(task("x", "reference", e1, e2), task("y", "chunked", e2, e1))

    asyncio.run(main())
    assert seen == {"x": "reference", "y": "chunked", "x_after": "auto", "y_after": "auto"}
    assert get_backend() == "auto"


def test_nested_blocks_and_exceptions_restore():
    with use_backend("reference"):
        with use_backend("fft"):
            assert get_backend() == "fft"
        assert get_backend() == "reference"
        with pytest.raises(KeyError):
            with use_backend("chunked"):
                raise KeyError("inside")
        assert get_backend() == "reference"
    assert get_backend() == "auto"


def test_bad_names():
    for bad in ("fast", None, 3):
        with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'reference', 'chunked', 'fft', 'triton', 'native'\)"):
            set_backend(bad)
        with pytest.raises(ValueError, match="backend must be one of"):
            with use_backend(bad):
                pass
    with pytest.raises(ValueError, match="backend must be one of .*; got 'gpu'"):
        ops.ssm_scan(torch.zeros(1, 2, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), backend="gpu")
    assert get_backend() == "auto"


def test_dispatch_table():
    table = {"reference": lambda: "ref", "chunked": lambda: "chunk"}
    assert dispatch("op", table, None, auto="chunked")() == "chunk"
    assert dispatch("op", table, "reference", auto="chunked")() == "ref"
    with use_backend("reference"):
        assert dispatch("op", table, None, auto="chunked")() == "ref"
        assert dispatch("op", table, "auto", auto="chunked")() == "chunk"  # the per-call value wins
    with use_backend("fft"), pytest.raises(RuntimeError, match=r"op: backend 'fft' was forced by ssmkit.ops.set_backend"
                                                               r"/use_backend but op has only the backends "
                                                               r"'auto', 'reference', 'chunked'"):
        dispatch("op", table, None, auto="chunked")
    with pytest.raises(RuntimeError, match="op: backend 'triton' was forced by its backend= argument"):
        dispatch("op", table, "triton", auto="chunked")
    assert BACKENDS == ("auto", "reference", "chunked", "fft", "triton", "native")


# Every dispatching op and the backends it has ("auto" aside): one meaning per name (ssmkit.ops.backend).
TABLES = {
    "ssm_scan": ("reference", "chunked", "fft", "triton", "native"),
    "ssm_final_state": ("reference", "chunked"),
    "linear_recurrence": ("reference", "chunked", "native"),
    "vandermonde": ("reference", "chunked"),
    "initial_state_output": ("reference", "chunked"),
    "causal_conv": ("reference", "fft"),
    "bidirectional_conv": ("reference", "fft"),
    "cauchy": ("reference", "chunked", "native"),
    "dplr_kernel": ("reference", "fft"),
    "dense_final_state": ("reference", "chunked"),
    "diagonal_ssm_bidirectional": ("reference", "fft"),
    "selective_scan": ("reference", "chunked", "native", "triton"),
    "causal_conv1d": ("reference", "chunked", "native"),
}


def _calls():
    """One small valid call per op, as a function of the per-call backend."""
    from ssmkit.ops.cauchy import cauchy

    g = torch.Generator().manual_seed(0)
    c = lambda *s: torch.randn(*s, dtype=torch.complex128, generator=g)  # noqa: E731
    u = torch.randn(2, 5, 3, dtype=torch.float64, generator=g)
    A, Bb, C = 0.5 * c(3, 4), c(3, 4), c(3, 4)
    Lam = torch.complex(-torch.rand(3, 2, dtype=torch.float64, generator=g), torch.randn(3, 2, dtype=torch.float64, generator=g))
    dt = torch.full((3,), 0.1, dtype=torch.float64)
    s0, C2, v, z, w = c(2, 3, 4), c(2, 3, 4), c(3, 4), c(3, 6), c(3, 4)
    P1, B1, Ct1 = c(1, 3, 2), c(1, 3, 2), c(1, 3, 2)
    A_dense, B_dense = 0.3 * c(3, 4, 4), c(3, 4)
    K1, K2 = u[0].T.contiguous(), u[:2].transpose(1, 2).contiguous()  # (H, L), (2, H, L)
    BCs = torch.cat([u, u[..., :1]], -1)  # (B, L, N = 4): the selective scan's B_t and C_t
    return {
        "ssm_scan": lambda b: ops.ssm_scan(u, A, Bb, C, backend=b),
        "ssm_final_state": lambda b: ops.ssm_final_state(u, A, Bb, backend=b),
        "linear_recurrence": lambda b: ops.linear_recurrence(0.5 * u, u, backend=b),
        "vandermonde": lambda b: ops.vandermonde(C, A, 5, backend=b),
        "initial_state_output": lambda b: ops.initial_state_output(C, A, s0, 5, backend=b),
        "causal_conv": lambda b: ops.causal_conv(u, K1, backend=b),
        "bidirectional_conv": lambda b: ops.bidirectional_conv(u, K2, backend=b),
        "cauchy": lambda b: cauchy(v, z, w, backend=b),
        "dplr_kernel": lambda b: ops.dplr_kernel(Lam, P1, B1, Ct1, dt, 5, backend=b),
        "dense_final_state": lambda b: ops.dense_final_state(u, A_dense, B_dense, backend=b),
        "diagonal_ssm_bidirectional": lambda b: ops.diagonal_ssm_bidirectional(u, A, Bb, C2, backend=b),
        "causal_conv1d": lambda b: ops.causal_conv1d(u, K1[:, :4], None, backend=b),
        "selective_scan": lambda b: ops.selective_scan(u, u, -A.real.abs(), BCs, BCs.flip(-1), backend=b),
    }


@pytest.mark.parametrize("op", sorted(TABLES))
def test_every_op_has_its_table_and_raises_outside_it(op):
    call = _calls()[op]
    first = None
    for backend in BACKENDS:
        if backend == "triton" and backend in TABLES[op] and not triton_available("cpu", op, torch.float64):
            with pytest.raises(RuntimeError, match=rf"^{op}: backend 'triton' was forced but cannot run"):
                call(backend)  # runs in tests/ops/test_triton.py where triton is installed
        elif backend == "native" and backend in TABLES[op] and not native_available(op, torch.float64):
            with pytest.raises(RuntimeError, match=rf"^{op}: backend 'native' cannot run here"):
                call(backend)  # no C compiler (or SSMKIT_NATIVE=0): tests/ops/test_native.py
        elif backend == "auto" or backend in TABLES[op]:
            out = call(backend)
            out = out[0] if isinstance(out, tuple) else out
            first = out if first is None else first
            torch.testing.assert_close(out, first, rtol=1e-9, atol=1e-12)  # every path, one result (float64)
        else:
            has = ", ".join(repr(b) for b in ("auto", *TABLES[op]))
            with pytest.raises(RuntimeError, match=rf"^{op}: backend '{backend}' was forced by its backend= "
                                                   rf"argument but {op} has only the backends {has}$"):
                call(backend)


def test_checkpoint_contexts_recompute_under_the_forward_backend_in_another_thread():
    # PyTorch runs a CUDA backward on its own device thread, which sees the ContextVar's default ("auto"): a
    # checkpoint's recomputation there took another path than its forward under a forced backend. A backward started
    # in a new thread does the same on the CPU; checkpoint_contexts carries the backend over.
    from torch.utils.checkpoint import CheckpointError, checkpoint

    from tests.conftest import DEVICE, make_layer, rel_err

    layer = make_layer("s4d")
    x = torch.randn(2, 9, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)

    def grads(**options):
        seen, out = [], {}
        with ops.use_backend("reference"):
            y, _ = checkpoint(layer, x, use_reentrant=False, **options)

        def backward():
            seen.append(ops.get_backend())
            try:
                out["grad"] = torch.autograd.grad(y.square().sum(), x)[0]
            except CheckpointError as e:
                out["error"] = e

        thread = threading.Thread(target=backward)
        thread.start()
        thread.join()
        assert seen == ["auto"]
        return out

    with ops.use_backend("reference"):
        y, _ = layer(x)
    (want,) = torch.autograd.grad(y.square().sum(), x)
    assert "error" in grads()  # the recomputation ran under "auto": another number of saved tensors
    got = grads(context_fn=ops.checkpoint_contexts)
    assert "error" not in got and rel_err(got["grad"], want) < 1e-13
    with ops.use_backend("chunked"):
        forward, recompute = ops.checkpoint_contexts()
    with recompute:
        assert ops.get_backend() == "chunked"
    assert ops.get_backend() == "auto"


def test_checkpoint_contexts_can_be_entered_again_nested_and_in_threads():
    # a backward after backward(retain_graph=True) recomputes again: the contexts were generators, good for one entry
    with ops.use_backend("reference"):
        forward, recompute = ops.checkpoint_contexts()
    seen = []
    for _ in range(2):
        with recompute:
            seen.append(ops.get_backend())
            with ops.use_backend("chunked"):
                with recompute:
                    seen.append(ops.get_backend())
                seen.append(ops.get_backend())
            seen.append(ops.get_backend())
        seen.append(ops.get_backend())
    assert seen == ["reference", "reference", "chunked", "reference", "auto"] * 2

    def other():
        with recompute:
            seen.append(ops.get_backend())
        seen.append(ops.get_backend())

    with ops.use_backend("fft"), recompute:
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        seen.append(ops.get_backend())
    assert seen[-3:] == ["reference", "auto", "reference"] and ops.get_backend() == "auto"


def test_a_forced_backend_does_not_evaluate_autos_choice(monkeypatch):
    """``dispatch`` calls an op's ``auto`` choice only under ``"auto"``: with a backend forced, no op asks whether the C
    or Triton kernels could run (which builds and smoke-tests them on first use: a first ``backend="reference"`` call
    compiled C code it never ran)."""
    import ssmkit.ops.mimo as mimo_mod
    import ssmkit.ops.native.gate as gate
    import ssmkit.ops.triton_gate as triton_gate
    from ssmkit.ops import conv, recurrence, scan, selective

    asked = []

    def refuse(*args, **kwargs):
        asked.append(args[0] if args else None)
        return False

    for module in (gate, conv, recurrence, scan, selective, mimo_mod):
        monkeypatch.setattr(module, "prefer_native", refuse)
    for module in (triton_gate, scan, selective):
        monkeypatch.setattr(module, "prefer_triton", refuse)
    g = torch.Generator().manual_seed(0)
    B, L, H, N = 2, 5, 3, 4
    u = torch.randn(B, L, H, generator=g, dtype=torch.float64)
    A = torch.complex(-torch.rand(H, N, generator=g, dtype=torch.float64), torch.randn(H, N, generator=g, dtype=torch.float64))
    A_bar = torch.exp(A * 0.1)
    with use_backend("chunked"):
        ops.ssm_scan(u, A_bar, torch.ones_like(A_bar), torch.ones_like(A_bar))
        ops.linear_recurrence(torch.rand(B, L, H, generator=g, dtype=torch.float64), u)
        ops.selective_scan(u, torch.rand(B, L, H, generator=g, dtype=torch.float64), -torch.rand(H, N, dtype=torch.float64),
                           torch.randn(B, L, N, generator=g, dtype=torch.float64),
                           torch.randn(B, L, N, generator=g, dtype=torch.float64))
        ops.causal_conv1d(u, torch.randn(H, 4, generator=g, dtype=torch.float64), None)
    assert asked == []
    with use_backend("auto"):  # the same calls under "auto" do ask (the check can see a call)
        ops.linear_recurrence(torch.rand(B, L, H, generator=g, dtype=torch.float64), u)
    assert asked
