"""Train single runs of a sysid recipe over run seeds, one after another, keep each run's validation and test
simulations, and score the two ways of combining k restarts from them: the best run by validation (``combine="best"``)
and the average of the k runs' simulations (``combine="average"``, a :class:`ssmkit.sysid.ensemble.WienerEnsemble`).

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/sysid_ensemble_seeds.py --data-folder ../shared/data/cascaded_tanks \
        --runs 0-24 --k 5 --label recipe --store runs/tanks3 [--model s4d] [--set decay=0.995 n_layers=6]

``identify(..., seed=s)`` with ``restarts = k`` trains the run seeds s·k … s·k + k − 1, so the runs 0 … 5k−1 give
``--seed`` 0 … 4 of both combinations (runs are deterministic for a given code and seed). Each run's simulations go
to ``--store/<label>.pt`` (a run already there is not trained again); one JSON line per run is printed with the machine
load (``os.getloadavg``) before and after it. The test RMSE is printed for the record: choose on validation. RMSEs
are in the benchmark's reporting units, output k × its own scale, and with several outputs the mean over them.

With k-fold validation (the Cascaded Tanks recipe's default since tanks5; ``--set validation="'kfold'"`` elsewhere,
``--set validation="'tail'"`` for the tail) run seed s holds out block s mod k of k of the estimation record (what
``identify`` trains for ``--seed`` s // k with ``Recipe.validation = "kfold"``): every run's simulation of the whole
estimation record is kept, a group's validation score is its runs' out-of-fold RMSE pooled over the k blocks, and
only the average of the k runs is scored (choosing one run would compare different blocks). Every run also stores
its simulation of the whole estimation record (``est_sims``), and the summary prints the averaged test error by level.
With runs 0 … 10k−1 it also scores ``restarts = 2k, folds = k`` per pair of groups: the best run on each block, the
average of all 2k, and the out-of-fold RMSE of the 2k-run average (each block scored by the mean of the two runs that
held it out: the estimation data's own measure of what a second run per block adds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import time

import torch

from ssmkit.sysid.benchmarks import load_benchmark
from ssmkit.sysid.commands import validation_in_units
from ssmkit.sysid.fit import fold_blocks, simulate_record, split_tail
from ssmkit.sysid.metrics import rmse
from ssmkit.sysid.recipes import recipe_for
from ssmkit.sysid.report import unit_text
from ssmkit.sysid.workflow import held_out, simulate_test, train_run
from sysid_seeds import recipe_overrides  # scripts/ is on sys.path when a script runs


def _runs(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(text)]


def _val_score(sims: list[torch.Tensor], val, n: int, bench) -> float:
    """The validation RMSE after n samples, in the reporting units: the mean over the outputs of output k's RMSE ×
    ``bench.scales[k]``."""
    return bench.mean_in_units(rmse([s[n:] for s in sims], [r.y[n:] for r in val]))


def _test_score(sims: list[torch.Tensor], bench) -> float:
    """The test RMSE after the init window, pooled over the test records, in the reporting units: the mean over the
    outputs of output k's RMSE × ``bench.scales[k]``."""
    return bench.mean_in_units(rmse(sims, [r.y for r in bench.test], n_init=bench.n_init))


