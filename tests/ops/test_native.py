"""The "native" backend (ssmkit.ops.native): building the C kernel (cache, refusals, a failing compiler), and the
selective-scan kernel against the float64 loop at shapes that exercise its channel blocks, groups, chunk tails and
threads, its float32 exp2 over the whole exponent range, and the dispatch of "auto". (tests/ops/test_selective.py
runs it beside the other paths against an independent numpy loop, with gradcheck.)"""

from __future__ import annotations

import os

import pytest
import torch

import ssmkit.ops as ops
from ssmkit.ops.native import build, native_available, native_status, selective_scan_native
from ssmkit.ops.native.build import NativeBuildError
from ssmkit.ops.selective import _auto, selective_scan_reference
from tests.conftest import DEVICE, rel_err

F64 = torch.float64
pytestmark = pytest.mark.skipif(
    DEVICE.type != "cpu" or not (native_available("selective_scan", torch.float32) and native_available("selective_scan", F64)),
    reason="the native backend runs on the CPU where a C compiler builds it",
)


def test_build_caches_its_library_and_names_it_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMKIT_NATIVE_CACHE", str(tmp_path))
    path = build.build("selective_scan.c", "float32")
    assert path.parent == tmp_path and path.exists() and "selective_scan-float32-" in path.name
    stamp = path.stat().st_mtime_ns
    assert build.build("selective_scan.c", "float32") == path and path.stat().st_mtime_ns == stamp  # not rebuilt
    assert build.library_path("selective_scan.c", "float64") != path  # one library per dtype
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_a_failing_compiler_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMKIT_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # exists on every POSIX system and fails
    with pytest.raises(NativeBuildError, match="failed"):
        build.build("selective_scan.c", "float32")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("CC", "no-such-compiler-ssmkit")
    with pytest.raises(NativeBuildError, match="no C compiler found"):
        build.build("selective_scan.c", "float32")


def test_disabled_by_the_environment(monkeypatch):
    monkeypatch.setenv("SSMKIT_NATIVE", "0")
    with pytest.raises(NativeBuildError, match="disabled by SSMKIT_NATIVE=0"):
        build.build("selective_scan.c", "float32")
    with pytest.raises(ValueError, match="dtype must be one of"):
        monkeypatch.delenv("SSMKIT_NATIVE")
        build.build("selective_scan.c", "float16")
    ok, why = native_status("selective_scan", torch.float16)
    assert not ok and "float32 or float64" in why


def _openmp_runtimes() -> set[str]:
    with open("/proc/self/maps") as maps:
        return {line.split()[-1] for line in maps if "libgomp" in line}


def test_openmp_builds_apart_and_shares_torchs_runtime(tmp_path, monkeypatch):
    from ssmkit.ops.native.selective import SIGNATURES

    monkeypatch.setenv("SSMKIT_NATIVE_CACHE", str(tmp_path))
    with_openmp = build.library_path("selective_scan.c", "float32")
    monkeypatch.setenv("SSMKIT_NATIVE_OPENMP", "0")
    assert build.library_path("selective_scan.c", "float32") != with_openmp  # another library, not a stale one
    assert build.bind("selective_scan.c", torch.float32, SIGNATURES)["openmp"] is False
    monkeypatch.setenv("SSMKIT_NATIVE_OPENMP", "1")
    if not os.path.exists("/proc/self/maps"):
        return
    before = _openmp_runtimes()
    lib = build.load("selective_scan.c", "float32")  # a fresh file in tmp_path: the loader resolves its libgomp now
    if lib.native_openmp_f32():  # built with OpenMP: it found the runtime torch loaded (by soname), no second one
        assert _openmp_runtimes() == before and any("torch" in path for path in before), (before, _openmp_runtimes())


