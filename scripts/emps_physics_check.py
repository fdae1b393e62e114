"""Check the EMPS surrogate's physics against the real EMPS files: drive the simulated closed loop
(ssmkit.sysid.surrogates.emps, the published parameters) with each file's measured reference q_g and compare the
simulated position and controller voltage with the measured ``qm`` and ``vir``.

    PYTHONPATH=src python scripts/emps_physics_check.py --data path/to/folder/with/DATA_EMPS.mat

The test file's force pulses (``pulses_N``) are a disturbance the surrogate does not model.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
from scipy.io import loadmat

from ssmkit.sysid.surrogates import emps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder holding DATA_EMPS.mat and DATA_EMPS_PULSES.mat")
    args = parser.parse_args()
    print("| file | RMS(q_sim − qm) (mm) | RMS(q_g − qm) (mm) | std(qm) (mm) | RMS(v_sim − vir)/std(vir) |")
    print("|---|---|---|---|---|")
    for name in ("DATA_EMPS.mat", "DATA_EMPS_PULSES.mat"):
        mat = loadmat(pathlib.Path(args.data) / name)
        qm, qg, vir, t = (mat[k].ravel() for k in ("qm", "qg", "vir", "t"))
        volts, q = emps.simulate(qg, dt=float(t[1] - t[0]), q0=float(qm[0]))
        rms = lambda e: float(np.sqrt(np.mean(e ** 2)))  # noqa: E731
        print(f"| {name} | {1e3 * rms(q - qm):.4f} | {1e3 * rms(qg - qm):.3f} | {1e3 * qm.std():.1f} | "
              f"{rms(volts - vir) / vir.std():.3f} |")


if __name__ == "__main__":
    main()
