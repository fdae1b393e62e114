"""Recurrent step benchmark: generation speed of each layer's ``step`` against the bare step arithmetic.

    ssmkit bench step [--layers s4d dss s4] [--batch 1 8] [--d-model 128 256] [--d-state 64] [--json PATH]

Times ``y_t, h = layer.step(x_t, h)`` under ``torch.no_grad()`` in float32, one token per sequence per
step, through the public method only (whatever caches the layer keeps count as part of it), and reports
µs per step and tokens/s = batch × steps / second. Beside the layers it times the **bare step
arithmetic** of a diagonal SSM, with Ā, B̄, C, D precomputed as plain tensors of the same shapes:

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,    y_t = 2 Re(Σ_n C_n x_{t,n}) + D u_t      (S4D, arXiv 2206.11893 §2)

the floor that a diagonal layer's step (S4D, DSS) can reach in PyTorch, and prints each layer's time as a
multiple of it. Each layer is timed twice: plainly (its step cache compares the parameter values on every call,
which keeps it correct under any weight update) and inside ``ssmkit.layers.frozen_parameters()`` (the generation
loop's promise that no weight changes: the values are compared once per block) (S4's DPLR step does more work than this, and is shown against the same floor). Every
(batch, d_model) shape is timed in ``--repeats`` rounds; each round times the bare arithmetic and every
layer once, ``--steps`` steps each, after one warm-up of ``--steps`` // 4 steps, so a ratio compares times
taken under the same machine conditions (this shared VM drifts by ±50 %). Times and ratios are medians
over the rounds. Run it on a quiet machine: 2-thread steps this small slow down 100× while other processes
hold the CPUs (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Callable

import torch

import ssmkit.layers as layers
from ssmkit.bench import positive_int
from ssmkit.bench.core import build_for_bench, machine, unbuildable

BARE = "bare"  # the name of the bare-arithmetic row
FROZEN = " (frozen)"  # the suffix of the rows timed inside ssmkit.layers.frozen_parameters()


def bare_diagonal_step(
    u_t: torch.Tensor, x: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, D: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One diagonal SSM step from its discrete matrices: x_t = Ā ⊙ x_{t-1} + B̄ u_t, y_t = 2 Re(Σ C x_t) + D u_t.

    S4D (arXiv 2206.11893 §2), conjugate pairs folded into the factor 2; plain torch ops, no checks.

    Args:
        u_t: (B, H) real input.
        x: (B, H, M) complex state x_{t-1}.
        A_bar, B_bar, C: (H, M) complex.
        D: (H,) real skip.

    Returns:
        y_t (B, H) real and x_t (B, H, M) complex.
    """
    x = A_bar * x + B_bar * u_t.unsqueeze(-1)  # (B, H, M)
    y = 2 * (C * x).sum(-1).real + D * u_t  # (B, H)
    return y, x