def _history_val(bench, history: dict) -> float:
    """A run's best validation RMSE in the reporting units (``ssmkit sysid``'s ``best_val_rmse``)."""
    return validation_in_units(bench, history)["best_val_rmse"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", default="cascaded_tanks")
    parser.add_argument("--model", default="s4d")
    parser.add_argument("--data-folder", dest="data_folder", default=None)
    parser.add_argument("--runs", default="0-24", help="run seeds: N or LO-HI")
    parser.add_argument("--k", type=int, default=5, help="restarts per --seed")
    parser.add_argument("--set", nargs="*", default=[], help="FIELD=VALUE recipe overrides (Python literals)")
    parser.add_argument("--label", required=True)
    parser.add_argument("--store", default="runs/tanks3")
    args = parser.parse_args()
    torch.set_num_threads(1)
    changes = recipe_overrides(args.set)
    kfold = {**dataclasses.asdict(recipe_for(args.benchmark)), **changes}["validation"] == "kfold"
    recipe = dataclasses.replace(recipe_for(args.benchmark), **changes, restarts=args.k if kfold else 1,
                                 folds=args.k if kfold else None)
    bench = load_benchmark(args.benchmark, args.data_folder, train_records=recipe.train_records)
    os.makedirs(args.store, exist_ok=True)
    path = os.path.join(args.store, f"{args.label}.pt")
    store = torch.load(path) if os.path.isfile(path) else {"model": args.model, "set": changes, "runs": {}}
    train, val = held_out(bench.train, recipe) if not kfold else (list(bench.train), None)
    n_enc = None
    for seed in _runs(args.runs):
        if seed in store["runs"]:
            continue
        load_before = os.getloadavg()
        start = time.perf_counter()
        fold = seed % args.k if kfold else None
        model, history = train_run(bench, args.model, recipe, train, val, seed, fold=fold)
        seconds = time.perf_counter() - start
        n_enc = model.encoder_window
        with torch.no_grad():
            est_sims = [simulate_record(model, r)[0].double() for r in bench.train]
            test_sims = [s.double() for s in simulate_test(model, bench)]
            if kfold:
                val_sims, check = [], None
            else:
                val_records = val if val is not None else split_tail(train, recipe.val_fraction, recipe.window + n_enc, n_enc + 2)[1]
                val_sims = [simulate_record(model, r)[0].double() for r in val_records]
                check = _val_score(val_sims, val_records, n_enc, bench)
        row = {"label": args.label, "model": args.model, "set": changes, "seed": seed, "fold": fold,
               "steps": history["steps"], "best_step": history["best_step"], "val": _history_val(bench, history),
               "val_check": check, "test": _test_score(test_sims, bench),
               "seconds": round(seconds, 1), "load_before": load_before, "load_after": os.getloadavg()}
        print(json.dumps(row), flush=True)
        store["runs"][seed] = {**row, "val_sims": val_sims, "est_sims": est_sims, "test_sims": test_sims, "n_enc": n_enc}
        torch.save(store, path)
    if kfold:
        summarize_kfold(store, bench, args.k)
    else:
        summarize(store, bench, recipe, train, val, args.k)
    levels(store, bench, args.k, recipe.val_fraction)


def summarize(store, bench, recipe, train, val, k: int) -> None:
    runs = store["runs"]
    groups = sorted({s // k for s in runs if all(t in runs for t in range(s // k * k, s // k * k + k))})
    rows = {"best": ([], []), "average": ([], [])}
    for g in groups:
        members = [runs[s] for s in range(g * k, g * k + k)]
        n = members[0]["n_enc"]
        val_records = val if val is not None else split_tail(train, recipe.val_fraction, recipe.window + n, n + 2)[1]
        best = min(members, key=lambda r: r["val"])
        mean_val = [torch.stack([m["val_sims"][i] for m in members]).mean(0) for i in range(len(val_records))]
        mean_test = [torch.stack([m["test_sims"][i] for m in members]).mean(0) for i in range(len(bench.test))]
        avg = (_val_score(mean_val, val_records, n, bench), _test_score(mean_test, bench))
        rows["best"][0].append(best["val"])
        rows["best"][1].append(best["test"])
        rows["average"][0].append(avg[0])
        rows["average"][1].append(avg[1])
        print(f"--seed {g}: best of {k} seed {best['seed']}: val {best['val']:.3f} test {best['test']:.3f}; "
              f"average: val {avg[0]:.3f} test {avg[1]:.3f}; steps {[m['steps'] for m in members]}, "
              f"seconds {sum(m['seconds'] for m in members):.0f}")
    singles = [runs[s] for s in sorted(runs)]
    print(f"single runs ({len(singles)}): val {statistics.mean(r['val'] for r in singles):.3f}, "
          f"test {statistics.mean(r['test'] for r in singles):.3f}")
    for name, (v, t) in rows.items():
        if len(v) > 1:
            print(f"{name} of {k} over --seed {groups}: validation {statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}, "
                  f"test {statistics.mean(t):.3f} ± {statistics.stdev(t):.3f} ({unit_text(bench)})")


def _oof(members, bench, k: int) -> float:
    """The out-of-fold RMSE of k runs (run i scored on block i of k of the estimation records), from saved simulations."""
    errors = []
    for i, m in enumerate(members):
        for b in fold_blocks([len(r) for r in bench.train], k, i):
            lo = max(b.start, m["n_enc"])
            errors.append(m["est_sims"][b.record][lo:b.stop] - bench.train[b.record].y[lo:b.stop].double())
    return bench.mean_in_units(torch.cat(errors).pow(2).mean(0).sqrt())  # output k × its scale


def _oof_average(members, bench, k: int) -> float:
    """The out-of-fold RMSE of an ensemble of 2k runs (run i and run i + k held out block i): each block scored by
    the average of the two runs that never saw it, i.e. what the 2k-run average would score there were it judged
    only where none of its judges trained (the ensemble's own held-out estimate, not one run's)."""
    errors = []
    for i in range(k):
        a, b = members[i], members[i + k]
        for blk in fold_blocks([len(r) for r in bench.train], k, i):
            lo = max(blk.start, a["n_enc"])
            sim = (a["est_sims"][blk.record][lo:blk.stop] + b["est_sims"][blk.record][lo:blk.stop]) / 2
            errors.append(sim - bench.train[blk.record].y[lo:blk.stop].double())
    return bench.mean_in_units(torch.cat(errors).pow(2).mean(0).sqrt())  # output k × its scale


def _oof_of_g(runs, groups, bench, k: int, g: int) -> float:
    """The out-of-fold RMSE of block averages of g runs: block i scored by the mean of run i of the first g groups
    (the g runs that held it out), a measure on the estimation data of what g members per block average out."""
    errors = []
    for i in range(k):
        members = [runs[grp * k + i] for grp in groups[:g]]
        for blk in fold_blocks([len(r) for r in bench.train], k, i):
            lo = max(blk.start, members[0]["n_enc"])
            sim = torch.stack([m["est_sims"][blk.record][lo:blk.stop] for m in members]).mean(0)
            errors.append(sim - bench.train[blk.record].y[lo:blk.stop].double())
    return bench.mean_in_units(torch.cat(errors).pow(2).mean(0).sqrt())  # output k × its scale


def summarize_kfold(store, bench, k: int) -> None:
    runs = store["runs"]
    groups = sorted({s // k for s in runs if all(t in runs for t in range(s // k * k, s // k * k + k))})
    vals, tests = [], []
    for g in groups:
        members = [runs[s] for s in range(g * k, g * k + k)]
        mean_test = [torch.stack([m["test_sims"][i] for m in members]).mean(0) for i in range(len(bench.test))]
        v, t = _oof(members, bench, k), _test_score(mean_test, bench)
        vals.append(v)
        tests.append(t)
        print(f"--seed {g}: k-fold validation (out of fold) {v:.3f}, average of {k}: test {t:.3f}; per fold "
              f"{[round(m['val'], 3) for m in members]}, steps {[m['steps'] for m in members]}, "
              f"seconds {sum(m['seconds'] for m in members):.0f}")
    if len(vals) > 1:
        print(f"k-fold, average of {k} over --seed {groups}: validation {statistics.mean(vals):.3f} ± "
              f"{statistics.stdev(vals):.3f}, test {statistics.mean(tests):.3f} ± {statistics.stdev(tests):.3f} ({unit_text(bench)})")
    if len(groups) > 1:
        print("out of fold, each block scored by the average of the g runs that held it out (groups "
              f"{groups[0]}…): " + ", ".join(f"g = {g}: {_oof_of_g(runs, groups, bench, k, g):.3f}"
                                          for g in range(1, len(groups) + 1)))
    # restarts = 2k, folds = k, combine = "best": --seed p trains the runs of groups 2p and 2p + 1 and keeps, on each
    # block, the run with the lower score there
    pairs = [p for p in range(len(groups) // 2) if 2 * p in groups and 2 * p + 1 in groups]
    vals, tests, avg_vals, avg_tests, ens_vals = [], [], [], [], []
    for p in pairs:
        both = [runs[s] for s in range(2 * p * k, 2 * p * k + 2 * k)]
        kept = [min((both[f], both[f + k]), key=lambda r: r["val"]) for f in range(k)]
        mean_test = [torch.stack([m["test_sims"][i] for m in kept]).mean(0) for i in range(len(bench.test))]
        vals.append(_oof(kept, bench, k))
        tests.append(_test_score(mean_test, bench))
        mean_all = [torch.stack([m["test_sims"][i] for m in both]).mean(0) for i in range(len(bench.test))]
        avg_vals.append(math.sqrt((_oof(both[:k], bench, k) ** 2 + _oof(both[k:], bench, k) ** 2) / 2))  # same blocks
        avg_tests.append(_test_score(mean_all, bench))
        ens_vals.append(_oof_average(both, bench, k))
        print(f"--seed {p} (restarts {2 * k}, folds {k}): best on each block: validation {vals[-1]:.3f}, test "
              f"{tests[-1]:.3f} (kept runs {[r['seed'] for r in kept]}); average of {2 * k}: validation "
              f"{avg_vals[-1]:.3f}, out of fold averaged by block {ens_vals[-1]:.3f}, test {avg_tests[-1]:.3f}")
    if len(pairs) > 1:
        print(f"k-fold, best on each block of 2 over --seed {pairs}: validation {statistics.mean(vals):.3f} ± "
              f"{statistics.stdev(vals):.3f}, test {statistics.mean(tests):.3f} ± {statistics.stdev(tests):.3f}; "
              f"average of {2 * k}: validation {statistics.mean(avg_vals):.3f} ± {statistics.stdev(avg_vals):.3f} "
              f"(out of fold averaged by block {statistics.mean(ens_vals):.3f} ± {statistics.stdev(ens_vals):.3f}), "
              f"test {statistics.mean(avg_tests):.3f} ± {statistics.stdev(avg_tests):.3f} ({unit_text(bench)})")


def _by_level(e: torch.Tensor, y: torch.Tensor) -> str:
    parts = []
    for lo, hi in ((0, 4), (4, 8), (8, 9.5), (9.5, 11)):
        m = (y >= lo) & (y < hi)
        if m.any():
            parts.append(f"[{lo}, {hi}) V (n {int(m.sum())}): RMSE {float(e[m].pow(2).mean().sqrt()):.3f}, "
                         f"bias {float(e[m].mean()):+.3f}")
    return "; ".join(parts)


def levels(store, bench, k: int, val_fraction: float = 0.2) -> None:
    """The error by measured level, pooled over the complete groups: on the test record for the k-run averages, and
    on the estimation record for single runs, each scored only where it did not train (its fold with k-fold
    validation, the validation tail otherwise)."""
    runs = store["runs"]
    groups = sorted({s // k for s in runs if all(t in runs for t in range(s // k * k, s // k * k + k))})
    if not groups or bench.name != "cascaded_tanks":
        return
    errs, ys, est_errs, est_ys = [], [], [], []
    y = bench.test[0].y[bench.n_init:, 0].double()
    y_est = bench.train[0].y[:, 0].double()
    n_est = len(y_est)
    for g in groups:
        sim = torch.stack([runs[s]["test_sims"][0] for s in range(g * k, g * k + k)]).mean(0)[bench.n_init:, 0]
        errs.append(sim - y)
        ys.append(y)
        for s in range(g * k, g * k + k):
            run = runs[s]
            if run.get("fold") is not None:
                b = fold_blocks([n_est], k, run["fold"])[0]
                lo, hi = max(b.start, run["n_enc"]), b.stop
            else:  # the tail's samples, simulated from the record's start (as the test is)
                lo, hi = int(round(n_est * (1 - val_fraction))), n_est
            est_errs.append(run["est_sims"][0][lo:hi, 0] - y_est[lo:hi])
            est_ys.append(y_est[lo:hi])
    print("test error of the averages by level: " + _by_level(torch.cat(errs), torch.cat(ys)))
    print("held-out estimation error of single runs (simulated from the record's start) by level: "
          + _by_level(torch.cat(est_errs), torch.cat(est_ys)))


if __name__ == "__main__":
    main()
