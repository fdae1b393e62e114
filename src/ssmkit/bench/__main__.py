"""``python -m ssmkit.bench SUITE [options]``: run a benchmark suite (the same as ``ssmkit bench``)."""

from __future__ import annotations

import argparse
import sys

from ssmkit.bench import add_suite_parsers, run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m ssmkit.bench", description="Run an ssmkit performance suite.")
    add_suite_parsers(parser)
    args, rest = parser.parse_known_args(argv)
    return run(args.suite, rest, prog=f"python -m ssmkit.bench {args.suite}")


if __name__ == "__main__":
    raise SystemExit(main())
