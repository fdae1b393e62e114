"""The comparison plot of ``ssmkit compare`` (results.png), with and without validation curves."""

import os
import warnings

import pytest


def _results(out, with_curves: bool):
    results = []
    for name in ("s4d", "lru"):
        folder = os.path.join(out, name, "logs", "version_0")
        os.makedirs(folder)
        with open(os.path.join(folder, "metrics.csv"), "w") as f:
            f.write("step,train_loss,val_accuracy\n0,2.3,\n")
            if with_curves:
                f.write("9,,0.4\n19,,0.6\n")
        results.append({"model": name, "task": "digits", "test_accuracy": 0.5})
    return results


@pytest.mark.parametrize("with_curves", [True, False])
def test_results_png_without_warnings(tmp_path, with_curves):
    # a compare whose budget is below val_every logs no validation: the empty left panel's legend() warned
    # "No artists with labels found to put in legend" (make demo at a 30-step budget)
    pytest.importorskip("matplotlib")
    from ssmkit.train.plots import _curve, plot_comparison

    out = str(tmp_path)
    results = _results(out, with_curves)
    assert _curve(os.path.join(out, "s4d"), "val_accuracy") == (([10, 20], [0.4, 0.6]) if with_curves else ([], []))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = plot_comparison(results, out)
    assert path == os.path.join(out, "results.png") and os.path.getsize(path) > 0
