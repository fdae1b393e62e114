"""Calibration of ``auto``: the chunked scan against the FFT path of :func:`ssmkit.ops.scan.ssm_scan` over L.

    ssmkit bench crossover [--batch 8] [--d-model 128] [--d-state 64] [--length 256 512 ... 65536]
                           [--repeats 5] [--device cpu] [--json PATH]

Times ``ssm_scan(..., backend="chunked")`` and ``backend="fft"`` on S4D-like discrete matrices (random stable
complex Ā, N/2 modes, float32), forward with and without the final state, in interleaved rounds, on this
machine's device (``--device``), and prints per L the ratio fft / chunked and the entries of
:data:`ssmkit.ops.scan.FFT_LENGTHS` it implies: the range [lo, hi) of the longest run of consecutive measured L
where the FFT path was faster (the first of equally long runs; a win outside it is left to the chunked scan), or
None when it never was; ``--json`` records the rows, the entries and the device type they are keyed by. Run it on
a QUIET machine (docs/benchmarks.md) and copy the printed entries into ``FFT_LENGTHS``; the measured table goes into
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse

import torch

from ssmkit.bench import positive_int
from ssmkit.bench.core import machine
from ssmkit.bench.limits import median, time_interleaved
from ssmkit.ops.scan import ssm_scan

DEFAULT_LENGTHS = [256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]


def scan_problem(batch: int, d_model: int, d_state: int, length: int, device: str = "cpu"):
    """u (B, L, H) float32 and complex64 Ā, B̄, C (H, N/2) of a stable diagonal SSM, and D (H,)."""
    g = torch.Generator().manual_seed(0)
    H, M = d_model, max(1, d_state // 2)
    radius = 1 - torch.rand(H, M, generator=g) * 0.1  # |Ā| in (0.9, 1]: long memory, as S4D's small Δ
    A_bar = torch.polar(radius.clamp(max=0.9999), torch.rand(H, M, generator=g) * torch.pi)
    B_bar = torch.randn(H, M, dtype=torch.complex64, generator=g)
    C = torch.randn(H, M, dtype=torch.complex64, generator=g)
    D = torch.randn(H, generator=g)
    u = torch.randn(batch, length, H, generator=g)
    return tuple(t.to(device) for t in (u, A_bar, B_bar, C, D))


def fft_span(ratios: dict[int, float]) -> tuple[int, int | None] | None:
    """The range [lo, hi) of lengths where fft / chunked < 1, from the measured ratios; None if it never is.

    The longest run of consecutive measured lengths where the FFT path won; hi is the next measured length
    after the run (None when the run reaches the longest length measured).

    Args:
        ratios: L -> fft time / chunked time.
    """
    Ls = sorted(ratios)
    best: tuple[int, int] | None = None
    i = 0
    while i < len(Ls):
        if ratios[Ls[i]] < 1:
            j = i
            while j + 1 < len(Ls) and ratios[Ls[j + 1]] < 1:
                j += 1
            if best is None or j - i > best[1] - best[0]:
                best = (i, j)
            i = j + 1
        else:
            i += 1
    if best is None:
        return None
    lo, hi = best
    return Ls[lo], (Ls[hi + 1] if hi + 1 < len(Ls) else None)


def main(argv: list[str] | None = None, prog: str = "python -m ssmkit.bench crossover") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--d-model", type=positive_int, default=128)
    parser.add_argument("--d-state", type=positive_int, default=64)
    parser.add_argument("--length", nargs="+", type=positive_int, default=DEFAULT_LENGTHS)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1; got {args.repeats}")
    print(f"ssmkit bench crossover: B={args.batch}, H={args.d_model}, N={args.d_state}, float32, forward; {machine()}")
    rows = []
    for L in args.length:
        u, A_bar, B_bar, C, D = scan_problem(args.batch, args.d_model, args.d_state, L, args.device)
        fns = {}
        for backend in ("chunked", "fft"):
            for state in (True, False):
                def run(backend=backend, state=state):
                    with torch.no_grad():
                        ssm_scan(u, A_bar, B_bar, C, D=D, return_state=state, backend=backend)
                    if args.device != "cpu":
                        torch.cuda.synchronize()
                fns[(backend, state)] = run
        times = time_interleaved(fns, args.repeats)
        for state in (True, False):
            c, f = median(times[("chunked", state)]), median(times[("fft", state)])
            rows.append({"length": L, "return_state": state, "chunked_s": c, "fft_s": f, "fft_over_chunked": f / c})
    print("| L | state | chunked ms | fft ms | fft / chunked |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['length']} | {'yes' if r['return_state'] else 'no'} | {1e3 * r['chunked_s']:.2f} | "
              f"{1e3 * r['fft_s']:.2f} | {r['fft_over_chunked']:.2f} |")
    device = torch.device(args.device).type
    entries = {}
    for state in (True, False):
        span = fft_span({r["length"]: r["fft_over_chunked"] for r in rows if r["return_state"] == state})
        entries[state] = span
        print(f"FFT_LENGTHS[({device!r}, {state})] = {span!r}   # ssmkit/ops/scan.py")
    if args.json:
        from ssmkit.files import write_json

        write_json(args.json, {"machine": machine(), "device": device, "batch": args.batch, "d_model": args.d_model,
                               "d_state": args.d_state, "rows": rows,
                               "fft_lengths": {str(k): v for k, v in entries.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
