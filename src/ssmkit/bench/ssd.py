"""Mamba-2 benchmark: the chunked SSD scan against its step-by-step oracle, and the Mamba-2 layer.

    ssmkit bench ssd [--batch 2] [--length 2048] [--heads 8] [--headdim 64] [--d-state 128] [--groups 1]
                     [--chunk-size 64 256] [--repeats 3] [--no-reference] [--json PATH]

Two parts, float32:

1. The ``ssd`` op (:mod:`ssmkit.ops.ssd`) on random inputs of shape x (B, L, H, P), B and C (B, L, G, N), with an
   initial state: forward (no_grad) and forward+backward of ``chunked`` at each chunk size T, of ``native`` (the C
   kernel, where it builds) and of ``reference`` (the recurrence one step at a time).
2. The ``mamba2`` layer with d_model = H·P/2 (expand 2, so its E/P heads are the op's H), the same d_state and
   groups, at the first chunk size: forward and forward+backward under ``auto`` (the C kernel on the CPU where it
   builds), ``chunked`` and ``reference``, and ``step`` (µs per token for the whole batch, no_grad).

Every variant is timed once per round and the rounds interleave them, so speed-ups over the loop compare times
taken under the same machine conditions; figures are medians over ``--repeats`` rounds after one warm-up.
``--no-reference`` skips the loops (slow at long L); speed-ups are then omitted.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

import ssmkit.layers as layers
from ssmkit.bench import positive_int
from ssmkit.bench.backward import OutputGradients
from ssmkit.bench.core import _once, machine
from ssmkit.ops import use_backend
from ssmkit.ops.native import native_available
from ssmkit.ops.ssd import ssd


def _op_inputs(batch: int, length: int, heads: int, headdim: int, d_state: int, groups: int) -> list[torch.Tensor]:
    """x (B, L, H, P), Δ (B, L, H) in (0.1, 3), A (H,) in [-3.5, -0.5], B and C (B, L, G, N), h0 (B, H, P, N)."""
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(batch, length, heads, headdim, generator=g),
        F.softplus(torch.randn(batch, length, heads, generator=g)),
        -(torch.rand(heads, generator=g) * 3 + 0.5),
        torch.randn(batch, length, groups, d_state, generator=g),
        torch.randn(batch, length, groups, d_state, generator=g),
        torch.randn(batch, heads, headdim, d_state, generator=g),
    ]


def _timers(fn_forward, fn_grad) -> dict:
    return {"forward": fn_forward, "forward_backward": fn_grad}


def op_variants(args: argparse.Namespace) -> dict[str, dict]:
    """Name -> {"forward": fn, "forward_backward": fn} for the op at every chunk size (and the loop)."""
    inputs = _op_inputs(args.batch, args.length, args.heads, args.headdim, args.d_state, args.groups)
    grads = OutputGradients()  # the backward starts from fixed ∂ℓ/∂y, ∂ℓ/∂h (ssmkit.bench.backward)

    def run(backend: str, T: int | None, grad: bool) -> None:
        leaves = [t.detach().requires_grad_(grad) for t in inputs]
        with torch.set_grad_enabled(grad):
            y, h = ssd(*leaves, chunk_size=T, backend=backend)
            if grad:
                grads.backward(y, h)

    variants = {
        f"ssd chunked T={T}": _timers(lambda T=T: run("chunked", T, False), lambda T=T: run("chunked", T, True))
        for T in args.chunk_size
    }
    if native_available("ssd", torch.float32):
        variants["ssd native"] = _timers(lambda: run("native", None, False), lambda: run("native", None, True))
    if args.reference:
        variants["ssd reference"] = _timers(lambda: run("reference", None, False), lambda: run("reference", None, True))
    return variants


def layer_variants(args: argparse.Namespace) -> tuple[dict[str, dict], object]:
    """Name -> timers for the mamba2 layer's forward under each backend, and a function timing its step."""
    torch.manual_seed(0)
    layer = layers.build(
        "mamba2", d_model=args.heads * args.headdim // 2, d_state=args.d_state, headdim=args.headdim,
        ngroups=args.groups, chunk_size=args.chunk_size[0],
    )
    x = torch.randn(args.batch, args.length, layer.d_model)
    grads = OutputGradients()

    def run(backend: str, grad: bool) -> None:
        layer.zero_grad(set_to_none=True)
        with use_backend(backend), torch.set_grad_enabled(grad):
            y, h = layer(x.detach().requires_grad_(grad))
            if grad:
                grads.backward(y, *h)

    variants = {"mamba2 auto": _timers(lambda: run("auto", False), lambda: run("auto", True)),
                "mamba2 chunked": _timers(lambda: run("chunked", False), lambda: run("chunked", True))}
    if args.reference:
        variants["mamba2 reference"] = _timers(lambda: run("reference", False), lambda: run("reference", True))
    steps = min(args.length, 64)

    @torch.no_grad()
    def step() -> None:
        state = layer.initial_state(args.batch)
        for t in range(steps):
            _, state = layer.step(x[:, t], state)

    return variants, (step, steps)


