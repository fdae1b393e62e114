"""The cases, contention and crossover suites run end to end at tiny sizes (no timing is asserted)."""

import json

import pytest
import torch

from ssmkit.bench import SUITES
from ssmkit.bench.cases import main as cases_main
from ssmkit.bench.contention import busy_processes, count_ops
from ssmkit.bench.contention import main as contention_main
from ssmkit.bench.crossover import fft_span
from ssmkit.bench.crossover import main as crossover_main
from ssmkit.bench.limits import copy_bandwidth, gemm_flops, lti_bytes, lti_flops
from ssmkit.bench.peers import Case, PeerUnavailable, peer_runner

TINY = ["--batch", "1", "--d-model", "3", "--d-state", "8", "--repeats", "1"]


def test_suites_are_listed():
    assert {"cases", "contention", "crossover"} <= set(SUITES)


def test_case_names_every_dimension():
    case = Case("s4d", 8, 4096, 128, 64, "float32", "forward")
    assert case.name == "s4d-B8-L4096-H128-N64-float32-forward"
    assert case.torch_dtype == torch.float32


def test_bounds_follow_the_documented_model():
    # the LTI op: forward read u, write y (2·B·L·H·4 bytes); forward+backward also u, dy in and du out (5·B·L·H·4);
    # the recurrence's 11 flops per batch row, step, channel and complex mode (S4D at N 64: 32 modes; the other core
    # ops: tests/bench/test_bench_reference.py, tests/probes/test_probe_bench_flops_2026_12_05.py)
    assert lti_bytes("forward", 8, 4096, 128, 64, 4) == 2 * 8 * 4096 * 128 * 4
    assert lti_bytes("forward_backward", 8, 4096, 128, 64, 4) == 5 * 8 * 4096 * 128 * 4
    assert lti_bytes("step", 2, 10, 3, 4, 4) == 10 * 2 * 3 * (8 + 32)
    assert lti_flops("forward", 8, 4096, 128, 32) == 11 * 8 * 4096 * 128 * 32
    assert lti_flops("forward_backward", 1, 1, 1, 1) == 33
    with pytest.raises(ValueError, match="mode"):
        lti_bytes("sideways", 1, 1, 1, 1, 4)


def test_machine_probes_return_positive_rates():
    assert copy_bandwidth(1, repeats=1) > 0
    assert gemm_flops(32, repeats=1) > 0


@pytest.mark.parametrize("env,expected", [({}, "default OpenMP wait policy"),
                                          ({"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"},
                                           "OMP_WAIT_POLICY=PASSIVE, GOMP_SPINCOUNT=10000")])
def test_machine_line_names_the_openmp_wait_settings(monkeypatch, env, expected):
    from ssmkit.bench.core import machine

    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert machine().endswith(f"threads, {expected}")


def test_cases_suite_writes_json_and_plots(tmp_path, capsys):
    out = tmp_path / "out"
    argv = TINY + ["--layers", "s4d", "--length", "8", "16", "--modes", "forward", "forward_backward", "step",
                   "--copy-mb", "1", "--gemm-size", "32", "--out", str(out)]
    assert cases_main(argv) == 0
    result = json.loads((out / "bench.json").read_text())
    assert result["copy_bandwidth_bytes_per_s"] > 0 and result["gemm_flops_per_s"] > 0
    impls = {(r["case"], r["impl"]) for r in result["rows"]}
    for L in (8, 16):
        for mode in ("forward", "forward_backward"):
            name = f"s4d-B1-L{L}-H3-N8-float32-{mode}"
            assert {(name, i) for i in ("ssmkit[auto]", "ssmkit[chunked]", "ssmkit[fft]", "loop")} <= impls
        assert (f"s4d-B1-L{L}-H3-N8-float32-step", "ssmkit[auto]") in impls
    for r in result["rows"]:
        assert r["seconds"] > 0 and r["bytes_fraction"] > 0 and r["flops_fraction"] > 0
    # the official code was not given: a note says so instead of a row
    assert any("official-s4 skipped" in n and "--s4-file" in n for n in result["notes"])
    assert not any(i == "official-s4" for _, i in impls)
    pytest.importorskip("matplotlib")
    assert (out / "time_vs_length.png").stat().st_size > 0 and (out / "bounds.png").stat().st_size > 0
    assert "| s4d-B1-L8-H3-N8-float32-forward | ssmkit[auto] |" in capsys.readouterr().out


