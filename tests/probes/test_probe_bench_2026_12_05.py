"""Probe of 2026-12-05: ``ssmkit bench`` read as a user reads it -- the printed table, ``bench.json`` / ``--json`` and
the plotted data must say the same numbers, and every derived column must be what the shapes give by hand: the
bytes-moved and FLOP bounds of limits.py's and gpu.py's docstrings (REFERENCE.md §6), the achieved fraction = bound
time / measured time, the ratios the right way round. Tiny shapes on the CPU, one round; no timing is asserted.

Findings (fixed):

1. *A case a layer rejects ended the run after the cases before it were timed, and nothing was written.*
   ``ssmkit bench cases --layers s4d s5 --d-state 8`` timed every s4d case, then S5's constructor raised ("d_state
   must be a positive multiple of 16") and the run ended without ``bench.json``; ``bench core`` likewise (s4d timed,
   then s5), and ``bench step --d-model 64 40`` timed every layer at 64, then Mamba-2 refused 40 (its heads must
   divide 2·d_model). ``cases``, ``contention``, ``core`` and ``step`` now build every layer of the run first
   (``ssmkit.bench.core.unbuildable``): a usage error naming the case or layer and shape, before any timing.
2. *``--out`` naming a file* was a ``FileExistsError`` traceback; now a usage error saying a directory is expected.
3. *A rerun into an existing ``--out`` that cannot plot* (no matplotlib) left the previous run's
   ``time_vs_length.png`` and ``bounds.png`` beside the new ``bench.json``, plotting other numbers; they are removed
   and the closing line says so.
4. *S4's ``ssmkit[auto]`` line in ``time_vs_length.png`` was normalised by L* and labelled "/ L" although it runs the
   FFT path (S4's only fast backend; the docstring promises time / (L log2 L) for the FFT paths); likewise hyena,
   liquid_s4, sgconv. And a ``step`` row of the official code was normalised by L log2 L (it is a recurrence).
   ``ssmkit.bench.cases.fft_path`` decides it per row.
5. *A malformed ``ssmkit bench gpu`` shape* (``--scan-shapes 1,2,3``) failed with "not enough values to unpack
   (expected 4, got 3)", naming neither the option nor the form; zero or an odd d_state (d_state/2 complex modes)
   went through. ``ssmkit.bench.gpu.parse_shape`` names the option, the form and the value.
6. *``bench gpu --json`` did not record the FLOP rate* that every row's ``flop_bound_s`` was divided by (only the
   header's rounded "0.1 TFLOP/s"); it is ``gemm_flops_per_s`` now. ``bench crossover --json`` did not record the
   device type its ``fft_lengths`` entries are keyed by; it is ``device`` now.
7. ``ssmkit bench gpu --help`` described the suite with a sentence cut at its first line ("... under every
   backend,"). The peers' notes of ``cases``/``contention`` are merged over the cases ("official-s4 skipped: failed on
   this case (...)" named no case); ``bench.json`` now also has ``notes_by_case``.

8. *A peer that could not be set up ended the run.* ``--s4-file`` naming a moved file, or an official file that
   fails to import, raised FileNotFoundError / ImportError out of ``cases``/``contention`` (with einops installed);
   so did any peer's constructor refusing a shape: ``peer_runner`` caught only the first call's errors. Both are
   notes now ("the official file ... does not load (...)", "failed on this case (...)").
9. *A failure with an empty message ended the run it was to be reported in.* A bare ``assert`` (mamba-ssm's Triton
   wrappers check shapes so) raises ``AssertionError()``; the handlers' ``str(e).splitlines()[0]`` raised IndexError,
   so one failing peer or backend ended ``bench gpu`` / ``cases``. ``ssmkit.bench.peers.error_line`` gives the type
   alone then.

Reported, then changed by the lead (tests/bench updated): the forward+backward bytes bound 4·B·L·H·s counted u
once, but the backward must read u again (dy exists only after the forward; REFERENCE §6(a)), so 5·B·L·H·s; ``bench
gpu``'s columns "forward / bound" printed bound / forward (now labelled so); percentages printed with one decimal
showed "0.0 %" for fractions below 5e-4 (now three significant digits).

Checked and right (guards below): every bound and fraction in ``bench.json`` against the shapes (float32 and float64;
forward, forward+backward, step; the gpu suite's scan, SSD, selective scan and short convolution), each table cell
against the JSON at its printed precision, the ratio columns (``x ssmkit[auto]`` = time / auto's time, gpu's "x
peer's time", crossover's fft / chunked, contention's loaded / alone, step's tokens/s = B / time), the plotted lines
and bars against the rows, absent peers as notes or error rows naming the package, an interrupted write leaving the
previous ``bench.json`` whole.
"""

