"""Import cost of ssmkit: wall time and peak memory (RSS) of fresh interpreters, and whether scipy.signal loads.

    python scripts/import_cost.py [--src PATH/TO/src] [--runs 7]

Each scenario runs ``--runs`` times, each in a new interpreter (so nothing is cached in the process), and
the script prints medians. The time covers the import statements (and the layer call) only, not the
interpreter's start-up; the RSS is the peak resident set of the whole process (``ru_maxrss``). ``--src``
puts another checkout's ``src`` first on the path, to compare two versions on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

# Each scenario is run as ``python -c`` after a timer starts; it ends by printing one JSON line.
SCENARIOS = {
    "import torch": "import torch",
    "import ssmkit": "import ssmkit",
    "import ssmkit; build('s4d')(x)": (
        "import torch, ssmkit, ssmkit.layers\n"
        "ssmkit.layers.build('s4d', d_model=4)(torch.randn(1, 5, 4))"
    ),
    "import ssmkit.analysis": "import ssmkit.analysis",
}

TEMPLATE = """
import resource, sys, time, json
start = time.perf_counter()
{body}
elapsed = time.perf_counter() - start
print(json.dumps({{"s": elapsed, "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "scipy_signal": "scipy.signal" in sys.modules, "scipy": "scipy" in sys.modules}}))
"""


def run_once(body: str, src: str | None) -> dict:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    done = subprocess.run(
        [sys.executable, "-c", TEMPLATE.format(body=body)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=None, help="a checkout's src directory to import ssmkit from")
    parser.add_argument("--runs", type=int, default=7, help="fresh interpreters per scenario (default 7)")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, src={args.src or '(installed ssmkit)'}, {args.runs} runs, medians")
    print("| scenario | time ms | peak RSS MiB | scipy loaded | scipy.signal loaded |")
    print("|---|---|---|---|---|")
    for name, body in SCENARIOS.items():
        runs = []
        for _ in range(args.runs):  # scenarios interleave poorly with one process each; runs go back to back
            runs.append(run_once(body, args.src))
        ms = 1e3 * statistics.median(r["s"] for r in runs)
        mib = statistics.median(r["rss_kib"] for r in runs) / 1024
        print(f"| `{name}` | {ms:.0f} | {mib:.0f} | {runs[0]['scipy']} | {runs[0]['scipy_signal']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
