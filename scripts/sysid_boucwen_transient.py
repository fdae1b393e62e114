"""How much of the Bouc-Wen multisine test error is the start from rest.

The official multisine test output is one period of the *steady-state* response, while the protocol simulates the
model from rest over that period. This script scores (1) the true system itself, simulated from rest by
``ssmkit.sysid.boucwen`` (a perfect model under the protocol), and, given ``--model``, (2) a trained ``ssmkit sysid``
model three ways: the official way (from rest, every sample), without the first ``--skip`` samples, and in periodic
steady state (two periods simulated, the second scored). Only (2)'s first number is the benchmark's protocol.

    PYTHONPATH=src python scripts/sysid_boucwen_transient.py --data ../shared/data/bouc_wen [--model runs/.../model.pt]
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
from ssmkit.sysid.workflow import build_model


def rms(e: np.ndarray) -> float:
    return float(np.sqrt(np.mean(e ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of the official Bouc-Wen .mat files")
    parser.add_argument("--model", default=None, help="a model.pt written by `ssmkit sysid --benchmark bouc_wen`")
    parser.add_argument("--skip", type=int, default=200, help="samples left out in the transient-free score")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench = bouc_wen(args.data, train_records=1)
    test = bench.test[0]
    u, y = test.u[:, 0].numpy(), test.y[:, 0].numpy()
    n = u.shape[0]
    fine = signal.resample(u, n * boucwen.UPSAMPLE)  # the periodic input at 15 kHz, exactly
    y_rest = boucwen.decimate(boucwen.integrate_newmark(np.tile(fine, 2), 1.0 / (boucwen.FS * boucwen.UPSAMPLE)))[:n]
    print(f"true system from rest: RMSE {rms(y_rest - y):.3e} m (without the first {args.skip} samples: "
          f"{rms((y_rest - y)[args.skip:]):.3e} m); std(y) {y.std():.3e} m")
    if args.model is None:
        return
    ck = torch.load(args.model, weights_only=False)
    if "deep_wiener" in ck:  # DeepWiener.checkpoint()
        model = DeepWiener.from_checkpoint(ck)
    else:  # an older model.pt: the recipe and the weights
        recipe = dict(ck["recipe"])
        recipe["timescale"] = tuple(recipe["timescale"]) if recipe["timescale"] is not None else None
        if "lr_schedule" in recipe:  # written on the bw branch before main's `schedule` (the same factor)
            recipe["schedule"] = recipe.pop("lr_schedule")
        model = build_model(bench, ck["model"], Recipe(**recipe))
        model.load_state_dict(ck["state_dict"])
    model = model.float()
    with torch.no_grad():
        once, _ = model(test.u.float()[None], return_state=False)  # (1, n, 1)
        twice, _ = model(torch.cat([test.u, test.u]).float()[None], return_state=False)  # (1, 2n, 1)
    e_once = once[0, :, 0].double().numpy() - y
    e_two = twice[0, n:, 0].double().numpy() - y
    print(f"model: official (from rest) {rms(e_once):.3e} m, without the first {args.skip} samples "
          f"{rms(e_once[args.skip:]):.3e} m, periodic steady state {rms(e_two):.3e} m")


if __name__ == "__main__":
    main()
