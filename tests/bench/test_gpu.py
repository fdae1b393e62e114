"""The GPU benchmark runs end to end on the CPU at tiny sizes (triton in its interpreter) and writes its JSON.

No timing is asserted; a backend that cannot run is reported with its error instead of stopping the run.
"""

import importlib.util
import json

import pytest
import torch

from ssmkit.bench.gpu import main
from ssmkit.ops.triton_gate import triton_available


def test_gpu_bench_writes_results(tmp_path, capsys, monkeypatch):
    if not triton_available("cpu"):
        monkeypatch.setenv("TRITON_INTERPRET", "0")  # then triton's row carries the gate's error
    out = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--scan-shapes", "1,3,4,9", "--scan-chunks-per-program", "1", "--ssd-shapes", "1,9,2,2,3",
            "--ssd-tiles", "16,16,2", "--selective-shapes", "1,3,2,9", "--selective-tiles", "4,2,2,1", "--short-conv-shapes", "2,3,9",
            "--repeats", "1", "--copy-bytes", "4096",
            "--gemm-size", "64",
            "--json", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    rows = data["results"]
    assert data["bandwidth_Bps"] > 0
    assert [(r["op"], r["backend"]) for r in rows] == [
        ("scan", "chunked"), ("scan", "fft"), ("scan", "triton"), ("scan", "triton:1"), ("scan", "triton:mm"),
        ("scan", "accelerated_scan"),
        ("ssd", "chunked"), ("ssd", "triton"), ("ssd", "triton:recompute"), ("ssd", "triton:16,16,2"),
        ("ssd", "mamba_ssm"),
        ("selective", "chunked"), ("selective", "triton"), ("selective", "triton:4,2,2,1"), ("selective", "mamba_ssm"),
        ("short_conv", "chunked"), ("short_conv", "causal_conv1d")]
    assert rows[0]["bytes"] == 8 * 1 * 9 * 3 and rows[6]["bytes"] == 4 * 9 * (2 * 2 * 2 + 2 + 2 * 3) + 4 * 2 * 2 * 3
    assert rows[11]["bytes"] == 16 * 9 * 3 + 8 * 9 * 2
    # the FLOP bound: 6 flops per batch row, step, channel (and head channel) and state element
    assert rows[0]["flops"] == 6 * 1 * 9 * 3 * 4 and rows[6]["flops"] == 6 * 1 * 9 * 2 * 2 * 3
    assert rows[11]["flops"] == 6 * 1 * 9 * 3 * 2
    assert rows[15]["bytes"] == 8 * 2 * 9 * 3 and rows[15]["flops"] == 2 * 4 * 2 * 9 * 3  # 2·W flops per output
    rate = rows[0]["flops"] / rows[0]["flop_bound_s"]
    assert rate > 0 and all(r["flops"] / r["flop_bound_s"] == pytest.approx(rate) for r in rows)
    for r in rows:
        if "error" not in r:
            assert r["forward_fraction_of_flop_bound"] == r["flop_bound_s"] / r["forward_s"]
    if importlib.util.find_spec("causal_conv1d") is None:
        assert "causal-conv1d is not importable here" in rows[-1]["error"]  # a CUDA-only peer: its row says why
    if importlib.util.find_spec("mamba_ssm") is None:
        assert "mamba-ssm is not importable here" in rows[14]["error"]
        assert "mamba-ssm's Triton SSD is not importable here" in rows[10]["error"]
    if importlib.util.find_spec("accelerated_scan") is None:
        assert "accelerated-scan is not importable here" in rows[5]["error"]
    for r in rows:
        if r["backend"] in ("mamba_ssm", "accelerated_scan", "causal_conv1d"):
            continue
        if r["backend"].startswith("triton") and not triton_available("cpu"):
            assert "cannot run on cpu" in r["error"]
        else:
            assert r["forward_s"] > 0 and r["forward_backward_s"] > 0 and r["forward_fraction_of_bound"] > 0
            # every backend that ran computed the same y as the op's first (chunked) backend, to float32 rounding
            assert r["diff_vs"] == "chunked" and r["max_rel_diff"] < 1e-5
    assert "| scan | B=1,L=9,H=3,N=4 | triton |" in capsys.readouterr().out


def test_gpu_bench_is_a_suite(capsys):
    from ssmkit.cli import main as cli

    assert cli(["bench", "gpu", "--help"]) == 0
    assert "--scan-shapes" in capsys.readouterr().out


