"""Under torch.compile the C kernels run as custom ops (``ssmkit.ops.opaque``), forward and backward.

Each op is compiled with ``fullgraph=True`` (a graph break fails) through AOT autograd with compilers that record the
forward and backward graphs, so the tests see that ``"auto"`` put the kernel's ops in both. The compiled outputs and
gradients equal eager ones (the same kernels: float64 to 1e-12) and the reference's; the loss either uses the final
state or not (a compiled backward then passes zeros for its gradient where eager autograd passes None). A second and a
third length run in one graph with the length symbolic (the ops' fake implementations). ``torch.export`` keeps the
PyTorch paths: an exported program names no ssmkit op.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import ssmkit.ops as ops
from ssmkit.ops.cauchy import cauchy
from ssmkit.ops.native import native_available
from ssmkit.ops.rglru import rglru
from ssmkit.ops.ssd import ssd
from tests.conftest import DEVICE
from tests.ops.compiled import Recorder, assert_close, check_compiled_run, compile_recorded, run_loss

F64, C128 = torch.float64, torch.complex128
pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu" or not all(native_available(op, F64) for op in ("ssm_scan", "selective_scan")),
    reason="the native kernels run on the CPU where they build",
)


def _rand(g, *shape, dtype=F64):
    return torch.randn(*shape, dtype=dtype, generator=g)


def _stable(g, *shape, dtype=C128):  # |a| < 1
    r = 0.5 + 0.45 * torch.rand(*shape, generator=g, dtype=F64)
    return r * torch.exp(1j * torch.rand(*shape, generator=g, dtype=F64)) if dtype == C128 else r


def _cases():
    """name -> (native op, builder(g, L) -> (inputs, fn(backend, *inputs) -> outputs)); H = 19 and N = 5 leave a
    partial channel block, and the lengths partial chunks."""
    Bsz, H, N = 2, 19, 5

    def scan(g, L):
        ins = (_rand(g, Bsz, L, H), _stable(g, H, N), _rand(g, H, N, dtype=C128), _rand(g, H, N, dtype=C128),
               _rand(g, Bsz, H, N, dtype=C128), _rand(g, H))
        return ins, lambda bk, u, A, Bb, C, x0, D: ops.ssm_scan(u, A, Bb, C, x0, D, backend=bk)

    def scan_real(g, L):  # real modes (Mega's EMA): the kernel's real variant, ops ssm_scan_real_*
        ins = (_rand(g, Bsz, L, H), _stable(g, H, N, dtype=F64), _rand(g, H, N), _rand(g, H, N),
               _rand(g, Bsz, H, N), _rand(g, H))
        return ins, lambda bk, u, A, Bb, C, x0, D: ops.ssm_scan(u, A, Bb, C, x0, D, backend=bk)

    def selective(g, L):
        ins = (_rand(g, Bsz, L, H), _rand(g, Bsz, L, 3), -0.5 - torch.rand(H, N, generator=g, dtype=F64),
               _rand(g, Bsz, L, N), _rand(g, Bsz, L, N), _rand(g, H), _rand(g, Bsz, L, H), _rand(g, H),
               _rand(g, Bsz, H, N), 0.3 * _rand(g, H, 3))
        return ins, lambda bk, u, d, A, Bm, C, D, z, b, h0, W: ops.selective_scan(
            u, d, A, Bm, C, D, z, b, True, h0, backend=bk, delta_proj=W)

    def conv(g, L):
        ins = (_rand(g, Bsz, L, H), _rand(g, H, 4), _rand(g, H), _rand(g, Bsz, H, 3))
        return ins, lambda bk, x, w, b, s: ops.causal_conv1d(x, w, b, s, activation="silu", backend=bk)

    def recurrence_varying(g, L):
        ins = (_stable(g, Bsz, L, H, dtype=F64), _rand(g, Bsz, L, H), _rand(g, Bsz, H))
        return ins, lambda bk, a, b, h0: ops.linear_recurrence(a, b, h0, backend=bk)

    def recurrence_complex(g, L):
        ins = (_stable(g, H), _rand(g, Bsz, L, H, dtype=C128), _rand(g, Bsz, H, dtype=C128))
        return ins, lambda bk, a, b, h0: ops.linear_recurrence(a, b, h0, backend=bk)

    def mimo(g, L):
        ins = (_rand(g, Bsz, L, H), _stable(g, N), _rand(g, N, H, dtype=C128), _rand(g, H, N, dtype=C128),
               _rand(g, Bsz, N, dtype=C128), _rand(g, H))
        return ins, lambda bk, u, A, Bb, C, x0, D: ops.mimo_scan(u, A, Bb, C, x0, D, backend=bk)

    def ssd_case(g, L):  # 3 heads of 66 channels (two channel blocks) in 3 groups
        dt = 0.05 + torch.rand(Bsz, L, 3, generator=g, dtype=F64)
        ins = (_rand(g, Bsz, L, 3, 66), dt, -0.5 - torch.rand(3, generator=g, dtype=F64), _rand(g, Bsz, L, 3, N),
               _rand(g, Bsz, L, 3, N), _rand(g, Bsz, 3, 66, N))
        return ins, lambda bk, x, dt, A, Bm, C, h0: ssd(x, dt, A, Bm, C, h0, backend=bk)

    def rglru_case(g, L):  # gates in (0, 1); a reset in each row
        resets = torch.zeros(Bsz, L, dtype=torch.bool)
        resets[:, L // 3] = True
        gate = lambda: torch.rand(Bsz, L, H, generator=g, dtype=F64) * 0.9 + 0.05  # noqa: E731
        ins = (_rand(g, Bsz, L, H), gate(), gate(), 3 * _rand(g, H), _rand(g, Bsz, H))
        return ins, lambda bk, x, r, i, Lam, h0: rglru(x, r, i, Lam, 8.0, h0, resets, backend=bk)

    def cauchy_case(g, L):  # L evaluation points
        w = torch.complex(-0.3 - torch.rand(H, N, generator=g, dtype=F64), _rand(g, H, N))
        ins = (_rand(g, 2, H, N, dtype=C128), _rand(g, H, L, dtype=C128), w)
        return ins, lambda bk, v, z, w: (cauchy(v, z, w, backend=bk),)

    return {
        "ssm_scan": ("ssm_scan", scan),
        "ssm_scan (real modes)": ("ssm_scan_real", scan_real),
        "selective_scan": ("selective_scan", selective),
        "causal_conv1d": ("causal_conv1d", conv),
        "linear_recurrence (time-varying, real)": ("linear_recurrence", recurrence_varying),
        "linear_recurrence (invariant, complex)": ("linear_recurrence", recurrence_complex),
        "mimo_scan": ("linear_recurrence", mimo),
        "cauchy": ("cauchy", cauchy_case),
        "ssd": ("ssd", ssd_case),
        "rglru": ("rglru", rglru_case),
    }


CASES = _cases()


_SHARED: dict[str, tuple] = {}


def _compiled_case(name: str):
    """Case ``name``'s inputs (L 37), its function, and that function compiled by ``compile_recorded`` with its
    recorder, built once per process and shared by the case's two tests: the loss (the final state in it or not) is
    taken outside the compiled function, so the same graph serves both, and each test runs its own loss, forward and
    backward, through it. A ``torch._dynamo.reset()`` in between (another test) only makes the next call compile
    again, into the same recorder."""
    if name not in _SHARED:
        inputs, fn = CASES[name][1](torch.Generator().manual_seed(0), 37)
        _SHARED[name] = inputs, fn, *compile_recorded(fn)
    return _SHARED[name]


@pytest.mark.parametrize("use_state", [True, False], ids=["state-used", "state-unused"])
@pytest.mark.parametrize("name", list(CASES))
def test_compiled_auto_runs_the_kernels_and_equals_eager(name, use_state):
    """``check_compiled_run`` (tests/ops/compiled.py) with the compiled function shared by the two losses: the forward
    graph holds exactly ``<op>_forward``, the backward graph ``<op>_backward``; outputs and gradients equal the native
    kernel's run eagerly (1e-12) and the reference's (1e-9)."""
    inputs, fn, rec, compiled = _compiled_case(name)
    check_compiled_run(rec, compiled, fn, inputs, CASES[name][0], None, "native", use_state)


@pytest.mark.parametrize("name", ["ssm_scan", "ssm_scan (real modes)", "selective_scan", "causal_conv1d", "mimo_scan",
                                  "ssd"])  # (rglru: its resets are built at the first length)
def test_one_compiled_graph_runs_the_kernels_at_every_length(name):
    """Compiled with the length dynamic, the kernels' fake implementations give the outputs' sizes in L (the
    selective scan's chunk-start states: ⌈L/T⌉ of them): lengths across chunk boundaries, one graph."""
    op, build = CASES[name]
    g = torch.Generator().manual_seed(1)
    rec = Recorder()
    torch._dynamo.reset()
    counter = CompileCounterWithBackend(rec.backend)
    _, fn = build(g, 70)
    compiled = torch.compile(fn, fullgraph=True, backend=counter, dynamic=True)
    for L in (70, 131, 300):
        inputs, _ = build(g, L)
        got = run_loss(compiled, None, inputs, True)
        ref = run_loss(fn, "reference", inputs, True)
        assert_close([*got[0], *got[1]], [*ref[0], *ref[1]], 1e-9)
    assert counter.frame_count == 1 and f"{op}_forward" in rec.ssmkit_ops(rec.forward)


def test_forced_native_compiles_and_export_keeps_the_pytorch_paths():
    """A forced ``"native"`` compiles too (its availability check is read while tracing); ``torch.export`` of the
    same call names no ssmkit op (its program must run without ssmkit's compiled kernels) and equals the kernel."""
    _, build = CASES["ssm_scan"]
    inputs, fn = build(torch.Generator().manual_seed(2), 37)
    rec = Recorder()
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: fn("native", *a), fullgraph=True, backend=rec.backend)
    got = run_loss(lambda bk, *a: compiled(*a), None, inputs, True)
    assert rec.ssmkit_ops(rec.forward) == {"ssm_scan_forward"}
    eager = run_loss(fn, "native", inputs, True)
    assert_close([*got[0], *got[1]], [*eager[0], *eager[1]], 1e-12)

    class Scan(torch.nn.Module):
        def forward(self, *a):
            return fn(None, *a)

    program = torch.export.export(Scan(), inputs)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any(t.startswith("ssmkit.") for t in targets)
    assert_close(list(program.module()(*inputs)), list(fn("native", *inputs)), 1e-12)



def test_export_is_told_from_compile_by_torch_exports_flag():
    """torch 2.11's dynamo (the GPU machine's version) folds ``torch.compiler.is_exporting()`` to True under every
    trace, torch.compile's included: ssmkit read it to keep its ops out of exported programs, and so kept every kernel
    out of compiled graphs there (15 tests here failed on torch 2.11 for this). ssmkit reads torch.export's flag through one
    function, ``ssmkit.ops.opaque.exporting``: False while torch.compile traces, True while torch.export does, and no
    other module calls the public function (which this torch answers right, so only the source can be checked)."""
    from pathlib import Path

    import ssmkit
    from ssmkit.ops.opaque import exporting

    seen = {}

    def probe(x):
        seen["compile"] = exporting()
        return x + 1

    torch._dynamo.reset()
    torch.compile(probe, fullgraph=True, backend="eager")(torch.ones(2))

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen["export"] = exporting()
            return x + 1

    torch.export.export(Probe(), (torch.ones(2),))
    assert seen == {"compile": False, "export": True}
    root = Path(ssmkit.__file__).parent
    callers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "torch.compiler.is_exporting()" in p.read_text())
    assert callers == ["ops/opaque.py"], callers