def test_loop_peer_computes_the_layer():
    """The plain-loop peer runs the layer's own recurrence: its forward equals the layer's output."""
    import ssmkit.layers as layers

    case = Case("s4d", 2, 12, 3, 8, "float64", "forward")
    run = peer_runner("loop", case)
    run()  # runs without error; the values are checked through the layer below
    torch.manual_seed(0)
    layer = layers.build("s4d", d_model=3, d_state=8).double()
    A_bar, B_bar, C = layer.discrete()
    u = torch.randn(2, 12, 3, dtype=torch.float64)
    x = torch.zeros(2, 3, 4, dtype=torch.complex128)
    ys = []
    for u_t in u.unbind(1):
        x = A_bar * x + B_bar * u_t[..., None]
        ys.append((C[0] * x).sum(-1).real + layer.D * u_t)
    y_loop = torch.stack(ys, 1)
    y_layer, _ = layer(u)
    assert torch.allclose(y_loop, y_layer, rtol=1e-10, atol=1e-12)


def test_peers_that_cannot_run_say_why():
    case = Case("s4d", 1, 8, 2, 4, "float32", "forward")
    with pytest.raises(PeerUnavailable, match="Mamba only"):
        peer_runner("mambapy", case)
    with pytest.raises(PeerUnavailable, match="s4-file"):
        peer_runner("official-s4", case, None)
    with pytest.raises(ValueError, match="peer must be one of"):
        peer_runner("nobody", case)


def test_peer_cast_keeps_complex_parameters_complex():
    """``Module.to(float32)`` drops a complex parameter's imaginary part; the peers' cast keeps it (s5-pytorch)."""
    from ssmkit.bench.peers import _cast

    m = torch.nn.Module()
    m.z = torch.nn.Parameter(torch.tensor([1.0 + 2.0j, -0.5 - 0.25j]))
    m.w = torch.nn.Parameter(torch.tensor([3.0]))
    m.register_buffer("k", torch.tensor([7]))
    _cast(m, torch.float64)
    assert m.z.dtype == torch.complex128 and m.w.dtype == torch.float64 and m.k.dtype == torch.int64
    assert m.z.tolist() == [1.0 + 2.0j, -0.5 - 0.25j]
    _cast(m, torch.float32)
    assert m.z.dtype == torch.complex64 and m.z.imag.tolist() == [2.0, -0.25] and m.w.dtype == torch.float32


def test_a_peer_that_fails_on_a_case_becomes_a_note(monkeypatch):
    import ssmkit.bench.peers as peers

    def broken(case):
        def run():
            raise RuntimeError("expected scalar type Float but found ComplexFloat\nmore lines")
        return run

    monkeypatch.setattr(peers, "_s5_pytorch", broken)
    with pytest.raises(PeerUnavailable, match=r"failed on this case \(RuntimeError: expected scalar type Float but "
                                              r"found ComplexFloat\)"):
        peer_runner("s5-pytorch", Case("s5", 1, 8, 2, 4, "float32", "forward"))


def test_mambapy_peer_runs_when_installed():
    pytest.importorskip("mambapy")
    for mode in ("forward", "forward_backward"):
        peer_runner("mambapy", Case("mamba", 1, 8, 4, 4, "float32", mode))()


def test_count_ops_counts_aten_ops():
    x = torch.ones(3)
    assert count_ops(lambda: (x + 1) * 2) == 2


def test_busy_processes_are_started_and_stopped():
    with busy_processes(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)


def test_contention_suite_reports_slowdowns(tmp_path, capsys):
    path = tmp_path / "contention.json"
    argv = TINY + ["--length", "8", "--modes", "forward", "--busy", "1", "--peers", "loop", "--json", str(path)]
    assert contention_main(argv) == 0
    rows = json.loads(path.read_text())["rows"]
    assert {r["impl"] for r in rows} == {"ssmkit[auto]", "ssmkit[chunked]", "ssmkit[fft]", "loop"}
    for r in rows:
        assert r["aten_ops"] > 0 and r["slowdown"] == pytest.approx(r["loaded_s"] / r["alone_s"])
    assert "slow-down" in capsys.readouterr().out


def test_fft_span_takes_the_longest_winning_run():
    assert fft_span({256: 1.2, 512: 1.1}) is None
    assert fft_span({256: 1.2, 512: 0.9, 1024: 0.8, 2048: 1.3}) == (512, 2048)
    assert fft_span({256: 0.9, 512: 1.1, 1024: 0.8, 2048: 0.7}) == (1024, None)


def test_crossover_suite_prints_the_table_entries(tmp_path, capsys):
    path = tmp_path / "crossover.json"
    argv = ["--batch", "1", "--d-model", "2", "--d-state", "4", "--length", "8", "16", "--repeats", "1",
            "--json", str(path)]
    assert crossover_main(argv) == 0
    result = json.loads(path.read_text())
    assert {r["length"] for r in result["rows"]} == {8, 16}
    assert "FFT_LENGTHS[('cpu', True)]" in capsys.readouterr().out
