"""Compile every Triton kernel that ssmkit's launchers would launch on a GPU, through Triton's own JIT, without a GPU.

    env -u TRITON_INTERPRET PYTHONPATH=src python scripts/triton_launch_check.py [--arch 90] [--quick]

``scripts/triton_compile_check.py`` compiles each kernel at one hand-written signature. This script goes through the
launchers themselves (``ssm_scan_triton``, ``ssd_triton``, ``selective_scan_triton``), forward and backward, over the
shapes and options the layers, the GPU gate's smoke calls and the GPU tests use, with Triton's JIT in its
``warmup`` mode behind a stand-in CUDA driver that names the target (sm_90 by default). So each kernel is compiled as
the GPU's first call would compile it: the constexpr flags a launcher derives from its arguments, the tiles it
chooses (``fit_tiles``, the SSD's ``tiles``), and Triton's specialisation of the runtime arguments (integers equal
to 1, pointers and integers divisible by 16). Nothing runs: the outputs are left unwritten, so only the compile is
checked; each configuration is compiled once and printed with its shared memory and registers / stack per thread.

Exit status: the number of configurations that failed to compile or need more shared memory than sm_90's 227 KB per
block (``OutOfResources`` on the GPU: the SSD launcher halves its tiles then, the others do not). Numerical
agreement still needs a GPU: ``scripts/gpu_check.sh``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import tempfile
import time

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    raise SystemExit("unset TRITON_INTERPRET: the interpreter does not compile")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

SHARED_LIMIT = 227 * 1024  # bytes of shared memory per block on sm_80 / sm_90


class _TargetOnly:
    """A stand-in for Triton's CUDA driver that names a target and never touches a device."""

    def __init__(self, arch: int) -> None:
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


class Recorder:
    """Every distinct kernel configuration compiled, with its resources and the seconds taken."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}  # Triton's hash of a compiled kernel -> its line
        self.failures: list[str] = []

    def run(self, fn: JITFunction, args, kwargs) -> None:
        start = time.perf_counter()
        kernel = JITFunction.run(fn, *args, grid=None, warmup=True, **kwargs)
        if hasattr(kernel, "result"):  # asynchronous compile
            kernel = kernel.result()
        seconds = time.perf_counter() - start
        if kernel.hash in self.rows:  # compiled before (Triton's own cache key: flags, specialisation, options)
            return
        constexprs = {k: v for k, v in kwargs.items() if k in fn.arg_names}
        ones = [a for a, v in zip(fn.arg_names, args) if isinstance(v, int) and not isinstance(v, bool) and v == 1]
        shared = kernel.metadata.shared
        line = (f"{fn.__name__} {_dtype(args)} {constexprs} warps {kwargs.get('num_warps')}"
                f"{' (' + ', '.join(ones) + ' = 1)' if ones else ''}: shared {shared / 1024:.0f} KB, {_usage(kernel)}, "
                f"{seconds:.1f} s")
        if shared > SHARED_LIMIT:
            line += "  <-- over the 227 KB limit"
            self.failures.append(line)
        self.rows[kernel.hash] = line
        print(line, flush=True)


def _dtype(args) -> str:
    return next(str(a.dtype).replace("torch.", "") for a in args if isinstance(a, torch.Tensor))


def _usage(kernel) -> str:
    """The 'REG:.. STACK:..' of ``cuobjdump -res-usage`` (the bundled binary), or '?'."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(cuobjdump):
        return "?"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    return " ".join(w for line in out.splitlines() if "REG:" in line for w in line.split()[:2]) or "?"


def _backward(outputs, inputs, retain: bool = False) -> None:
    """Run the backward launchers (their values are unwritten memory; only the launches matter)."""
    outs = [o for o in outputs if o is not None and o.requires_grad]
    torch.autograd.grad(outs, [t for t in inputs if t is not None and t.requires_grad],
                        [torch.ones_like(o) for o in outs], retain_graph=retain, allow_unused=True)


