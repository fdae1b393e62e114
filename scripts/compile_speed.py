"""Each layer eager against ``torch.compile``: the first calls' seconds (compilation) and paired call times.

    OMP_NUM_THREADS=2 python scripts/compile_speed.py [--batch 8] [--length 4096] [--d-model 128] [--d-state 64]
        [--layers s4d mamba] [--repeats 5] [--timeout 900] [--json FILE]

Each layer runs in a fresh interpreter (a compile cache warmed by an earlier layer would flatter the next one),
built with ``ssmkit.bench.core.build_for_bench`` (``d_state`` where the layer has one, ``l_max = L``) and compiled
with ``torch.compile``'s defaults (Inductor). The script prints, per layer:

- the seconds of the compiled module's first no-grad forward and of its first forward+backward (loss = mean y²):
  tracing and code generation, each mode its own graph;
- the median over ``--repeats`` paired rounds (each round times eager, then compiled, under the same machine
  conditions) of a no-grad forward and of a forward+backward, and their ratio compiled/eager (< 1: compiling pays);
- the largest |compiled − eager| of the output, over max |eager| (a check that the two ran the same model).

A layer whose process does not finish within ``--timeout`` seconds is reported as such (before the C kernels were
custom ops, a Mamba layer's compilation did not finish in 15 minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def run_layer(name: str, batch: int, length: int, d_model: int, d_state: int, repeats: int) -> dict:
    """One layer's figures (run in its own process)."""
    import torch

    from ssmkit.bench.core import build_for_bench

    torch.manual_seed(0)
    layer = build_for_bench(name, d_model, d_state, length)
    compiled = torch.compile(layer)
    x = torch.randn(batch, length, d_model)

    def forward(module: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return module(x)[0]

    def forward_backward(module: torch.nn.Module) -> None:
        module.zero_grad(set_to_none=True)
        xg = x.detach().requires_grad_()
        module(xg)[0].square().mean().backward()

    out = {}
    start = time.perf_counter()
    y_compiled = forward(compiled)
    out["compile_forward_s"] = time.perf_counter() - start
    start = time.perf_counter()
    forward_backward(compiled)
    out["compile_forward_backward_s"] = time.perf_counter() - start
    y_eager = forward(layer)
    out["relative_difference"] = float((y_compiled - y_eager).abs().max() / y_eager.abs().max())
    forward_backward(layer)  # eager's one-time work (native kernels' loading) outside the timing
    for mode, call in (("forward", forward), ("forward_backward", forward_backward)):
        times = {"eager": [], "compiled": []}
        for _ in range(repeats):
            for which, module in (("eager", layer), ("compiled", compiled)):
                start = time.perf_counter()
                call(module)
                times[which].append(time.perf_counter() - start)
        eager, comp = statistics.median(times["eager"]), statistics.median(times["compiled"])
        out[mode] = {"eager_ms": 1e3 * eager, "compiled_ms": 1e3 * comp, "ratio": comp / eager}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--d-state", type=int, default=64, help="N of the layers that have one (default 64)")
    parser.add_argument("--layers", nargs="+", default=None, help="default: every registered layer")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed to one layer's process")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one layer, one process
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    if args.one:
        print(json.dumps(run_layer(args.one, args.batch, args.length, args.d_model, args.d_state, args.repeats)))
        return 0
    import ssmkit.layers as layers

    names = args.layers or layers.available()
    print(f"B {args.batch}, L {args.length}, H {args.d_model}, N {args.d_state}; medians of {args.repeats} paired "
          "rounds; ms eager / compiled (compiled ÷ eager)")
    print("| layer | first forward s | first fwd+bwd s | forward ms | fwd+bwd ms | rel. difference |")
    print("|---|---|---|---|---|---|")
    rows = []
    for name in names:
        command = [sys.executable, __file__, "--one", name] + [
            f"--{k}={v}" for k, v in (("batch", args.batch), ("length", args.length), ("d-model", args.d_model),
                                      ("d-state", args.d_state), ("repeats", args.repeats))]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            row = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else
                   {"failed": (proc.stderr.strip().splitlines() or ["(no message)"])[-1]})
        except subprocess.TimeoutExpired:
            row = {"failed": f"did not finish within {args.timeout:.0f} s"}
        rows.append({"layer": name, **row})
        if "failed" in row:
            print(f"| {name} | failed: {row['failed'][:160]} | | | | |", flush=True)
            continue
        cells = [f"{row[m]['eager_ms']:.1f} / {row[m]['compiled_ms']:.1f} ({row[m]['ratio']:.2f}x)"
                 for m in ("forward", "forward_backward")]
        print(f"| {name} | {row['compile_forward_s']:.1f} | {row['compile_forward_backward_s']:.1f} | "
              f"{cells[0]} | {cells[1]} | {row['relative_difference']:.1e} |", flush=True)
    if args.json:
        from ssmkit.files import write_json

        write_json(args.json, rows, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
