"""Run one sysid recipe over several seeds, one after another, and print per-seed validation and test RMSE with their
mean ± sample std (the test RMSE is printed for the record; choose recipes on the validation column).

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/sysid_seeds.py --benchmark cascaded_tanks \
        --data-folder ../shared/data/cascaded_tanks --seeds 0 1 2 3 4 --set average=0.99 min_steps=2000 \
        [--out runs/seeds.jsonl]

``--set FIELD=VALUE`` overrides a recipe field (VALUE read as a Python literal). One JSON line per seed goes to
``--out`` when given (appended), with the machine load (``os.getloadavg``) before and after the run.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import statistics
import time

import torch

from ssmkit.sysid.benchmarks import load_benchmark
from ssmkit.sysid.recipes import recipe_for
from ssmkit.sysid.workflow import evaluate, identify


def recipe_overrides(items: list[str]) -> dict:
    """``FIELD=VALUE`` strings (VALUE a Python literal) as recipe field changes; a list timescale becomes a tuple."""
    changes = {}
    for item in items:
        key, value = item.split("=", 1)
        changes[key] = ast.literal_eval(value)
    if isinstance(changes.get("timescale"), list):
        changes["timescale"] = tuple(changes["timescale"])
    return changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", default="cascaded_tanks")
    parser.add_argument("--model", default="s4d")
    parser.add_argument("--data-folder", dest="data_folder", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", nargs="*", default=[], help="FIELD=VALUE recipe overrides")
    parser.add_argument("--label", default="")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    changes = recipe_overrides(args.set)
    recipe = dataclasses.replace(recipe_for(args.benchmark), **changes)
    bench = load_benchmark(args.benchmark, args.data_folder, train_records=recipe.train_records)
    vals, tests = [], []
    for seed in args.seeds:
        load_before = os.getloadavg()
        start = time.perf_counter()
        model, history = identify(bench, args.model, recipe, seed=seed)
        seconds = time.perf_counter() - start
        test = sum(r["rmse"][0] for r in evaluate(model, bench)["records"]) / len(bench.test)
        val = history["best_val_rmse"] * bench.scale
        vals.append(val)
        tests.append(test)
        row = {"label": args.label, "set": changes, "seed": seed, "steps": history["steps"],
               "best_step": history["best_step"], "val": val, "test": test, "seconds": round(seconds, 1),
               "load_before": load_before, "load_after": os.getloadavg()}
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    if len(args.seeds) > 1:
        print(f"{args.label} {changes}: validation {statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}, "
              f"test {statistics.mean(tests):.3f} ± {statistics.stdev(tests):.3f} ({bench.unit})")


if __name__ == "__main__":
    main()
