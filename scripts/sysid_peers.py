"""Side by side: deepSI's SUBNET and dynoNet on the same benchmark, split and budget as ssmkit's deep Wiener model.

Runs in a separate environment that has ``deepsi`` and ``dynonet`` (PyPI) next to torch; ssmkit is imported from
``src`` only for the data (its loaders, the tail validation split) and the metrics, so every tool sees the same
estimation/validation/test records and is scored the same way (simulation RMSE after the benchmark's init window):

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install torch deepsi dynonet
    PYTHONPATH=src /tmp/peers/bin/python scripts/sysid_peers.py --benchmark cascaded_tanks \
        --data-folder ../shared/data/cascaded_tanks --steps 2000 --out peers-tanks.json

Periodic test records (Bouc-Wen's multisine) are also scored in periodic steady state (``--steady-state k``,
default 1: the model simulated from rest on k periods of the same input, then the record scored; not the official
protocol), and ``--also-skip N`` adds the from-rest score without the first N samples (dynoNet's own Bouc-Wen test
script leaves 300 out).

deepSI saves checkpoints under ``~/.deepSI-checkpoints``: set HOME to a scratch folder to keep them elsewhere.

The budget: the recipe's number of optimizer steps, its validation split (the tail ``val_fraction`` of the
estimation record) and validation every ``val_every`` steps with the best weights kept, for every tool. Each tool
keeps its own batch convention: SUBNET draws ``subnet_batch`` windows of T = ``subnet_T`` samples (deepSI's
defaults are 256 and 50), dynoNet simulates the whole estimation part every step (its papers' setting).

Models (the tools' published settings for these benchmarks, scaled to the budget):
- SUBNET (Beintema et al., deepSI 0.4.x): nx states, MLP_res_net f/h/encoder, encoder window na = nb = the
  benchmark's init window (Cascaded Tanks: 50) or 20 samples of zero-padded rest before the record (Bouc-Wen, whose
  official test has no init window; ssmkit's model also starts from rest there).
- dynoNet (Forgione & Piga): G1(1→8, nb = na = 3) → F (8→4, 10 tanh units) → G2(4→1, 3, 3) plus a parallel linear
  G(1→1, 3, 3), the Wiener-Hammerstein-plus-linear structure of the dynoNet Bouc-Wen example, from zero initial
  conditions (dynoNet has no state estimation) on inputs and outputs normalised by the estimation statistics.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from ssmkit.sysid.benchmarks import load_benchmark
from ssmkit.sysid.fit import split_tail
from ssmkit.sysid.metrics import fit_percent, rmse
from ssmkit.sysid.recipes import recipe_for
from ssmkit.sysid.records import IORecord
from ssmkit.sysid.workflow import periodic_steady_state


def run_subnet(bench, train, val, steps: int, val_every: int, T: int, batch: int, nx: int, seed: int):
    """Train deepSI's SUBNET; return (one simulation per test record, seconds)."""
    import deepSI
    from nonlinear_benchmarks import Input_output_data

    torch.manual_seed(seed)
    n_past = bench.n_init if bench.n_init else 20
    pad = 0 if bench.n_init else n_past

    def io(r, padded: int = 0):
        u, y = r.u.numpy(), r.y.numpy()
        if padded:
            u = np.concatenate([np.zeros((padded, u.shape[1])), u])
            y = np.concatenate([np.zeros((padded, y.shape[1])), y])
        return Input_output_data(u=u[:, 0] if u.shape[1] == 1 else u, y=y[:, 0] if y.shape[1] == 1 else y,
                                 sampling_time=r.dt, state_initialization_window_length=n_past)

    tr = [io(r, pad) for r in train]
    va = [io(r, pad) for r in val]
    nu, ny, norm = deepSI.get_nu_ny_and_auto_norm(tr)
    model = deepSI.SUBNET(nu, ny, norm, nx=nx, nb=n_past, na=n_past)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    deepSI.fit(model, tr, va, n_its=steps, T=min(T, min(len(r) for r in train) - n_past - 1), batch_size=batch,
               val_freq=val_every, optimizer=optimizer)
    seconds = time.perf_counter() - start
    def simulate(r):
        s = model.simulate(io(r, pad))
        return torch.as_tensor(np.asarray(s.y).reshape(len(r) + pad, -1)[pad:], dtype=torch.float64)

    def from_rest(u):  # for the periodic steady state: only where the encoder reads padded rest (no init window)
        if not pad:
            raise ValueError("SUBNET's encoder reads measured outputs here: no periodic steady state without them")
        return simulate(IORecord(u, torch.zeros(u.shape[0], bench.n_outputs, dtype=torch.float64), bench.dt))

    with torch.no_grad():
        return [simulate(r) for r in bench.test], from_rest, seconds


