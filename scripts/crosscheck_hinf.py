"""Cross-check of the certified H-infinity norm on layers' exported banks: against the grid search and python-control.

    PYTHONPATH=src OPENBLAS_NUM_THREADS=1 python scripts/crosscheck_hinf.py [--channels 16] [--d-state 64]

For S4D (legs, inv), S4 (legs) and DSS at their default initialisations, and for the same layers with Δ pushed to the
slow end (Δ = 1e-4: poles within 1e-4 of the unit circle), prints per layer: the largest relative gap between the
certified value and the grid search, whether any grid value exceeds the certified upper bound, the largest gap to
python-control's ``norm(sys, "inf", tol=1e-10)`` (its scipy bisection), and the time of each method.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import ssmkit.layers as layers


def check(name: str, layer) -> dict:
    ss = layer.state_space()
    t0 = time.perf_counter()
    bounds = ss.hinf_bounds()
    t1 = time.perf_counter()
    grid = ss.hinf_norm("grid")
    t2 = time.perf_counter()
    row = {
        "layer": name,
        "systems": ss.nsystems,
        "states": ss.nstates,
        "max |cert - grid| / cert": float(np.max(np.abs(bounds[:, 0] - grid) / bounds[:, 0])),
        "grid above upper bound": bool(np.any(grid > bounds[:, 1])),
        "certified s": t1 - t0,
        "grid s": t2 - t1,
    }
    try:
        import control

        t3 = time.perf_counter()
        theirs = np.array([control.norm(s, p="inf", tol=1e-10) for s in ss.to_control()])
        row["max |cert - control| / cert"] = float(np.max(np.abs(bounds[:, 0] - theirs) / bounds[:, 0]))
        row["control s"] = time.perf_counter() - t3
    except ImportError:
        row["max |cert - control| / cert"] = None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--d-state", dest="d_state", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    H, N = args.channels, args.d_state
    cases = [
        ("s4d legs", layers.build("s4d", d_model=H, d_state=N, init="legs", dtype=torch.float64)),
        ("s4d inv", layers.build("s4d", d_model=H, d_state=N, init="inv", dtype=torch.float64)),
        ("s4 legs", layers.build("s4", d_model=H, d_state=N, dtype=torch.float64)),
        ("dss exp", layers.build("dss", d_model=H, d_state=N, dtype=torch.float64)),
    ]
    slow = []
    for name, layer in cases:
        if name.startswith(("s4d", "s4 ")):
            copy = layers.build(name.split()[0], d_model=H, d_state=N, dtype=torch.float64,
                                **({"init": name.split()[1]} if name.startswith("s4d") else {}))
            with torch.no_grad():
                copy.load_state_dict(layer.state_dict())
                copy.log_dt.fill_(float(np.log(1e-4)))
            slow.append((f"{name}, Δ = 1e-4", copy))
    rows = [check(name, layer) for name, layer in cases + slow]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r.get(k):.3g}" if isinstance(r.get(k), float) else str(r.get(k)) for k in keys) + " |")


if __name__ == "__main__":
    main()
