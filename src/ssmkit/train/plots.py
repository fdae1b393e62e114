"""The comparison plot of ``ssmkit compare``: validation curves over steps, and the test metric per model."""

from __future__ import annotations

import csv
import glob
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ssmkit.files import save_figure  # noqa: E402


def _version(path: str) -> tuple[int, str]:
    """The sort key of ``logs/version_<k>/metrics.csv``: k as a number (version_10 after version_9, not before 2)."""
    name = os.path.basename(os.path.dirname(path)).removeprefix("version_")
    return (int(name), "") if name.isdigit() else (-1, name)


def _curve(run_dir: str, key: str) -> tuple[list[int], list[float]]:
    """A run's logged ``key`` by step (1-based, increasing), over its log versions in order (a resumed run starts the
    next). A resumed run repeats the steps after its last checkpoint, and logs their validations again in its new
    version: the later version's value of a step is kept (the curve went back to the repeated steps, drawing each
    twice)."""
    by_step: dict[int, float] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "logs", "version_*", "metrics.csv")), key=_version):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get(key):
                    by_step[int(row["step"]) + 1] = float(row[key])
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def plot_comparison(results: list[dict[str, Any]], out: str) -> str:
    """Draw results.png in ``out``: each model's validation metric against the step, and a bar chart of the test
    metric (the run folders are ``out/<model>``).

    Args:
        results: result records with ``model``.
        out: the comparison folder.

    Returns:
        the path of the PNG.
    """
    metric = "accuracy" if any("test_accuracy" in r or "val_accuracy" in r for r in results) else "mse"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        steps, values = _curve(os.path.join(out, str(r["model"])), f"val_{metric}")
        if steps:
            left.plot(steps, values, marker="o", label=str(r["model"]))
    left.set_xlabel("optimizer step")
    left.set_ylabel(f"validation {metric}")
    if left.get_lines():
        left.legend()
    else:  # no validation was logged during training (val_every beyond the budget): say so, not an empty legend
        left.text(0.5, 0.5, "no validation during training\n(val_every > the steps run)", ha="center", va="center",
                  transform=left.transAxes)
    names = [str(r["model"]) for r in results]
    scores = [r.get(f"test_{metric}", r.get(f"val_{metric}", float("nan"))) for r in results]
    right.bar(names, scores)
    right.set_ylabel(f"test {metric}")
    right.set_title(str(results[0].get("task", "")) if results else "")
    fig.tight_layout()
    path = os.path.join(out, "results.png")
    save_figure(fig, path)
    plt.close(fig)
    return path