STAND_IN = """
from ssmkit.ops.ssd import ssd_reference

CALLS = []


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None):
    CALLS.append(chunk_size)
    return ssd_reference(x, dt, A, B, C)[0]
"""


def stand_in_mamba(root):
    """A checkout-shaped folder whose package __init__ fails as mamba-ssm's does without its CUDA extension, and whose
    ssd_combined is a stand-in (ssmkit's reference): the peer's loader must never run the __init__."""
    pkg = root / "mamba_ssm"
    (pkg / "ops" / "triton").mkdir(parents=True)
    (pkg / "__init__.py").write_text("import selective_scan_cuda  # the compiled extension\n")
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "ops" / "triton" / "__init__.py").write_text("")
    (pkg / "ops" / "triton" / "ssd_combined.py").write_text(STAND_IN)
    return pkg


def test_gpu_bench_times_mamba_ssm_triton_ssd_from_a_checkout(tmp_path, monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        monkeypatch.delitem(sys.modules, name)
    stand_in_mamba(tmp_path / "checkout")
    out = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--scan-shapes", "--ssd-shapes", "1,9,2,2,3", "--selective-shapes", "--short-conv-shapes",
            "--backends",
            "chunked", "--repeats", "2", "--copy-bytes", "4096", "--gemm-size", "32",
            "--mamba-ssm-src", str(tmp_path / "checkout"),
            "--json", str(out)]
    try:
        assert main(argv) == 0
        calls = sys.modules["mamba_ssm.ops.triton.ssd_combined"].CALLS
    finally:
        for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
            del sys.modules[name]
    rows = json.loads(out.read_text())["results"]
    assert [r["backend"] for r in rows] == ["chunked", "mamba_ssm"]
    assert calls and set(calls) == {256}  # as mamba-ssm's Mamba2 module calls it; warm-up + 2 repeats, 2 modes each
    assert len(calls) == 2 * 3 + 1  # and once for its output
    chunked, peer = rows
    assert chunked["diff_vs"] == peer["diff_vs"] == "chunked" and chunked["max_rel_diff"] == 0.0
    assert 0 < peer["max_rel_diff"] < 1e-5  # the stand-in is ssmkit's float32 loop: the chunked path's rounding apart
    assert chunked["forward_vs_mamba_ssm"] == chunked["forward_s"] / peer["forward_s"]
    assert chunked["forward_backward_vs_mamba_ssm"] == chunked["forward_backward_s"] / peer["forward_backward_s"]
    assert peer["forward_vs_mamba_ssm"] == 1.0


def test_gpu_bench_mamba_ssm_loader_says_why(tmp_path, monkeypatch):
    import sys

    import pytest

    from ssmkit.bench.gpu import _mamba_ssm_ssd

    for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match="holds no mamba_ssm/ops/triton/ssd_combined.py"):
        _mamba_ssm_ssd(str(tmp_path))
    assert "mamba_ssm" not in sys.modules
    pkg = stand_in_mamba(tmp_path / "checkout")
    try:  # the package folder itself is accepted too
        assert _mamba_ssm_ssd(str(pkg)).__module__ == "mamba_ssm.ops.triton.ssd_combined"
    finally:
        for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
            del sys.modules[name]


def test_accelerated_scan_row_composes_the_layer(monkeypatch):
    # accelerated-scan's complex scan x_t = a_t x_{t-1} + b_t over (B, C, T), here a float64 loop standing in for its
    # Triton kernel: the bench's composition (gates Ā over time, inputs B̄ u, y = Re(Σ C x) + D u) must be the layer
    import sys
    import types

    import torch

    from ssmkit.bench.gpu import _accelerated_scan_layer
    from ssmkit.ops.scan import ssm_scan_reference

    def scan(forget, inputs):
        assert forget.is_complex() and forget.shape == inputs.shape and forget.is_contiguous() and inputs.is_contiguous()
        x, out = torch.zeros_like(inputs[..., 0]), []
        for t in range(inputs.shape[-1]):
            x = forget[..., t] * x + inputs[..., t]
            out.append(x)
        return torch.stack(out, -1)

    package = types.ModuleType("accelerated_scan")
    complex_module = types.ModuleType("accelerated_scan.complex")
    complex_module.scan = scan
    monkeypatch.setitem(sys.modules, "accelerated_scan", package)
    monkeypatch.setitem(sys.modules, "accelerated_scan.complex", complex_module)
    g = torch.Generator().manual_seed(0)
    Bsz, L, H, M = 2, 11, 3, 4
    A = torch.polar(torch.rand(H, M, generator=g, dtype=torch.float64) * 0.3 + 0.6,
                    torch.randn(H, M, generator=g, dtype=torch.float64))
    B, C = (torch.randn(H, M, dtype=torch.complex128, generator=g) for _ in range(2))
    D = torch.randn(H, generator=g, dtype=torch.float64)
    u = torch.randn(Bsz, L, H, generator=g, dtype=torch.float64)
    y = _accelerated_scan_layer(u, A, B, C, D)
    y_ref, _ = ssm_scan_reference(u, A, B, C, None, D)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)


