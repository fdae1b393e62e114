"""Irregular-sampling benchmark: each layer that takes sampling intervals, regularly sampled and at random gaps.

    ssmkit bench irregular [--layers s5 s4d mamba mamba2] [--batch 8] [--length 4096] [--d-model 128]
                           [--d-state 64] [--repeats 3] [--json PATH]

For each layer that declares ``takes_intervals`` (:mod:`ssmkit.layers.irregular`), float32, one (B, L, H) input and
gaps drawn uniformly from [0.5, 1.5] nominal periods: the forward (no gradient) and the forward+backward (the sum of
the output), ``layer(x)`` against ``layer(x, intervals=tau)``, each timed once per round in ``--repeats``
interleaved rounds; the figures are medians over the rounds and the ratio is the irregular one's time over the
regular one's (this shared VM drifts by ±50 %: a layer's rows compare within a run, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

import ssmkit.layers as layers
from ssmkit.bench import positive_int
from ssmkit.bench.core import bench_options, machine, unbuildable

TAKERS = [name for name in layers.available() if layers.layer_class(name).takes_intervals]


def _seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _calls(layer, x: torch.Tensor, tau: torch.Tensor | None) -> dict[str, Callable[[], None]]:
    """The timed calls of one layer with (or without) the gaps: forward without a gradient, forward+backward."""
    extra = {} if tau is None else {"intervals": tau}

    def forward() -> None:
        with torch.no_grad():
            layer(x, return_state=False, **extra)

    def forward_backward() -> None:
        xg = x.detach().requires_grad_()
        layer(xg, return_state=False, **extra)[0].sum().backward()

    return {"forward": forward, "forward+backward": forward_backward}


def measure(names: list[str], batch: int, length: int, d_model: int, d_state: int, repeats: int) -> list[dict]:
    """The regular and irregular times of each layer at one shape, in interleaved rounds (module docstring).

    Args:
        names: layers that take intervals.
        batch: B.
        length: L.
        d_model: H.
        d_state: N.
        repeats: rounds.

    Returns:
        one dict per layer and mode: layer, mode, batch, length, d_model, d_state, regular_ms, irregular_ms, ratio.
    """
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, length, d_model, generator=g)
    tau = 0.5 + torch.rand(batch, length, generator=g)
    built = {name: layers.build(name, d_model=d_model, **bench_options(name, d_state)) for name in names}
    calls = {(name, kind): _calls(layer, x, tau if kind == "irregular" else None)
             for name, layer in built.items() for kind in ("regular", "irregular")}
    for fns in calls.values():  # warm-up: kernels, caches, allocator pools
        for fn in fns.values():
            fn()
    times: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(repeats):
        for (name, kind), fns in calls.items():
            for mode, fn in fns.items():
                times.setdefault((name, mode, kind), []).append(_seconds(fn))
    rows = []
    for name in names:
        for mode in ("forward", "forward+backward"):
            regular = statistics.median(times[(name, mode, "regular")])
            irregular = statistics.median(times[(name, mode, "irregular")])
            rows.append({"layer": name, "mode": mode, "batch": batch, "length": length, "d_model": d_model,
                         "d_state": d_state, "regular_ms": 1e3 * regular, "irregular_ms": 1e3 * irregular,
                         "ratio": irregular / regular if regular > 0 else float("inf")})
    return rows


def main(argv: list[str] | None = None, prog: str = "python -m ssmkit.bench irregular") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--layers", nargs="+", default=TAKERS, choices=TAKERS,
                        help="layers to time (default: every layer that takes intervals)")
    parser.add_argument("--batch", type=positive_int, default=8, help="batch B (default 8)")
    parser.add_argument("--length", type=positive_int, default=4096, help="sequence length L (default 4096)")
    parser.add_argument("--d-model", type=positive_int, default=128, help="width H (default 128)")
    parser.add_argument("--d-state", type=positive_int, default=64, help="state size N (default 64)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="interleaved rounds; medians (default 3)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    problem = unbuildable([(f"layer {name} at d_model {args.d_model}, d_state {args.d_state}", name, args.d_model,
                            args.d_state, None) for name in args.layers])
    if problem:  # before anything is timed
        parser.error(problem)
    print(f"ssmkit bench irregular: B={args.batch}, L={args.length}, H={args.d_model}, N={args.d_state}, float32, gaps "
          f"U[0.5, 1.5], {args.repeats} rounds; {machine()}")
    rows = measure(args.layers, args.batch, args.length, args.d_model, args.d_state, args.repeats)
    print("| layer | mode | regular ms | intervals ms | ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['mode']} | {r['regular_ms']:.1f} | {r['irregular_ms']:.1f} | {r['ratio']:.1f}x |")
    if args.json:
        from ssmkit.files import write_json

        write_json(args.json, {"machine": machine(), "options": vars(args), "results": rows}, strict=True)  # inf: null
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
