"""Every registered layer at one very long sequence: time and peak memory of a forward and a forward+backward.

    OMP_NUM_THREADS=1 python scripts/long_sequence_check.py [--length 1048576] [--d-model 64] [--batch 1]
        [--d-state 16] [--layers s4d mamba] [--device cuda]

Issue 16 asks that every scan layer run L = 1,048,576 at batch 1 (on the GPU); this is the CPU side of it. Each
layer and mode runs in a fresh interpreter (peak RSS is per process), at batch 1 (``--batch``), built with its defaults,
``d_model`` channels, ``d_state`` 16 (``--d-state``) where the layer has a state size (``l_max = L`` for the layers that have one), under the ``auto`` backend, after one untimed call
at L = 256 (one-time work such as loading the native kernels). The script prints the seconds of one no-grad forward
(with the final state: the layer's default call) and of one forward+backward (loss = mean y²), and the growth of the
process's peak RSS over its RSS just before each call (this is the untimed call's peak when that one reached higher:
the S4 family forms its kernel at l_max whatever the input's length), against the size of one (B, L, H) float32
activation (4·B·L·H bytes), and their ratio: a path that materialised a (B, L, H, N) tensor would show a ratio of
at least N.
Attention is skipped by default (its causal score blocks are O(L²) work: see scripts/memory_long_attention.py).
With ``--device cuda`` the layers run on the GPU, all in this one process (a process per layer and mode would spend
the GPU session's minutes on starts): the seconds are timed around a synchronise, and the memory is the growth of
the CUDA allocator's peak over what was allocated before the call (``torch.cuda.max_memory_allocated``, reset
before each call); a layer that fails (e.g. out of memory) gets its message in the table and the next one runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:  # Linux: pages
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_layer(
    name: str, length: int, d_model: int, mode: str, batch: int = 1, d_state: int = 16, device: str = "cpu"
) -> dict:
    """One layer's figures for one mode (on the CPU run in its own process, so that the peak RSS is this call's; on
    CUDA the allocator's peak is reset instead)."""
    import torch

    from ssmkit.bench.core import build_for_bench

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    layer = build_for_bench(name, d_model, d_state, length).to(dev)  # d_state where the layer has one
    warm = torch.randn(batch, 256, d_model, device=dev, requires_grad=True)  # one-time work (kernel loading, compiling)
    layer(warm)[0].square().mean().backward()
    layer.zero_grad()
    x = torch.randn(batch, length, d_model, device=dev, requires_grad=mode == "forward_backward")
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev) / 2**20
    else:
        base = _rss_mib()
    start = time.perf_counter()
    if mode == "forward":
        with torch.no_grad():
            y, _ = layer(x)
        finite = bool(torch.isfinite(y).all())
    else:
        y, _ = layer(x)
        y.square().mean().backward()
        finite = bool(torch.isfinite(x.grad).all())
    if cuda:
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start
    # On the CPU the peak RSS (getrusage) and the base (/proc/self/statm) are counted by different means, a few pages
    # apart: a call that reuses memory it had freed reads up to ~0.1 MiB below its base. Nothing was added: 0.
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 - base if cuda else max(0.0, _peak_mib() - base)
    return {"seconds": seconds, "peak_mib": peak, "finite": finite}


def _in_process(name: str, mode: str, args: argparse.Namespace) -> dict:
    """run_layer in this process (CUDA), a failure as its last message line."""
    import torch

    try:
        return run_layer(name, args.length, args.d_model, mode, args.batch, args.d_state, args.device)
    except Exception as e:  # noqa: BLE001  (reported in the table; the next layer still runs)
        return {"failed": f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=2**20)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--d-state", type=int, default=16, help="N of the layers that have one (default 16)")
    parser.add_argument("--layers", nargs="+", default=None, help="default: every registered layer but attention")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--device", default="cpu", help="cpu (a process per layer and mode) or cuda (this process)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one layer and mode, one process
    parser.add_argument("--mode", default="forward", choices=("forward", "forward_backward"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_layer(args.one, args.length, args.d_model, args.mode, args.batch, args.d_state,
                                   args.device)))
        return 0
    import ssmkit.layers as layers

    names = args.layers or [n for n in layers.available() if n != "attention"]
    rows = []
    activation = 4 * args.batch * args.length * args.d_model / 2**20  # MiB of one (B, L, H) float32 tensor
    print(f"B {args.batch}, L {args.length}, H {args.d_model}, N {args.d_state}, {args.device}; one (B, L, H) float32 "
          f"activation = {activation:.0f} MiB")
    print("| layer | forward s | forward peak MiB | ratio | forward+backward s | forward+backward peak MiB | ratio "
          "| finite |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        row = {"layer": name, "length": args.length, "d_model": args.d_model, "batch": args.batch,
               "d_state": args.d_state}
        for mode in ("forward", "forward_backward"):
            if args.device != "cpu":
                row[mode] = _in_process(name, mode, args)
                continue
            proc = subprocess.run([sys.executable, __file__, "--one", name, "--mode", mode, "--length",
                                   str(args.length), "--d-model", str(args.d_model), "--batch", str(args.batch),
                                   "--d-state", str(args.d_state)], capture_output=True, text=True)
            if proc.returncode != 0:
                row[mode] = {"failed": (proc.stderr.strip().splitlines() or ["(no message)"])[-1]}
            else:
                row[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        cells = []
        for mode in ("forward", "forward_backward"):
            r = row[mode]
            cells += ([f"failed: {r['failed'][:120]}", "", ""] if "failed" in r else
                      [f"{r['seconds']:.2f}", f"{r['peak_mib']:.0f}", f"{r['peak_mib'] / activation:.1f}"])
        finite = all(row[m].get("finite", False) for m in ("forward", "forward_backward"))
        print(f"| {name} | " + " | ".join(cells) + f" | {finite} |", flush=True)
    if args.json:
        from ssmkit.files import write_json

        write_json(args.json, rows, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
