"""Recurrent step speed of the official S4D (state-spaces/s4) beside ssmkit's, at the shapes of `ssmkit bench step`.

    python scripts/bench_official_step.py --s4-file PATH/TO/state-spaces/s4/models/s4/s4.py
        [--batch 1 8] [--d-model 128 256] [--d-state 64] [--steps 400] [--repeats 7]

The official standalone file is NOT part of ssmkit: bring your own checkout (the figures in docs/benchmarks.md
used commit e757cef) and `pip install einops`; its one Lightning import is stubbed (see
scripts/crosscheck_official_s4.py). Times, in the same interleaved rounds, float32, under no_grad, one token
per sequence per step, N = d_state = 64 (32 conjugate-pair modes):

    bare               x = Ā ⊙ x + B̄ u, y = 2 Re(Σ C x) + D u on precomputed tensors (ssmkit.bench.step)
    ssmkit s4d         ssmkit.layers.build("s4d", ...).step (public method, whatever it caches)
    ssmkit s4d (frozen) the same inside ssmkit.layers.frozen_parameters() (a generation loop)
    official FFTConv   FFTConv(mode="diag", activation=None).step after setup_step(): kernel step + D u
    official kernel    its SSMKernelDiag.step alone (no D u): two einsums in, one out

and prints µs per step, tokens/s (= batch × steps / second) and each one's time over the bare arithmetic.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

import ssmkit.layers as layers
from ssmkit.bench.core import machine
from ssmkit.bench.step import BARE, FROZEN, bare_stepper, time_steppers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from crosscheck_official_s4 import load_official  # noqa: E402  (a sibling script, not a package)


def official_steppers(off, batch: int, d_model: int, d_state: int) -> dict:
    """The official S4D step set up for recurrence: (step, state) of its FFTConv and of its kernel."""
    conv = off.FFTConv(d_model=d_model, d_state=d_state, mode="diag", init="diag-legs", disc="zoh",
                       transposed=False, activation=None, dropout=0.0).eval()
    conv.setup_step()  # computes dA, dB, dC once: the official step needs it before the first call
    state = conv.default_state(batch)  # (B, H, N/2) complex64
    return {
        "official FFTConv": (conv.step, state),
        "official kernel": (conv.kernel.step, state.clone()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--s4-file", required=True, help="path to the official models/s4/s4.py")
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8], help="batch sizes B (default 1 8)")
    parser.add_argument("--d-model", nargs="+", type=int, default=[128, 256], help="channels H (default 128 256)")
    parser.add_argument("--d-state", type=int, default=64, help="state size N (default 64)")
    parser.add_argument("--steps", type=int, default=400, help="steps timed per entry per round (default 400)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds; medians (default 7)")
    args = parser.parse_args()
    off = load_official(args.s4_file)
    print(f"official S4D step vs ssmkit: N={args.d_state}, float32, no_grad, {args.steps} steps x "
          f"{args.repeats} rounds; {machine()}")
    rows = []
    for batch in args.batch:
        for d_model in args.d_model:
            torch.manual_seed(0)
            steppers = {BARE: bare_stepper(batch, d_model, args.d_state)}
            layer = layers.build("s4d", d_model=d_model, d_state=args.d_state).eval()
            steppers["ssmkit s4d"] = (layer.step, layer.initial_state(batch))
            steppers["ssmkit s4d" + FROZEN] = (layer.step, layer.initial_state(batch))  # in frozen_parameters()
            steppers.update(official_steppers(off, batch, d_model, args.d_state))
            rows += time_steppers(steppers, batch, d_model, args.steps, args.repeats)
    print("| step | B | H | µs/step | tokens/s | x bare |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['batch']} | {r['d_model']} | {r['us_per_step']:.1f} | "
              f"{r['tokens_per_s']:,.0f} | {r['vs_bare']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