def inputs(Bsz, L, H, N, G, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    bc = (Bsz, L, N) if G is None else (Bsz, L, G, N)
    p = dict(u=r(Bsz, L, H), delta=r(Bsz, L, H) - 1, A=-torch.rand(H, N, generator=g, dtype=F64) * 3 - 0.1, B=r(*bc),
             C=r(*bc), D=r(H), z=r(Bsz, L, H), delta_bias=0.3 * r(H), state=r(Bsz, H, N))
    return {k: v.to(dtype) for k, v in p.items()}


ORDER = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

# How a kernel call is threaded: (threads, SSMKIT_NATIVE_OPENMP): one thread; three OpenMP threads (the kernels'
# partial sums per OpenMP thread); three Python threads over a library built without OpenMP (the fallback)
THREADINGS = [(1, "1"), (3, "1"), (3, "0")]
THREADING_IDS = ["1-thread", "3-openmp", "3-python-threads"]


def use_threads(monkeypatch, threads: int, openmp: str) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setenv("SSMKIT_NATIVE_OPENMP", openmp)

# (B, L, H, N, G): one partial block; three blocks (64, 64, 2); groups of 65 channels (a block and a one-channel tail
# per group); a chunk boundary inside L and a last chunk of one step (L = 33 with T = 8); a full block of 64 channels
# with N = 20 states (the vector adjoint sums ∂B, ∂C over 8 or 16 states at a time: two or three such groups, the
# last one partial); N = 300 states (the adjoint's per-thread buffer of sums over channels, 2 x N vectors)
SHAPES = [(2, 9, 5, 3, None), (1, 33, 130, 4, None), (3, 17, 130, 2, 2), (2, 12, 128, 5, 4), (2, 11, 64, 20, None),
          (1, 6, 64, 300, None)]


@pytest.mark.parametrize("threads", THREADINGS, ids=THREADING_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_forward_and_gradients_equal_the_loop_in_float64(shape, threads, monkeypatch):
    use_threads(monkeypatch, *threads)
    p = {k: v.requires_grad_() for k, v in inputs(*shape).items()}
    args = [p[k] for k in ORDER]
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(p["u"].shape, generator=g, dtype=F64)
    gh = torch.randn(p["state"].shape, generator=g, dtype=F64)
    out = {}
    for name, fn in (("ref", selective_scan_reference), ("native", lambda *a, **k: selective_scan_native(*a, **k, chunk_size=8))):
        y, h = fn(*args, delta_softplus=True, state=p["state"])
        grads = torch.autograd.grad((y * gy).sum() + (h * gh).sum(), [*args, p["state"]])
        out[name] = (y, h, *grads)
    for a, b in zip(out["native"], out["ref"]):
        assert rel_err(a, b) < 1e-12


def test_float32_exp2_over_the_exponent_range():
    # one step from h0 with B = 0: y = Σ_n C_n exp(Δ A_n) h0_n, here one state per channel so y = exp(ΔA) h0 exactly
    H = 200
    x = torch.linspace(-87.0, 87.0, H, dtype=F64)  # ΔA: exp(x) spans the normal float32 range
    A = x.reshape(H, 1)
    ones = torch.ones(1, 1, H, dtype=F64)
    zeros = torch.zeros(1, 1, 1, dtype=F64)
    h0 = torch.ones(1, H, 1, dtype=F64)
    y, _ = selective_scan_native(ones.float(), ones.float(), A.float(), zeros.float(), zeros.float() + 1,
                                 state=h0.float())
    exact = torch.exp(A.float().double().squeeze(1))  # of the float32 exponent the kernel was given
    rel = ((y.double().flatten() - exact) / exact).abs().max().item()
    torch_rel = ((torch.exp(A.float()).double().squeeze(1) - exact) / exact).abs().max().item()
    assert rel < 2.5e-7 and rel < 4 * torch_rel  # float32 rounding (ulp 1.2e-7 relative at most), as torch.exp
    # beyond the range: exp(ΔA) for ΔA < -88 is 0 (a state that has decayed), never NaN
    y2, h2 = selective_scan_native(ones.float(), ones.float(), torch.full((H, 1), -500.0), zeros.float(),
                                   zeros.float() + 1, state=h0.float())
    assert torch.equal(y2, torch.zeros_like(y2)) and torch.equal(h2, torch.zeros_like(h2))


@pytest.mark.parametrize("positive", [False, True], ids=["A<=0", "some A>0"])
def test_float32_exp_of_delta_A_on_both_kernel_paths(positive):
    # With softplus Δ and A ≤ 0 (Mamba's case) the kernel takes exp(ΔA) without its upper clamp (ΔA ≤ 0 there); one
    # positive entry of A sends every channel to the clamped exp. δ = 32 passes softplus unchanged (δ > 20), so
    # ΔA = 32 A is exact; one state per channel from h0 = 1 with B = 0, C = 1: y = exp(ΔA). Three full blocks of 64
    # channels (the vector instantiation) and a tail of 5.
    H = 197
    x = torch.linspace(-87.0, 0.0, H)
    if positive:
        x[-1] = 80.0
    A = (x / 32).reshape(H, 1)
    delta = torch.full((1, 1, H), 32.0)
    ones, zeros = torch.ones(1, 1, 1), torch.zeros(1, 1, 1)
    y, h = selective_scan_native(torch.ones(1, 1, H), delta, A, zeros, ones, delta_softplus=True,
                                 state=torch.ones(1, H, 1))
    exact = torch.exp(x.double())
    rel = ((y.double().flatten() - exact) / exact).abs()
    if positive:  # the clamped exp: Cody-Waite reduction, float32 rounding (as torch.exp)
        torch_rel = ((torch.exp(x).double() - exact) / exact).abs().max().item()
        assert rel.max().item() < 2.5e-7 and rel.max().item() < 4 * torch_rel
    else:  # 2^(Δ A log2 e): one more rounding in the exponent, |Δ A| 2^-24 relative (selective_scan.c, EXP_DA)
        assert (rel <= 2.5e-7 + x.double().abs() * 2.0**-24).all()
        assert rel[x > -1].max().item() < 2.5e-7  # Mamba's decays (Ā near 1): at float32 rounding
        assert ((y.double().flatten() - exact).abs()).max().item() < 2**-24  # under half an ulp of 1
    assert torch.equal(h.flatten(), y.flatten())
    # beyond the range the decayed state is exactly 0, on either path
    A2 = torch.full((H, 1), -500.0 / 32)
    if positive:
        A2[-1] = 1.0
    y2, _ = selective_scan_native(torch.ones(1, 1, H), delta, A2, zeros, ones, delta_softplus=True,
                                  state=torch.ones(1, H, 1))
    assert torch.equal(y2.flatten()[: H - 1], torch.zeros(H - 1))


def test_float32_long_sequence_against_float64():
    # Mamba's magnitudes (Δ ~ 1e-3..1e-1, A = -(1..N)) over L = 2000: the float32 kernel stays at float32 rounding
    p = inputs(2, 2000, 70, 16, None, seed=4)
    p["A"] = -torch.arange(1, 17, dtype=F64).expand(70, 16).contiguous()
    p["delta"] = p["delta"] - 3
    y64, h64 = selective_scan_reference(*[p[k] for k in ORDER], True, p["state"])
    p32 = {k: v.float() for k, v in p.items()}
    y32, h32 = selective_scan_native(*[p32[k] for k in ORDER], True, p32["state"])
    ref32, _ = selective_scan_reference(*[p32[k] for k in ORDER], True, p32["state"])
    assert rel_err(y32, y64) < max(2 * rel_err(ref32, y64), 1e-6) and rel_err(h32, h64) < 1e-6


def test_float32_gradients_of_full_blocks_against_float64():
    # two full blocks of 64 channels, N = 20 (the float32 vector adjoint: one group of 16 states and a partial one of
    # 4): every gradient within float32 rounding of the float64 loop's, as the float32 loop's is
    p = inputs(2, 40, 128, 20, None, seed=5)
    g = torch.Generator().manual_seed(6)
    gy = torch.randn(p["u"].shape, generator=g, dtype=F64)
    grads = {}
    for name, dtype, fn in (("64", F64, selective_scan_reference), ("ref32", torch.float32, selective_scan_reference),
                            ("native32", torch.float32, selective_scan_native)):
        q = {k: v.to(dtype).requires_grad_() for k, v in p.items()}
        y, h = fn(*[q[k] for k in ORDER], True, q["state"])
        grads[name] = torch.autograd.grad((y * gy.to(dtype)).sum() + h.sum(), [*[q[k] for k in ORDER], q["state"]])
    for a, r, b in zip(grads["native32"], grads["ref32"], grads["64"]):
        assert rel_err(a.double(), b) < max(4 * rel_err(r.double(), b), 1e-6)


def test_auto_takes_the_kernel_in_eager_mode_only():
    u = torch.randn(1, 4, 3)
    assert _auto(u) == "native" and _auto(u.double()) == "native"
    assert _auto(u.half()) == "chunked"  # no float16 kernel
    p = inputs(1, 6, 3, 2, None)
    args = [p[k] for k in ORDER]
    y = ops.selective_scan(*args, True, p["state"])[0]
    traced = torch.func.vmap(lambda u_: ops.selective_scan(u_, *args[1:], True, p["state"])[0])(p["u"].unsqueeze(0))
    assert rel_err(traced[0], y) < 1e-12  # under vmap "auto" runs the chunked path, with the same result


def test_no_gradient_is_kept_without_grad():
    # under no_grad the forward keeps no chunk states; with grad but no input requiring it, none either
    p = inputs(1, 20, 3, 2, None)
    args = [p[k] for k in ORDER]
    with torch.no_grad():
        y0 = selective_scan_native(*args, True, p["state"])[0]
    y1 = selective_scan_native(*args, True, p["state"])[0]
    assert torch.equal(y0, y1) and not y1.requires_grad


def test_the_cache_folder_defaults_under_the_home(monkeypatch):
    monkeypatch.delenv("SSMKIT_NATIVE_CACHE", raising=False)
    assert build.cache_dir() == build.Path.home() / ".cache" / "ssmkit" / "native"


# ---------------------------------------------------------------------------------------------------------------------
# The diagonal LTI scan (ssm_scan_native)

from ssmkit.ops.native import ssm_scan_native  # noqa: E402
from ssmkit.ops.native.diagonal import native_diagonal_ok  # noqa: E402
from ssmkit.ops.scan import auto_scan_backend, ssm_scan_reference  # noqa: E402

C128 = torch.complex128


def diag_inputs(Bsz, L, H, N, seed=0, dtype=C128):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    if not dtype.is_complex:  # real modes (Mega's EMA): Ā in (-0.95, 0.95), both signs
        A = torch.rand(H, N, generator=g, dtype=F64) * 1.9 - 0.95
        return dict(u=r(Bsz, L, H), A=A.to(dtype), B=r(H, N).to(dtype), C=r(H, N).to(dtype),
                    x0=r(Bsz, H, N).to(dtype), D=r(H))
    A = torch.polar(torch.rand(H, N, generator=g, dtype=F64) * 0.6 + 0.35, r(H, N) * 2)
    return dict(u=r(Bsz, L, H), A=A.to(dtype), B=torch.complex(r(H, N), r(H, N)).to(dtype),
                C=torch.complex(r(H, N), r(H, N)).to(dtype), x0=torch.complex(r(Bsz, H, N), r(Bsz, H, N)).to(dtype),
                D=r(H))


# (B, L, H, N): one partial channel block; blocks of 16 + a tail of 3; modes not a multiple of the kernel's block of 4;
# chunk boundaries inside L and a one-step last chunk (T = 8 below)
DIAG_SHAPES = [(2, 9, 5, 3), (1, 33, 35, 5), (3, 17, 16, 8), (2, 25, 19, 1), (2, 19, 21, 11)]


# (skip D, initial state x0, a gradient on the final state): all; then each part alone (the backward's adjoint pairs:
# the g-driven one always, the seeded one only for a final-state gradient; the initial state's terms)
DIAG_IO = [(True, True, True), (False, True, True), (True, False, False), (True, True, False), (True, False, True)]


@pytest.mark.parametrize("threads", THREADINGS, ids=THREADING_IDS)
@pytest.mark.parametrize("shape", DIAG_SHAPES, ids=[str(s) for s in DIAG_SHAPES])
@pytest.mark.parametrize("io", DIAG_IO, ids=["D-x0-gx", "x0-gx", "D", "D-x0", "D-gx"])
@pytest.mark.parametrize("modes", [C128, F64], ids=["complex", "real"])
@pytest.mark.parametrize("reverse", [False, True], ids=["", "reversed"])
def test_diagonal_forward_and_gradients_equal_the_loop_in_float64(shape, threads, io, modes, reverse, monkeypatch):
    # real modes (Mega's EMA) run the kernel's own real variant (dsr_*), blocks of 8 or 4 modes: N = 11 leaves a tail;
    # reversed: the scan backwards in time (the two-sided layers' anti-causal half) = the loop on the flipped input,
    # flipped back
    use_threads(monkeypatch, *threads)
    with_D, with_x0, with_gx = io
    p = {k: v.requires_grad_() for k, v in diag_inputs(*shape, dtype=modes).items()}
    D = p["D"] if with_D else None
    x0 = p["x0"] if with_x0 else None
    leaves_ = [p["u"], p["A"], p["B"], p["C"], *([x0] if with_x0 else []), *([D] if with_D else [])]
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(p["u"].shape, generator=g, dtype=F64)
    gx = torch.complex(torch.randn(p["x0"].shape, generator=g, dtype=F64), torch.randn(p["x0"].shape, generator=g, dtype=F64))
    gx = gx if modes.is_complex else gx.real
    out = {}
    def ref(u, *a):
        y, x = ssm_scan_reference(u.flip(1) if reverse else u, *a)
        return (y.flip(1) if reverse else y), x

    for name, fn in (("ref", ref), ("native", lambda *a: ssm_scan_native(*a, chunk_size=8, reverse=reverse))):
        y, x = fn(p["u"], p["A"], p["B"], p["C"], x0, D)
        assert x.dtype == modes
        loss = (y * gy).sum() + ((x * gx.conj()).real.sum() if with_gx else 0)  # without: x's gradient stays None
        out[name] = (y, x, *torch.autograd.grad(loss, leaves_))
    for a, b in zip(out["native"], out["ref"]):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("with_x0", [True, False], ids=["x0", "from-rest"])
def test_diagonal_float32_long_sequence_against_float64(with_x0):
    # S4D-like magnitudes (|Ā| up to 0.999) over L = 3000: the float32 kernel is as accurate as the float32 loop (from
    # rest it scans x / B̄, with B̄ spread over 1e-3..1 in magnitude here)
    p = diag_inputs(2, 3000, 20, 8, seed=3)
    p["A"] = torch.polar(torch.linspace(0.9, 0.999, 160, dtype=F64).reshape(20, 8), p["A"].angle())
    p["B"] = p["B"] * torch.logspace(-3, 0, 160, dtype=F64).reshape(20, 8)
    if not with_x0:
        p["x0"] = None
    y64, x64 = ssm_scan_reference(p["u"], p["A"], p["B"], p["C"], p["x0"], p["D"])
    q = {k: v if v is None else (v.to(torch.complex64) if v.is_complex() else v.float()) for k, v in p.items()}
    y32, x32 = ssm_scan_native(q["u"], q["A"], q["B"], q["C"], q["x0"], q["D"])
    r32, s32 = ssm_scan_reference(q["u"], q["A"], q["B"], q["C"], q["x0"], q["D"])
    assert rel_err(y32, y64) < max(2 * rel_err(r32, y64), 1e-6)
    assert rel_err(x32, x64) < max(2 * rel_err(s32, x64), 1e-6)


def test_diagonal_float32_gradients_as_accurate_as_the_float32_loop():
    # |Ā| up to 0.9999 over L = 3000: the adjoint ν grows like 1/(1-|Ā|)^2, yet every float32 gradient of the kernel is
    # as close to the float64 loop's as the float32 loop's own (measured 0.9-1.2x; ∂D, a plain sum, 1.3e-6)
    p = diag_inputs(2, 3000, 20, 8, seed=3)
    p["A"] = torch.polar(torch.linspace(0.9, 0.9999, 160, dtype=F64).reshape(20, 8), p["A"].angle())
    gy = torch.randn(2, 3000, 20, generator=torch.Generator().manual_seed(5), dtype=F64)

    def grads(fn, q):
        q = {k: v.clone().requires_grad_() for k, v in q.items()}
        y, _ = fn(q["u"], q["A"], q["B"], q["C"], q["x0"], q["D"])
        return torch.autograd.grad((y * gy.to(y.dtype)).sum(), [q[k] for k in ("u", "A", "B", "C", "x0", "D")])

    exact = grads(ssm_scan_reference, p)
    q = {k: (v.to(torch.complex64) if v.is_complex() else v.float()) for k, v in p.items()}
    for native, loop, ref in zip(grads(ssm_scan_native, q), grads(ssm_scan_reference, q), exact):
        assert rel_err(native, ref) < max(2 * rel_err(loop, ref), 3e-6)


def test_diagonal_conjugate_views_and_the_dispatch():
    p = diag_inputs(2, 12, 6, 4)
    A_conj = p["A"].conj()  # a conjugate view (torch's lazy conj bit): the kernel must read its values, not its storage
    y, x = ssm_scan_native(p["u"], A_conj, p["B"], p["C"].conj(), p["x0"].conj(), p["D"])
    y_ref, x_ref = ssm_scan_reference(p["u"], A_conj.resolve_conj(), p["B"], p["C"].conj().resolve_conj(),
                                      p["x0"].conj().resolve_conj(), p["D"])
    assert rel_err(y, y_ref) < 1e-12 and rel_err(x, x_ref) < 1e-12
    assert auto_scan_backend(p["u"], True, p["A"]) == "native"
    assert auto_scan_backend(p["u"], True, p["A"].real) == "native"  # real modes (EMA): the kernel's real variant
    assert auto_scan_backend(p["u"], True, p["A"].to(torch.complex64)) != "native"  # another precision
    assert "u's precision" in native_diagonal_ok(p["u"], p["A"].real.float())


@pytest.mark.parametrize("with_x0", [True, False], ids=["x0", "from-rest"])
def test_diagonal_real_modes_float32_long_sequence_against_float64(with_x0):
    # EMA-like real modes (Ā up to 0.999, B̄ over 1e-3..1: from rest the kernel scans x / B̄) over L = 3000: values
    # and every gradient of the float32 kernel as close to the float64 loop as the float32 loop's own
    p = diag_inputs(2, 3000, 20, 8, seed=3, dtype=F64)
    p["A"] = torch.linspace(0.9, 0.999, 160, dtype=F64).reshape(20, 8)
    p["B"] = p["B"] * torch.logspace(-3, 0, 160, dtype=F64).reshape(20, 8)
    if not with_x0:
        p["x0"] = None
    gy = torch.randn(2, 3000, 20, generator=torch.Generator().manual_seed(5), dtype=F64)

    def run(fn, q):
        q = {k: v if v is None else v.clone().requires_grad_() for k, v in q.items()}
        y, x = fn(q["u"], q["A"], q["B"], q["C"], q["x0"], q["D"])
        leaves_ = [v for v in q.values() if v is not None]
        return [y, x, *torch.autograd.grad((y * gy.to(y.dtype)).sum() + x.sum(), leaves_)]

    exact = run(ssm_scan_reference, p)
    q = {k: v if v is None else v.float() for k, v in p.items()}
    for native, loop, ref in zip(run(ssm_scan_native, q), run(ssm_scan_reference, q), exact):
        assert native.dtype == torch.float32
        assert rel_err(native, ref) < max(2 * rel_err(loop, ref), 3e-6)


def test_float32_softplus_and_gate_over_their_range():
    # one step from rest with u = B = C = 1: y = Δ = softplus(δ) exactly, then the gate: out = y SiLU(z)
    H = 241
    delta = torch.linspace(-30.0, 30.0, H).reshape(1, 1, H)  # both branches of log1p and the x > 20 pass-through
    ones = torch.ones(1, 1, 1)
    A = -torch.ones(H, 1)
    y, _ = selective_scan_native(torch.ones(1, 1, H), delta, A, ones, ones, delta_softplus=True)
    exact = torch.nn.functional.softplus(delta.double())
    assert ((y.double() - exact).abs() / exact).max().item() < 3e-7
    z = torch.linspace(-20.0, 20.0, H).reshape(1, 1, H)
    y2, _ = selective_scan_native(torch.ones(1, 1, H), delta, A, ones, ones, z=z, delta_softplus=True)
    exact2 = exact * torch.nn.functional.silu(z.double())
    assert ((y2.double() - exact2).abs() / exact2.abs().clamp_min(1e-30)).max().item() < 5e-7


def test_inference_mode_and_a_forked_child():
    import multiprocessing as mp

    p = inputs(2, 20, 70, 3, None)
    args = [p[k] for k in ORDER]
    with torch.inference_mode():
        y_inf = selective_scan_native(*args, True, p["state"])[0]
    assert torch.equal(y_inf, selective_scan_native(*args, True, p["state"])[0])
    if "fork" not in mp.get_all_start_methods():
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the parent's pool has threads now; the child must not wait on them
    try:
        selective_scan_native(*args, True, p["state"])
        with mp.get_context("fork").Pool(1) as pool:
            y_child = pool.apply_async(_child_scan, (args, p["state"])).get(timeout=120)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(y_child, y_inf)


def _child_scan(args, state):
    torch.set_num_threads(2)
    return selective_scan_native(*args, True, state)[0]


# ---------------------------------------------------------------------------------------------------------------------
# The short causal convolution (causal_conv1d_native)

from ssmkit.ops.conv import causal_conv1d_reference  # noqa: E402
from ssmkit.ops.native import causal_conv1d_native  # noqa: E402

# (B, L, H, W): odd channel counts; L shorter than the state (the final state mixes the initial state and x); one tap
# (no state); three time blocks of the kernel's 64 steps with a tail of 22 (a block's backward reads the W-1 steps of
# g_pre after it; ∂state comes from the first block, the final state from the last); 69 state rows (W - 1 > 64: the
# blocks grow to W - 1 steps, so the first one still holds every state row)
CONV_SHAPES = [(2, 9, 5, 4), (1, 13, 130, 3), (3, 2, 7, 4), (2, 6, 3, 1), (2, 150, 19, 4), (1, 150, 3, 70)]


@pytest.mark.parametrize("threads", THREADINGS, ids=THREADING_IDS)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=[str(s) for s in CONV_SHAPES])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("strided", [False, True])
def test_conv_forward_and_gradients_equal_the_loop_in_float64(shape, threads, activation, strided, monkeypatch):
    use_threads(monkeypatch, *threads)
    Bsz, L, H, W = shape
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    # strided: x is the first half of a wider projection's output (batch and time strides 2H, no copy)
    base = r(Bsz, L, 2 * H if strided else H).requires_grad_()
    x = base[..., :H] if strided else base
    w, b, st = r(H, W).requires_grad_(), r(H).requires_grad_(), r(Bsz, H, W - 1).requires_grad_()
    gy, gs = r(Bsz, L, H), r(Bsz, H, W - 1)
    out = {}
    for name, fn in (("ref", lambda *a: causal_conv1d_reference(*a)),
                     ("native", lambda *a: causal_conv1d_native(*a, activation=activation))):
        y, s = fn(x, w, b, st)
        if name == "ref" and activation == "silu":
            y = torch.nn.functional.silu(y)
        out[name] = (y, s, *torch.autograd.grad((y * gy).sum() + (s * gs).sum(), [base, w, b, st]))
    for a, b_ in zip(out["native"], out["ref"]):
        assert rel_err(a, b_) < 1e-12


def test_conv_dispatch_and_the_mamba_block_path():
    x = torch.randn(2, 7, 3, dtype=F64)
    w, b = torch.randn(3, 4, dtype=F64), torch.randn(3, dtype=F64)
    y_ref, s_ref = causal_conv1d_reference(x, w, b)
    for backend in ("auto", "chunked", "native", "reference"):
        y, s = ops.causal_conv1d(x, w, b, backend=backend, activation="silu")
        assert rel_err(y, torch.nn.functional.silu(y_ref)) < 1e-12 and rel_err(s, s_ref) < 1e-12, backend
    with pytest.raises(ValueError, match="activation must be one of"):
        ops.causal_conv1d(x, w, b, activation="gelu")
    with pytest.raises(RuntimeError, match="causal_conv1d: backend 'fft' was forced"):
        ops.causal_conv1d(x, w, b, backend="fft")


# ---------------------------------------------------------------------------------------------------------------------
# The linear recurrence (linear_recurrence_native) and the MIMO scan on it

from ssmkit.ops.mimo import mimo_scan_native, mimo_scan_reference  # noqa: E402
from ssmkit.ops.native import linear_recurrence_native  # noqa: E402
from ssmkit.ops.native import mimo as native_mimo  # noqa: E402
from ssmkit.ops.recurrence import linear_recurrence_reference  # noqa: E402


@pytest.mark.parametrize("threads", THREADINGS, ids=THREADING_IDS)
@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("varying", [False, True])
@pytest.mark.parametrize("S", [(5,), (3, 23), (70,)])  # a partial block; two channel axes; three blocks of 32
def test_recurrence_forward_and_gradients_equal_the_loop_in_float64(S, varying, cplx, threads, monkeypatch):
    use_threads(monkeypatch, *threads)
    g = torch.Generator().manual_seed(0)
    Bsz, L = 2, 17
    dtype = C128 if cplx else F64

    def r(*s):
        x = torch.randn(*s, generator=g, dtype=F64)
        return torch.complex(x, torch.randn(*s, generator=g, dtype=F64)) if cplx else x

    a = (r(Bsz, L, *S) if varying else r(*S)) * 0.6
    a, b, h0 = a.requires_grad_(), r(Bsz, L, *S).requires_grad_(), r(Bsz, *S).requires_grad_()
    gh, gl = r(Bsz, L, *S), r(Bsz, *S)
    out = {}
    for name, fn in (("ref", linear_recurrence_reference), ("native", linear_recurrence_native)):
        h, last = fn(a, b, h0)
        loss = (h * gh.conj()).real.sum() + (last * gl.conj()).real.sum()
        out[name] = (h, last, *torch.autograd.grad(loss, [a, b, h0]))
    for x, y in zip(out["native"], out["ref"]):
        assert x.dtype == dtype and rel_err(x, y) < 1e-12


def test_recurrence_zero_and_huge_gates_and_the_mimo_scan():
    b = torch.randn(1, 6, 4, dtype=F64)
    a = torch.tensor([0.0, 1e200, -2.0, 1.0], dtype=F64)
    h, _ = linear_recurrence_native(a, b)
    ref, _ = linear_recurrence_reference(a, b)
    assert torch.equal(torch.isfinite(h), torch.isfinite(ref))
    assert rel_err(h[torch.isfinite(ref)], ref[torch.isfinite(ref)]) < 1e-15
    g = torch.Generator().manual_seed(2)
    M, H = 6, 5
    A = torch.polar(torch.rand(M, generator=g, dtype=F64) * 0.5 + 0.4, torch.randn(M, generator=g, dtype=F64))
    Bm = torch.randn(M, H, generator=g, dtype=C128)
    Cm = torch.randn(H, M, generator=g, dtype=C128)
    u = torch.randn(2, 19, H, generator=g, dtype=F64)
    x0 = torch.randn(2, M, generator=g, dtype=C128)
    D = torch.randn(H, generator=g, dtype=F64)
    y, x = mimo_scan_native(u, A, Bm, Cm, x0, D)
    y_ref, x_ref = mimo_scan_reference(u, A, Bm, Cm, x0, D)
    assert rel_err(y, y_ref) < 1e-12 and rel_err(x, x_ref) < 1e-12
    assert ops.mimo_scan(u, A, Bm, Cm, x0, D, backend="native")[0].shape == y.shape


@pytest.mark.parametrize("threads", THREADINGS, ids=THREADING_IDS)
@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("with_D", [False, True])
@pytest.mark.parametrize("row_block", [None, 5], ids=["whole", "row-blocks"])
def test_mimo_scan_forward_and_every_gradient_equal_the_loop_in_float64(cplx, with_state, with_D, threads, row_block,
                                                                        monkeypatch):
    # The native MIMO scan is one autograd node with a hand-written backward (ops/native/mimo.py): every leaf's
    # gradient, the final state's among them, against autograd through the reference loop. Its GEMMs run by row
    # blocks at large B·L (_mm_rows); blocks of 5 split the 46 rows here into 9 full ones and a last of 1.
    use_threads(monkeypatch, *threads)
    if row_block:
        monkeypatch.setattr(native_mimo, "ROW_BLOCK", row_block)
    g = torch.Generator().manual_seed(3)
    M, H, Bsz, L = 7, 5, 2, 23
    dtype = C128 if cplx else F64

    def r(*shape):
        x = torch.randn(*shape, generator=g, dtype=F64)
        return torch.complex(x, torch.randn(*shape, generator=g, dtype=F64)) if cplx else x

    A = torch.polar(torch.rand(M, generator=g, dtype=F64) * 0.5 + 0.4, torch.randn(M, generator=g, dtype=F64))
    A = A if cplx else A.real
    leaves = [torch.randn(Bsz, L, H, generator=g, dtype=F64), A, r(M, H), r(H, M)]
    leaves += [r(Bsz, M) if with_state else None, torch.randn(H, generator=g, dtype=F64) if with_D else None]
    leaves = [None if t is None else t.clone().requires_grad_() for t in leaves]
    gy, gx = torch.randn(Bsz, L, H, generator=g, dtype=F64), r(Bsz, M)
    out = {}
    for name, fn in (("ref", mimo_scan_reference), ("native", mimo_scan_native)):
        y, x = fn(*leaves)
        loss = (y * gy).sum() + (x * gx.conj()).real.sum()
        present = [t for t in leaves if t is not None]
        out[name] = (y, x, *torch.autograd.grad(loss, present))
    for a, b in zip(out["native"], out["ref"]):
        assert a.dtype == b.dtype and rel_err(a, b) < 1e-12
    assert out["native"][1].dtype == dtype


def test_mimo_scan_gradients_without_the_final_state_or_with_some_leaves_frozen():
    g = torch.Generator().manual_seed(4)
    M, H = 4, 3
    A = torch.polar(torch.rand(M, generator=g, dtype=F64) * 0.5 + 0.4, torch.randn(M, generator=g, dtype=F64))
    Bm, Cm = torch.randn(M, H, generator=g, dtype=C128), torch.randn(H, M, generator=g, dtype=C128)
    u, D = torch.randn(2, 9, H, generator=g, dtype=F64), torch.randn(H, generator=g, dtype=F64)
    gy = torch.randn(2, 9, H, generator=g, dtype=F64)
    for frozen in ("u", "A", "B", "C", "D"):  # one leaf without requires_grad at a time; return_state=False
        leaves = {"u": u, "A": A, "B": Bm, "C": Cm, "D": D}
        leaves = {k: v.clone().requires_grad_(k != frozen) for k, v in leaves.items()}
        grads = {}
        for name, fn in (("ref", mimo_scan_reference), ("native", mimo_scan_native)):
            y, none = fn(leaves["u"], leaves["A"], leaves["B"], leaves["C"], None, leaves["D"], return_state=False)
            assert none is None
            wanted = [v for k, v in leaves.items() if k != frozen]
            grads[name] = torch.autograd.grad((y * gy).sum(), wanted)
        for a, b in zip(grads["native"], grads["ref"]):
            assert rel_err(a, b) < 1e-12, frozen
    y, x = mimo_scan_native(u, A, Bm, Cm.requires_grad_(), None, D)  # only the final state carries a gradient
    (gC,) = torch.autograd.grad(x.abs().sum(), [Cm], allow_unused=True)
    assert gC is None  # the read-out does not touch the state


# ---------------------------------------------------------------------------------------------------------------------
# Reproducibility: the kernels' partial sums belong to work items (or batch rows), never to threads, and are summed in
# a fixed order, so a gradient does not depend on the thread count or on how the items were scheduled


def _native_grads(op: str) -> list[torch.Tensor]:
    from ssmkit.ops.native import linear_recurrence_native

    g = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731  (float32: its sums are the ones order changes)
    if op == "selective_scan":
        leaves = [r(3, 40, 130), r(3, 40, 130) - 1, -torch.rand(130, 5, generator=g) - 0.5, r(3, 40, 2, 5),
                  r(3, 40, 2, 5), r(130), r(3, 40, 130), r(130)]
        fn = lambda u, d, A, B, C, D, z, b: selective_scan_native(u, d, A, B, C, D, z, b, True)[0]  # noqa: E731
    elif op == "ssm_scan":
        A = torch.polar(torch.rand(35, 6, generator=g) * 0.5 + 0.45, r(35, 6)).to(torch.complex64)
        leaves = [r(3, 70, 35), A, torch.complex(r(35, 6), r(35, 6)), torch.complex(r(35, 6), r(35, 6)), r(35)]
        fn = lambda u, A, B, C, D: ssm_scan_native(u, A, B, C, None, D)[0]  # noqa: E731
    elif op == "ssm_scan_real":
        leaves = [r(3, 70, 35), torch.rand(35, 6, generator=g) * 1.8 - 0.9, r(35, 6), r(35, 6), r(35)]
        fn = lambda u, A, B, C, D: ssm_scan_native(u, A, B, C, None, D)[0]  # noqa: E731
    elif op == "causal_conv1d":
        leaves = [r(3, 150, 19), r(19, 4), r(19)]
        fn = lambda x, w, b: causal_conv1d_native(x, w, b, activation="silu")[0]  # noqa: E731
    else:
        leaves = [torch.polar(torch.rand(40, generator=g) * 0.5 + 0.4, r(40)).to(torch.complex64),
                  torch.complex(r(3, 50, 40), r(3, 50, 40))]
        fn = lambda a, b: linear_recurrence_native(a, b)[0]  # noqa: E731
    leaves = [t.requires_grad_() for t in leaves]
    y = fn(*leaves)
    weight = torch.randn(y.shape, generator=g, dtype=y.real.dtype)
    return list(torch.autograd.grad((y.real if y.is_complex() else y).mul(weight).sum(), leaves))


@pytest.mark.parametrize("op", ["selective_scan", "ssm_scan", "ssm_scan_real", "causal_conv1d", "linear_recurrence"])
def test_gradients_do_not_depend_on_the_threads(op, monkeypatch):
    runs = []
    for threads in THREADINGS:
        use_threads(monkeypatch, *threads)
        runs.append(_native_grads(op))
    for other in runs[1:]:
        for a, b in zip(other, runs[0]):
            assert torch.equal(a, b)  # bit for bit: 1 thread, 3 OpenMP threads, 3 Python threads


@pytest.mark.skipif(DEVICE.type != "cpu" or not native_available("ssm_scan", torch.float64), reason="C kernels: CPU")
def test_the_first_native_call_may_come_inside_a_checkpoint(monkeypatch):
    """The smoke call's own autograd ran inside torch.utils.checkpoint's non-reentrant region on a process's first
    call, which then failed ("a different number of tensors was saved")."""
    from torch.utils.checkpoint import checkpoint

    import ssmkit.layers as layers
    from ssmkit.ops.native import gate

    torch.manual_seed(0)
    layer = layers.build("s4d", d_model=4, d_state=8, dtype=torch.float64)
    x = torch.randn(2, 20, 4, dtype=torch.float64, requires_grad=True)
    with ops.use_backend("reference"):
        want, = torch.autograd.grad((layer(x)[0] ** 2).sum(), x)
    monkeypatch.setattr(gate, "_STATUS", {})  # as in a fresh process: the next native call runs the smoke call
    y = checkpoint(lambda z: layer(z)[0], x, use_reentrant=False)
    got, = torch.autograd.grad((y ** 2).sum(), x)
    assert ("ssm_scan", "float64") in gate._STATUS and gate._STATUS[("ssm_scan", "float64")][0]
    assert rel_err(got, want) < 1e-10


def test_the_first_native_call_may_come_inside_a_custom_op_body(monkeypatch):
    """Inside a custom op's body the autograd dispatch keys are excluded: the smoke call's gradients were not recorded
    there, it failed, and the kernel stayed off for the rest of the process (compile2: S4's compiled plan, the first
    Cauchy call of a process, ran inside the cached-value op)."""
    from ssmkit.ops.native import gate

    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 20, 3, generator=g, dtype=F64)
    A = 0.9 * torch.exp(1j * torch.rand(3, 4, generator=g, dtype=F64))
    Bb, C = torch.randn(3, 4, generator=g, dtype=C128), torch.randn(3, 4, generator=g, dtype=C128)

    @torch.library.custom_op("ssmkit_test::first_native_call", mutates_args=())
    def first_call(u: torch.Tensor) -> torch.Tensor:
        return ops.ssm_scan(u, A, Bb, C, None, None, backend="native")[0]

    first_call.register_fake(torch.empty_like)
    monkeypatch.setattr(gate, "_STATUS", {})  # as in a fresh process: the next native call runs the smoke call
    got = torch.compile(first_call, backend="aot_eager", fullgraph=True)(u)  # the op's body at run time
    assert gate._STATUS[("ssm_scan", "float64")][0], gate._STATUS
    assert rel_err(got, ssm_scan_reference(u, A, Bb, C)[0]) < 1e-12


