"""Named cases against the machine's limits and the peers: a table, ``bench.json`` and PNG plots.

    ssmkit bench cases [--layers s4d s4] [--batch 8] [--length 1024 4096 16384] [--d-model 128] [--d-state 64]
                       [--dtype float32] [--modes forward forward_backward step] [--peers ...] [--s4-file PATH]
                       [--repeats 3] [--out DIR]

Every combination layer × B × L × H × N × dtype × mode is one case, named like
``s4d-B8-L4096-H128-N64-float32-forward``. Per case it times, in interleaved rounds (medians over them),
ssmkit's layer under ``auto`` and under each of its fast backends (``chunked``, ``fft``; ``--reference`` adds
the loop), and every peer of :mod:`ssmkit.bench.peers` that can run the case (the others are listed as notes
with the reason: not installed, no checkout, no such layer). ``step`` cases run L tokens one at a time.

The same run measures the machine's copy bandwidth and GEMM rate (:mod:`ssmkit.bench.limits`) and reports for
every row the achieved fraction of the bytes-moved bound and of the FLOP bound (bound time / measured time). Both
are those of the layer's core op (:func:`case_bounds`): the LTI scan or convolution of an LTI
layer, the selective scan of Mamba, the SSD scan of Mamba-2, flash-style attention, the RG-LRU recurrence; each row
names it (``bytes_model`` and ``flops_model``, the same op). Outputs in ``--out``: ``bench.json`` (machine, limits,
rows, notes, and ``notes_by_case``: each case's notes), ``time_vs_length.png`` (time against L per implementation,
and time / L for the scans and the steps, time / (L log2 L) for the FFT paths -- ``ssmkit[fft]``, the official
``FFTConv``, and ``ssmkit[auto]`` of a layer whose only fast path is the FFT one, such as S4: flat lines = the
expected complexity) and ``bounds.png`` (achieved fractions). Plots need matplotlib (skipped with a note
otherwise). ``--out`` is created if missing; an existing folder is reused: its ``bench.json`` and plots are replaced
(each file written whole, :mod:`ssmkit.files`), and a run that cannot plot removes the earlier run's plots, which
would disagree with the new ``bench.json``. Every case's layer is built before anything is timed: a shape a layer
rejects is a usage error naming the case.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os

import torch

import ssmkit.layers as layers
from ssmkit.bench import positive_int
from ssmkit.bench.core import machine
from ssmkit.bench.limits import (
    MODES,
    copy_bandwidth,
    gemm_flops,
    layer_bytes,
    layer_flops,
    median,
    time_interleaved,
)
from ssmkit.bench.peers import PEERS, Case, PeerUnavailable, peer_runner, ssmkit_runner
from ssmkit.files import save_figure, write_json

FAST_BACKENDS = ("chunked", "fft")  # timed beside "auto" when the layer has them
PLOTS = ("time_vs_length.png", "bounds.png")  # the plots' file names in --out


def unbuildable(cases: list[Case]) -> str | None:
    """The first case whose ssmkit layer rejects its shape, as ``"case <name>: <the layer's error>"``, else None
    (:func:`ssmkit.bench.core.unbuildable`; a ``step`` case's layer is built without ``l_max``, as it is timed).

    Args:
        cases: the cases of the run.
    """
    from ssmkit.bench import core

    return core.unbuildable([(f"case {c.name}", c.layer, c.d_model, c.d_state, c.length if c.mode != "step" else None)
                             for c in cases])


def bound_layer(case: Case) -> layers.SequenceLayer:
    """The layer of a case as its rows time it (:func:`ssmkit.bench.peers.ssmkit_runner`: ``l_max = L`` where the layer
    has one, except for a ``step`` case), whose sizes the bounds read (SGConv's taps follow its ``l_max``).

    Args:
        case: the case.
    """
    from ssmkit.bench import core

    return core.build_for_bench(case.layer, case.d_model, case.d_state, case.length if case.mode != "step" else None)


def case_bounds(case: Case) -> tuple[tuple[str, float], tuple[str, float]]:
    """The bounds of a case, from its layer built once at the case's shape (:func:`bound_layer`): the bytes its core op
    must move at least (:func:`ssmkit.bench.limits.layer_bytes`) and the flops it must do at least
    (:func:`ssmkit.bench.limits.layer_flops`), each with the op's name.

    Args:
        case: the case.

    Returns:
        ((the core op's name, one of :data:`ssmkit.bench.limits.CORE_OPS`; bytes), (the same name; flops)).
    """
    layer = bound_layer(case)
    return (layer_bytes(layer, case.mode, case.batch, case.length, case.d_state, case.torch_dtype.itemsize),
            layer_flops(layer, case.mode, case.batch, case.length, case.d_state))


def fft_path(row: dict) -> bool:
    """Whether the row's implementation runs an FFT convolution (expected time ∝ L log L): ``ssmkit[fft]``, the
    official S4 ``FFTConv``, and ``ssmkit[auto]`` of a layer whose only fast backend is ``fft`` (s4, hyena,
    liquid_s4, sgconv); never a ``step`` row (a recurrence: ∝ L)."""
    if row["mode"] == "step":
        return False
    if "fft" in row["impl"] or row["impl"] == "official-s4":
        return True
    if row["impl"] == "ssmkit[auto]":
        fast = set(layers.layer_class(row["layer"]).backends) - {"reference"}
        return fast == {"fft"}
    return False


def implementations(case: Case, peers: list[str], s4_file: str | None, reference: bool) -> tuple[dict, list[str]]:
    """The callables of one case: ``ssmkit[auto]``, ``ssmkit[<backend>]`` and each available peer; plus notes.

    Returns:
        (name -> callable of no argument, notes about what was skipped and why).
    """
    fns, notes = {}, []
    backends = ["auto"]
    if case.mode != "step":
        layer_backends = layers.layer_class(case.layer).backends
        backends += [b for b in FAST_BACKENDS + (("reference",) if reference else ()) if b in layer_backends]
    for backend in backends:
        try:
            fns[f"ssmkit[{backend}]"] = ssmkit_runner(case, backend)
        except PeerUnavailable as e:
            notes.append(f"ssmkit[{backend}] skipped for {case.layer} {case.mode}: {e}")
            break
    for peer in peers:
        try:
            fns[peer] = peer_runner(peer, case, s4_file)
        except PeerUnavailable as e:
            notes.append(f"{peer} skipped: {e}")
    return fns, notes


def measure_case(case: Case, peers: list[str], s4_file: str | None, reference: bool, repeats: int,
                 bandwidth: float, flops: float) -> tuple[list[dict], list[str]]:
    """Rows (one per implementation) of one case, with the achieved fractions of both bounds (those of the layer's
    core op, :func:`case_bounds`), and notes."""
    fns, notes = implementations(case, peers, s4_file, reference)
    (model, b), (flops_model, f) = case_bounds(case)
    times = time_interleaved(fns, repeats)
    rows = []
    for name, ts in times.items():
        t = median(ts)
        rows.append({
            "case": case.name, **case.__dict__, "impl": name, "seconds": t, "seconds_all": ts,
            "bytes_model": model, "bound_bytes": b, "flops_model": flops_model, "bound_flops": f,
            "bytes_fraction": (b / bandwidth) / t, "flops_fraction": (f / flops) / t,
        })
    return rows, notes


def plot(rows: list[dict], out_dir: str) -> list[str]:
    """Write ``time_vs_length.png`` and ``bounds.png`` into ``out_dir``; returns the paths (none without
    matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["layer"], r["batch"], r["d_model"], r["d_state"], r["dtype"], r["mode"], r["impl"])
        groups.setdefault(key, []).append(r)
    fig, (ax_t, ax_n) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["length"])
        Ls = [r["length"] for r in rs]
        ts = [r["seconds"] for r in rs]
        label = f"{key[0]} {key[5]} {key[6]} (B{key[1]} H{key[2]} N{key[3]} {key[4]})"
        ax_t.plot(Ls, [1e3 * t for t in ts], marker="o", label=label)
        fft = fft_path(rs[0])  # FFT paths: expected L log L
        norm = [t / (L * max(1.0, math.log2(L))) if fft else t / L for t, L in zip(ts, Ls)]
        ax_n.plot(Ls, [1e9 * v for v in norm], marker="o", label=label + (" / L log2 L" if fft else " / L"))
    ax_t.set(xscale="log", yscale="log", xlabel="L", ylabel="ms", title="time against L")
    ax_n.set(xscale="log", xlabel="L", ylabel="ns per L (scans) or per L log2 L (FFT)",
             title="time / expected complexity (flat = as expected)")
    ax_t.legend(fontsize=6)
    ax_n.legend(fontsize=6)
    fig.tight_layout()
    paths = [os.path.join(out_dir, PLOTS[0])]
    save_figure(fig, paths[0])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(12, 0.3 * len(rows) + 1.5))
    names = [f"{r['case']} {r['impl']}" for r in rows]
    y = range(len(rows))
    ax.barh([i - 0.2 for i in y], [r["bytes_fraction"] for r in rows], height=0.4, label="of the bytes bound")
    ax.barh([i + 0.2 for i in y], [r["flops_fraction"] for r in rows], height=0.4, label="of the FLOP bound")
    ax.set_yticks(list(y), names, fontsize=6)
    ax.set(xscale="log", xlabel="achieved fraction (1 = at the limit)")
    ax.legend()
    fig.tight_layout()
    paths.append(os.path.join(out_dir, PLOTS[1]))
    save_figure(fig, paths[1])
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None, prog: str = "python -m ssmkit.bench cases") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--layers", nargs="+", default=["s4d", "s4"], choices=layers.available())
    parser.add_argument("--batch", nargs="+", type=positive_int, default=[8])
    parser.add_argument("--length", nargs="+", type=positive_int, default=[1024, 4096, 16384])
    parser.add_argument("--d-model", nargs="+", type=positive_int, default=[128])
    parser.add_argument("--d-state", nargs="+", type=positive_int, default=[64])
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float64"])
    parser.add_argument("--modes", nargs="+", default=["forward", "forward_backward"], choices=MODES)
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS,
                        help="peers to time beside ssmkit when they can run (default: all)")
    parser.add_argument("--s4-file", default=None, help="the official state-spaces/s4 models/s4/s4.py")
    parser.add_argument("--reference", action="store_true", help="also time ssmkit's reference loops (slow)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="interleaved rounds; medians (default 3)")
    parser.add_argument("--copy-mb", type=positive_int, default=256, help="buffer size of the copy-bandwidth probe")
    parser.add_argument("--gemm-size", type=positive_int, default=2048, help="matrix side of the GEMM-rate probe")
    parser.add_argument("--out", default="bench-out", help="directory for bench.json and the plots")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1; got {args.repeats}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out must be a directory (created if missing; an existing one is reused, its bench.json and "
                     f"plots replaced); {args.out!r} is a file")
    combos = [Case(*combo) for combo in itertools.product(args.layers, args.batch, args.length, args.d_model,
                                                          args.d_state, args.dtype, args.modes)]
    problem = unbuildable(combos)
    if problem:
        parser.error(problem)
    os.makedirs(args.out, exist_ok=True)
    bandwidth = copy_bandwidth(args.copy_mb)
    flops = gemm_flops(args.gemm_size)
    print(f"ssmkit bench cases; {machine()}; copy {bandwidth / 1e9:.1f} GB/s, GEMM {flops / 1e9:.1f} GFLOP/s")
    rows, notes, notes_by_case = [], [], {}
    for case in combos:
        r, n = measure_case(case, args.peers, args.s4_file, args.reference, args.repeats, bandwidth, flops)
        rows += r
        notes += n
        notes_by_case[case.name] = n  # which case a note is about ("failed on this case": the printed notes are merged)
    print("| case | implementation | ms | x ssmkit[auto] | of bytes bound | of FLOP bound |")
    print("|---|---|---|---|---|---|")
    auto = {r["case"]: r["seconds"] for r in rows if r["impl"] == "ssmkit[auto]"}
    for r in rows:
        ratio = r["seconds"] / auto[r["case"]] if r["case"] in auto else float("nan")
        print(f"| {r['case']} | {r['impl']} | {1e3 * r['seconds']:.2f} | {ratio:.2f} | "
              f"{100 * r['bytes_fraction']:.3g} % | {100 * r['flops_fraction']:.3g} % |")
    for n in dict.fromkeys(notes):
        print(f"note: {n}")
    result = {
        "machine": machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "copy_bandwidth_bytes_per_s": bandwidth, "gemm_flops_per_s": flops,
        "rows": rows, "notes": list(dict.fromkeys(notes)), "notes_by_case": notes_by_case,
    }
    path = os.path.join(args.out, "bench.json")
    write_json(path, result)
    plots = plot(rows, args.out)
    stale = []
    if not plots:  # an earlier run's plots would sit beside this run's bench.json and disagree with it
        for name in PLOTS:
            if os.path.isfile(os.path.join(args.out, name)):
                os.remove(os.path.join(args.out, name))
                stale.append(name)
    print(f"wrote {path}" + "".join(f", {p}" for p in plots) + ("" if plots else " (no matplotlib: no plots)")
          + (f"; removed the previous run's {', '.join(stale)}" if stale else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
