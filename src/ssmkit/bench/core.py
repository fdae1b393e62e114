"""Core performance benchmark: fast paths of S4D, S4, S5 and LRU against their reference loops.

    ssmkit bench core [--batch 8 --d-model 128 --d-state 64 --length 4096] [--json PATH]

Times forward and forward+backward of each layer under each backend (``auto``: the default fast
path; ``fft``: kernel + FFT convolution, for the layers that have it; ``reference``: the plain recurrent loop) in one run, and
prints the speed-up of each fast path over the loop. The fast paths are also timed with
``return_state=False`` (what training runs: no final state is computed). The backends are interleaved within each of
``--repeats`` rounds; times and speed-ups are medians over the rounds.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import statistics
import time

import torch

import ssmkit.layers as layers
from ssmkit.bench import positive_int
from ssmkit.bench.backward import OutputGradients
from ssmkit.ops import use_backend

LAYERS = ("s4d", "s4", "s5", "lru")
BACKENDS = ("auto", "chunked", "fft", "reference")  # auto: the C kernel on the CPU where it builds


def _once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_options(name: str, d_state: int, length: int | None = None) -> dict:
    """The options the suites build layer ``name`` with: ``d_state`` when the layer has a state size (attention has
    none), and ``l_max = length`` when given and the layer has an ``l_max`` (S4 attunes C̃ to it: a shorter one costs
    a doubling in every call; the official S4 is timed with ``l_max = L`` too).

    Args:
        name: a registered layer.
        d_state: N.
        length: L, or None.
    """
    params = inspect.signature(layers.layer_class(name)).parameters
    options = {"d_state": d_state} if "d_state" in params else {}
    if length is not None and "l_max" in params:
        options["l_max"] = length
    return options


def build_for_bench(name: str, d_model: int, d_state: int, length: int | None = None) -> layers.SequenceLayer:
    """Layer ``name`` with ``d_model`` channels and :func:`bench_options`."""
    return layers.build(name, d_model=d_model, **bench_options(name, d_state, length))


def unbuildable(specs: list[tuple[str, str, int, int, int | None]]) -> str | None:
    """The first spec whose layer rejects its shape, as ``"<label>: <the layer's error>"``, else None.

    The suites call it before anything is timed: a layer that rejects a shape (S5 at ``--d-state 8``: its HiPPO blocks
    need a multiple of 16; Mamba-2 at a d_model whose inner channels its heads do not divide) ended the run when its
    turn came, after everything before it had been timed, and nothing was printed or written. Each distinct (layer,
    d_model, d_state, length) is built once.

    Args:
        specs: (label naming it for the user, layer, d_model, d_state, length or None) per layer the run builds.
    """
    seen = set()
    for label, *key in specs:
        if tuple(key) in seen:
            continue
        seen.add(tuple(key))
        try:
            build_for_bench(*key)
        except ValueError as e:
            return f"{label}: {e}"
    return None


def measure_layer(name: str, batch: int, d_model: int, d_state: int, length: int, repeats: int) -> list[dict]:
    """Forward and forward+backward seconds of one layer under every backend, interleaved.

    Each repeat times every backend once, the reference loop included, so that the speed-up of a fast
    path is a ratio of times taken under the same machine conditions (this shared VM drifts by ±50 %
    over minutes); the figures are medians over the repeats, after one warm-up of the fast paths.
    """
    torch.manual_seed(0)
    layer = build_for_bench(name, d_model, d_state, length)
    x = torch.randn(batch, length, d_model)
    backends = [b for b in BACKENDS if b == "auto" or b in layer.backends]  # S5 and LRU have no fft path
    grads = OutputGradients()  # the backward starts from fixed ∂ℓ/∂y, ∂ℓ/∂h (ssmkit.bench.backward)

    def forward(return_state: bool = True) -> None:
        with torch.no_grad():
            layer(x, return_state=return_state)

    def forward_backward(return_state: bool = True) -> None:
        layer.zero_grad(set_to_none=True)
        xg = x.detach().requires_grad_()
        grads.backward(*layer(xg, return_state=return_state))  # y, and h unless return_state=False

    kinds = ("forward", "forward_backward", "forward_no_state", "forward_backward_no_state")
    times: dict[str, dict[str, list[float]]] = {b: {k: [] for k in kinds} for b in backends}
    for backend in backends[:-1]:
        with use_backend(backend):
            forward()
            forward_backward()
    for _ in range(repeats):
        for backend in backends:
            with use_backend(backend):
                times[backend]["forward"].append(_once(forward))
                times[backend]["forward_backward"].append(_once(forward_backward))
                if backend != "reference":  # the loop computes its state anyway
                    times[backend]["forward_no_state"].append(_once(lambda: forward(False)))
                    times[backend]["forward_backward_no_state"].append(_once(lambda: forward_backward(False)))
    ref = times["reference"]
    rows = []
    for backend in backends:
        t = times[backend]
        rows.append(
            {
                "layer": name,
                "backend": backend,
                "forward_s": statistics.median(t["forward"]),
                "forward_backward_s": statistics.median(t["forward_backward"]),
                "forward_no_state_s": statistics.median(t["forward_no_state"]) if t["forward_no_state"] else None,
                "forward_backward_no_state_s": (
                    statistics.median(t["forward_backward_no_state"]) if t["forward_backward_no_state"] else None
                ),
                "forward_speedup": statistics.median(r / f for r, f in zip(ref["forward"], t["forward"])),
                "forward_backward_speedup": statistics.median(
                    r / f for r, f in zip(ref["forward_backward"], t["forward_backward"])
                ),
            }
        )
    return rows


def machine() -> str:
    """One line naming the machine, torch version, thread count and OpenMP wait settings (``OMP_WAIT_POLICY``,
    ``GOMP_SPINCOUNT``: they decide how a call fares beside other busy processes; docs/benchmarks.md, 2026-12-01)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    waits = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ)
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{waits or 'default OpenMP wait policy'}")


def main(argv: list[str] | None = None, prog: str = "python -m ssmkit.bench core") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--d-model", type=positive_int, default=128)
    parser.add_argument("--d-state", type=positive_int, default=64)
    parser.add_argument("--length", type=positive_int, default=4096)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=layers.available())
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    problem = unbuildable([(f"layer {name} at d_model {args.d_model}, d_state {args.d_state}, length {args.length}",
                            name, args.d_model, args.d_state, args.length) for name in args.layers])
    if problem:
        parser.error(problem)
    shape = f"B={args.batch}, H={args.d_model}, N={args.d_state}, L={args.length}"
    print(f"ssmkit bench core: {shape}; {machine()}")
    rows = []
    for name in args.layers:
        rows += measure_layer(name, args.batch, args.d_model, args.d_state, args.length, args.repeats)
    print("| layer | backend | forward ms | vs loop | forward+backward ms | vs loop | forward, no state | "
          "fwd+bwd, no state |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        extra = [r["forward_no_state_s"], r["forward_backward_no_state_s"]]
        extra_text = " | ".join("-" if v is None else f"{1e3 * v:.1f}" for v in extra)
        print(
            f"| {r['layer']} | {r['backend']} | {1e3 * r['forward_s']:.1f} | {r['forward_speedup']:.1f}x | "
            f"{1e3 * r['forward_backward_s']:.1f} | {r['forward_backward_speedup']:.1f}x | {extra_text} |"
        )
    if args.json:
        from ssmkit.files import write_json

        write_json(args.json, {"shape": shape, "machine": machine(), "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