def test_gemm_flop_rate_keeps_the_tf32_setting():
    from ssmkit.bench.gpu import gemm_flop_rate

    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        for setting in (True, False):
            torch.backends.cuda.matmul.allow_tf32 = setting
            assert gemm_flop_rate(torch.device("cpu"), size=32, repeats=2) > 0
            assert torch.backends.cuda.matmul.allow_tf32 is setting
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


SELECTIVE_INTERFACE = """
try:
    import selective_scan_cuda
except ImportError:
    selective_scan_cuda = None


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    out, x, *rest = selective_scan_cuda.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return rest[0] if z is not None else out
"""

_STAND_IN_OPS = []  # the torch.library stand-in for the built library's operators, defined once per process


def _define_stand_in_ops():
    """torch.ops.mamba_ssm_cuda.fwd as the library built by scripts/cuda_peers/build.sh registers it (same schema:
    mamba-ssm's time-last layout, [out, x, out_z]), computed by ssmkit's reference selective scan."""
    if _STAND_IN_OPS:
        return
    from ssmkit.ops.selective import selective_scan

    def fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        t = lambda x: x.transpose(1, 2)  # noqa: E731  (B, H, L) <-> (B, L, H)
        y = selective_scan(t(u), t(delta), A, t(B), t(C), D, t(z), delta_bias, delta_softplus, None, False,
                           backend="reference")[0]
        return [t(y), u.new_zeros(1), t(y)]

    lib = torch.library.Library("mamba_ssm_cuda", "DEF")
    lib.define("fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
               "bool delta_softplus) -> Tensor[]")
    lib.define("bwd(Tensor u) -> Tensor[]")
    lib.impl("fwd", fwd, "CompositeImplicitAutograd")
    _STAND_IN_OPS.append(lib)


def test_gpu_bench_times_mamba_ssm_cuda_selective_scan_from_a_built_library(tmp_path, monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "selective_scan_cuda", raising=False)
    pkg = stand_in_mamba(tmp_path / "checkout")
    (pkg / "ops" / "selective_scan_interface.py").write_text(SELECTIVE_INTERFACE)
    lib = tmp_path / "mamba_ssm_cuda.so"
    lib.write_bytes(b"built by scripts/cuda_peers/build.sh")
    loaded = []
    monkeypatch.setattr(torch.ops, "load_library", lambda path: loaded.append(path) or _define_stand_in_ops())
    out = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--scan-shapes", "--ssd-shapes", "--selective-shapes", "2,3,2,7", "--short-conv-shapes",
            "--backends",
            "chunked", "--repeats", "1", "--copy-bytes", "4096", "--gemm-size", "32",
            "--mamba-ssm-src", str(tmp_path / "checkout"), "--mamba-ssm-cuda", str(lib), "--json", str(out)]
    try:
        assert main(argv) == 0
        module = sys.modules["selective_scan_cuda"]
        assert module.fwd is torch.ops.mamba_ssm_cuda.fwd and module.bwd is torch.ops.mamba_ssm_cuda.bwd
        assert module.__file__ == str(lib)
    finally:
        for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
            del sys.modules[name]
    assert loaded == [str(lib)]  # loaded once, though the case calls the peer for every timing
    chunked, peer = json.loads(out.read_text())["results"]
    assert (chunked["backend"], peer["backend"]) == ("chunked", "mamba_ssm") and "error" not in peer
    assert peer["diff_vs"] == "chunked" and 0 < peer["max_rel_diff"] < 1e-5  # ssmkit's loop through the peer's path
    assert chunked["forward_vs_mamba_ssm"] == chunked["forward_s"] / peer["forward_s"]


