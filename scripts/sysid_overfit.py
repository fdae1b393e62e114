"""Overfit check on Cascaded Tanks: how closely can the recipe's deep Wiener model fit the estimation record itself?

    PYTHONPATH=src python scripts/sysid_overfit.py --data-folder ../shared/data/cascaded_tanks --steps 3000 \
        [--lr 3e-3] [--schedule cosine] [--timescale 4 400] [--encoder 50] [--float64] [--no-clip]

No validation split: one window = the whole estimation record (after the encoder's window, or from rest with the
same number of samples washed out), batch 1, ``fit_simulation``. Prints the estimation-record RMSE (mV, after the
first ``--encoder`` samples, or after 50 samples from rest) every ``--report`` steps, and the test RMSE (V) at the
end, for the record only (an overfit model is not expected to generalise). One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from ssmkit.sysid.benchmarks import load_benchmark
from ssmkit.sysid.fit import SimulationFit, fit_simulation, simulate_record
from ssmkit.sysid.metrics import rmse
from ssmkit.sysid.recipes import recipe_for
from ssmkit.sysid.workflow import build_model, evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-folder", required=True)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--ssm-lr", type=float, default=None, help="the SSM parameters' rate (default: the layer's 1e-3)")
    p.add_argument("--schedule", default="constant", choices=("constant", "cosine"))
    p.add_argument("--timescale", type=float, nargs=2, default=(4.0, 400.0),
                   help="τ range in seconds (DeepWiener's time unit, Δ = Ts/τ); the default is the Δ·Ts range 0.04-4 s "
                   "of docs/results.md's runs (τ = Ts²/(Δ·Ts), Ts = 4 s)")
    p.add_argument("--encoder", type=int, default=50, help="encoder window (0: from rest, 50 samples washed out)")
    p.add_argument("--d-model", type=int, default=8)
    p.add_argument("--d-state", type=int, default=8)
    p.add_argument("--float64", action="store_true")
    p.add_argument("--no-clip", action="store_true", help="no gradient-norm clipping (default: clip at 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", type=int, default=500)
    args = p.parse_args()

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    bench = load_benchmark("cascaded_tanks", args.data_folder)
    recipe = recipe_for("cascaded_tanks")
    recipe = type(recipe)(**{**recipe.__dict__, "timescale": tuple(args.timescale), "encoder_window": args.encoder,
                             "d_model": args.d_model, "d_state": args.d_state, "ssm_lr": args.ssm_lr})
    dtype = torch.float64 if args.float64 else None
    torch.manual_seed(args.seed)
    model = build_model(bench, "s4d", recipe, dtype=dtype)
    record = bench.train[0]
    skip = args.encoder or 50
    window = len(record) - args.encoder
    start, log = time.perf_counter(), []
    cfg = SimulationFit(window=window, batch_size=1, steps=args.steps, lr=args.lr, val_fraction=0.0,
                        washout=0 if args.encoder else 50, patience=None, seed=args.seed, schedule=args.schedule,
                        grad_clip=None if args.no_clip else 1.0)

    def estimation_rmse() -> float:
        with torch.no_grad():
            y_sim, _ = simulate_record(model, record)
        return float(rmse(y_sim[skip:], record.y[skip:].to(y_sim.dtype))) * 1000  # mV

    history = fit_simulation(model, [record], config=cfg)
    losses = history["train_loss"]
    for k in range(args.report, args.steps + 1, args.report):
        log.append((k, losses[k - 1]))
    seconds = time.perf_counter() - start
    est = estimation_rmse()
    test = evaluate(model, bench)["records"][0]["rmse"][0]
    for k, loss in log:
        print(f"step {k}: training loss (normalised MSE) {loss:.3e}  ~ {loss ** 0.5 * float(model.y_std) * 1000:.1f} mV")
    print(json.dumps({"args": vars(args), "estimation_rmse_mV": est, "test_rmse_V": test, "seconds": seconds,
                      "uptime": os.getloadavg()}))


if __name__ == "__main__":
    main()