def measure(args: argparse.Namespace) -> list[dict]:
    """Every op and layer variant, interleaved over the rounds; one row per variant (medians)."""
    variants = op_variants(args)
    layer_vars, (step, steps) = layer_variants(args)
    variants.update(layer_vars)
    for timers in variants.values():  # warm-up
        timers["forward"]()
        timers["forward_backward"]()
    step()
    times = {name: {"forward": [], "forward_backward": []} for name in variants}
    step_times = []
    for _ in range(args.repeats):
        for name, timers in variants.items():
            for kind in ("forward", "forward_backward"):
                times[name][kind].append(_once(timers[kind]))
        step_times.append(_once(step) / steps)
    rows = []
    for name, t in times.items():
        ref_name = "ssd reference" if name.startswith("ssd") else "mamba2 reference"
        row = {"variant": name, "forward_s": statistics.median(t["forward"]),
               "forward_backward_s": statistics.median(t["forward_backward"])}
        for kind in ("forward", "forward_backward"):
            ref = times.get(ref_name)
            row[f"{kind}_speedup"] = (
                statistics.median(r / f for r, f in zip(ref[kind], t[kind])) if ref is not None else None
            )
        rows.append(row)
    rows.append({"variant": "mamba2 step", "us_per_token": 1e6 * statistics.median(step_times)})
    return rows


def main(argv: list[str] | None = None, prog: str = "python -m ssmkit.bench ssd") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--batch", type=positive_int, default=2, help="B (default 2)")
    parser.add_argument("--length", type=positive_int, default=2048, help="L (default 2048)")
    parser.add_argument("--heads", type=positive_int, default=8, help="H, SSD heads (default 8)")
    parser.add_argument("--headdim", type=positive_int, default=64, help="P (default 64)")
    parser.add_argument("--d-state", type=positive_int, default=128, help="N (default 128)")
    parser.add_argument("--groups", type=positive_int, default=1, help="G, groups of B and C (default 1)")
    parser.add_argument("--chunk-size", type=positive_int, nargs="+", default=[64, 256], help="chunk sizes T (default 64 256)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--no-reference", dest="reference", action="store_false", help="skip the step-by-step loops")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if (args.heads * args.headdim) % 2 or args.heads % args.groups:
        parser.error("--heads × --headdim must be even (d_model = H·P/2) and --groups must divide --heads")
    shape = (f"B={args.batch}, L={args.length}, H={args.heads}, P={args.headdim}, N={args.d_state}, "
             f"G={args.groups}")
    print(f"ssmkit bench ssd: {shape}, float32; {machine()}")
    rows = measure(args)
    print("| variant | forward ms | vs loop | forward+backward ms | vs loop |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "us_per_token" in r:
            print(f"| {r['variant']} | {r['us_per_token']:.1f} µs/token (batch {args.batch}) | | | |")
            continue
        speed = [("-" if r[k] is None else f"{r[k]:.1f}x") for k in ("forward_speedup", "forward_backward_speedup")]
        print(f"| {r['variant']} | {1e3 * r['forward_s']:.1f} | {speed[0]} | {1e3 * r['forward_backward_s']:.1f} | "
              f"{speed[1]} |")
    if args.json:
        from ssmkit.files import write_json

        write_json(args.json, {"shape": shape, "machine": machine(), "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
