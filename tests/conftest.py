"""Shared fixtures and helpers: the test device comes from SSMKIT_TEST_DEVICE (default cpu)."""

import inspect
import os

# The Triton kernels run on the CPU in Triton's interpreter (tests/ops/test_triton.py), which must be chosen before
# triton is first imported -- and torch imports it -- so it is set here, before torch, for CPU runs (unless the
# environment says otherwise). It changes nothing else: "auto" never picks the kernels on the CPU.
if os.environ.get("SSMKIT_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The ssmkit command keeps freed memory for reuse (ssmkit.memory), a process-wide malloc setting; the CLI tests call it
# in this process, which must keep glibc's defaults (tests/test_memory.py checks the setting in fresh interpreters).
os.environ.setdefault("SSMKIT_KEEP_FREED_MEMORY", "0")
# `make test` runs one pytest-xdist worker per core, and each worker computes on one thread: two workers of two OpenMP
# threads each on CI's two cores spin-wait against each other (docs/benchmarks.md, "the OpenMP wait policy"). Set
# before torch loads libgomp, and inherited by the subprocesses a worker starts. The tests of the kernels' splits over
# threads set their thread counts themselves (tests/layers/test_concurrency.py, tests/ops/test_native.py).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import ssmkit.layers as layers
import ssmkit.ops as ops
from ssmkit.layers.state import map_state
from tests.triton_interp import use_lane_parallel_scans

DEVICE = torch.device(os.environ.get("SSMKIT_TEST_DEVICE", "cpu"))


def _share_the_onnx_registry() -> None:
    """``torch.onnx.export(dynamo=True)`` builds its registry of ONNX functions anew at every call (0.6 s of CPU:
    onnxscript parses the source of ~500 functions), a fixed cost of each of the suite's ~200 exports. The registry is
    only read while a graph is exported, so the suite builds one per opset and hands each export its own copy of the
    table (a caller's ``custom_translation_table`` registers into the copy). The exported graphs are unchanged: the
    same functions are dispatched. Test-only: the library does not patch torch. Skipped where torch's exporter lacks
    the private class (another torch release): the exports then build their own, as before."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:  # pragma: no cover - torch without the dynamo exporter
        return
    registry = getattr(_registration, "ONNXRegistry", None)
    build = getattr(registry, "from_torchlib", None)
    if build is None or not hasattr(registry(), "functions"):  # pragma: no cover - another torch release
        return
    built: dict = {}
    signature = inspect.signature(build)

    def from_torchlib(cls, *args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        key = (cls, tuple(bound.arguments.items()))  # (the opset)
        if key not in built:
            built[key] = build.__func__(cls, *args, **kwargs)
        copy = object.__new__(cls)
        copy.__dict__.update(built[key].__dict__)
        copy.functions = {op: list(entries) for op, entries in built[key].functions.items()}
        return copy

    registry.from_torchlib = classmethod(from_torchlib)


_share_the_onnx_registry()
H = 3  # channels of the layer tests (distinct from B = 2 and the state sizes, so a swapped axis cannot broadcast)

# Small per-layer options that keep the tests fast; the variants widen the grid (every init and discretisation of a
# layer should appear). A layer not listed is tested with its defaults. The first variant is the layer's
# representative in the tests that take one.
VARIANTS: dict[str, list[dict]] = {
    "s4d": [
        {"d_state": 8, "init": "legs"},
        {"d_state": 6, "init": "inv", "discretization": "bilinear"},
        {"d_state": 4, "init": "lin"},
        {"d_state": 8, "init": "real", "discretization": "bilinear"},
    ],
    "dss": [
        {"d_state": 8, "version": "exp"},
        {"d_state": 6, "version": "softmax", "l_max": 40},
        {"d_state": 8, "version": "exp", "separate_dt": False},
    ],
    "s4": [
        {"d_state": 8, "l_max": 32, "init": "legs"},
        {"d_state": 8, "l_max": 16, "init": "legt"},
        {"d_state": 6, "l_max": 32, "init": "lagt", "n_ssm": None},
        {"d_state": 8, "l_max": 32, "init": "fout"},
    ],
    "mamba": [
        {"d_state": 4},
        {"d_state": 3, "d_conv": 2, "expand": 1, "dt_rank": 2, "dt_init": "constant", "bias": True, "conv_bias": False},
    ],
    "dlr": [
        {"d_state": 8, "init": "omega"},
        {"d_state": 6, "init": "randn", "lr_W": 1e-4},
    ],
    "rglru": [
        {"lru_width": 4, "n_heads": 2},
        {"init": "paper", "conv_width": 2},
        {"lru_width": 6, "n_heads": 3, "c": 4.0, "conv_width": 3},
    ],
    # headdim divides expand·H = 6; chunk sizes that leave a partial last chunk at the tests' lengths (37, 50, 21, 9)
    "mamba2": [
        {"d_state": 4, "headdim": 2, "chunk_size": 8},
        {"d_state": 5, "headdim": 3, "ngroups": 2, "chunk_size": 16, "norm_before_gate": True, "D_has_hdim": True,
         "bias": True},
        {"d_state": 3, "headdim": 2, "ngroups": 3, "chunk_size": 5, "rmsnorm": False, "conv_bias": False, "d_conv": 2},
    ],
    "s5": [
        {"d_state": 8, "blocks": 2},
        {"d_state": 12, "blocks": 1, "discretization": "bilinear", "C_init": "lecun_normal", "step_rescale": 2.0},
        {"d_state": 16, "blocks": 2, "conj_sym": False, "C_init": "complex_normal", "clip_eigs": True},
    ],
    "lru": [
        {"d_state": 8},
        {"d_state": 6, "r_min": 0.9, "r_max": 0.999, "max_phase": 0.314},
    ],
    "sgconv": [
        {"l_max": 32, "kernel_dim": 8},  # 3 scales, K_len = 32 taps (< the test lengths: the window state is cut)
        {"l_max": 20, "kernel_dim": 4, "decay_min": 1.5, "decay_max": 3.0},  # 4 scales, per-channel decay
        {"l_max": 8, "kernel_dim": 4},  # 2 scales, K_len = 8
    ],
    "gss": [
        {"d_state": 8, "bottleneck": 1},  # H_s = 3 SSM channels (the default bottleneck 4 leaves one at d_model = 3)
        {"d_state": 6, "expand": 2, "bottleneck": 2},
    ],
    "hyena": [
        {"l_max": 64, "filter_width": 8},
        {"l_max": 16, "order": 3, "filter_width": 8, "emb_dim": 5, "n_inner": 1, "sine_freq": 10.0, "short_width": 4},
    ],
    "attention": [
        {"n_heads": 2, "head_dim": 4},
        {"n_heads": 1, "head_dim": 6, "window": 5, "bias": True},
        {"n_heads": 2, "head_dim": 3, "positional": None, "window": 1},
    ],
    "mega": [
        {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": 8},
        {"d_state": 3, "d_qk": 6, "d_v": 4, "chunk_size": None, "max_positions": 64, "attention": "laplace"},
        {"d_state": 2, "d_qk": 4, "d_v": 5, "chunk_size": 6, "positional": "rotary", "attention": "laplace"},
        {"d_state": 2, "d_qk": 4, "d_v": 2, "chunk_size": None, "positional": "rotary"},
    ],
    "ema": [
        {"d_state": 4},
        {"d_state": 1},
    ],
    "liquid_s4": [  # two variants only (each runs S4's kernel): tests/layers/test_liquid.py covers more options
        {"d_state": 8, "l_max": 32, "liquid_kernel": "pb", "liquid_degree": 2},
        {"d_state": 6, "l_max": 16, "liquid_kernel": "kb", "liquid_degree": 3, "liquid_contract": "lecun", "init": "legt"},
    ],
    "h3": [
        {"d_state": 8},
        {"d_state": 4, "head_dim": 3, "init": "inv", "discretization": "zoh"},
    ],
}

# Options without which a layer cannot be built at the tests' widths (d_model 3 or 4): Mamba-2's default heads of
# headdim 64 need expand·d_model to be a multiple of 64. The tests that build a layer with its defaults add these.
NEEDED_AT_TINY_WIDTH: dict[str, dict] = {"mamba2": {"headdim": 2}}


def build_default(name: str, **options):
    """Build layer ``name`` with its defaults, plus only the options it needs at the tests' tiny widths."""
    return layers.build(name, **{**NEEDED_AT_TINY_WIDTH.get(name, {}), **options})


def variants(name: str) -> list[dict]:
    """The option sets a layer is tested with."""
    return VARIANTS.get(name, [{}])


def make_layer(name: str, opts: dict | None = None, dtype: torch.dtype = torch.float64, seed: int = 1, **extra):
    """Build layer ``name`` with d_model = H on the test device, from a fixed seed."""
    torch.manual_seed(seed)
    options = {**(variants(name)[0] if opts is None else opts), **extra}
    return layers.build(name, d_model=H, device=DEVICE, dtype=dtype, **options)


def runnable_backends(layer) -> tuple[str, ...]:
    """The layer's (or layer class's) backends that can run on the test device: ``"native"`` (C kernels) only on the
    CPU where they build; the others everywhere (a layer's ``"triton"`` would be filtered the same way)."""
    from ssmkit.ops.native import native_available

    def ok(backend: str) -> bool:
        if backend == "native":
            return DEVICE.type == "cpu" and all(native_available(op, dt) for op in ("selective_scan", "ssm_scan")
                                                 for dt in (torch.float32, torch.float64))
        return True

    return tuple(b for b in layer.backends if ok(b))


def signature_defaults(function) -> dict:
    """The defaults of ``function``'s parameters by name (those without a default left out)."""
    return {k: p.default for k, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def run_steps(layer, x: torch.Tensor, state=None):
    """Run ``layer.step`` over x (B, L, H) from ``state`` (zeros if None): (y (B, L, H), final state)."""
    h = layer.initial_state(x.shape[0]) if state is None else state
    ys = []
    for t in range(x.shape[1]):
        y_t, h = layer.step(x[:, t], h)
        ys.append(y_t)
    return torch.stack(ys, dim=1), h


class StepModule(torch.nn.Module):
    """``layer.step(x_t, state)`` as a module's ``forward``, which ``functional_call``, ``torch.export`` and
    ``torch.compile`` of a module reach (the layer is its sub-module ``layer``: weights are named ``layer.*``)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x_t, state):
        return self.layer.step(x_t, state)


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture(autouse=True)
def _reset_backend_and_seed(monkeypatch):
    ops.set_backend("auto")
    torch.manual_seed(0)
    use_lane_parallel_scans(monkeypatch)  # Triton's interpreter: its scans lane-parallel (tests/triton_interp.py)
    yield
    ops.set_backend("auto")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (the error measure of every tolerance in this suite)."""
    a = a.detach().to(torch.complex128 if (a.is_complex() or b.is_complex()) else torch.float64).cpu()
    b = b.detach().to(a.dtype).cpu()
    if a.numel() == 0 or b.numel() == 0:  # an empty growing state or cache: equal when the shapes are
        return 0.0 if a.shape == b.shape else float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def leaves(state) -> list[torch.Tensor]:
    """The tensors of a layer state (a tensor or nested tuples of tensors)."""
    if isinstance(state, (tuple, list)):
        return [t for s in state for t in leaves(s)]
    return [state]


state_map = map_state


def state_err(a, b) -> float:
    """The largest rel_err over the tensors of two states of the same structure."""
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    return max(rel_err(x, y) for x, y in zip(la, lb))


def _traced_worker(rank: int, worker, *args) -> None:
    """``worker(rank, *args)`` in a spawned process that dumps every thread's stack to stderr on SIGUSR1 (what
    :func:`spawn_on_one_core` sends a process still running at its timeout, before killing it: a rare hang of the DDP
    test, once with one worker gone and nothing on stderr, left no trace of where it waited)."""
    import faulthandler
    import signal

    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    worker(rank, *args)


def spawn_on_one_core(worker, args: tuple, nprocs: int, what: str, timeout: float = 300) -> None:
    """Run ``worker(rank, *args)`` in ``nprocs`` spawned processes, all on one core (the highest of this process's
    affinity: core 1 when the suite is pinned there; the spawned workers inherit it), and wait for them; a failure in
    a worker is raised here, and processes still running after ``timeout`` seconds have their stacks dumped to stderr
    (SIGUSR1, :func:`_traced_worker`), are killed, and the test fails naming ``what`` and the processes' exit codes."""
    import signal
    import time

    import torch.multiprocessing as mp

    pin = hasattr(os, "sched_setaffinity")
    before = os.sched_getaffinity(0) if pin else None
    if pin:
        os.sched_setaffinity(0, {max(before)})
    try:
        workers = mp.spawn(_traced_worker, args=(worker, *args), nprocs=nprocs, join=False)
        deadline = time.monotonic() + timeout
        while not workers.join(timeout=5):  # True once all have exited (raises if one failed)
            if time.monotonic() > deadline:
                codes = [process.exitcode for process in workers.processes]  # None: still running
                for process in workers.processes:
                    if process.exitcode is None and hasattr(signal, "SIGUSR1"):
                        os.kill(process.pid, signal.SIGUSR1)  # its stacks to stderr
                time.sleep(2)
                for process in workers.processes:
                    process.kill()
                pytest.fail(f"{what} did not finish within {timeout:g} s (exit codes {codes}: None = still running; "
                            "the running ones' stacks are on stderr)")
    finally:
        if pin:
            os.sched_setaffinity(0, before)
