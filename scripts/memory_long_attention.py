"""Peak memory and time of one no-grad forward of the attention and Mega layers at a long length.

    OMP_NUM_THREADS=1 python scripts/memory_long_attention.py [--length 16384] [--d-model 64]

Each case runs in a fresh interpreter (peak RSS is per process) and prints the time of the call and the increase of
the process's peak RSS during it; an L × L float32 score matrix alone would take 4·L² bytes (1 GiB at L = 16384).
Cases: attention without a cache (SDPA ``is_causal``), attention after a 2000-step cache (query blocks with explicit
masks), attention with a window of 256, Mega with its default chunks of 1024.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

CASES = ("attention", "attention-cache", "attention-window", "mega")


def run_case(case: str, length: int, d_model: int) -> str:
    import torch

    import ssmkit.layers as layers

    torch.manual_seed(0)
    state = None
    if case == "attention-window":
        layer = layers.build("attention", d_model=d_model, window=256)
    elif case == "mega":
        layer = layers.build("mega", d_model=d_model)
    else:
        layer = layers.build("attention", d_model=d_model)
        if case == "attention-cache":
            with torch.no_grad():
                state = layer(torch.randn(1, 2000, d_model))[1]
    x = torch.randn(1, length, d_model)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with torch.no_grad():
        layer(x, state)
    seconds = time.perf_counter() - start
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return f"| {case} | {seconds:.2f} s | {grown:.0f} MiB |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=16384, help="L (default 16384)")
    parser.add_argument("--d-model", type=int, default=64, help="H (default 64)")
    parser.add_argument("--case", choices=CASES, default=None, help="run one case in this process")
    args = parser.parse_args()
    if args.case:
        print(run_case(args.case, args.length, args.d_model))
        return 0
    print(f"L={args.length}, d_model={args.d_model}, batch 1, float32, no_grad\n| case | time | peak RSS increase |\n|---|---|---|")
    for case in CASES:
        out = subprocess.run([sys.executable, __file__, "--case", case, "--length", str(args.length),
                              "--d-model", str(args.d_model)], capture_output=True, text=True, check=True)
        print(out.stdout.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