from __future__ import annotations

import json
import math
import statistics
import sys

import pytest
import torch

from ssmkit.bench import cases, contention, core, crossover, gpu, step
from ssmkit.bench.crossover import fft_span


def _table(printed: str) -> tuple[list[str], list[list[str]]]:
    """The first Markdown table in ``printed``: its header cells and its rows' cells."""
    lines = [line for line in printed.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return cells[0], cells[1:]


def _pct(x: float) -> str:
    return f"{100 * x:.3g} %"


TINY_CASES = ["--batch", "1", "--length", "8", "16", "--d-model", "3", "--d-state", "8", "--repeats", "1",
              "--copy-mb", "1", "--gemm-size", "32"]


def test_cases_table_json_and_plots_say_the_same_and_the_bounds_follow_the_shapes(monkeypatch, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    figures = []
    monkeypatch.setattr(cases, "save_figure", lambda fig, path: figures.append((fig, str(path))))
    out = tmp_path / "out"
    argv = TINY_CASES + ["--layers", "s4d", "s4", "--dtype", "float32", "float64", "--modes", "forward",
                         "forward_backward", "step", "--peers", "loop", "official-s4", "--out", str(out)]
    assert cases.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "bench.json").read_text())
    bw, rate = result["copy_bandwidth_bytes_per_s"], result["gemm_flops_per_s"]
    rows = result["rows"]
    auto = {r["case"]: r["seconds"] for r in rows if r["impl"] == "ssmkit[auto]"}
    head, table = _table(printed)
    assert head == ["case", "implementation", "ms", "x ssmkit[auto]", "of bytes bound", "of FLOP bound"]
    assert len(table) == len(rows) == 60  # 2 L x 2 dtypes x (s4d: 4 + 4 + 2 rows, s4: 2 + 2 + 1 rows)
    for r, cells in zip(rows, table):
        B, L, H, N = r["batch"], r["length"], r["d_model"], r["d_state"]
        s = {"float32": 4, "float64": 8}[r["dtype"]]
        by_hand = {"forward": 2 * B * L * H * s,  # u read, y written
                   "forward_backward": 5 * B * L * H * s,  # u in, y out; u again, dy in, du out (the documented model)
                   "step": L * B * H * (2 * s + 2 * N * s)}  # per token: u in, y out, N reals of state read+written
        # the LTI op's count (bench FLOP probe of 2026-12-05): 11 flops per complex mode, N/2 modes, step and channel
        flops = 11 * B * L * H * (N // 2) * (3 if r["mode"] == "forward_backward" else 1)
        assert (r["bound_bytes"], r["bound_flops"]) == (by_hand[r["mode"]], flops)
        assert r["seconds"] == statistics.median(r["seconds_all"]) and len(r["seconds_all"]) == 1
        assert r["bytes_fraction"] == pytest.approx(by_hand[r["mode"]] / bw / r["seconds"], rel=1e-12)
        assert r["flops_fraction"] == pytest.approx(flops / rate / r["seconds"], rel=1e-12)
        assert cells == [r["case"], r["impl"], f"{1e3 * r['seconds']:.2f}", f"{r['seconds'] / auto[r['case']]:.2f}",
                         _pct(r["bytes_fraction"]), _pct(r["flops_fraction"])]
    # every peer asked for is a row of a case or a note of that case, never silently missing
    for name in {r["case"] for r in rows}:
        impls = {r["impl"] for r in rows if r["case"] == name}
        for peer in ("loop", "official-s4"):
            assert (peer in impls) != any(n.startswith(f"{peer} skipped") for n in result["notes_by_case"][name])
    assert any("--s4-file" in n for n in result["notes"])
    # the plots: one line per (layer, B, H, N, dtype, mode, impl), x = L, y = ms and ms per expected complexity
    (fig_t, path_t), (fig_b, path_b) = figures
    assert (path_t, path_b) == (str(out / "time_vs_length.png"), str(out / "bounds.png"))
    ax_t, ax_n = fig_t.axes
    for line_t, line_n in zip(ax_t.lines, ax_n.lines):
        layer, mode, impl = line_t.get_label().split(" (")[0].split(" ")
        dtype = line_t.get_label().split(" ")[-1].rstrip(")")
        rs = sorted((r for r in rows if (r["layer"], r["mode"], r["impl"], r["dtype"]) == (layer, mode, impl, dtype)),
                    key=lambda r: r["length"])
        assert list(line_t.get_xdata()) == [8, 16] == [r["length"] for r in rs]
        assert list(line_t.get_ydata()) == pytest.approx([1e3 * r["seconds"] for r in rs], rel=1e-12)
        # S4's auto is its FFT path (its only fast backend): time / (L log2 L); steps are recurrences: time / L
        fft = mode != "step" and (impl == "ssmkit[fft]" or (layer, impl) == ("s4", "ssmkit[auto]"))
        per = [r["length"] * (math.log2(r["length"]) if fft else 1) for r in rs]
        assert list(line_n.get_ydata()) == pytest.approx([1e9 * r["seconds"] / p for r, p in zip(rs, per)], rel=1e-12)
        assert line_n.get_label().endswith(" / L log2 L" if fft else " / L")
    assert len(ax_t.lines) == len(ax_n.lines) == 30  # one per implementation, mode and dtype; x = the two L
    (ax,) = fig_b.axes
    widths = [p.get_width() for p in ax.patches]
    assert widths == pytest.approx([r["bytes_fraction"] for r in rows] + [r["flops_fraction"] for r in rows])


def test_a_case_a_layer_rejects_is_a_usage_error_before_anything_is_timed(monkeypatch, tmp_path, capsys):
    def probe(*args):
        raise AssertionError("timed before the cases were checked")

    monkeypatch.setattr(cases, "copy_bandwidth", probe)
    monkeypatch.setattr(contention, "measure", probe)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:  # S5's HiPPO blocks need d_state % 16 == 0
        cases.main(TINY_CASES + ["--layers", "s4d", "s5", "--modes", "forward", "--out", str(out)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "case s5-B1-L8-H3-N8-float32-forward: d_state must be" in err and not out.exists()
    with pytest.raises(SystemExit) as stop:
        contention.main(["--layers", "s4d", "s5", "--batch", "1", "--length", "8", "--d-model", "3", "--d-state", "8"])
    assert stop.value.code == 2 and "case s5-B1-L8-H3-N8-float32-forward" in capsys.readouterr().err
    # core timed s4d, then failed on s5; step timed every layer at d_model 64, then failed on mamba2 at 40
    monkeypatch.setattr(core, "measure_layer", probe)
    monkeypatch.setattr(step, "measure_shape", probe)
    with pytest.raises(SystemExit) as stop:
        core.main(["--layers", "s4d", "s5", "--batch", "1", "--d-model", "3", "--d-state", "8", "--length", "8"])
    assert stop.value.code == 2
    assert "layer s5 at d_model 3, d_state 8, length 8: d_state must be" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        step.main(["--layers", "s4d", "mamba2", "--d-model", "64", "40", "--d-state", "8"])
    assert stop.value.code == 2
    assert "layer mamba2 at d_model 40, d_state 8: headdim must divide" in capsys.readouterr().err


def test_out_naming_a_file_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(SystemExit) as stop:
        cases.main(TINY_CASES + ["--layers", "s4d", "--out", str(tmp_path / "f")])
    assert stop.value.code == 2 and "--out must be a directory" in capsys.readouterr().err
    assert (tmp_path / "f").read_text() == "mine"


def _stub_limits_and_cases(monkeypatch, extra=None):
    monkeypatch.setattr(cases, "copy_bandwidth", lambda mb: 1e9)
    monkeypatch.setattr(cases, "gemm_flops", lambda size: 1e10)

    def measure_case(case, *args):
        row = {"case": case.name, **case.__dict__, "impl": "ssmkit[auto]", "seconds": 1.0, "bytes_fraction": 0.5,
               "flops_fraction": 0.25}
        return [row] + ([{**row, "impl": "x", "odd": extra}] if extra is not None else []), []

    monkeypatch.setattr(cases, "measure_case", measure_case)


def test_a_rerun_that_cannot_plot_removes_the_earlier_plots(monkeypatch, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("time_vs_length.png", "bounds.png"):
        (out / name).write_bytes(b"an earlier run's plot")
    (out / "other.txt").write_text("kept")
    _stub_limits_and_cases(monkeypatch)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cases.main(TINY_CASES + ["--layers", "s4d", "--modes", "forward", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "other.txt"]
    assert capsys.readouterr().out.rstrip().endswith(
        "(no matplotlib: no plots); removed the previous run's time_vs_length.png, bounds.png")


def test_an_interrupted_write_leaves_the_previous_bench_json_whole(monkeypatch, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "bench.json").write_text('{"previous": true}')
    _stub_limits_and_cases(monkeypatch, extra=object())  # json.dump fails half-way through the rows
    monkeypatch.setattr(cases, "plot", lambda rows, out: [])
    with pytest.raises(TypeError, match="not JSON serializable"):
        cases.main(TINY_CASES + ["--layers", "s4d", "--modes", "forward", "--out", str(out)])
    assert json.loads((out / "bench.json").read_text()) == {"previous": True}
    assert [p.name for p in out.iterdir()] == ["bench.json"]  # no temporary left behind


GPU_TINY = ["--device", "cpu", "--scan-shapes", "1,3,4,8", "--scan-chunks-per-program", "1", "--ssd-shapes",
            "1,8,2,3,4", "--ssd-tiles", "--selective-shapes", "2,3,2,8", "--selective-tiles", "--short-conv-shapes",
            "1,3,8", "--backends", "chunked", "fft", "--repeats", "1", "--copy-bytes", "65536", "--gemm-size", "32"]


def test_gpu_rows_follow_the_shapes_and_the_table_the_json(tmp_path, capsys, monkeypatch):
    for peer in ("accelerated_scan", "mamba_ssm", "causal_conv1d"):
        monkeypatch.setitem(sys.modules, peer, None)  # absent: each is an error row naming it
    path = tmp_path / "gpu.json"
    assert gpu.main(GPU_TINY + ["--json", str(path)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(path.read_text())
    bw, rate = data["bandwidth_Bps"], data["gemm_flops_per_s"]
    assert f"float32 GEMM (TF32 off) {rate / 1e12:.1f} TFLOP/s" in data["header"]
    _, table = _table(printed)
    rows = data["results"]
    assert [(r["op"], r["backend"]) for r in rows] == [
        ("scan", "chunked"), ("scan", "fft"), ("scan", "accelerated_scan"), ("ssd", "chunked"), ("ssd", "mamba_ssm"),
        ("selective", "chunked"), ("selective", "mamba_ssm"), ("short_conv", "chunked"),
        ("short_conv", "causal_conv1d")]
    by_hand = {  # bytes (float32), flops
        "scan": (4 * 1 * 8 * 3 * 2, 6 * 1 * 8 * 3 * 4),  # u read, y written; 6·B·L·H·N
        # x and y (H·P each), Δ (H), B and C (N each); 6·B·L·H·P·N
        "ssd": (4 * 1 * 8 * (2 * 2 * 3 + 2 + 2 * 4) + 4 * 1 * 2 * 3 * 4, 6 * 1 * 8 * 2 * 3 * 4),  # + the final state
        "selective": (4 * 2 * 8 * 3 * 4 + 4 * 2 * 8 * 2 * 2, 6 * 2 * 8 * 3 * 2),  # u, δ, z, y (H); B, C (N)
        "short_conv": (4 * 1 * 8 * 3 * 2, 2 * 4 * 1 * 8 * 3),  # x read, y written; 2·W per output
    }
    for r, cells in zip(rows, table):
        n_bytes, flops = by_hand[r["op"]]
        assert (r["bytes"], r["flops"]) == (n_bytes, flops)
        assert r["bound_s"] == pytest.approx(n_bytes / bw, rel=1e-12)
        assert r["flop_bound_s"] == pytest.approx(flops / rate, rel=1e-12)
        assert cells[:3] == [r["op"], ",".join(f"{k}={r[k]}" for k in ("B", "L", "H", "P", "N", "W") if k in r),
                             r["backend"]]
        if "error" in r:  # an absent peer: named, with how to get it, not a crash or a missing row
            assert "not importable here" in r["error"] and "pip install" in r["error"]
            assert cells[3] == r["error"].strip()
            continue
        assert r["forward_fraction_of_bound"] == pytest.approx(r["bound_s"] / r["forward_s"], rel=1e-12)
        assert r["forward_fraction_of_flop_bound"] == pytest.approx(r["flop_bound_s"] / r["forward_s"], rel=1e-12)
        assert cells[3:9] == [f"{1e3 * r['forward_s']:.3f}", f"{1e3 * r['forward_backward_s']:.3f}",
                              f"{1e3 * r['bound_s']:.4f}", _pct(r["forward_fraction_of_bound"]),
                              f"{1e3 * r['flop_bound_s']:.4f}", _pct(r["forward_fraction_of_flop_bound"])]
        assert r["max_rel_diff"] < 1e-5


@pytest.mark.parametrize("option,shape,expected", [
    ("--scan-shapes", "1,2,3", "B,H,d_state,L (4 positive integers); got '1,2,3'"),
    ("--scan-shapes", "1,2,0,8", "B,H,d_state,L (4 positive integers)"),
    ("--scan-shapes", "1,2,3,8", "d_state must be even"),
    ("--ssd-shapes", "1,8,2,x,4", "B,L,H,P,N (5 positive integers)"),
    ("--selective-shapes", "2,3,-2,8", "B,d_inner,N,L (4 positive integers)"),
    ("--short-conv-shapes", "1,3,8,4", "B,d_inner,L (3 positive integers)"),
])
def test_gpu_a_malformed_shape_names_its_option_and_form(monkeypatch, option, shape, expected):
    monkeypatch.setattr(gpu, "copy_bandwidth", lambda device, n: 1e9)
    monkeypatch.setattr(gpu, "gemm_flop_rate", lambda device, n: 1e12)
    argv = ["--device", "cpu", "--scan-shapes", "--ssd-shapes", "--selective-shapes", "--short-conv-shapes",
            option, shape]
    with pytest.raises(ValueError, match=f"^{option}: ") as e:
        gpu.main(argv)
    assert expected in str(e.value)


def test_gpu_help_describes_the_suite_in_a_whole_sentence(capsys):
    with pytest.raises(SystemExit):
        gpu.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "short convolution under every backend, with the peers. options:" in text


def test_crossover_contention_and_step_tables_match_their_json(tmp_path, capsys):
    x_path = tmp_path / "x.json"
    assert crossover.main(["--batch", "1", "--d-model", "3", "--d-state", "8", "--length", "8", "16", "--repeats",
                           "1", "--json", str(x_path)]) == 0
    printed = capsys.readouterr().out
    x = json.loads(x_path.read_text())
    assert x["device"] == "cpu"
    _, table = _table(printed)
    for r, cells in zip(x["rows"], table, strict=True):
        assert r["fft_over_chunked"] == r["fft_s"] / r["chunked_s"]  # < 1: the FFT path was faster
        assert cells == [str(r["length"]), "yes" if r["return_state"] else "no", f"{1e3 * r['chunked_s']:.2f}",
                         f"{1e3 * r['fft_s']:.2f}", f"{r['fft_over_chunked']:.2f}"]
    for state in (True, False):
        span = fft_span({r["length"]: r["fft_over_chunked"] for r in x["rows"] if r["return_state"] == state})
        assert x["fft_lengths"][str(state)] == (list(span) if span else None)
        assert f"FFT_LENGTHS[('cpu', {state})] = {span!r}" in printed

    c_path = tmp_path / "c.json"
    assert contention.main(["--layers", "s4d", "--batch", "1", "--length", "8", "--d-model", "3", "--d-state", "8",
                            "--modes", "forward", "--peers", "loop", "official-s4", "--busy", "0", "--repeats", "1",
                            "--json", str(c_path)]) == 0
    printed = capsys.readouterr().out
    c = json.loads(c_path.read_text())
    _, table = _table(printed)
    for r, cells in zip(c["rows"], table, strict=True):
        assert r["slowdown"] == r["loaded_s"] / r["alone_s"]  # > 1: slower beside the busy processes
        assert cells == [r["case"], r["impl"], str(r["aten_ops"]), f"{1e3 * r['alone_s']:.2f}",
                         f"{1e3 * r['loaded_s']:.2f}", f"{r['slowdown']:.2f}x",
                         f"{1e3 * min(r['loaded_all']):.2f}-{1e3 * max(r['loaded_all']):.2f}"]
    assert {r["impl"] for r in c["rows"]} == {"ssmkit[auto]", "ssmkit[chunked]", "ssmkit[fft]", "loop"}
    name = "s4d-B1-L8-H3-N8-float32-forward"
    assert [n.split(":")[0] for n in c["notes_by_case"][name]] == ["official-s4 skipped"]

    s_path = tmp_path / "s.json"
    assert step.main(["--layers", "s4d", "--batch", "2", "--d-model", "3", "--d-state", "8", "--steps", "4",
                      "--repeats", "1", "--json", str(s_path)]) == 0
    printed = capsys.readouterr().out
    _, table = _table(printed)
    results = json.loads(s_path.read_text())["results"]
    assert [r["layer"] for r in results] == ["bare", "s4d", "s4d (frozen)"]
    for r, cells in zip(results, table, strict=True):
        assert r["tokens_per_s"] == pytest.approx(r["batch"] / (1e-6 * r["us_per_step"]), rel=1e-12)
        assert cells == [r["layer"], str(r["batch"]), str(r["d_model"]), f"{r['us_per_step']:.1f}",
                         f"{r['tokens_per_s']:,.0f}", f"{r['vs_bare']:.2f}x"]
    assert results[0]["vs_bare"] == 1.0 and torch.get_num_threads() >= 1


def test_a_peer_that_cannot_be_set_up_is_a_note_not_the_end_of_the_run(monkeypatch, tmp_path):
    from ssmkit.bench import peers

    case = peers.Case("s4d", 1, 8, 3, 8, "float32", "forward")
    monkeypatch.setitem(sys.modules, "einops", type(sys)("einops"))  # present, so the file itself is loaded
    with pytest.raises(peers.PeerUnavailable, match=r"^the official file .*s4\.py does not load \(FileNotFoundError"):
        peers.peer_runner("official-s4", case, str(tmp_path / "moved" / "s4.py"))
    (tmp_path / "old.py").write_text("raise ImportError('needs another torch')\n")
    with pytest.raises(peers.PeerUnavailable, match=r"\(ImportError: needs another torch\)$"):
        peers.peer_runner("official-s4", case, str(tmp_path / "old.py"))

    def refuses(case):  # a constructor that refuses the shape
        raise RuntimeError("d_state too small\nmore")

    def bare_assert(case):  # mamba-ssm's wrappers check shapes with bare asserts: an empty message
        def run():
            raise AssertionError  # what a bare assert raises outside pytest's rewriting
        return run

    monkeypatch.setattr(peers, "_mambapy", refuses)
    monkeypatch.setattr(peers, "_loop", bare_assert)
    with pytest.raises(peers.PeerUnavailable, match=r"^failed on this case \(RuntimeError: d_state too small\)$"):
        peers.peer_runner("mambapy", case)
    with pytest.raises(peers.PeerUnavailable, match=r"^failed on this case \(AssertionError\)$"):
        peers.peer_runner("loop", case)


def test_gpu_a_backend_failing_on_a_bare_assert_is_an_error_row(monkeypatch):
    real = gpu._scan_case

    def scan_case(shape, device):
        dims, n_bytes, forward, forward_backward, output = real(shape, device)

        def failing_fft(backend):
            if backend == "fft":
                raise AssertionError  # a bare assert's empty message
            return forward(backend)

        return dims, n_bytes, failing_fft, forward_backward, output

    monkeypatch.setattr(gpu, "_scan_case", scan_case)
    rows = gpu.measure("scan", "1,2,4,8", ["chunked", "fft"], torch.device("cpu"), 1e9, 1, flop_rate=1e9)
    assert [r.get("error") for r in rows] == [None, "AssertionError"] and rows[0]["forward_s"] > 0
