"""Cross-checks and throughput of the data generators (docs/benchmarks.md, section "Data").

    python scripts/check_data.py --mnist1d-pkl PATH   # compare MNIST-1D with the published mnist1d_data.pkl
    python scripts/check_data.py                      # generator throughput at small sizes only

The published pickle is greydanus/mnist1d's ``mnist1d_data.pkl`` (1,642,012 bytes); it is a trusted file the user
gives on the command line (pickles can run code: never point this at an untrusted file).
"""

from __future__ import annotations

import argparse
import pickle
import platform
import time

import numpy as np

from ssmkit.data.bundled import mnist1d_arrays
from ssmkit.data.listops import generate_listops
from ssmkit.data.pathfinder import PATHFINDER32, PATHX, generate_pathfinder


def check_mnist1d(path: str) -> None:
    with open(path, "rb") as f:
        published = pickle.load(f)
    ours = mnist1d_arrays()
    for key in ("x", "x_test"):
        diff = np.abs(np.asarray(published[key]) - ours[key]).max()
        print(f"mnist1d {key}: shape {ours[key].shape}, max |ours - published| = {diff:.2e}")
    for key in ("y", "y_test"):
        same = np.array_equal(np.asarray(published[key]), ours[key])
        print(f"mnist1d {key}: labels identical = {same}")


def throughput() -> None:
    t = time.perf_counter()
    rows = generate_listops(300, seed=0)
    dt = time.perf_counter() - t
    lengths = np.array([len(r[0].split()) for r in rows])
    labels = np.bincount([r[1] for r in rows], minlength=10) / len(rows)
    print(f"listops: {1e3 * dt / len(rows):.1f} ms per accepted sample (1 process); lengths {lengths.min()}.."
          f"{lengths.max()}, mean {lengths.mean():.0f}; label share of 0 and 9: {labels[0]:.2f}, {labels[9]:.2f}")
    for name, params, n in (("pathfinder-32", PATHFINDER32, 40), ("path-x", PATHX, 3)):
        t = time.perf_counter()
        _, y = generate_pathfinder(n, params, seed=0)
        dt = time.perf_counter() - t
        print(f"{name}: {dt / n:.2f} s per image (1 process, {n} images; label mean {float(y.float().mean()):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist1d-pkl", help="path of the published mnist1d_data.pkl")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"numpy {np.__version__}")
    if args.mnist1d_pkl:
        check_mnist1d(args.mnist1d_pkl)
    throughput()


if __name__ == "__main__":
    main()
