"""System identification with deep SSMs: metrics with explicit conventions (``metrics``), input-output records and
benchmarks (``records``), loaders of the real benchmarks (``benchmarks``: Cascaded Tanks, F-16 GVT, Bouc-Wen) and the
Bouc-Wen simulator (``boucwen``); the workflow (``recipes``, ``workflow``: identify and evaluate on a benchmark),
one-step-ahead prediction (``prediction``), the ensemble of restarts (``ensemble``), the report (``report``), your own
data from arrays or CSV files as a benchmark (``userdata``: ``from_arrays``, ``from_csv``, trained by the generic
``recipe_for_data``) and the ``ssmkit sysid`` command (``commands``)."""

from ssmkit.sysid.benchmarks import BENCHMARKS, load_benchmark
from ssmkit.sysid.ensemble import WienerEnsemble
from ssmkit.sysid.metrics import fit_percent, mae, nrmse, r_squared, rmse, sysid_metrics
from ssmkit.sysid.records import IORecord, Published, SysidBenchmark
from ssmkit.sysid.wiener import DeepWiener
from ssmkit.sysid.prediction import free_run, predict_one_step, prediction_record
from ssmkit.sysid.recipes import RECIPES, Recipe, recipe_for, recipe_for_data
from ssmkit.sysid.userdata import from_arrays, from_csv
from ssmkit.sysid.workflow import build_model, evaluate, identify, signal_names, to_control

__all__ = [
    "BENCHMARKS",
    "DeepWiener",
    "IORecord",
    "Published",
    "WienerEnsemble",
    "SysidBenchmark",
    "fit_percent",
    "load_benchmark",
    "mae",
    "nrmse",
    "r_squared",
    "rmse",
    "sysid_metrics",
    # the workflow
    "RECIPES",
    "Recipe",
    "build_model",
    "evaluate",
    "free_run",
    "identify",
    "predict_one_step",
    "prediction_record",
    "recipe_for",
    "recipe_for_data",
    "signal_names",
    "to_control",
    # your own data
    "from_arrays",
    "from_csv",
]
