"""System identification with deep SSMs: metrics with explicit conventions (``metrics``) and the Bouc-Wen benchmark
simulator (``boucwen``); more comes with the sysid issue."""

from ssmkit.sysid.metrics import fit_percent, mae, nrmse, r_squared, rmse, sysid_metrics

__all__ = ["fit_percent", "mae", "nrmse", "r_squared", "rmse", "sysid_metrics"]
