"""``auto`` picks the C kernel for complex parameters on the CPU where it builds; otherwise the chunked scan or the FFT
path by (device, return_state, L) from ssmkit.ops.scan.FFT_LENGTHS."""

import torch

import ssmkit.ops.scan as scan
from tests.conftest import DEVICE


def test_auto_follows_the_crossover_table(monkeypatch):
    u = torch.zeros(1, 512, 2, device=DEVICE)
    monkeypatch.setitem(scan.FFT_LENGTHS, (DEVICE.type, True), None)
    assert scan.auto_scan_backend(u, True) == "chunked"
    monkeypatch.setitem(scan.FFT_LENGTHS, (DEVICE.type, True), (256, 1024))
    assert scan.auto_scan_backend(u, True) == "fft"
    assert scan.auto_scan_backend(torch.zeros(1, 1024, 2, device=DEVICE), True) == "chunked"  # hi excluded
    assert scan.auto_scan_backend(torch.zeros(1, 255, 2, device=DEVICE), True) == "chunked"
    assert scan.auto_scan_backend(torch.zeros(1, 256, 2, device=DEVICE), True) == "fft"  # lo included: [lo, hi)
    monkeypatch.setitem(scan.FFT_LENGTHS, (DEVICE.type, False), (256, None))
    assert scan.auto_scan_backend(torch.zeros(1, 1 << 16, 2, device=DEVICE), False) == "fft"


def test_auto_runs_the_path_the_table_names(monkeypatch):
    """With the FFT range covering L (and no C or Triton kernel: "auto" takes the kernels first where they run, the
    Triton one on CUDA), ``auto`` gives the FFT path's result, bit for bit."""
    monkeypatch.setattr(scan, "prefer_native", lambda op, x: False)
    monkeypatch.setattr(scan, "prefer_triton", lambda x, op: False)
    g = torch.Generator().manual_seed(0)
    H, N, L = 3, 4, 40
    A_bar = torch.polar(torch.rand(H, N, generator=g, dtype=torch.float64) * 0.5 + 0.4,
                        torch.rand(H, N, generator=g, dtype=torch.float64)).to(DEVICE)
    B_bar = torch.randn(H, N, generator=g, dtype=torch.complex128).to(DEVICE)
    C = torch.randn(H, N, generator=g, dtype=torch.complex128).to(DEVICE)
    u = torch.randn(2, L, H, generator=g, dtype=torch.float64).to(DEVICE)
    monkeypatch.setitem(scan.FFT_LENGTHS, (DEVICE.type, True), (8, None))
    y_auto, x_auto = scan.ssm_scan(u, A_bar, B_bar, C, backend="auto")
    y_fft, x_fft = scan.ssm_scan(u, A_bar, B_bar, C, backend="fft")
    y_ref, _ = scan.ssm_scan(u, A_bar, B_bar, C, backend="reference")
    assert torch.equal(y_auto, y_fft) and torch.equal(x_auto, x_fft)
    assert (y_auto - y_ref).abs().max() < 1e-10 * y_ref.abs().max()


def test_auto_takes_the_c_kernel_for_complex_parameters_on_the_cpu(monkeypatch):
    from ssmkit.ops.native import native_available

    u = torch.zeros(1, 512, 2, device=DEVICE)
    A = torch.full((2, 3), 0.5 + 0.1j, dtype=torch.complex64, device=DEVICE)
    monkeypatch.setitem(scan.FFT_LENGTHS, (DEVICE.type, True), (256, 1024))
    expected = "native" if DEVICE.type == "cpu" and native_available("ssm_scan", torch.float32) else "fft"
    assert scan.auto_scan_backend(u, True, A) == expected
    assert scan.auto_scan_backend(u, True, A.real) == expected  # real modes: the kernel's real variant
    assert scan.auto_scan_backend(u, True, A.to(torch.complex128)) == "fft"  # not u's precision: the table decides


def test_auto_takes_the_triton_scan_only_when_told(monkeypatch):
    """Where the Triton kernel runs (prefer_triton), ``auto`` still follows the table unless TRITON_SCAN_IN_AUTO: the
    fused scan was slower than the FFT path on an H200; the CUDA table holds the measured FFT range (y only)."""
    assert scan.FFT_LENGTHS[("cuda", False)] == scan.FFT_LENGTHS[("cuda", True)] == (1, 1 << 17)
    taken = []
    monkeypatch.setattr(scan, "prefer_triton", lambda x, op: True)
    monkeypatch.setattr(scan, "prefer_native", lambda op, x: False)
    monkeypatch.setitem(scan._SCAN, "triton", lambda *a, **k: taken.append("triton") or ("y", None))
    monkeypatch.setitem(scan._SCAN, "fft", lambda *a, **k: taken.append("fft") or ("y", None))
    monkeypatch.setitem(scan.FFT_LENGTHS, (DEVICE.type, False), (8, None))
    u = torch.zeros(1, 40, 2, dtype=torch.float64, device=DEVICE)
    A = torch.full((2, 3), 0.5, dtype=torch.float64, device=DEVICE)
    scan.ssm_scan(u, A, A, A, return_state=False, backend="auto")
    monkeypatch.setattr(scan, "TRITON_SCAN_IN_AUTO", True)
    scan.ssm_scan(u, A, A, A, return_state=False, backend="auto")
    assert taken == ["fft", "triton"]