class DynoNetWHL(torch.nn.Module):
    """G1 → F → G2 plus a parallel linear G (dynoNet's Bouc-Wen structure)."""

    def __init__(self, m: int, p: int):
        super().__init__()
        from dynonet.lti import MimoLinearDynamicalOperator
        from dynonet.static import MimoStaticNonLinearity

        self.g1 = MimoLinearDynamicalOperator(m, 8, n_b=3, n_a=3)
        self.f = MimoStaticNonLinearity(8, 4, n_hidden=10)
        self.g2 = MimoLinearDynamicalOperator(4, p, n_b=3, n_a=3)
        self.lin = MimoLinearDynamicalOperator(m, p, n_b=3, n_a=3)

    def forward(self, u):
        return self.g2(self.f(self.g1(u))) + self.lin(u)


def run_dynonet(bench, train, val, steps: int, val_every: int, seed: int, lr: float):
    """Train dynoNet on the whole estimation part per step; return (one simulation per test record, seconds)."""
    torch.manual_seed(seed)
    uu, yy = torch.cat([r.u for r in train]), torch.cat([r.y for r in train])
    u_mean, u_std, y_mean, y_std = uu.mean(0), uu.std(0), yy.mean(0), yy.std(0)
    model = DynoNetWHL(bench.n_inputs, bench.n_outputs)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def from_rest(u):  # dynoNet's G-blocks start from zero initial conditions
        return model(((u - u_mean) / u_std).float()[None])[0].double() * y_std + y_mean

    def sim(r):
        return from_rest(r.u)

    best, best_state, start = float("inf"), copy.deepcopy(model.state_dict()), time.perf_counter()
    for step in range(1, steps + 1):
        loss = sum((((sim(r) - r.y) / y_std) ** 2).mean() for r in train) / len(train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % val_every == 0 or step == steps:
            with torch.no_grad():
                score = float(rmse([sim(r) for r in val], [r.y for r in val]).mean())
            if score < best:
                best, best_state = score, copy.deepcopy(model.state_dict())
    seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    with torch.no_grad():
        return [sim(r) for r in bench.test], from_rest, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", required=True)
    parser.add_argument("--data-folder", required=True)
    parser.add_argument("--peers", default="subnet,dynonet", help="comma-separated: subnet, dynonet")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the ssmkit recipe's)")
    parser.add_argument("--subnet-T", dest="subnet_T", type=int, default=50)
    parser.add_argument("--subnet-batch", dest="subnet_batch", type=int, default=256)
    parser.add_argument("--subnet-nx", dest="subnet_nx", type=int, default=8)
    parser.add_argument("--dynonet-lr", dest="dynonet_lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steady-state", dest="steady_state", type=int, default=1,
                        help="also score periodic test records in periodic steady state after k periods (0: off)")
    parser.add_argument("--also-skip", dest="also_skip", type=int, default=0,
                        help="also score from rest with the first N samples unscored (dynoNet's BW_test.py: 300)")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bench = load_benchmark(args.benchmark, args.data_folder)
    recipe = recipe_for(args.benchmark)
    steps = args.steps or recipe.steps
    train, val = split_tail(bench.train, recipe.val_fraction, max(bench.n_init, 20) + 60, max(bench.n_init, 20) + 2)
    results = []
    for peer in args.peers.split(","):
        if peer == "subnet":
            sims, from_rest, seconds = run_subnet(bench, train, val, steps, recipe.val_every, args.subnet_T, args.subnet_batch,
                                       args.subnet_nx, args.seed)
            import deepSI

            version = f"deepSI {getattr(deepSI, '__version__', _dist_version('deepsi'))}"
        elif peer == "dynonet":
            sims, from_rest, seconds = run_dynonet(bench, train, val, steps, recipe.val_every, args.seed,
                                                   args.dynonet_lr)
            version = f"dynonet {_dist_version('dynonet')}"
        else:
            raise SystemExit(f"unknown peer {peer!r}: subnet or dynonet")
        scores = [{"name": r.name,
                   "rmse": float(rmse(s, r.y, n_init=bench.n_init)) * bench.scale,
                   "fit": float(fit_percent(s, r.y, n_init=bench.n_init))} for r, s in zip(bench.test, sims)]
        for entry, r, s in zip(scores, bench.test, sims):
            if args.also_skip:  # from rest, the first N samples unscored (dynoNet's BW_test.py: 300)
                skipped = rmse(s, r.y, n_init=max(bench.n_init, args.also_skip))
                entry[f"rmse_skip_{args.also_skip}"] = float(skipped) * bench.scale
            if args.steady_state and r.period is not None:  # periodic steady state (not the official protocol)
                with torch.no_grad():
                    steady = periodic_steady_state(from_rest, r.u, r.period, args.steady_state)
                entry["steady_state"] = {"prime": args.steady_state,
                                         "rmse": float(rmse(steady, r.y, n_init=bench.n_init)) * bench.scale,
                                         "fit": float(fit_percent(steady, r.y, n_init=bench.n_init))}
        entry = {"peer": peer, "version": version, "steps": steps, "train_seconds": seconds, "test": scores}
        results.append(entry)
        print(json.dumps(entry), flush=True)
    meta = {"benchmark": bench.name, "unit": bench.unit, "n_init": bench.n_init, "val_fraction": recipe.val_fraction,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread",
            "python": sys.version.split()[0], "results": results}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(meta, f, indent=2)
    return 0


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    raise SystemExit(main())