def _unchecked_entries():
    """Each kernel's ``*_unchecked`` entry (the one that skips the device checks) with valid CPU arguments."""
    from ssmkit.ops.native.cauchy import sums_unchecked
    from ssmkit.ops.native.conv import conv_unchecked
    from ssmkit.ops.native.diagonal import scan_unchecked as diagonal_unchecked
    from ssmkit.ops.native.mimo import mimo_native_unchecked
    from ssmkit.ops.native.recurrence import recurrence_unchecked
    from ssmkit.ops.native.selective import scan_unchecked as selective_unchecked
    from ssmkit.ops.native.gated_norm import gated_rmsnorm_unchecked
    from ssmkit.ops.native.rglru import rglru_unchecked
    from ssmkit.ops.native.ssd import ssd_unchecked
    from ssmkit.ops.native.zoh import zoh_native_log

    B, L, H, N, C128 = 2, 5, 3, 4, torch.complex128
    u = torch.randn(B, L, H, dtype=F64)
    A = torch.polar(torch.full((H, N), 0.9, dtype=F64), torch.rand(H, N, dtype=F64))
    cB, cC = torch.randn(H, N, dtype=C128), torch.randn(H, N, dtype=C128)
    r = lambda *shape: torch.randn(*shape, dtype=F64)  # noqa: E731
    return {
        "selective_scan": lambda x: selective_unchecked(x, u.abs(), -torch.rand(H, N, dtype=F64), r(B, L, 1, N),
                                                        r(B, L, 1, N), None, None, None, True, None, True, 4),
        "diagonal": lambda x: diagonal_unchecked(x, A, cB, cC, None, None, True, 4),
        "linear_recurrence": lambda x: recurrence_unchecked(torch.full((H,), 0.5, dtype=F64), x, None),
        "causal_conv1d": lambda x: conv_unchecked(x, r(H, 3), None, None, True, None),
        "mimo": lambda x: mimo_native_unchecked(x, torch.full((N,), 0.5 + 0.1j, dtype=C128), r(H, 2 * N),
                                                r(2 * N, H), None, None),
        "cauchy": lambda x: sums_unchecked(x, torch.randn(2, 7, dtype=C128), -1 + torch.randn(2, N, dtype=C128)),
        "zoh": lambda x: zoh_native_log(x[0], x[0], torch.randn(L, H, dtype=C128), r(L)),
        "rglru": lambda x: rglru_unchecked(x, u.sigmoid(), u.sigmoid(), r(H), 8.0),
        "gated_norm": lambda x: gated_rmsnorm_unchecked(x, u, torch.ones(H, dtype=F64), 1, 1e-5, False),
        "ssd": lambda x: ssd_unchecked(x.unsqueeze(-1), u.abs(), -torch.rand(H, dtype=F64), r(B, L, 1, N), r(B, L, 1, N)),
    }, u


UNCHECKED = ["selective_scan", "diagonal", "linear_recurrence", "causal_conv1d", "mimo", "cauchy", "zoh", "ssd", "gated_norm", "rglru"]


@pytest.mark.parametrize("entry", UNCHECKED)
def test_an_unchecked_entry_refuses_a_tensor_off_the_cpu(entry):
    """The ``*_unchecked`` entries skip the public functions' device checks; a tensor on another device (meta here,
    whose data pointer is 0) must raise by name where its pointer is taken, never reach the C code (it crashed the
    process before)."""
    entries, u = _unchecked_entries()
    fn = entries[entry]
    x = torch.randn(3, 2, 4, dtype=torch.complex128) if entry == "cauchy" else u
    fn(x)  # the arguments are valid on the CPU
    with pytest.raises(RuntimeError, match="expected a CPU tensor, got one on meta"):
        fn(x.to("meta"))
