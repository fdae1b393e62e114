"""A long float32 ``step`` rollout of each layer against its forward: drift, state size and resident memory.

    OMP_NUM_THREADS=1 python scripts/long_rollout_check.py [--steps 100000] [--layers s4d lru mamba]

Each layer is built in float32 with ``d_model`` 8 and ``d_state`` 16 where it has one (``l_max`` = the number of steps
where it has one), in eval mode, from seed 0, and a float64 copy made by ``load_state_dict``. One input x (B 1) is run
by ``forward`` (float32 and float64) and token by token by ``step`` under ``no_grad`` and
``ssmkit.layers.frozen_parameters()`` (what a generation loop or an on-line controller does). The script prints the
largest relative error max|a - b| / max|b| of the step against the float32 forward over the whole rollout, over its
first 1 000 steps and over its last 10 000 (a drift shows as a growing error), of both against the float64 forward,
of the final states, the largest |state| seen (sampled every 10 000 steps) and the resident memory before and after
the rollout (docs/design.md rule 1: step = forward within 1e-5 relative in float32).
"""

from __future__ import annotations

import argparse
import sys

DEFAULT = ["s4d", "s4", "dss", "ema", "lru", "s5", "dlr", "mamba", "mamba2", "rglru", "h3", "gss", "liquid_s4"]


def _rss_mib() -> float:
    import os

    with open("/proc/self/statm") as f:  # Linux: pages
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _rel(a, b) -> float:
    import torch

    wide = torch.complex128 if (a.is_complex() or b.is_complex()) else torch.float64
    a, b = a.to(wide), b.to(wide)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def rollout(name: str, steps: int) -> dict:
    """The figures of one layer (see the module docstring)."""
    import inspect

    import torch

    import ssmkit.layers as layers

    params = inspect.signature(layers.layer_class(name)).parameters
    options = {key: value for key, value in (("d_state", 16), ("l_max", steps)) if key in params}
    if name == "mamba2":
        options["headdim"] = 8  # expand·d_model = 16 channels in heads of 8
    torch.manual_seed(0)
    layer = layers.build(name, d_model=8, **options).eval()
    x = torch.randn(1, steps, 8)
    wide = layers.build(name, d_model=8, dtype=torch.float64, **options).eval()
    wide.load_state_dict(layer.state_dict())
    with torch.no_grad():
        y, h_forward = layer(x)
        y64, _ = wide(x.double())
        ys = torch.empty_like(y)
        h = layer.initial_state(1)
        rss_before, largest = _rss_mib(), 0.0
        with layers.frozen_parameters():
            for t in range(steps):
                ys[:, t], h = layer.step(x[:, t], h)
                if t % 10_000 == 0:
                    leaves = [s for s in _leaves(h) if s.numel()]
                    largest = max([largest] + [float(s.abs().max()) for s in leaves])
        rss_after = _rss_mib()
    tail = max(steps - 10_000, 0)
    return {
        "step_vs_forward": _rel(ys, y), "first_1000": _rel(ys[:, :1000], y[:, :1000]),
        "last_10000": _rel(ys[:, tail:], y[:, tail:]), "step_vs_float64": _rel(ys, y64),
        "forward_vs_float64": _rel(y, y64),
        "final_state": max(_rel(a, b) for a, b in zip(_leaves(h), _leaves(h_forward)) if b.numel()),
        "largest_state": largest, "rss_before_mib": rss_before, "rss_after_mib": rss_after,
    }


def _leaves(state) -> list:
    if isinstance(state, (tuple, list)):
        return [t for s in state for t in _leaves(s)]
    return [state]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--layers", nargs="+", default=DEFAULT)
    args = parser.parse_args(argv)
    print(f"float32, B 1, d_model 8, d_state 16, {args.steps} steps; relative errors max|a - b| / max|b|")
    print("| layer | step vs forward | first 1 000 | last 10 000 | step vs float64 | forward vs float64 | final state "
          "| largest state | RSS before -> after MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.layers:
        r = rollout(name, args.steps)
        print(f"| {name} | {r['step_vs_forward']:.1e} | {r['first_1000']:.1e} | {r['last_10000']:.1e} | "
              f"{r['step_vs_float64']:.1e} | {r['forward_vs_float64']:.1e} | {r['final_state']:.1e} | "
              f"{r['largest_state']:.2g} | {r['rss_before_mib']:.0f} -> {r['rss_after_mib']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
