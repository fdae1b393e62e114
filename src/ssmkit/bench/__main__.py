"""``python -m ssmkit.bench SUITE``: run a benchmark suite (``core``)."""

import sys

from ssmkit.bench import core

SUITES = {"core": core.main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUITES:
        print(f"usage: python -m ssmkit.bench SUITE [options]; suites: {sorted(SUITES)}", file=sys.stderr)
        return 2
    return SUITES[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
