"""GPU benchmark: the diagonal, SSD and selective scans and the short convolution under every backend, with the peers.

The ops against the device's copy bandwidth and FLOP rate, and against the peers (mamba-ssm, causal-conv1d,
accelerated-scan) where they load.

    ssmkit bench gpu [--device cuda] [--scan-shapes B,H,N,L ...] [--scan-chunks-per-program G ...]
                     [--ssd-shapes B,L,H,P,N ...] [--ssd-tiles chunk,channels[,num_warps] ...]
                     [--selective-shapes B,H,N,L ...] [--selective-tiles chunk,forward_chunk,... ...]
                     [--short-conv-shapes B,H,L ...]
                     [--backends chunked fft triton] [--repeats 5] [--json PATH] [--mamba-ssm-src DIR]
                     [--mamba-ssm-cuda mamba_ssm_cuda.so] [--causal-conv1d-src DIR]
                     [--causal-conv1d-cuda causal_conv1d_cuda.so] [--gemm-size 8192]

Float32. In one run: (1) the copy bandwidth of the device (a large ``clone``: read + write), the yardstick of
the bytes-moved bound; (2) ``ssm_scan`` (complex modes, conjugate pairs as S4D uses them, N = d_state/2 modes)
forward (no grad, no final state) and forward+backward under each backend, with the fraction of the bound
achieved: a fused scan must read u and write y, 8·B·L·H bytes, so bound = 8·B·L·H / bandwidth
(a fused kernel that keeps the state in registers moves nothing else of size L); the Triton scan also with the
chunks per program of ``--scan-chunks-per-program`` (rows ``triton:G``; ``triton`` plans G from the SM count) and
in its matmul form (``triton:mm``: the chunk products on tensor cores, :mod:`ssmkit.ops.triton.scan_mm`), and
``accelerated_scan`` when it imports: accelerated-scan's complex Triton scan (``accelerated_scan.complex.scan``, a
first-order recurrence with time-varying gates) over the B·H·N/2 complex channels, Ā expanded over time as its gate,
then y = Re(Σ C x) + D u by one einsum -- what a user composes from that primitive (it writes every state);
(3) ``ssd`` forward and forward+backward under ``chunked`` and ``triton`` (its backward kernel), ``triton:recompute``
(the backward by differentiating the chunked path), the Triton kernel also at the tiles of ``--ssd-tiles``
(:class:`ssmkit.ops.triton.ssd.Tiles`: chunk, channels per program, warps), and mamba-ssm's Triton Mamba-2 scan
``mamba_chunk_scan_combined`` (chunks of 256, as its ``Mamba2`` module; it returns y alone where ssmkit's also returns
the final state) when it imports -- from the installed package, or from the ``mamba_ssm`` folder of a checkout given
by ``--mamba-ssm-src``, loaded without the package's ``__init__`` (which imports its CUDA extension, absent where it
could not be built; the Triton modules need only einops); bound = bytes of x, Δ, B, C read and y and the final state written; (4) ``selective_scan`` as a Mamba block calls it (D, gate z, Δ bias and softplus, B and C shared, no
initial state; d_inner = H channels, N states) under ``chunked`` and ``triton``, the Triton kernel also at the tiles
of ``--selective-tiles`` (:class:`ssmkit.ops.triton.selective.Tiles`), and mamba-ssm's ``selective_scan_fn``
(CUDA) when it imports -- from the installed package, or from ``--mamba-ssm-src`` with its CUDA extension given by
``--mamba-ssm-cuda``, a library that ``scripts/cuda_peers/build.sh`` compiles from the checkout's sources on a
machine without a GPU -- each in its own layout, made outside the timing (mamba-ssm's is time-last (B, H, L)) --
bound = bytes of u, δ, z, B, C read and y written, 16·B·L·H + 8·B·L·N; (5) Mamba's short convolution (``short_conv``:
width 4, bias, SiLU, no state) by ssmkit's ``causal_conv1d`` (``chunked``: one grouped ``F.conv1d``) and by
causal-conv1d's CUDA ``causal_conv1d_fn`` on its time-last layout, from the installed package or from
``--causal-conv1d-src`` with ``--causal-conv1d-cuda`` as for mamba-ssm; bound = x read and y written, 8·B·L·H.
Every row also gives how far its output is
from the first backend's (max |y − y_first| / max |y_first|), so that a peer or a tile that computes something else
shows beside its time. Times are medians of ``--repeats`` calls after a warm-up, timed with CUDA events on CUDA
(perf_counter around a synchronise elsewhere). The backends run in turns within each repeat, so that ratios compare like
conditions. Beside the bytes-moved bound, the FLOP bound: the float32 rate of a (``--gemm-size``)² GEMM measured in
the same run with TF32 off (the CUDA cores the scan kernels use; ``ssmkit.bench.limits``' model of a fused scan:
6 flops per batch row, step, channel and state element -- a complex multiply-add of the state, the input term and
the output term -- i.e. 6·B·L·H·N, and 6·B·L·H·P·N for the SSD). Where the FLOP bound exceeds the bytes bound, an
elementwise scan cannot reach the bytes bound on those cores: at S4D's N = 64 that is a factor of ~3 on an H200
(docs/benchmarks.md). A backend that fails (e.g. ``triton`` where it cannot run) is reported with its error, not timed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from ssmkit.bench import positive_int
from ssmkit.bench.backward import OutputGradients
from ssmkit.bench.core import machine
from ssmkit.bench.limits import ssd_bytes
from ssmkit.bench.peers import error_line
from ssmkit.ops.scan import ssm_scan
from ssmkit.ops.ssd import ssd

SCAN_SHAPES = ["8,128,64,1024", "8,128,64,4096", "8,128,64,16384", "1,128,64,1048576", "64,768,64,4096"]
SSD_SHAPES = ["2,2048,32,64,128", "8,4096,16,64,64"]
# B, d_inner, N, L: a Mamba block of d_model 256 (expand 2, N 16) at L = 1k and 4k (the issue's shape), and d_model 768
SELECTIVE_SHAPES = ["8,512,16,1024", "8,512,16,4096", "8,1536,16,2048"]
# B, d_inner, L: the short convolution before those scans (width 4, bias, SiLU), as the Mamba block runs it
SHORT_CONV_SHAPES = ["8,512,4096", "8,1536,2048"]
SHORT_CONV_WIDTH = 4
# the peers timed beside ssmkit's rows (the last row of their shape): backend name -> the name printed
PEERS = {"mamba_ssm": "mamba-ssm", "causal_conv1d": "causal-conv1d"}
# more groupings of the Triton diagonal scan along the sequence: G chunks per program (one group per program of each
# row and block of channels; ssmkit.ops.triton.scan.plan_groups picks G when none is given)
SCAN_CHUNKS_PER_PROGRAM = [1, 8, 64]
# more tiles of the Triton selective scan, as the fields of ssmkit.ops.triton.selective.Tiles in order (chunk,
# forward_chunk, block_h, backward_block_h, num_warps, backward_num_warps, num_stages; the defaults: 32,8,4,4,1,4,1)
# The first H200 run (docs/benchmarks.md) timed the last three fastest; the defaults themselves are a row too, so that
# the dispatching "triton" row (checks, the gate) and the tiles are told apart.
SELECTIVE_TILES = ["32,8,4,4,1,4,1", "16,8,4,4,1,2", "32,8,4,4,1,4,2", "64,16,4,2,2,4", "64,16,4,2,2,4,2"]
# more tiles of the Triton SSD forward: chunk,channels,num_warps (ssmkit.ops.triton.ssd.Tiles; the default at these
# shapes: 64,32,8, which spills 1.3-2.2 KB of stack per thread compiled for sm_90). Chunks of 16 do not spill at N 64;
# 16,16,8 spills least at N 128 (216 bytes); 32,32,8 between (docs/benchmarks.md, the compile sweep).
SSD_TILES = ["16,32,8", "16,16,8", "32,32,8"]


def _timer(device: torch.device):
    """A function timing one call of fn in seconds on ``device``."""
    if device.type == "cuda":

        def once(fn) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1e3

    else:

        def once(fn) -> float:
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t

    return once


def copy_bandwidth(device: torch.device, n_bytes: int = 1 << 30, repeats: int = 10) -> float:
    """Bytes per second of a device copy (``clone`` of n_bytes: n_bytes read + n_bytes written).

    Args:
        device: the device to measure.
        n_bytes: the size of the copied tensor.
        repeats: calls; the median is used.
    """
    x = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).uniform_()
    once = _timer(device)
    once(lambda: x.clone())
    return 2 * n_bytes / statistics.median(once(lambda: x.clone()) for _ in range(repeats))


def gemm_flop_rate(device: torch.device, size: int = 8192, repeats: int = 5) -> float:
    """Float32 flops per second of a (size × size) @ (size × size) GEMM on ``device`` (2·size³ flops), median of
    ``repeats``, with TF32 off (CUDA cores, not tensor cores: the rate an elementwise float32 kernel can use).

    Args:
        device: the device to measure.
        size: the matrix side.
        repeats: products timed.
    """
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    once = _timer(device)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        once(lambda: a @ b)
        return 2.0 * size**3 / statistics.median(once(lambda: a @ b) for _ in range(repeats))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def parse_shape(text: str, fields: str, option: str) -> tuple[int, ...]:
    """A shape option's value as positive ints, one per comma-separated name of ``fields``.

    ``--scan-shapes 1,2,3`` failed with "not enough values to unpack (expected 4, got 3)", naming neither the option
    nor the form, after the copy and GEMM probes had run.

    Args:
        text: one value of the option, e.g. ``"8,128,64,1024"``.
        fields: the names of its numbers, e.g. ``"B,H,d_state,L"``.
        option: the option, for the message (``--scan-shapes``).

    Returns:
        the ints.

    Raises:
        ValueError: naming the option, the expected form and the value.
    """
    names = fields.split(",")
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != len(names) or min(values) < 1:
        raise ValueError(f"{option}: each shape is {fields} ({len(names)} positive integers); got {text!r}")
    return values


def _scan_case(shape: str, device: torch.device):
    Bsz, H, d_state, L = parse_shape(shape, "B,H,d_state,L", "--scan-shapes")
    if d_state % 2:
        raise ValueError(f"--scan-shapes: d_state must be even (d_state/2 complex modes, in conjugate pairs); got "
                         f"{shape!r}")
    g = torch.Generator(device="cpu").manual_seed(0)
    M = d_state // 2  # conjugate-pair modes
    A = torch.polar(torch.rand(H, M, generator=g) * 0.1 + 0.899, torch.rand(H, M, generator=g) * 3)
    params = [t.to(device) for t in (A, torch.randn(H, M, dtype=torch.complex64, generator=g),
                                      2 * torch.randn(H, M, dtype=torch.complex64, generator=g), torch.randn(H, generator=g))]
    u = torch.randn(Bsz, L, H, generator=g).to(device)
    grads = OutputGradients()  # the backward starts from a fixed ∂ℓ/∂y (ssmkit.bench.backward)

    def call(backend: str, u, A, B, C, D):
        if backend == "accelerated_scan":
            return _accelerated_scan_layer(u, A, B, C, D)
        if backend.startswith("triton:"):  # the kernel at G chunks per program
            from ssmkit.ops.triton.scan import ssm_scan_triton
            from ssmkit.ops.triton_gate import require_triton

            require_triton("ssm_scan", u)
            option = backend.split(":")[1]
            if option == "mm":  # the chunk products on tensor cores (ssmkit.ops.triton.scan_mm)
                return ssm_scan_triton(u, A, B, C, None, D, return_state=False, intra_chunk="matmul")[0]
            return ssm_scan_triton(u, A, B, C, None, D, return_state=False, chunks_per_program=int(option))[0]
        return ssm_scan(u, A, B, C, None, D, return_state=False, backend=backend)[0]

    def forward(backend: str) -> None:
        with torch.no_grad():
            call(backend, u, *params)

    def forward_backward(backend: str) -> None:
        grads.backward(call(backend, u.detach().requires_grad_(), *(p.detach().requires_grad_() for p in params)))

    def output(backend: str) -> torch.Tensor:
        with torch.no_grad():
            return call(backend, u, *params)

    return {"B": Bsz, "H": H, "N": d_state, "L": L}, 8 * Bsz * L * H, forward, forward_backward, output


def _accelerated_scan_layer(u, A, B, C, D):
    """y = Re(Σ_n C_n x_n) + D u of the diagonal SSM by accelerated-scan's complex Triton scan (raises ImportError with
    the reason where it is not installed): gates Ā and inputs B̄ u_t as (B, H·M, L) complex, the states likewise."""
    try:
        from accelerated_scan.complex import scan
    except Exception as e:  # noqa: BLE001  (not installed, or a Triton it does not take)
        raise ImportError(f"accelerated-scan is not importable here ({type(e).__name__}: {e}); pip install "
                          f"accelerated-scan") from e
    Bsz, L, H = u.shape
    M = A.shape[1]
    gates = A.reshape(1, H * M, 1).expand(Bsz, H * M, L).contiguous()
    inputs = (B[None, :, :, None] * u.transpose(1, 2)[:, :, None, :].to(B.dtype)).reshape(Bsz, H * M, L).contiguous()
    x = scan(gates, inputs).reshape(Bsz, H, M, L)
    return torch.einsum("hm,bhml->blh", C, x).real + D * u


def _ssd_case(shape: str, device: torch.device, mamba_ssm_src: str | None = None):
    Bsz, L, H, P, N = parse_shape(shape, "B,L,H,P,N", "--ssd-shapes")
    g = torch.Generator(device="cpu").manual_seed(0)
    inputs = [t.to(device) for t in (
        torch.randn(Bsz, L, H, P, generator=g), torch.nn.functional.softplus(torch.randn(Bsz, L, H, generator=g)),
        -(torch.rand(H, generator=g) * 3 + 0.5), torch.randn(Bsz, L, 1, N, generator=g), torch.randn(Bsz, L, 1, N, generator=g))]
    grads = OutputGradients()

    def call(backend: str, leaves) -> tuple:
        if backend == "mamba_ssm":
            return (_mamba_ssm_ssd(mamba_ssm_src)(*leaves, chunk_size=256),)
        if backend.startswith("triton:"):  # the kernel at the given tiles, or with the backward by recompute
            from ssmkit.ops.triton.ssd import Tiles, ssd_triton
            from ssmkit.ops.triton_gate import require_triton

            require_triton("ssd", leaves[0])
            option = backend.split(":", 1)[1]
            if option == "recompute":
                return ssd_triton(*leaves, backward="recompute")
            return ssd_triton(*leaves, tiles=Tiles.parse(option))
        return ssd(*leaves, backend=backend)

    def forward(backend: str) -> None:
        with torch.no_grad():
            call(backend, inputs)

    def forward_backward(backend: str) -> None:
        grads.backward(*call(backend, [t.detach().requires_grad_() for t in inputs]))

    def output(backend: str) -> torch.Tensor:
        with torch.no_grad():
            return call(backend, inputs)[0]

    n_bytes = ssd_bytes("forward", Bsz, L, H, P, N, 4)  # x, Δ, B, C read; y and the final state written
    return {"B": Bsz, "L": L, "H": H, "P": P, "N": N}, n_bytes, forward, forward_backward, output


def _mamba_ssm_selective(src: str | None = None, cuda_lib: str | None = None):
    """mamba-ssm's CUDA ``selective_scan_fn`` (raises ImportError with the reason where it cannot load).

    Without ``src`` and ``cuda_lib``: from the installed package (its ``__init__`` imports the CUDA extension).
    Otherwise ``mamba_ssm.ops.selective_scan_interface`` is imported over the package folder as for the Triton SSD
    (:func:`_package_module`), and with ``cuda_lib`` its CUDA extension ``selective_scan_cuda`` is first made from a
    library that ``scripts/cuda_peers/build.sh`` compiled from the checkout on a machine without a GPU
    (:func:`_cuda_extension`).

    Args:
        src: a checkout of state-spaces/mamba (or its ``mamba_ssm`` folder), or None for the installed package.
        cuda_lib: the built ``mamba_ssm_cuda.so``, or None for the installed ``selective_scan_cuda``.
    """
    try:
        if src is None and cuda_lib is None:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            return selective_scan_fn
        if cuda_lib is not None:
            _cuda_extension("selective_scan_cuda", cuda_lib, "mamba_ssm_cuda", ("fwd", "bwd"))
        interface = _package_module("mamba_ssm", src, "ops.selective_scan_interface")
        if getattr(interface, "selective_scan_cuda", None) is None:
            raise ImportError("its CUDA extension selective_scan_cuda is not importable (build it with "
                              "scripts/cuda_peers/build.sh and pass --mamba-ssm-cuda)")
        return interface.selective_scan_fn
    except Exception as e:  # noqa: BLE001  (an ImportError, or a missing/broken CUDA extension)
        raise ImportError(f"mamba-ssm is not importable here ({type(e).__name__}: {e}); pip install mamba-ssm") from e


def _causal_conv1d(src: str | None = None, cuda_lib: str | None = None):
    """causal-conv1d's ``causal_conv1d_fn`` (CUDA; raises ImportError with the reason where it cannot load): from the
    installed package, or from a checkout's ``causal_conv1d`` folder with its CUDA extension ``causal_conv1d_cuda``
    made from a library built by ``scripts/cuda_peers/build.sh`` (as :func:`_mamba_ssm_selective`).

    Args:
        src: a checkout of Dao-AILab/causal-conv1d (or its ``causal_conv1d`` folder), or None for the installed one.
        cuda_lib: the built ``causal_conv1d_cuda.so``, or None for the installed ``causal_conv1d_cuda``.
    """
    try:
        if src is None and cuda_lib is None:
            from causal_conv1d import causal_conv1d_fn

            return causal_conv1d_fn
        if cuda_lib is not None:
            _cuda_extension("causal_conv1d_cuda", cuda_lib, "causal_conv1d_cuda",
                            ("causal_conv1d_fwd", "causal_conv1d_bwd", "causal_conv1d_update"))
        return _package_module("causal_conv1d", src, "causal_conv1d_interface").causal_conv1d_fn
    except Exception as e:  # noqa: BLE001  (an ImportError, or a missing/broken CUDA extension)
        raise ImportError(f"causal-conv1d is not importable here ({type(e).__name__}: {e}); pip install "
                          f"causal-conv1d") from e


def _cuda_extension(module: str, lib: str, namespace: str, names: tuple[str, ...]) -> None:
    """Put a peer's CUDA kernels, from a library built by ``scripts/cuda_peers/build.sh``, in ``sys.modules`` as the
    compiled extension ``module`` its Python code imports: each of ``names`` is the library's operator
    ``torch.ops.<namespace>.<name>`` (same arguments and results as the pybind11 extension's function of that name).
    Loaded once per process.

    Args:
        module: the extension's module name (``selective_scan_cuda``, ``causal_conv1d_cuda``).
        lib: path of the built library.
        namespace: the operators' namespace in the library (its ``TORCH_LIBRARY``).
        names: the extension's functions.
    """
    loaded = sys.modules.get(module)
    if loaded is not None and getattr(loaded, "__file__", None) == str(lib):
        return
    if not Path(lib).is_file():
        raise ImportError(f"{lib} does not exist")
    torch.ops.load_library(str(lib))
    extension = types.ModuleType(module)
    extension.__file__ = str(lib)
    for name in names:
        setattr(extension, name, getattr(getattr(torch.ops, namespace), name))
    sys.modules[module] = extension


def _package_module(package: str, src: str | None, name: str) -> types.ModuleType:
    """``<package>.<name>`` imported without the package's ``__init__`` (which imports its compiled CUDA extension):
    ``package`` is entered as a bare module over its folder -- the checkout's ``<package>`` folder when ``src`` is
    given, else the installed package's -- unless it is already imported.

    Args:
        package: the top-level package (``mamba_ssm``, ``causal_conv1d``).
        src: a checkout (or the package folder itself), or None for the installed package.
        name: the submodule, dotted (``ops.triton.ssd_combined``).
    """
    if sys.modules.get(package) is None:
        if src is not None:
            folder = Path(src) / package if (Path(src) / package).is_dir() else Path(src)
            if not (folder / (name.replace(".", "/") + ".py")).is_file():
                raise ImportError(f"{src} holds no {package}/{name.replace('.', '/')}.py")
            locations = [str(folder)]
        else:
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise ImportError(f"No module named '{package}'")
            locations = list(spec.submodule_search_locations)
        bare = types.ModuleType(package)
        bare.__path__ = locations
        sys.modules[package] = bare
    return importlib.import_module(f"{package}.{name}")


def _mamba_ssm_ssd(src: str | None):
    """mamba-ssm's Triton ``mamba_chunk_scan_combined`` (raises ImportError with the reason where it cannot load),
    imported by :func:`_package_module` (the Triton modules do not need the package's CUDA extension).

    Args:
        src: a checkout of state-spaces/mamba (or its ``mamba_ssm`` folder), or None for the installed package.
    """
    try:
        return _package_module("mamba_ssm", src, "ops.triton.ssd_combined").mamba_chunk_scan_combined
    except Exception as e:  # noqa: BLE001  (ImportError, a missing einops, a Triton version it does not take)
        raise ImportError(f"mamba-ssm's Triton SSD is not importable here ({type(e).__name__}: {e}); pip install "
                          f"mamba-ssm einops, or pass --mamba-ssm-src with a checkout of state-spaces/mamba") from e


def _selective_case(shape: str, device: torch.device, mamba_ssm_src: str | None = None,
                    mamba_ssm_cuda: str | None = None):
    from ssmkit.ops.selective import selective_scan
    from ssmkit.ops.triton.selective import Tiles, selective_scan_triton
    from ssmkit.ops.triton_gate import require_triton

    Bsz, H, N, L = parse_shape(shape, "B,d_inner,N,L", "--selective-shapes")
    g = torch.Generator(device="cpu").manual_seed(0)
    A = -torch.arange(1, N + 1, dtype=torch.float32).repeat(H, 1)  # S4D-Real, as Mamba initialises A
    params = [t.to(device) for t in (A, torch.ones(H), torch.rand(H, generator=g) * 4 - 5)]  # A, D, b_Δ
    ins = [torch.randn(Bsz, L, H, generator=g).to(device) for _ in range(3)]  # u, δ, z
    bc = [torch.randn(Bsz, L, N, generator=g).to(device) for _ in range(2)]  # B, C
    time_last = [x.transpose(1, 2).contiguous() for x in ins + bc]  # mamba-ssm's layout: (B, H, L), (B, N, L)
    grads = OutputGradients()

    def call(backend: str, leaves):
        (A_, D_, bias), (u, delta, z, B, C) = leaves[:3], leaves[3:]
        if backend == "mamba_ssm":
            return _mamba_ssm_selective(mamba_ssm_src, mamba_ssm_cuda)(u, delta, A_, B, C, D_, z, bias, True, False)
        if backend.startswith("triton:"):
            require_triton("selective_scan", u)
            tiles = Tiles(*(int(v) for v in backend.split(":")[1].split(",")))
            return selective_scan_triton(u, delta, A_, B, C, D_, z, bias, True, None, False, tiles=tiles)[0]
        return selective_scan(u, delta, A_, B, C, D_, z, bias, True, None, False, backend=backend)[0]

    def inputs(backend: str):
        return params + (time_last if backend == "mamba_ssm" else ins + bc)

    def forward(backend: str) -> None:
        with torch.no_grad():
            call(backend, inputs(backend))

    def forward_backward(backend: str) -> None:
        grads.backward(call(backend, [t.detach().requires_grad_() for t in inputs(backend)]))

    def output(backend: str) -> torch.Tensor:  # (B, L, H) in every backend
        with torch.no_grad():
            y = call(backend, inputs(backend))
        return y.transpose(1, 2) if backend == "mamba_ssm" else y

    return {"B": Bsz, "L": L, "H": H, "N": N}, 16 * Bsz * L * H + 8 * Bsz * L * N, forward, forward_backward, output


def _short_conv_case(shape: str, device: torch.device, causal_conv1d_src: str | None = None,
                     causal_conv1d_cuda: str | None = None):
    """Mamba's short convolution: width :data:`SHORT_CONV_WIDTH`, bias, SiLU, no state -- ssmkit's ``causal_conv1d``
    on (B, L, H) under each backend, and causal-conv1d's ``causal_conv1d_fn`` on its own layout (B, H, L), made outside
    the timing."""
    from ssmkit.ops.conv import causal_conv1d

    Bsz, H, L = parse_shape(shape, "B,d_inner,L", "--short-conv-shapes")
    W = SHORT_CONV_WIDTH
    g = torch.Generator(device="cpu").manual_seed(0)
    params = [t.to(device) for t in (torch.randn(H, W, generator=g) / W, torch.randn(H, generator=g))]  # w, b
    x = torch.randn(Bsz, L, H, generator=g).to(device)
    x_time_last = x.transpose(1, 2).contiguous()
    grads = OutputGradients()

    def call(backend: str, x, weight, bias) -> torch.Tensor:
        if backend == "causal_conv1d":  # (B, H, L)
            return _causal_conv1d(causal_conv1d_src, causal_conv1d_cuda)(x, weight, bias, activation="silu")
        return causal_conv1d(x, weight, bias, None, False, activation="silu", backend=backend)[0]  # (B, L, H)

    def inputs(backend: str) -> list[torch.Tensor]:
        return [x_time_last if backend == "causal_conv1d" else x] + params

    def forward(backend: str) -> None:
        with torch.no_grad():
            call(backend, *inputs(backend))

    def forward_backward(backend: str) -> None:
        grads.backward(call(backend, *(t.detach().requires_grad_() for t in inputs(backend))))

    def output(backend: str) -> torch.Tensor:  # (B, L, H) in every backend
        with torch.no_grad():
            y = call(backend, *inputs(backend))
        return y.transpose(1, 2) if backend == "causal_conv1d" else y

    return {"B": Bsz, "L": L, "H": H, "W": W}, 8 * Bsz * L * H, forward, forward_backward, output


def measure(
    op: str, shape: str, backends: list[str], device: torch.device, bandwidth: float, repeats: int,
    mamba_ssm_src: str | None = None, flop_rate: float | None = None, mamba_ssm_cuda: str | None = None,
    causal_conv1d_src: str | None = None, causal_conv1d_cuda: str | None = None,
) -> list[dict]:
    """Rows (one per backend) of forward and forward+backward medians for one shape of ``op`` ("scan", "ssd",
    "selective" or "short_conv"), and of each backend's output against the first backend's (``max_rel_diff`` = max
    |y - y_first| / max |y_first|, so that a fast row that computes something else shows); ``mamba_ssm_src``: where
    the ``mamba_ssm`` peers load from (:func:`_mamba_ssm_ssd`, :func:`_mamba_ssm_selective`); ``mamba_ssm_cuda``: a
    built CUDA selective scan for the latter; ``causal_conv1d_src`` / ``causal_conv1d_cuda``: the same for the short
    convolution's ``causal_conv1d`` peer (:func:`_causal_conv1d`); ``flop_rate``: flops per second for the FLOP bound
    (None: no FLOP bound). The flops: the fused-scan model (6 per batch row, step, channel and state element) for the
    scans, 2·W per output element (W taps) for the short convolution."""
    if op == "ssd":
        case = _ssd_case(shape, device, mamba_ssm_src)
    elif op == "selective":
        case = _selective_case(shape, device, mamba_ssm_src, mamba_ssm_cuda)
    elif op == "short_conv":
        case = _short_conv_case(shape, device, causal_conv1d_src, causal_conv1d_cuda)
    else:
        case = _scan_case(shape, device)
    dims, n_bytes, forward, forward_backward, output = case
    once = _timer(device)
    errors, times, diffs = {}, {b: {"forward": [], "forward_backward": []} for b in backends}, {}
    first = None  # the first backend's output: the yardstick of the others'
    for b in backends:
        try:
            forward(b)
            forward_backward(b)
            y = output(b).detach().float()
        except Exception as e:  # noqa: BLE001  (reported in the table; the other backends still run)
            errors[b] = error_line(e)  # the type alone for an empty message (a bare assert)
            continue
        if first is None:
            first = (b, y, y.abs().max())
        diffs[b] = (first[0], float((y - first[1]).abs().max() / first[2]) if y.shape == first[1].shape else
                    float("inf"))
        del y
    del first
    ok = [b for b in backends if b not in errors]
    for _ in range(repeats):
        for b in ok:
            times[b]["forward"].append(once(lambda: forward(b)))
            times[b]["forward_backward"].append(once(lambda: forward_backward(b)))
    bound = n_bytes / bandwidth
    if op == "short_conv":
        flops = 2.0 * dims["W"] * dims["B"] * dims["L"] * dims["H"]
    else:
        flops = 6.0 * dims["B"] * dims["L"] * dims["H"] * dims.get("P", 1) * dims["N"]  # the fused-scan model
    flop_bound = flops / flop_rate if flop_rate else None
    rows = []
    for b in backends:
        row = {"op": op, **dims, "backend": b, "bytes": n_bytes, "bound_s": bound, "flops": flops}
        if flop_bound is not None:
            row["flop_bound_s"] = flop_bound
        if b in errors:
            row["error"] = errors[b]
        else:
            fwd, fb = (statistics.median(times[b][k]) for k in ("forward", "forward_backward"))
            row.update(forward_s=fwd, forward_backward_s=fb, forward_fraction_of_bound=bound / fwd)
            if flop_bound is not None:
                row["forward_fraction_of_flop_bound"] = flop_bound / fwd
            row["diff_vs"], row["max_rel_diff"] = diffs[b]
        rows.append(row)
    return rows


def _versus_peer(group: list[dict]) -> list[dict]:
    """The rows of one shape, each (but a failed one) with its times over the peer's (the last row, a backend of
    :data:`PEERS`: < 1 is faster) when the peer ran, as ``forward_vs_<peer>`` and ``forward_backward_vs_<peer>``."""
    peer = group[-1]
    if "error" not in peer:
        name = peer["backend"]
        for r in group:
            if "error" not in r:
                r[f"forward_vs_{name}"] = r["forward_s"] / peer["forward_s"]
                r[f"forward_backward_vs_{name}"] = r["forward_backward_s"] / peer["forward_backward_s"]
    return group


def main(argv: list[str] | None = None, prog: str = "python -m ssmkit.bench gpu") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scan-shapes", nargs="*", default=SCAN_SHAPES, help="B,H,d_state,L (d_state/2 complex modes)")
    parser.add_argument("--scan-chunks-per-program", nargs="*", type=positive_int, default=SCAN_CHUNKS_PER_PROGRAM,
                        help="more groupings of the Triton scan: chunks walked by one program (rows triton:G)")
    parser.add_argument("--ssd-shapes", nargs="*", default=SSD_SHAPES, help="B,L,H,P,N (one group)")
    parser.add_argument("--ssd-tiles", nargs="*", default=SSD_TILES,
                        help="more tiles of the Triton SSD forward: chunk,channels[,num_warps] (rows triton:tiles)")
    parser.add_argument("--selective-shapes", nargs="*", default=SELECTIVE_SHAPES,
                        help="B,d_inner,N,L (B and C shared, with D, z, Δ bias and softplus)")
    parser.add_argument("--selective-tiles", nargs="*", default=SELECTIVE_TILES,
                        help="more tiles of the Triton selective scan: the fields of ssmkit.ops.triton.selective.Tiles "
                             "in order, comma-separated (a prefix; the rest default)")
    parser.add_argument("--backends", nargs="+", default=["chunked", "fft", "triton"])
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--copy-bytes", type=positive_int, default=1 << 30)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--gemm-size", type=positive_int, default=8192,
                        help="side of the float32 GEMM that measures the FLOP rate (TF32 off)")
    parser.add_argument("--mamba-ssm-src", default=None,
                        help="a checkout of state-spaces/mamba whose Triton SSD and CUDA selective scan are timed "
                             "beside the ssd and selective rows (default: the installed mamba_ssm, if any)")
    parser.add_argument("--short-conv-shapes", nargs="*", default=SHORT_CONV_SHAPES,
                        help=f"B,d_inner,L of Mamba's short convolution (width {SHORT_CONV_WIDTH}, bias, SiLU)")
    parser.add_argument("--causal-conv1d-src", default=None,
                        help="a checkout of Dao-AILab/causal-conv1d timed beside the short_conv rows (default: the "
                             "installed causal_conv1d, if any)")
    parser.add_argument("--causal-conv1d-cuda", default=None,
                        help="causal-conv1d's CUDA kernels built by scripts/cuda_peers/build.sh (causal_conv1d_cuda.so), "
                             "for that peer where causal-conv1d's own CUDA extension is not installed")
    parser.add_argument("--mamba-ssm-cuda", default=None,
                        help="mamba-ssm's CUDA selective scan built by scripts/cuda_peers/build.sh "
                             "(mamba_ssm_cuda.so), for the selective rows' mamba_ssm peer where mamba-ssm's own CUDA "
                             "extension is not installed")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    bandwidth = copy_bandwidth(device, args.copy_bytes)
    flop_rate = gemm_flop_rate(device, args.gemm_size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine()
    header = (f"ssmkit bench gpu: {name}; torch {torch.__version__}; copy bandwidth {bandwidth / 1e9:.0f} GB/s; "
              f"float32 GEMM (TF32 off) {flop_rate / 1e12:.1f} TFLOP/s")
    try:
        import triton

        header += f"; triton {triton.__version__}"
    except ImportError:
        header += "; triton not installed"
    print(header)
    rows = []
    scan = list(args.backends)
    if "triton" in scan:
        scan += [f"triton:{G}" for G in args.scan_chunks_per_program] + ["triton:mm"]
    scan.append("accelerated_scan")
    for shape in args.scan_shapes:
        rows += measure("scan", shape, scan, device, bandwidth, args.repeats, flop_rate=flop_rate)
    ssd_backends = [b for b in args.backends if b != "fft"]
    if "triton" in ssd_backends:
        ssd_backends += ["triton:recompute", *(f"triton:{tiles}" for tiles in args.ssd_tiles)]
    ssd_backends.append("mamba_ssm")
    for shape in args.ssd_shapes:
        rows += _versus_peer(measure("ssd", shape, ssd_backends, device, bandwidth, args.repeats, args.mamba_ssm_src,
                                     flop_rate))
    selective = [b for b in args.backends if b != "fft"]
    if "triton" in selective:
        selective += [f"triton:{tiles}" for tiles in args.selective_tiles]
    for shape in args.selective_shapes:
        rows += _versus_peer(measure("selective", shape, selective + ["mamba_ssm"], device, bandwidth, args.repeats,
                                     args.mamba_ssm_src, flop_rate, args.mamba_ssm_cuda))
    conv = [b for b in args.backends if b not in ("fft", "triton")] or ["chunked"]  # no FFT or Triton short conv
    for shape in args.short_conv_shapes:
        rows += _versus_peer(measure("short_conv", shape, conv + ["causal_conv1d"], device, bandwidth, args.repeats,
                                     flop_rate=flop_rate, causal_conv1d_src=args.causal_conv1d_src,
                                     causal_conv1d_cuda=args.causal_conv1d_cuda))
    print("| op | shape | backend | forward ms | fwd+bwd ms | bytes-moved bound ms | bound / forward | FLOP bound ms "
          "| FLOP bound / forward | max abs. diff. of y / max abs. y (vs) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        shape = ",".join(f"{k}={r[k]}" for k in ("B", "L", "H", "P", "N", "W") if k in r)
        if "error" in r:
            print(f"| {r['op']} | {shape} | {r['backend']} | {r['error']} | | | | | | |")
        else:
            agree = ("" if "max_rel_diff" not in r else "yardstick" if r["backend"] == r["diff_vs"] else
                     f"{r['max_rel_diff']:.1e} ({r['diff_vs']})")
            print(f"| {r['op']} | {shape} | {r['backend']} | {1e3 * r['forward_s']:.3f} | "
                  f"{1e3 * r['forward_backward_s']:.3f} | {1e3 * r['bound_s']:.4f} | "
                  f"{100 * r['forward_fraction_of_bound']:.3g} % | {1e3 * r['flop_bound_s']:.4f} | "
                  f"{100 * r['forward_fraction_of_flop_bound']:.3g} % | {agree} |")
    for r in rows:
        for peer, printed in PEERS.items():
            if f"forward_vs_{peer}" in r and r["backend"] != peer:
                print(f"{r['op']} {','.join(str(r[k]) for k in ('B', 'L', 'H', 'P', 'N', 'W') if k in r)} "
                      f"{r['backend']}: forward {r[f'forward_vs_{peer}']:.2f}x, fwd+bwd "
                      f"{r[f'forward_backward_vs_{peer}']:.2f}x {printed}'s time")
    if args.json:
        from ssmkit.files import write_json

        write_json(args.json, {"header": header, "bandwidth_Bps": bandwidth, "gemm_flops_per_s": flop_rate,
                               "results": rows}, strict=True)  # an inf or NaN difference written as null
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
