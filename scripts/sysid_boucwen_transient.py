"""How much of the Bouc-Wen multisine test error is the start from rest: score the true system and trained models
under the three protocols in use.

The official multisine test output is one period of the *steady-state* response, while the official protocol (the
nonlinear_benchmarks loader: no init window) simulates the model from rest over that period and scores every sample.
This script scores (1) the true system, simulated by ``ssmkit.sysid.boucwen`` (a perfect model), and, given
``--model`` (one or several ``model.pt`` of ``ssmkit sysid --benchmark bouc_wen``), (2) each trained model, under:

- ``official``: from rest, every sample (the headline; ``ssmkit sysid``'s RMSE);
- ``skip``: from rest, the first ``--skip`` samples left unscored (300: what dynoNet's examples/BW/BW_test.py
  does on the same official data, its test.h5);
- ``steady``: periodic steady state, ``--prime`` periods of the same input simulated first, the record scored
  (``ssmkit.sysid.workflow.periodic_steady_state``; no measured output used).

With several models it also prints mean ± std (sample std, ddof 1) per protocol.

    PYTHONPATH=src python scripts/sysid_boucwen_transient.py --data ../shared/data/bouc_wen [--model A/model.pt ...]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import signal

from ssmkit.sysid import boucwen
from ssmkit.sysid.benchmarks import bouc_wen
from ssmkit.sysid.recipes import Recipe
from ssmkit.sysid.wiener import DeepWiener
from ssmkit.sysid.workflow import build_model, simulate_periodic


def rms(e: np.ndarray) -> float:
    return float(np.sqrt(np.mean(e ** 2)))


def load(path: str, bench) -> DeepWiener:
    ck = torch.load(path, weights_only=False)
    if "deep_wiener" in ck:  # DeepWiener.checkpoint()
        return DeepWiener.from_checkpoint(ck).float()
    recipe = dict(ck["recipe"])  # an older model.pt: the recipe and the weights
    recipe["timescale"] = tuple(recipe["timescale"]) if recipe["timescale"] is not None else None
    if "lr_schedule" in recipe:  # written on the bw branch before main's `schedule` (the same factor)
        recipe["schedule"] = recipe.pop("lr_schedule")
    model = build_model(bench, ck["model"], Recipe(**recipe))
    model.load_state_dict(ck["state_dict"])
    return model.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of the official Bouc-Wen .mat files")
    parser.add_argument("--model", nargs="*", default=[], help="model.pt files written by `ssmkit sysid --benchmark bouc_wen`")
    parser.add_argument("--skip", type=int, default=300, help="samples left unscored in the `skip` protocol (dynoNet: 300)")
    parser.add_argument("--prime", type=int, default=1, help="periods simulated before the scored one (steady state)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench = bouc_wen(args.data, train_records=1)
    test = bench.test[0]
    u, y = test.u[:, 0].numpy(), test.y[:, 0].numpy()
    n = u.shape[0]
    fine = signal.resample(u, n * boucwen.UPSAMPLE)  # the periodic input at 15 kHz, exactly
    y_rest = boucwen.decimate(boucwen.integrate_newmark(np.tile(fine, 2), 1.0 / (boucwen.FS * boucwen.UPSAMPLE)))[:n]
    y_steady = boucwen.simulate(u, periodic=True, periods=1 + args.prime)  # how the official file was made
    print(f"std(y) {y.std():.3e} m")
    print(f"true system: official {rms(y_rest - y):.3e} m, skip {args.skip} {rms((y_rest - y)[args.skip:]):.3e} m, "
          f"steady {rms(y_steady - y):.3e} m")
    rows = []
    for path in args.model:
        model = load(path, bench)
        with torch.no_grad():
            once = model(test.u.float()[None], return_state=False)[0][0, :, 0].double().numpy()
            steady = simulate_periodic(model, test, args.prime)[:, 0].double().numpy()
        row = (rms(once - y), rms((once - y)[args.skip:]), rms(steady - y))
        rows.append(row)
        print(f"{path}: official {row[0]:.3e} m, skip {args.skip} {row[1]:.3e} m, steady {row[2]:.3e} m")
    if len(rows) > 1:
        a = np.asarray(rows)
        mean, std = a.mean(0), a.std(0, ddof=1)
        print(f"mean ± std over {len(rows)} models: official {mean[0]:.3e} ± {std[0]:.2e} m, skip {args.skip} "
              f"{mean[1]:.3e} ± {std[1]:.2e} m, steady {mean[2]:.3e} ± {std[2]:.2e} m")


if __name__ == "__main__":
    main()
