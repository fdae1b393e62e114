"""``python -m ssmkit.bench SUITE [options]``: run a benchmark suite (the same as ``ssmkit bench``)."""

from __future__ import annotations

import argparse
import sys

from ssmkit.bench import add_suite_parsers, run


def main(argv: list[str] | None = None) -> int:
    from ssmkit.memory import keep_freed_memory_from_env

    keep_freed_memory_from_env()  # as the ssmkit command does (ssmkit.memory; SSMKIT_KEEP_FREED_MEMORY=0: off)
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m ssmkit.bench", description="Run an ssmkit performance suite.")
    add_suite_parsers(parser)
    args, rest = parser.parse_known_args(argv)
    return run(args.suite, rest, prog=f"python -m ssmkit.bench {args.suite}")


if __name__ == "__main__":
    raise SystemExit(main())