def scan_cases(quick: bool):
    """The diagonal scan: the smoke call (N 2, chunk 4), S4D's sizes (32 and 128 complex modes), the real-valued
    kind, a state size that is not a power of two, with and without x_{-1}, D and gradients; and the matmul form
    (``intra_chunk="matmul"``) with its own backward (whole chunks) and the scan form's (a short last chunk)."""
    from ssmkit.ops.triton.scan import ssm_scan_triton

    shapes = [(2, 5, 3, 2, 4), (4, 133, 256, 32, None), (1, 40, 3, 7, None)]  # T None: the launcher's tiles
    shapes += [] if quick else [(1, 70, 2, 128, None), (1, 70, 2, 256, None)]
    for dtype, (Bsz, L, H, N, T), complex_, with_state, with_D, grad in itertools.product(
        (torch.float32, torch.float64), shapes, (True, False), (True, False), (True, False), (True, False)
    ):
        cd = {torch.float32: torch.complex64, torch.float64: torch.complex128}[dtype]
        pd = cd if complex_ else dtype
        u = torch.zeros(Bsz, L, H, dtype=dtype, requires_grad=grad)
        A, Bb, C = (torch.full((H, N), 0.5, dtype=pd, requires_grad=grad) for _ in range(3))
        x0 = torch.zeros(Bsz, H, N, dtype=pd, requires_grad=grad) if with_state else None
        D = torch.zeros(H, dtype=dtype, requires_grad=grad) if with_D else None
        y, xL = ssm_scan_triton(u, A, Bb, C, x0, D, chunk_size=T)
        if grad:
            _backward([y, xL], [u, A, Bb, C, x0, D])
    # the matmul form (the bench's triton:mm rows, the GPU tests): whole chunks (its own backward) and a short last
    # chunk (the scan form's backward), S4D's 32 modes and a state size that is not a power of two
    for dtype, (Bsz, L, H, N), complex_, with_state in itertools.product(
        (torch.float32, torch.float64), [(2, 64, 3, 32), (1, 70, 2, 7)], (True, False), (True, False)
    ):
        cd = {torch.float32: torch.complex64, torch.float64: torch.complex128}[dtype]
        pd = cd if complex_ else dtype
        u = torch.zeros(Bsz, L, H, dtype=dtype, requires_grad=True)
        A, Bb, C = (torch.full((H, N), 0.5, dtype=pd, requires_grad=True) for _ in range(3))
        x0 = torch.zeros(Bsz, H, N, dtype=pd, requires_grad=True) if with_state else None
        D = torch.zeros(H, dtype=dtype, requires_grad=True)
        y, xL = ssm_scan_triton(u, A, Bb, C, x0, D, intra_chunk="matmul")
        _backward([y, xL], [u, A, Bb, C, x0, D])


def ssd_cases(quick: bool):
    """The SSD: the smoke call (P 2, N 3, chunk 16), Mamba-2's heads (P 64, N 64 / 128 / 256), the GPU tests'
    sizes, any chunk length, with and without h_0, float32 (tf32x3) and float64, without a gradient (the forward at
    the chunk asked) and with one (the forward at the backward's chunk, then the backward kernel); and the explicit
    tiles of the bench's ``triton:chunk,channels,warps`` rows (``ssmkit.bench.gpu.SSD_TILES``) at its N 64 and 128,
    forward and backward."""
    from ssmkit.bench.gpu import SSD_TILES
    from ssmkit.ops.triton.ssd import Tiles, ssd_triton

    shapes = [(1, 20, 2, 2, 1, 3, 16), (2, 70, 8, 64, 2, 64, None), (1, 40, 4, 16, 1, 16, 5),
              (1, 40, 2, 64, 1, 128, None)]
    if not quick:
        shapes += [(1, 40, 2, 64, 1, 256, None), (1, 40, 2, 64, 1, 64, 256)]
    cases = [(dtype, shape, with_h0, grad, None) for dtype, shape, with_h0, grad in itertools.product(
        (torch.float32, torch.float64), shapes, (True, False), (False, True))]
    cases += [(torch.float32, (1, 40, 2, 64, 1, N, None), False, True, Tiles.parse(t)) for t in SSD_TILES
              for N in (64, 128)]
    for dtype, (Bsz, L, H, P, G, N, chunk), with_h0, grad, tiles in cases:
        x = torch.zeros(Bsz, L, H, P, dtype=dtype, requires_grad=grad)
        dt = torch.ones(Bsz, L, H, dtype=dtype, requires_grad=grad)
        A = -torch.ones(H, dtype=dtype, requires_grad=grad)
        B, C = (torch.zeros(Bsz, L, G, N, dtype=dtype, requires_grad=grad) for _ in range(2))
        h0 = torch.zeros(Bsz, H, P, N, dtype=dtype, requires_grad=grad) if with_h0 else None
        y, h = ssd_triton(x, dt, A, B, C, h0, chunk_size=chunk, tiles=tiles)
        if grad:
            _backward([y, h], [x, dt, A, B, C, h0])


