"""Selective-scan benchmark: one Mamba block, forward and forward+backward, with each way of running its scan.

    ssmkit bench selective [--batch 8 --d-model 256 --d-state 16 --expand 2 --length 4096 --threads 2]
                           [--cases native chunked loop mambapy projections] [--repeats 3] [--warmup 2] [--calls 3]
                           [--memory-limit-gib G]
                           [--json PATH]

Cases (the same block: in-projection, convolution, selective scan, gate, out-projection):
    ``native``   ssmkit's Mamba layer, its C-kernel selective scan (``"auto"``'s choice on the CPU where it builds);
    ``chunked``  ssmkit's Mamba layer, its chunked selective scan in PyTorch;
    ``loop``     ssmkit's Mamba layer with the plain per-step loop (``selective_scan_reference``: ``unbind`` over time);
    ``mambapy``  mambapy's MambaBlock (its Blelloch parallel scan ``pscan``), when mambapy is installed;
    ``projections``  not a way to run the block but the native case's floor: the same layer's projections alone
                 (in-projection halves, x_proj, out-projection; 12 GEMMs forward and backward), which every case runs.
                 (The loop and chunked cases also run dt_proj, W_Δ δlow, as 3 thin GEMMs; the native kernel forms it
                 itself, ``delta_proj``.) The loop's time over this one bounds what the native scan, convolution and
                 fusions can give against the loop.

Every measurement runs in a fresh subprocess, so that its peak resident memory (``ru_maxrss``) is that case's alone:
``--warmup`` untimed forward+backward calls (2), then the median of ``--calls`` timed ones (3), forward+backward and
forward; the cases alternate within each of ``--repeats`` rounds and the figures are medians over the rounds. A case that
fails -- out of memory, most likely -- is reported with its error instead of its times. ``--memory-limit-gib`` caps
each subprocess's address space (default: 90 % of the machine's memory), so that an oversized case fails with an
allocation error rather than calling the kernel's OOM killer on a shared machine. Each subprocess keeps freed memory
for reuse (:func:`ssmkit.memory.keep_freed_memory`, as the ``ssmkit`` command does) unless
``SSMKIT_KEEP_FREED_MEMORY=0`` is set, which the header line reports. Kept memory costs peak RSS: mambapy's block, whose
temporaries are 1 GiB each, needs 14.3-16.4 GiB instead of 9.4 at the default shape (fragmentation varies from run
to run); with a cap of 3/4 of a 24 GiB machine, the earlier default, it failed to allocate, hence 90 %.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from ssmkit.bench import nonnegative_int, positive_int

CASES = ("native", "chunked", "loop", "mambapy", "projections")


# ---------------------------------------------------------------------------------------------------------------------
# The worker: one case, in its own process


def _rss_mib() -> float:
    """The current resident memory of this process in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _build(case: str, d_model: int, d_state: int, expand: int):
    """The block of ``case`` as a function x -> y."""
    import torch

    if case == "mambapy":
        from mambapy.mamba import MambaBlock, MambaConfig

        block = MambaBlock(MambaConfig(d_model=d_model, n_layers=1, d_state=d_state, expand_factor=expand, pscan=True))
        return block, block
    import ssmkit.layers as layers
    from ssmkit.ops import use_backend
    from ssmkit.ops.rows import apply_linear

    layer = layers.build("mamba", d_model=d_model, d_state=d_state, expand=expand)
    if case == "projections":
        R, N = layer.rank, layer.d_state

        def projections(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            xs, z = layer._in_projection(x)  # (B, L, H_in) each
            delta_low, B, C = apply_linear(layer.x_proj, xs).split([R, N, N], dim=-1)
            return apply_linear(layer.out_proj, z), delta_low, B, C  # z stands for the gated scan output

        return layer, projections
    backend = {"loop": "reference", "chunked": "chunked", "native": "native"}[case]

    def run(x: torch.Tensor) -> torch.Tensor:
        with use_backend(backend):
            return layer(x, return_state=False)[0]

    return layer, run


def worker(case: str, batch: int, d_model: int, d_state: int, expand: int, length: int, threads: int | None,
           warmup: int = 2, calls: int = 3) -> dict:
    """Time ``calls`` forward+backward calls of ``case`` after ``warmup`` of them, then ``calls`` forwards (no grad), and
    read the peak memory; the medians of the calls. Warm-up calls until the heap holds what a call needs: a process's
    first calls still take fresh pages from the system (at the default shape, one Mamba block on one thread: 97 000
    and 82 000 minor page faults in the first forward and backward, 49 000 in the second and third backwards, 180 ms
    and 80 ms of system time, none from the fourth call on), which a training loop pays once."""
    import torch

    from ssmkit.bench.backward import OutputGradients

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    module, run = _build(case, d_model, d_state, expand)
    x = torch.randn(batch, length, d_model)
    base = _rss_mib()

    grads = OutputGradients()  # fixed output gradients, made once (ssmkit.bench.backward)

    def forward_backward() -> None:
        module.zero_grad(set_to_none=True)
        out = run(x.detach().requires_grad_())
        grads.backward(*(out if isinstance(out, tuple) else (out,)))

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def forward() -> None:
        with torch.no_grad():
            run(x)

    for _ in range(warmup):
        forward_backward()
    fwd_bwd = [timed(forward_backward) for _ in range(calls)]
    fwd = [timed(forward) for _ in range(calls)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
    return {"forward_s": statistics.median(fwd), "forward_backward_s": statistics.median(fwd_bwd),
            "peak_rss_mib": peak, "base_rss_mib": base}


def _limit_memory(gib: float) -> None:
    limit = int(gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


# ---------------------------------------------------------------------------------------------------------------------
# The driver


def _machine_memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def measure(case: str, args: argparse.Namespace) -> dict:
    """Run ``case`` once in a subprocess: its times and memory, or {"error": ...}."""
    options = ["--worker", case, "--batch", str(args.batch), "--d-model", str(args.d_model), "--d-state",
               str(args.d_state), "--expand", str(args.expand), "--length", str(args.length),
               "--memory-limit-gib", str(args.memory_limit_gib), "--warmup", str(args.warmup), "--calls",
               str(args.calls)]
    if args.threads:
        options += ["--threads", str(args.threads)]
    import ssmkit  # the subprocess imports this same copy of ssmkit

    root = os.path.dirname(os.path.dirname(os.path.abspath(ssmkit.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "ssmkit.bench.selective", *options], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        if proc.returncode < 0:  # the kernel's OOM killer, most likely
            why = f"killed by signal {-proc.returncode} (out of memory?)"
        else:
            why = lines[-1] if lines else f"exit status {proc.returncode}"
            if "memory" in why.lower() or "alloc" in why.lower():
                why = f"out of memory: {why}"
        return {"error": why[:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(args: argparse.Namespace) -> list[dict]:
    """Every case, alternating within each round; medians over the rounds (a case's first error ends its rounds)."""
    results: dict[str, list[dict]] = {case: [] for case in args.cases}
    errors: dict[str, str] = {}
    for _ in range(args.repeats):
        for case in args.cases:
            if case in errors:
                continue
            r = measure(case, args)
            if "error" in r:
                errors[case] = r["error"]
            else:
                results[case].append(r)
    rows = []
    ref = results.get("loop", [])
    for case in args.cases:
        if case in errors and not results[case]:
            rows.append({"case": case, "error": errors[case]})
            continue
        rs = results[case]
        row = {"case": case, **{k: statistics.median(r[k] for r in rs) for k in rs[0]}}
        if ref and case != "loop":
            n = min(len(ref), len(rs))
            for kind in ("forward", "forward_backward"):
                row[f"{kind}_speedup_vs_loop"] = statistics.median(
                    ref[i][f"{kind}_s"] / rs[i][f"{kind}_s"] for i in range(n))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None, prog: str = "python -m ssmkit.bench selective") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--d-model", type=positive_int, default=256)
    parser.add_argument("--d-state", type=positive_int, default=16)
    parser.add_argument("--expand", type=positive_int, default=2)
    parser.add_argument("--length", type=positive_int, default=4096)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads in each case (default: torch's)")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--warmup", type=nonnegative_int, default=2, help="untimed calls first, in each subprocess")
    parser.add_argument("--calls", type=positive_int, default=3, help="timed calls in each subprocess (their median)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--memory-limit-gib", type=float, default=round(0.9 * _machine_memory_gib(), 1))
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--worker", choices=CASES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        from ssmkit.memory import keep_freed_memory_from_env

        _limit_memory(args.memory_limit_gib)
        keep_freed_memory_from_env()  # every case alike, as the ssmkit command does (SSMKIT_KEEP_FREED_MEMORY=0: off)
        result = worker(args.worker, args.batch, args.d_model, args.d_state, args.expand, args.length, args.threads,
                        args.warmup, args.calls)
        print(json.dumps(result))
        return 0
    from ssmkit.bench.core import machine

    shape = f"B={args.batch}, d_model={args.d_model}, N={args.d_state}, expand={args.expand}, L={args.length}"
    threads = f"{args.threads} threads per case" if args.threads else "torch's default threads"
    kept = "off" if os.environ.get("SSMKIT_KEEP_FREED_MEMORY", "1").strip() == "0" else "on"
    print(f"ssmkit bench selective: one Mamba block, {shape}, float32; {threads}; freed memory kept: {kept}; "
          f"{args.warmup} warm-up and {args.calls} timed calls per case and round; {machine()}")
    rows = run_all(args)
    print("| case | forward ms | vs loop | forward+backward ms | vs loop | peak RSS MiB (before the first call) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | failed: {r['error']} | | | | |")
            continue
        speed = lambda k: f"{r[k]:.1f}x" if k in r else "-"  # noqa: E731
        print(f"| {r['case']} | {1e3 * r['forward_s']:.1f} | {speed('forward_speedup_vs_loop')} | "
              f"{1e3 * r['forward_backward_s']:.1f} | {speed('forward_backward_speedup_vs_loop')} | "
              f"{r['peak_rss_mib']:.0f} ({r['base_rss_mib']:.0f}) |")
    floor = {r["case"]: r for r in rows if "error" not in r}
    if "projections" in floor and "loop" in floor:
        print(f"bound: with the scan, convolution and elementwise work free, the block would be at most "
              f"{floor['loop']['forward_backward_s'] / floor['projections']['forward_backward_s']:.1f}x the loop "
              f"(forward+backward; its projections take {1e3 * floor['projections']['forward_backward_s']:.1f} ms)")
    if args.json:
        from ssmkit.files import write_json

        write_json(args.json, {"shape": shape, "threads": args.threads, "warmup": args.warmup, "calls": args.calls,
                               "machine": machine(), "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
