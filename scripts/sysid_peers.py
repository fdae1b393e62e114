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

``--records recipe`` trains every tool on the records ssmkit's recipe trains on (Bouc-Wen: the recipe's 17 simulated
5-period realisations, seeds 0, 2, ..., 32, the first 16 trained on whole and the last period of the 17th held out
for validation, simulated from rest: ``ssmkit.sysid.workflow.held_out``); ``--records tail`` (the default) keeps the
first sessions' split (one record, its last ``val_fraction`` held out). Several records are never concatenated:
deepSI takes them as a list (its windows never cross a record's end) and dynoNet simulates them as one batch of
separate sequences, each from zero initial conditions.

deepSI saves checkpoints under ``~/.deepSI-checkpoints``: set HOME to a scratch folder to keep them elsewhere.

The budget: the recipe's number of optimizer steps, its validation split (the tail ``val_fraction`` of the
estimation record) and validation every ``val_every`` steps with the best weights kept, for every tool. Each tool
keeps its own batch convention: SUBNET draws ``subnet_batch`` windows of T = ``subnet_T`` samples (deepSI's
defaults are 256 and 50), dynoNet simulates the whole estimation part every step (its papers' setting).

Models (the tools' published settings for these benchmarks, scaled to the budget):
- SUBNET (Beintema et al., deepSI 0.4.x): nx states, MLP_res_net f/h/encoder, encoder window na = nb = the
  benchmark's init window (Cascaded Tanks: 50) or 20 samples of zero-padded rest before the record (Bouc-Wen, whose
  official test has no init window; ssmkit's model also starts from rest there).
- dynoNet (Forgione & Piga), ``--dynonet-structure small`` (the default): G1(1→8, nb = na = 3) → F (8→4, 10 tanh
  units) → G2(4→1, 3, 3) plus a parallel linear G(1→1, 3, 3), a smaller Wiener-Hammerstein-plus-linear structure;
  ``--dynonet-structure paper``: the structure of the dynoNet paper's Bouc-Wen section (arXiv 2006.02250 §5.2; its
  ``examples/BW/BW_train.py``): G1(1→8, nb = na = 3, one input delay) → F1(8→4, 10 tanh units) → G2(4→4, 3, 3) →
  F2(4→1, 10 tanh units), plus a parallel G3(1→1, nb = na = 2, one input delay); the paper trains it 10 000 Adam
  steps at lr 2e-3 on the whole record with the first 300 samples out of the loss (``--dynonet-lr 2e-3
  --dynonet-skip 300``). Both from zero initial conditions (dynoNet has no state estimation) on inputs and outputs
  normalised by the estimation statistics.
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
from ssmkit.sysid.report import unit_text
from ssmkit.sysid.workflow import held_out, periodic_steady_state


def run_subnet(bench, train, val, steps: int, val_every: int, T: int, batch: int, nx: int, seed: int,
               device: str = "cpu"):
    """Train deepSI's SUBNET on ``device`` (deepSI's own option; it hands the model back on the CPU, where the test
    records are simulated); return (one simulation per test record, seconds)."""
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
    model = deepSI.SUBNET(nu, ny, norm, nx=nx, nb=n_past, na=n_past).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    deepSI.fit(model, tr, va, n_its=steps, T=min(T, min(len(r) for r in train) - n_past - 1), batch_size=batch,
               val_freq=val_every, optimizer=optimizer, device=device)
    model.cpu()
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


class DynoNetPaperBW(torch.nn.Module):
    """G1 → F1 → G2 → F2 plus a parallel G3 (the dynoNet paper's Bouc-Wen structure, arXiv 2006.02250 §5.2)."""

    def __init__(self, m: int, p: int):
        super().__init__()
        from dynonet.lti import MimoLinearDynamicalOperator
        from dynonet.static import MimoStaticNonLinearity

        self.g1 = MimoLinearDynamicalOperator(m, 8, n_b=3, n_a=3, n_k=1)
        self.f1 = MimoStaticNonLinearity(8, 4, n_hidden=10, activation="tanh")
        self.g2 = MimoLinearDynamicalOperator(4, 4, n_b=3, n_a=3)
        self.f2 = MimoStaticNonLinearity(4, p, n_hidden=10, activation="tanh")
        self.g3 = MimoLinearDynamicalOperator(m, p, n_b=2, n_a=2, n_k=1)

    def forward(self, u):
        return self.f2(self.g2(self.f1(self.g1(u)))) + self.g3(u)


DYNONET_STRUCTURES = {"small": DynoNetWHL, "paper": DynoNetPaperBW}


def batch_records(records: list[IORecord]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Group records into batches of separate sequences (never concatenated): records of equal length are stacked.

    Args:
        records: the records.

    Returns:
        [(u (R, L, m), y (R, L, p)) per distinct length L], in the order the lengths first occur.
    """
    if not records:
        raise ValueError("batch_records needs at least one record")
    groups: dict[int, list[IORecord]] = {}
    for r in records:
        groups.setdefault(len(r), []).append(r)
    return [(torch.stack([r.u for r in g]), torch.stack([r.y for r in g])) for g in groups.values()]


def run_dynonet(bench, train, val, steps: int, val_every: int, seed: int, lr: float, structure: str = "small",
                skip: int = 0, records_per_step: int = 0):
    """Train dynoNet on the whole estimation records per step (one batch of separate sequences, each from zero
    initial conditions; the first ``skip`` samples of each out of the loss), or with ``records_per_step`` = k > 0 on
    k of them drawn at random each step (records of equal length only); return (one simulation per test record,
    seconds)."""
    torch.manual_seed(seed)
    draw = torch.Generator().manual_seed(seed)
    uu, yy = torch.cat([r.u for r in train]), torch.cat([r.y for r in train])
    u_mean, u_std, y_mean, y_std = uu.mean(0), uu.std(0), yy.mean(0), yy.std(0)
    model = DYNONET_STRUCTURES[structure](bench.n_inputs, bench.n_outputs)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    batches = [(((u - u_mean) / u_std).float(), y) for u, y in batch_records(train)]
    n_train = sum(u.shape[0] for u, _ in batches)
    if records_per_step and (len(batches) > 1 or not 0 < records_per_step <= n_train):
        raise ValueError(f"records_per_step must be in 1..{n_train} and the records of equal length; got "
                         f"{records_per_step} for lengths {sorted({len(r) for r in train})}")

    def from_rest(u):  # dynoNet's G-blocks start from zero initial conditions
        return model(((u - u_mean) / u_std).float()[None])[0].double() * y_std + y_mean

    def sim(r):
        return from_rest(r.u)

    best, best_state, start = float("inf"), copy.deepcopy(model.state_dict()), time.perf_counter()
    for step in range(1, steps + 1):  # the mean squared normalised error over records (weighted by count) and samples
        if records_per_step:
            pick = torch.randperm(n_train, generator=draw)[:records_per_step]
            step_batches = [(batches[0][0][pick], batches[0][1][pick])]
        else:
            step_batches = batches
        loss = sum((((model(u).double() * y_std + y_mean - y) / y_std)[:, skip:] ** 2).mean() * u.shape[0]
                   for u, y in step_batches) / sum(u.shape[0] for u, _ in step_batches)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % val_every == 0 or step == steps:
            with torch.no_grad():
                score = float(rmse([sim(r) for r in val], [r.y for r in val]).mean())
            if score < best:
                best, best_state = score, copy.deepcopy(model.state_dict())
            print(f"step {step} loss {float(loss.detach()):.3g} val {score:.4g} best {best:.4g} "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
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
    parser.add_argument("--dynonet-structure", dest="dynonet_structure", choices=sorted(DYNONET_STRUCTURES),
                        default="small", help="small (G-F-G + G) or paper (the paper's Bouc-Wen G-F-G-F + G)")
    parser.add_argument("--dynonet-skip", dest="dynonet_skip", type=int, default=0,
                        help="samples at the start of each record out of dynoNet's loss (the paper's Bouc-Wen: 300)")
    parser.add_argument("--dynonet-records-per-step", dest="dynonet_records_per_step", type=int, default=0,
                        help="k > 0: dynoNet steps on k training records drawn at random (0: all, the paper's setting)")
    parser.add_argument("--records", choices=("tail", "recipe"), default="tail",
                        help="tail: one record, its tail validates; recipe: the ssmkit recipe's training records and "
                             "held-out validation record (Bouc-Wen: 16 + 1 realisations)")
    parser.add_argument("--val-every", dest="val_every", type=int, default=None,
                        help="validate every this many steps (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where SUBNET trains (deepSI's option: cpu, cuda); dynoNet's "
                        "filters run through scipy on the CPU, so dynoNet always trains on the CPU")
    parser.add_argument("--steady-state", dest="steady_state", type=int, default=1,
                        help="also score periodic test records in periodic steady state after k periods (0: off)")
    parser.add_argument("--also-skip", dest="also_skip", type=int, default=0,
                        help="also score from rest with the first N samples unscored (dynoNet's BW_test.py: 300)")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    recipe = recipe_for(args.benchmark)
    steps = args.steps or recipe.steps
    val_every = args.val_every or recipe.val_every
    if args.records == "recipe":  # the records ssmkit's recipe trains and validates on
        bench = load_benchmark(args.benchmark, args.data_folder, train_records=recipe.train_records)
        train, val = held_out(bench.train, recipe)
        if val is None:
            train, val = split_tail(bench.train, recipe.val_fraction, max(bench.n_init, 20) + 60,
                                    max(bench.n_init, 20) + 2)
    else:
        bench = load_benchmark(args.benchmark, args.data_folder)
        train, val = split_tail(bench.train, recipe.val_fraction, max(bench.n_init, 20) + 60,
                                max(bench.n_init, 20) + 2)
    print(f"training records: {[r.name for r in train]}; validation: {[r.name for r in val]}", flush=True)
    results = []
    for peer in args.peers.split(","):
        if peer == "subnet":
            sims, from_rest, seconds = run_subnet(bench, train, val, steps, val_every, args.subnet_T,
                                                  args.subnet_batch, args.subnet_nx, args.seed, args.device)
            import deepSI

            version = f"deepSI {getattr(deepSI, '__version__', _dist_version('deepsi'))}, T {args.subnet_T}, " \
                      f"batch {args.subnet_batch}, nx {args.subnet_nx}, device {args.device}"
        elif peer == "dynonet":
            sims, from_rest, seconds = run_dynonet(bench, train, val, steps, val_every, args.seed,
                                                   args.dynonet_lr, args.dynonet_structure, args.dynonet_skip,
                                                   args.dynonet_records_per_step)
            version = (f"dynonet {_dist_version('dynonet')}, {args.dynonet_structure} structure, lr {args.dynonet_lr}, "
                       f"loss skip {args.dynonet_skip}, records per step {args.dynonet_records_per_step or 'all'}")
        else:
            raise SystemExit(f"unknown peer {peer!r}: subnet or dynonet")
        scores = [{"name": r.name,
                   "rmse": in_units(bench, rmse(s, r.y, n_init=bench.n_init)),
                   "fit": per_output(fit_percent(s, r.y, n_init=bench.n_init))} for r, s in zip(bench.test, sims)]
        for entry, r, s in zip(scores, bench.test, sims):
            if args.also_skip:  # from rest, the first N samples unscored (dynoNet's BW_test.py: 300)
                skipped = rmse(s, r.y, n_init=max(bench.n_init, args.also_skip))
                entry[f"rmse_skip_{args.also_skip}"] = in_units(bench, skipped)
            if args.steady_state and r.period is not None:  # periodic steady state (not the official protocol)
                with torch.no_grad():
                    steady = periodic_steady_state(from_rest, r.u, r.period, args.steady_state)
                entry["steady_state"] = {"prime": args.steady_state,
                                         "rmse": in_units(bench, rmse(steady, r.y, n_init=bench.n_init)),
                                         "fit": per_output(fit_percent(steady, r.y, n_init=bench.n_init))}
        ys = [r.y for r in bench.test]  # every test record pooled (after each one's init window)
        overall = {"rmse": in_units(bench, rmse(sims, ys, n_init=bench.n_init)),
                   "fit": per_output(fit_percent(sims, ys, n_init=bench.n_init))}
        entry = {"peer": peer, "version": version, "steps": steps, "train_seconds": seconds, "seed": args.seed,
                 "records": args.records, "train_records": len(train), "test": scores, "test_overall": overall,
                 "load_after": os.getloadavg()}
        results.append(entry)
        print(json.dumps(entry), flush=True)
    meta = {"benchmark": bench.name, "unit": unit_text(bench), "units": list(bench.units),
            "outputs": list(bench.outputs), "n_init": bench.n_init, "val_fraction": recipe.val_fraction,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread",
            "python": sys.version.split()[0], "results": results}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(meta, f, indent=2)
    return 0


def in_units(bench, score: torch.Tensor) -> float | list[float]:
    """A per-output RMSE in the data's units, (p,) or 0-d, in the benchmark's reporting units (output k ×
    ``bench.scales[k]``), as JSON (:func:`per_output`)."""
    score = torch.atleast_1d(torch.as_tensor(score, dtype=torch.float64))
    return per_output(score * torch.tensor(bench.scales, dtype=torch.float64))


def per_output(score: torch.Tensor) -> float | list[float]:
    """A metric as JSON: a float for one output channel (a 0-d or one-element tensor), else one float per channel."""
    score = torch.atleast_1d(torch.as_tensor(score))
    return float(score[0]) if score.numel() == 1 else score.tolist()


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    raise SystemExit(main())
