"""Cascaded Tanks with samples dropped at random: a deep Wiener S4D trained with the sample times against the same
model trained on the same samples with the times ignored (and, for reference, on the full data).

The real benchmark (shared/data, Ts = 4 s, 1 024 + 1 024 samples) is thinned: each sample after the first is dropped
with probability ``--drop`` (the same draw for every variant), so the kept samples are irregularly spaced (gaps of
1, 2, 3, ... Ts). Variants, all with one shortened recipe (tail validation, the layer's own initialisation, one run):

- ``times``: the kept samples as irregular records (``IORecord(t=)``): every block's continuous-time system is sampled
  at the real times, each sample's input held over the gap that ends at it (the models' convention);
- ``previous``: the same with each input held from its sample until the next (``IORecord.held_previous``: the pump
  voltage is a command applied at the sample times, so over the gap before sample k the last known command is
  u_{k-1});
- ``ignored``: the same kept samples as if taken every Ts (what a model without intervals can do);
- ``full``: every sample (what the thinning costs);
- ``times-encoder``, ``previous-encoder``: ``times`` and ``previous`` with an initial-state encoder that also reads
  its window's sample intervals (``Recipe.encoder_times``; the other variants' encoder reads the values only).

Each is scored by the RMSE (V) of its free-run simulation of the test record at the same instants: the kept test
samples after the 50th kept one (every variant's encoder has read its 50 samples by then; the full model simulates
every test sample and is scored at those instants).

    python scripts/sysid_irregular_tanks.py [--drop 0.3] [--steps 800] [--seeds 0 1 2] [--variants times previous]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch

from ssmkit.sysid.benchmarks import cascaded_tanks
from ssmkit.sysid.fit import simulate_record
from ssmkit.sysid.recipes import recipe_for
from ssmkit.sysid.records import IORecord
from ssmkit.sysid.workflow import identify


def thin(record: IORecord, keep: torch.Tensor, irregular: bool, previous: bool = False) -> IORecord:
    """The kept samples of ``record``: with their times k·Ts (irregular), or as if sampled every Ts; with
    ``previous``, each kept sample's input replaced by the kept sample's before it (the first keeps its own)."""
    t = keep.to(torch.float64) * record.dt if irregular else None
    thinned = IORecord(record.u[keep], record.y[keep], record.dt, f"{record.name} kept", t=t)
    return thinned.held_previous() if previous else thinned


def kept(n: int, drop: float, seed: int) -> torch.Tensor:
    """The indices kept out of n: the first, and each other with probability 1 − drop."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, generator=g) >= drop
    mask[0] = True
    return mask.nonzero().squeeze(1)


def score(model, test: IORecord, at: torch.Tensor) -> float:
    """RMSE (V) of the free-run simulation of ``test`` (after the encoder's samples) at the positions ``at``."""
    with torch.no_grad():
        y_sim, n = simulate_record(model, test)
    if int(at.min()) < n:
        raise ValueError(f"scored position {int(at.min())} lies inside the encoder's {n} samples")
    return float((y_sim - test.y)[at].square().mean().sqrt())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drop", type=float, default=0.3, help="probability of dropping each sample")
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["times", "previous", "ignored", "full"],
                        choices=["times", "previous", "ignored", "full", "times-encoder", "previous-encoder"])
    parser.add_argument("--data", default="../shared/data/cascaded_tanks", help="the folder of dataBenchmark.csv")
    args = parser.parse_args(argv)
    bench = cascaded_tanks(args.data)
    recipe = dataclasses.replace(recipe_for("cascaded_tanks"), steps=args.steps, restarts=1, validation="tail",
                                 combine="best", first_layer_init="layer")
    results: dict[str, list[float]] = {name: [] for name in args.variants}
    for seed in args.seeds:
        train_keep = kept(len(bench.train[0]), args.drop, 1000 + seed)
        test_keep = kept(len(bench.test[0]), args.drop, 2000 + seed)
        start = int(test_keep[49]) + 1  # the first original index after the 50th kept test sample
        for variant in results:
            if variant == "full":
                data, at = bench, test_keep[test_keep >= start]
            else:
                irregular, previous = variant != "ignored", variant.startswith("previous")
                data = dataclasses.replace(bench, train=[thin(bench.train[0], train_keep, irregular, previous)],
                                           test=[thin(bench.test[0], test_keep, irregular, previous)])
                at = (test_keep >= start).nonzero().squeeze(1)
            times = dataclasses.replace(recipe, encoder_times=variant.endswith("-encoder"))
            model, _ = identify(data, "s4d", times, seed=seed)
            results[variant].append(score(model, data.test[0], at))
            print(f"seed {seed} {variant}: test RMSE {results[variant][-1]:.3f} V", flush=True)
    for variant, values in results.items():
        spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        print(f"{variant}: {statistics.mean(values):.3f}{spread} V over seeds {args.seeds}")


if __name__ == "__main__":
    main()