def test_gpu_bench_mamba_ssm_cuda_loader_says_why(tmp_path, monkeypatch):
    import sys

    from ssmkit.bench.gpu import _mamba_ssm_selective

    for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "selective_scan_cuda", raising=False)
    pkg = stand_in_mamba(tmp_path / "checkout")
    with pytest.raises(ImportError, match="holds no mamba_ssm/ops/selective_scan_interface.py"):
        _mamba_ssm_selective(str(tmp_path / "checkout"))
    (pkg / "ops" / "selective_scan_interface.py").write_text(SELECTIVE_INTERFACE)
    try:
        with pytest.raises(ImportError, match=r"no\.so does not exist"):
            _mamba_ssm_selective(str(pkg), str(tmp_path / "no.so"))
        with pytest.raises(ImportError, match="its CUDA extension selective_scan_cuda is not importable .build it with "
                                              "scripts/cuda_peers/build.sh and pass --mamba-ssm-cuda"):
            _mamba_ssm_selective(str(pkg))  # the interface imports, without its extension
    finally:
        for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
            del sys.modules[name]


CAUSAL_CONV1D_INTERFACE = """
import torch

import causal_conv1d_cuda  # the compiled extension: here the operators of the built library


class _Fn(torch.autograd.Function):  # the shape of causal-conv1d's CausalConv1dFn: outputs written by the kernels
    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        out = torch.empty_like(x)
        causal_conv1d_cuda.causal_conv1d_fwd(x, weight, bias, None, None, out, None, silu)
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias = ctx.saved_tensors
        dx, dweight, dbias = torch.empty_like(x), torch.zeros_like(weight), torch.zeros_like(bias)
        causal_conv1d_cuda.causal_conv1d_bwd(x, weight, bias, dout.contiguous(), None, None, None, dx, dweight, dbias,
                                             None, ctx.silu)
        return dx, dweight, dbias, None


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    return _Fn.apply(x, weight, bias, activation in ("silu", "swish"))
"""

_CONV_STAND_IN_OPS = []  # defined once per process
CONV_CALLS = []


def ops_cpp_schemas(path):
    """The operator schemas of a peer's *_ops.cpp: each m.def's adjacent string literals, joined."""
    import re

    text = path.read_text()
    return ["".join(re.findall(r'"([^"]*)"', m.group(1))) for m in re.finditer(r'm\.def\(((?:\s*"[^"]*")+)\s*,', text)]


def _define_conv_stand_in_ops():
    """torch.ops.causal_conv1d_cuda.* with the schemas of scripts/cuda_peers/causal_conv1d_ops.cpp, computed by ssmkit's
    reference short convolution on causal-conv1d's (B, H, L) layout and written into the output tensors."""
    if _CONV_STAND_IN_OPS:
        return
    import pathlib

    from ssmkit.ops.conv import causal_conv1d

    def conv(x, weight, bias, silu):  # (B, H, L) -> (B, H, L)
        y = causal_conv1d(x.transpose(1, 2), weight, bias, None, False, activation="silu" if silu else None,
                          backend="reference")[0]
        return y.transpose(1, 2)

    def fwd(x, weight, bias, seq_idx, initial_states, out, final_states_out, silu_activation):
        CONV_CALLS.append(("fwd", x.shape, x.is_contiguous()))
        out.copy_(conv(x, weight, bias, silu_activation))

    def bwd(x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx, dweight, dbias, dinitial_states,
            silu_activation):  # by hand: a kernel below autograd (causal-conv1d's custom ops) records no graph
        W = weight.shape[1]
        padded = torch.nn.functional.pad(x, (W - 1, 0))  # (B, H, W-1+L)
        a = torch.nn.functional.conv1d(padded, weight[:, None], bias, groups=x.shape[1])  # (B, H, L)
        s = torch.sigmoid(a)
        da = dout * s * (1 + a * (1 - s)) if silu_activation else dout  # d silu(a) / da = s (1 + a (1 - s))
        dx.copy_(torch.nn.functional.conv_transpose1d(da, weight[:, None], groups=x.shape[1])[..., W - 1:])
        dweight.copy_(torch.stack([(da * padded[..., k:k + x.shape[2]]).sum((0, 2)) for k in range(W)], dim=1))
        dbias.copy_(da.sum((0, 2)))

    schemas = ops_cpp_schemas(pathlib.Path(__file__).resolve().parents[2] / "scripts" / "cuda_peers"
                              / "causal_conv1d_ops.cpp")
    assert [s.split("(")[0] for s in schemas] == ["causal_conv1d_fwd", "causal_conv1d_bwd", "causal_conv1d_update"]
    lib = torch.library.Library("causal_conv1d_cuda", "DEF")
    for schema in schemas:
        lib.define(schema)
    lib.impl("causal_conv1d_fwd", fwd, "CompositeExplicitAutograd")
    lib.impl("causal_conv1d_bwd", bwd, "CompositeExplicitAutograd")
    _CONV_STAND_IN_OPS.append(lib)