def selective_cases(quick: bool):
    """The selective scan: Mamba's N 16 (the default tiles), the smoke call's sizes, N 1 / 3 / 64 / 256 (tiles
    shrunk by ``fit_tiles``), groups of channels, every optional input on and off, with the gradients of the
    initial and the final state."""
    from ssmkit.ops.triton.selective import selective_scan_triton

    shapes = [(2, 37, 5, 16, None), (2, 37, 8, 16, 4), (1, 20, 3, 3, None), (1, 20, 4, 64, 2), (1, 20, 3, 1, None)]
    if not quick:
        shapes += [(1, 20, 2, 256, None)]
    flags = list(itertools.product((True, False), repeat=4))  # z, D, bias, softplus
    for dtype, (Bsz, L, H, N, G), (use_z, use_D, use_bias, softplus), with_state in itertools.product(
        (torch.float32, torch.float64), shapes, flags, (True, False)
    ):
        g = 1 if G is None else G
        u, delta = (torch.zeros(Bsz, L, H, dtype=dtype, requires_grad=True) for _ in range(2))
        A = -torch.ones(H, N, dtype=dtype, requires_grad=True)
        bc_shape = (Bsz, L, N) if G is None else (Bsz, L, g, N)
        B, C = (torch.zeros(*bc_shape, dtype=dtype, requires_grad=True) for _ in range(2))
        z = torch.zeros(Bsz, L, H, dtype=dtype, requires_grad=True) if use_z else None
        D = torch.zeros(H, dtype=dtype, requires_grad=True) if use_D else None
        bias = torch.zeros(H, dtype=dtype, requires_grad=True) if use_bias else None
        h0 = torch.zeros(Bsz, H, N, dtype=dtype, requires_grad=True) if with_state else None
        y, hL = selective_scan_triton(u, delta, A, B, C, D, z, bias, softplus, h0)
        _backward([y, hL], [u, delta, A, B, C, z, D, bias, h0], retain=True)
        _backward([y], [u, delta, A, B, C, z, D, bias, h0])  # without the final state's gradient
    # the explicit tiles of the bench's triton:tiles rows (ssmkit.bench.gpu.SELECTIVE_TILES), as it calls them: N 16,
    # B and C shared, D, z, b_Δ, softplus, no initial state, float32
    from ssmkit.bench.gpu import SELECTIVE_TILES
    from ssmkit.ops.triton.selective import Tiles

    for text in SELECTIVE_TILES:
        leaves = [torch.zeros(2, 37, 8, requires_grad=True) for _ in range(3)]  # u, δ, z
        A = -torch.ones(8, 16, requires_grad=True)
        B, C = (torch.zeros(2, 37, 16, requires_grad=True) for _ in range(2))
        D, bias = (torch.zeros(8, requires_grad=True) for _ in range(2))
        u, delta, z = leaves
        y, _ = selective_scan_triton(u, delta, A, B, C, D, z, bias, True, None, False,
                                     tiles=Tiles(*(int(v) for v in text.split(","))))
        _backward([y], [u, delta, A, B, C, z, D, bias])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability as an int (90: H100/H200)")
    parser.add_argument("--quick", action="store_true", help="skip the largest state sizes")
    parser.add_argument("--only", choices=("scan", "ssd", "selective"), default=None)
    args = parser.parse_args()
    driver.set_active(_TargetOnly(args.arch))
    recorder = Recorder()
    original = JITFunction.__getitem__
    JITFunction.__getitem__ = lambda fn, grid: (lambda *a, **k: recorder.run(fn, a, k))  # compile, never launch
    print(f"triton {triton.__version__}, torch {torch.__version__}, target sm_{args.arch}", flush=True)
    errors = 0
    try:
        for name, cases in (("scan", scan_cases), ("ssd", ssd_cases), ("selective", selective_cases)):
            if args.only in (None, name):
                try:
                    cases(args.quick)
                except Exception as e:  # noqa: BLE001  (a compile error: report it, go on with the next op)
                    errors += 1
                    print(f"{name}: FAILED {type(e).__name__}: {str(e)[:2000]}", flush=True)
    finally:
        JITFunction.__getitem__ = original
    print(f"{len(recorder.rows)} configurations compiled, {len(recorder.failures)} over the shared-memory limit, "
          f"{errors} failed")
    return errors + len(recorder.failures)


if __name__ == "__main__":
    raise SystemExit(main())
