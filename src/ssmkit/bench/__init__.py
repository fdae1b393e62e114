"""Performance suites, run as ``ssmkit bench SUITE [options]`` or ``python -m ssmkit.bench SUITE [options]``.

    core   forward and forward+backward of S4D and S4: fast paths against the reference loops
    step   recurrent generation: each layer's ``step`` against the bare diagonal-SSM step arithmetic
    generate  a token language model per layer: the prompt's cost and each new token's (``ssmkit.models.generate``)
    ssd    Mamba-2: the chunked SSD scan against its loop, and the mamba2 layer's forward and step
    selective  one Mamba block: the chunked selective scan against the per-step loop and mambapy, with peak memory
    gpu    the scan, SSD and selective-scan ops under every backend (triton included) against the copy bandwidth
    cases       named cases (layer × B × L × H × N × dtype × mode) against the machine's limits and the peers
    contention  each case alone, then beside N busy processes: ssmkit's and the peers' slow-downs
    crossover   the chunked scan against the FFT path over L: the entries of ``auto``'s table
    irregular   each layer that takes sampling intervals, regularly sampled and at random gaps

Each suite is a module with ``main(argv, prog) -> int`` that parses its own options; it is imported only
when run.
"""

from __future__ import annotations

import argparse
import importlib

# Suite name -> one-line summary (shown by `ssmkit bench --help`); the module is ssmkit.bench.<name>.
SUITES = {
    "core": "forward and forward+backward of S4D and S4: fast paths against the reference loops",
    "step": "recurrent step of each layer (tokens/s) against the bare diagonal-SSM step arithmetic",
    "generate": "a token language model per layer: the prompt's cost and each new token's, greedy and sampled",
    "ssd": "Mamba-2: the chunked SSD scan against its loop, and the mamba2 layer's forward and step",
    "selective": "one Mamba block: chunked selective scan against the per-step loop and mambapy, with peak memory",
    "gpu": "the scan, SSD and selective-scan ops under every backend (triton included) against the copy bandwidth",
    "cases": "named cases against the machine's copy bandwidth and GEMM rate and the peers: table, JSON, PNG",
    "contention": "each case alone, then beside N busy processes: ssmkit's and the peers' slow-downs",
    "crossover": "the chunked scan against the FFT path over L: the entries of auto's table (ssmkit.ops.scan)",
    "irregular": "each layer that takes sampling intervals, regularly sampled and at random gaps (forward, backward)",
}


def _int_at_least(text: str, low: int) -> int:
    """``text`` as an int >= ``low``, else argparse's one-line usage error naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= {low}; got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an int >= {low}; got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse ``type`` for sizes and counts (B, L, H, N, repeats): an int >= 1, else argparse's one-line usage
    error naming the value (``--d-model -4`` failed deep inside with a traceback, ``--repeats 0`` with "no median for
    empty data", after the suite had started).

    Args:
        text: the option's value as given on the command line.

    Returns:
        the int.
    """
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An argparse ``type`` for counts that may be zero (warm-up calls): an int >= 0, else argparse's usage error.

    Args:
        text: the option's value as given on the command line.

    Returns:
        the int.
    """
    return _int_at_least(text, 0)


def add_suite_parsers(parser: argparse.ArgumentParser) -> None:
    """Add one sub-command per suite to ``parser``; each passes its options (``--help`` too) to the suite."""
    suites = parser.add_subparsers(dest="suite", metavar="SUITE", required=True, title="suites")
    for name, summary in SUITES.items():
        suites.add_parser(name, help=summary, add_help=False)


def run(suite: str, argv: list[str], prog: str) -> int:
    """Run ``suite``'s ``main`` on its own options ``argv``; ``prog`` names the command in its usage line."""
    return importlib.import_module(f"ssmkit.bench.{suite}").main(argv, prog=prog)