def stand_in_causal_conv1d(root):
    """A checkout-shaped folder whose package __init__ fails as causal-conv1d's does without its CUDA extension."""
    pkg = root / "causal_conv1d"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("import causal_conv1d_not_built  # the compiled extension\n")
    (pkg / "causal_conv1d_interface.py").write_text(CAUSAL_CONV1D_INTERFACE)
    return pkg


def _drop(monkeypatch, package):
    import sys

    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)


def test_gpu_bench_times_causal_conv1d_from_a_built_library(tmp_path, monkeypatch):
    import sys

    _drop(monkeypatch, "causal_conv1d")
    monkeypatch.delitem(sys.modules, "causal_conv1d_cuda", raising=False)
    stand_in_causal_conv1d(tmp_path / "checkout")
    lib = tmp_path / "causal_conv1d_cuda.so"
    lib.write_bytes(b"built by scripts/cuda_peers/build.sh")
    loaded = []
    monkeypatch.setattr(torch.ops, "load_library", lambda path: loaded.append(path) or _define_conv_stand_in_ops())
    CONV_CALLS.clear()
    out = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--scan-shapes", "--ssd-shapes", "--selective-shapes", "--short-conv-shapes", "2,3,9",
            "--backends", "chunked", "fft", "triton", "--repeats", "1", "--copy-bytes", "4096", "--gemm-size", "32",
            "--causal-conv1d-src", str(tmp_path / "checkout"), "--causal-conv1d-cuda", str(lib), "--json", str(out)]
    try:
        assert main(argv) == 0
        extension = sys.modules["causal_conv1d_cuda"]
        for name in ("causal_conv1d_fwd", "causal_conv1d_bwd", "causal_conv1d_update"):
            assert getattr(extension, name) is getattr(torch.ops.causal_conv1d_cuda, name)
    finally:
        for name in [m for m in sys.modules if m == "causal_conv1d" or m.startswith("causal_conv1d.")]:
            del sys.modules[name]
    assert loaded == [str(lib)]
    # the peer's own layout, (B, H, L) contiguous: made once, outside the timing
    assert CONV_CALLS and set(CONV_CALLS) == {("fwd", (2, 3, 9), True)}
    rows = json.loads(out.read_text())["results"]
    assert [r["backend"] for r in rows] == ["chunked", "causal_conv1d"]  # no FFT or Triton short convolution
    chunked, peer = rows
    assert "error" not in peer and peer["diff_vs"] == "chunked" and peer["max_rel_diff"] < 1e-6
    assert peer["W"] == 4 and peer["bytes"] == 8 * 2 * 9 * 3 and peer["flops"] == 2 * 4 * 2 * 9 * 3
    assert chunked["forward_vs_causal_conv1d"] == chunked["forward_s"] / peer["forward_s"]


def test_gpu_bench_causal_conv1d_loader_says_why(tmp_path, monkeypatch):
    import sys

    from ssmkit.bench.gpu import _causal_conv1d

    _drop(monkeypatch, "causal_conv1d")
    monkeypatch.delitem(sys.modules, "causal_conv1d_cuda", raising=False)
    with pytest.raises(ImportError, match=r"^causal-conv1d is not importable here \(ImportError: .* holds no "
                                          r"causal_conv1d/causal_conv1d_interface.py\); pip install causal-conv1d$"):
        _causal_conv1d(str(tmp_path))
    pkg = stand_in_causal_conv1d(tmp_path / "checkout")
    try:
        with pytest.raises(ImportError, match=r"no\.so does not exist"):
            _causal_conv1d(str(pkg), str(tmp_path / "no.so"))
        with pytest.raises(ImportError, match="No module named 'causal_conv1d_cuda'"):
            _causal_conv1d(str(pkg))  # the checkout without its built extension
    finally:
        for name in [m for m in sys.modules if m == "causal_conv1d" or m.startswith("causal_conv1d.")]:
            del sys.modules[name]
