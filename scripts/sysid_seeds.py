"""Run one sysid recipe over several seeds, one after another, and print per-seed validation and test RMSE with their
mean ± sample std (the test RMSE is printed for the record; choose recipes on the validation column).

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/sysid_seeds.py --benchmark cascaded_tanks \
        --data-folder ../shared/data/cascaded_tanks --seeds 0 1 2 3 4 --set average=0.99 min_steps=2000 \
        [--out runs/seeds.jsonl]

``--set FIELD=VALUE`` overrides a recipe field (VALUE read as a Python literal). One JSON line per seed goes to
``--out`` when given (appended), with the machine load (``os.getloadavg``) before and after the run. RMSEs are in the
benchmark's reporting units, output k × its own scale; with several outputs (the F-16's three accelerations) ``val``
and ``test`` are means over the outputs and ``val_per_output`` / ``test_per_output`` keep each (``seed_scores``).
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
from ssmkit.sysid.commands import validation_in_units
from ssmkit.sysid.recipes import recipe_for
from ssmkit.sysid.report import unit_text
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


def seed_scores(bench, history: dict, scores: dict) -> dict:
    """One seed's columns in the benchmark's reporting units, output k × ``bench.scales[k]``: ``val`` the validation
    RMSE (``ssmkit sysid``'s ``best_val_rmse``: the mean over the outputs of the converted per-output RMSEs) with
    ``val_per_output``, and ``test`` the test RMSE averaged over the test records and the outputs (``evaluate``'s
    values are in the reporting units already) with ``test_per_output`` (each output's mean over the records).

    Args:
        bench: the benchmark.
        history: :func:`ssmkit.sysid.workflow.identify`'s history (data units).
        scores: :func:`ssmkit.sysid.workflow.evaluate`'s output on ``bench``.

    Returns:
        {"val", "val_per_output", "test", "test_per_output"}.
    """
    val = validation_in_units(bench, history)
    records = scores["records"]
    per_output = [sum(r["rmse"][k] for r in records) / len(records) for k in range(bench.n_outputs)]
    return {"val": val["best_val_rmse"], "val_per_output": val.get("best_val_rmse_per_output"),
            "test": sum(per_output) / len(per_output), "test_per_output": per_output}


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
        columns = seed_scores(bench, history, evaluate(model, bench))
        vals.append(columns["val"])
        tests.append(columns["test"])
        row = {"label": args.label, "set": changes, "seed": seed, "steps": history["steps"],
               "best_step": history["best_step"], **columns, "seconds": round(seconds, 1),
               "load_before": load_before, "load_after": os.getloadavg()}
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    if len(args.seeds) > 1:
        print(f"{args.label} {changes}: validation {statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}, "
              f"test {statistics.mean(tests):.3f} ± {statistics.stdev(tests):.3f} ({unit_text(bench)}"
              f"{f'; means over the {bench.n_outputs} outputs' if bench.n_outputs > 1 else ''})")


if __name__ == "__main__":
    main()
