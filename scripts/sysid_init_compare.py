"""Compare initialisations of a deep Wiener model's first layer on Bouc-Wen: HiPPO (S4D-LegS, the default), the
LRU ring (|z| in [0.1, 0.95], phase in [0, 2π), Bonassi et al.'s setting) and data-driven (PO-MOESP poles of the
training data, ssmkit.sysid.init: ``data`` at the order read off the singular values, ``dataK`` at order K; modes
beyond the estimate stay HiPPO). Same model, data, seeds and budget for each; prints a Markdown table of the
multisine-test RMSE before training and after, plus the data-driven poles.

    PYTHONPATH=src python scripts/sysid_init_compare.py --data ../shared/data/bouc_wen --steps 300 --seeds 0 1

Small by default (2 blocks, d_model 8, d_state 16, 1 training period): a machine-independent step budget, not a
tuned result.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from ssmkit.sysid.benchmarks import bouc_wen
from ssmkit.sysid.fit import SimulationFit, fit_simulation, simulate_record
from ssmkit.sysid.init import init_from_data, modes, ring_poles, set_discrete_poles, subspace_poles
from ssmkit.sysid.metrics import rmse
from ssmkit.sysid.wiener import DeepWiener


def build(init: str, seed: int, train, d_model: int, d_state: int, layers: int) -> DeepWiener:
    torch.manual_seed(seed)
    model = DeepWiener(1, 1, d_model=d_model, n_layers=layers, layer="s4d", layer_options={"d_state": d_state},
                       dt=train[0].dt)
    model.set_normalisation([r.u for r in train], [r.y for r in train])
    if init == "ring":
        set_discrete_poles(model.layers[0], modes(ring_poles(d_state // 2, 0.1, 0.95, 2 * math.pi, seed=seed), d_state // 2))
    elif init.startswith("data"):  # "data": order from the singular values; "dataK": order K
        init_from_data(model, train, method="subspace", order=int(init[4:]) if init[4:] else None)
    return model


def test_rmse(model: DeepWiener, bench) -> float:
    with torch.no_grad():
        y, _ = simulate_record(model, bench.test[0])
    return float(rmse(y, bench.test[0].y.to(y.dtype)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder of the Bouc-Wen test files")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--periods", type=int, default=1, help="training periods of 8192 samples")
    parser.add_argument("--d-model", type=int, default=8)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--inits", nargs="+", default=["hippo", "ring", "data", "data4", "data16"],
                        help="hippo, ring, data (order from the singular values) or dataK (order K)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    bench = bouc_wen(args.data, train_periods=args.periods)
    print(f"training data simulated in {time.perf_counter() - t0:.0f} s")
    train = bench.train
    z = modes(subspace_poles(train, None, max_order=args.d_state), args.d_state // 2)
    fs = 1 / bench.dt
    print("data-driven modes (f Hz, ζ):", ", ".join(
        f"({abs(np.angle(p)) * fs / (2 * math.pi):.2f}, {-math.log(abs(p)) / math.hypot(math.log(abs(p)), np.angle(p)):.4f})" for p in z))
    cfg = SimulationFit(window=256, batch_size=16, steps=args.steps, lr=3e-3, val_fraction=0.2, val_every=50,
                        patience=None, washout=32)
    rows = []
    for init in args.inits:
        for seed in args.seeds:
            model = build(init, seed, train, args.d_model, args.d_state, args.layers)
            before = test_rmse(model, bench)
            t = time.perf_counter()
            hist = fit_simulation(model, train, config=SimulationFit(**{**cfg.__dict__, "seed": seed}))
            after = test_rmse(model, bench)
            rows.append((init, seed, before, after, hist["best_val_rmse"], hist["best_step"], time.perf_counter() - t))
            print(f"{init} seed {seed}: test RMSE {before:.3e} -> {after:.3e} m ({time.perf_counter() - t:.0f} s)", flush=True)
    print("\n| init | seed | test RMSE at init (m) | test RMSE after training (m) | best val RMSE (m) | best step | s |")
    print("|---|---|---|---|---|---|---|")
    for init, seed, before, after, val, step, sec in rows:
        print(f"| {init} | {seed} | {before:.3e} | {after:.3e} | {val:.3e} | {step} | {sec:.0f} |")


if __name__ == "__main__":
    main()
