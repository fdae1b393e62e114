"""The ``ssmkit`` command. Subcommands so far: ``bench`` (performance suites) and ``demo``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = ("bench", "demo")
    if not argv or argv[0] not in commands:
        print(f"usage: ssmkit COMMAND [options]; commands: {', '.join(commands)}", file=sys.stderr)
        return 2
    if argv[0] == "bench":
        from ssmkit.bench.__main__ import main as bench_main

        return bench_main(argv[1:])
    from ssmkit.demo import main as demo_main

    return demo_main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