def bare_stepper(batch: int, d_model: int, d_state: int) -> tuple[Callable, torch.Tensor]:
    """`bare_diagonal_step` bound to random complex64 Ā, B̄, C (H, M), M = d_state / 2, and D (H,); its zero state.

    Args:
        batch: B.
        d_model: H.
        d_state: N, even (the layers' real-equivalent state size).

    Returns:
        step(u_t (B, H), x (B, H, M)) -> (y_t (B, H), x_t (B, H, M)), and the zero state (B, H, M) complex64.
    """
    H, M = d_model, d_state // 2
    g = torch.Generator().manual_seed(0)
    radius = torch.rand(H, M, generator=g) * 0.5 + 0.45  # |Ā| in [0.45, 0.95]: stable, no denormals
    A_bar = torch.polar(radius, torch.rand(H, M, generator=g) * torch.pi)  # (H, M) complex64
    B_bar = torch.randn(H, M, dtype=torch.complex64, generator=g)  # (H, M)
    C = torch.randn(H, M, dtype=torch.complex64, generator=g)  # (H, M)
    D = torch.randn(H, generator=g)  # (H,)

    def step(u_t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return bare_diagonal_step(u_t, x, A_bar, B_bar, C, D)

    return step, torch.zeros(batch, H, M, dtype=torch.complex64)


def _time_steps(step: Callable, state, inputs: torch.Tensor, frozen: bool) -> tuple[float, object]:
    """Seconds to run ``step`` over ``inputs`` (T, B, H) from ``state`` (inside ``frozen_parameters()`` when
    ``frozen``); also the state reached."""
    with layers.frozen_parameters() if frozen else contextlib.nullcontext():
        start = time.perf_counter()
        for u_t in inputs:
            _, state = step(u_t, state)
        return time.perf_counter() - start, state


@torch.no_grad()
def time_steppers(
    steppers: dict[str, tuple[Callable, object]], batch: int, d_model: int, steps: int, repeats: int
) -> list[dict]:
    """Time several step functions at one shape in interleaved rounds; the first is the reference of the ratios.

    Args:
        steppers: name -> (step, state) with ``step(x_t, state) -> (y_t, next state)``, x_t (B, H); the first
            entry (the bare arithmetic in this suite) is the denominator of every ``vs_bare`` ratio. A name
            ending in ``FROZEN`` is timed inside ``ssmkit.layers.frozen_parameters()`` (a generation loop).
        batch: B, the rows of every x_t.
        d_model: H, the channels of every x_t.
        steps: steps timed per entry per round (after a warm-up of steps // 4).
        repeats: rounds; each times every entry once, in order.

    Returns:
        one dict per entry: layer (its name), batch, d_model, us_per_step, tokens_per_s (medians over the
        rounds) and vs_bare (the median over the rounds of its time over the first entry's).
    """
    inputs = torch.randn(steps, batch, d_model)  # (T, B, H)
    states = {}
    for name, (step, state) in steppers.items():  # warm-up (first calls build caches and allocator pools)
        states[name] = _time_steps(step, state, inputs[: max(1, steps // 4)], name.endswith(FROZEN))[1]
    times: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(repeats):
        for name, (step, _) in steppers.items():
            seconds, states[name] = _time_steps(step, states[name], inputs, name.endswith(FROZEN))
            times[name].append(seconds / steps)
    first = times[next(iter(times))]
    rows = []
    for name, per_step in times.items():
        t = statistics.median(per_step)
        rows.append(
            {
                "layer": name,
                "batch": batch,
                "d_model": d_model,
                "us_per_step": 1e6 * t,
                "tokens_per_s": batch / t,
                "vs_bare": statistics.median(s / b for s, b in zip(per_step, first)),
            }
        )
    return rows


def measure_shape(names: list[str], batch: int, d_model: int, d_state: int, steps: int, repeats: int) -> list[dict]:
    """The bare arithmetic and the layers ``names`` at one shape (B, H, N), timed by `time_steppers`."""
    torch.manual_seed(0)
    steppers: dict[str, tuple[Callable, object]] = {BARE: bare_stepper(batch, d_model, d_state)}
    for name in names:
        layer = build_for_bench(name, d_model, d_state).eval()
        steppers[name] = (layer.step, layer.initial_state(batch))
        steppers[name + FROZEN] = (layer.step, layer.initial_state(batch))
    rows = time_steppers(steppers, batch, d_model, steps, repeats)
    for r in rows:
        r["d_state"] = d_state
    return rows


def main(argv: list[str] | None = None, prog: str = "python -m ssmkit.bench step") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--layers", nargs="+", default=layers.available(), choices=layers.available(),
                        help="layers to time (default: every registered layer)")
    parser.add_argument("--batch", nargs="+", type=positive_int, default=[1, 8], help="batch sizes B (default 1 8)")
    parser.add_argument("--d-model", nargs="+", type=positive_int, default=[128, 256], help="channels H (default 128 256)")
    parser.add_argument("--d-state", type=positive_int, default=64, help="state size N = d_state (default 64)")
    parser.add_argument("--steps", type=positive_int, default=400, help="steps timed per layer per round (default 400)")
    parser.add_argument("--repeats", type=positive_int, default=7, help="interleaved rounds; medians over them (default 7)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    problem = unbuildable([(f"layer {name} at d_model {d_model}, d_state {args.d_state}", name, d_model, args.d_state,
                            None) for d_model in args.d_model for name in args.layers])
    if problem:  # before anything is timed (ssmkit.bench.core.unbuildable)
        parser.error(problem)
    print(f"ssmkit bench step: N={args.d_state}, float32, no_grad, {args.steps} steps x {args.repeats} rounds; "
          f"{machine()}")
    rows = []
    for batch in args.batch:
        for d_model in args.d_model:
            rows += measure_shape(args.layers, batch, d_model, args.d_state, args.steps, args.repeats)
    print("| layer | B | H | µs/step | tokens/s | x bare |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['batch']} | {r['d_model']} | {r['us_per_step']:.1f} | "
              f"{r['tokens_per_s']:,.0f} | {r['vs_bare']:.2f}x |")
    if args.json:
        from ssmkit.files import write_json

        write_json(args.json, {"d_state": args.d_state, "machine": machine(), "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
