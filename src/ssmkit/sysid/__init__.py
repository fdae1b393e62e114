"""System identification with deep SSMs: metrics with explicit conventions (``metrics``), input-output records and
benchmarks (``records``), loaders of the real benchmarks (``benchmarks``: Cascaded Tanks, F-16 GVT, Bouc-Wen) and the
Bouc-Wen simulator (``boucwen``)."""

from ssmkit.sysid.benchmarks import BENCHMARKS, load_benchmark
from ssmkit.sysid.metrics import fit_percent, mae, nrmse, r_squared, rmse, sysid_metrics
from ssmkit.sysid.records import IORecord, Published, SysidBenchmark

__all__ = [
    "BENCHMARKS",
    "IORecord",
    "Published",
    "SysidBenchmark",
    "fit_percent",
    "load_benchmark",
    "mae",
    "nrmse",
    "r_squared",
    "rmse",
    "sysid_metrics",
]
