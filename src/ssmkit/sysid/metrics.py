"""Simulation metrics of system identification, with their conventions stated (they differ between tools).

All metrics skip the first ``n_init`` samples (the benchmark's initialisation window: a model started from a zero
state needs it) and are computed per output channel over the remaining samples, pooling every experiment given:

    RMSE   = sqrt(mean_t (ŷ_t - y_t)²)                 in the output's physical unit (benchmarks report V, m, mV)
    NRMSE  = RMSE / std(y)      (normalise="std", the default: nonlinear_benchmarks, dynoNet, MATLAB's fit)
           = RMSE / (max y - min y)   (normalise="range": SysIdentPy's convention; not comparable with the above)
    fit %  = 100 (1 - RMSE / std(y))                   (the standard fit index)
    R²     = 1 - (RMSE / std(y))²
    MAE    = mean_t |ŷ_t - y_t|

std is the population standard deviation (ddof = 0) of the measured y after the window, as nonlinear_benchmarks
1.0.1 computes it. Not the same as Bonassi et al.'s code (arXiv 2312.06211), whose "fit" is
100 (1 - mean|e| / mean|y - ȳ|) normalised by the model's output without a window: ssmkit does not report that one.

Several experiments are pooled (one RMSE and one std over all their samples after each window; MATLAB's ``compare``
reports one fit per experiment instead); several outputs are scored separately (one value per channel, never
averaged). Signals are time first, (L,) or (L, p): a (p, L) signal, python-control's layout, has fewer samples than
channels and is refused. A NaN in either signal makes that channel's scores NaN (nothing is masked: a diverged
simulation shows).

An output that is constant over its scored samples (std 0 up to rounding, std ≤ 10 ε |ȳ| with ε float64's machine
epsilon: :func:`undefined_scale`, the rule by which :func:`ssmkit.sysid.wiener.channel_scale` normalises such a channel
by 1) has no normalisation: its NRMSE (both ``normalise`` choices), fit % and R² are NaN, undefined, not inf (0/0 for a
perfect simulation; the std rounding leaves, 1.4e-17 for 50 samples of 0.1, made an RMSE of 0.01 an NRMSE of 7e14),
while its RMSE and MAE stay defined in its unit. One measured sample after the window (possible with missing
outputs) is such a case: its std is 0.

Missing measurements (``skip_missing=True``; :class:`ssmkit.sysid.records.IORecord` marks an output sample that was not
measured by NaN in ``y``): a NaN in ``y_true`` is a missing sample and is left out of that channel's sums, so every
score, std, range and mean above runs over the channel's measured samples after the window (T_k of them, output k:
RMSE_k = sqrt(Σ_{t measured} e_t² / T_k)); a NaN in ``y_pred`` at a measured sample still shows. A channel with no
measured sample after the window scores NaN. :func:`sysid_metrics` reports T_k as ``"samples"``.

MATLAB's names differ: ``goodnessOfFit(y_hat, y, 'NRMSE')`` returns 1 - NRMSE (a fit, 1 = perfect: ``fit / 100``
here) and ``'NMSE'`` returns 1 - NRMSE² (R² here); ``compare`` reports fit %.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

NORMALISATIONS = ("std", "range")


def _pooled(y_pred, y_true, n_init: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Stack experiments after their init windows: (T, p) predictions and measurements (float64), and whether the
    signals were (L,) (the scores are then 0-d)."""
    preds = list(y_pred) if isinstance(y_pred, (list, tuple)) else [y_pred]
    trues = list(y_true) if isinstance(y_true, (list, tuple)) else [y_true]
    if len(preds) != len(trues) or not preds:
        raise ValueError(f"y_pred and y_true must be two tensors or two equally long lists of them; got {len(preds)} and {len(trues)}")
    if not isinstance(n_init, int) or isinstance(n_init, bool) or n_init < 0:
        raise ValueError(f"n_init must be an int >= 0 (samples skipped at the start of each experiment); got {n_init!r}")
    ps, ts, flat = [], [], True
    for i, (p, t) in enumerate(zip(preds, trues)):
        # a tensor stays where it is (as_tensor would move it to a `with torch.device(...)` block's device)
        p, t = (x if isinstance(x, torch.Tensor) else torch.as_tensor(x, device="cpu") for x in (p, t))
        if p.is_complex() or t.is_complex():  # .to(float64) would drop the imaginary part with only a warning
            raise ValueError(f"experiment {i}: y_pred and y_true must be real signals; got {p.dtype} and {t.dtype}")
        if p.shape != t.shape:
            raise ValueError(f"experiment {i}: y_pred and y_true must have one shape, (L,) or (L, p); got {tuple(p.shape)} and {tuple(t.shape)}")
        if p.dim() not in (1, 2):
            raise ValueError(f"experiment {i}: signals must be (L,) or (L, p) (time first); got {tuple(p.shape)}")
        if p.dim() == 2 and p.shape[0] < p.shape[1]:  # python-control and MATLAB's iddata rows put time last
            raise ValueError(f"experiment {i}: signals must be time first, (L,) or (L, p); got {tuple(p.shape)}, fewer "
                             "samples than channels: a (p, L) signal (python-control's layout)? pass its transpose")
        if p.shape[0] <= n_init:
            raise ValueError(f"experiment {i}: length {p.shape[0]} leaves nothing after the init window n_init={n_init}")
        flat = flat and p.dim() == 1
        p = p.reshape(p.shape[0], -1)[n_init:]
        t = t.reshape(t.shape[0], -1)[n_init:]
        ps.append(p.detach().to(torch.float64))
        ts.append(t.detach().to(torch.float64))
    if len({p.shape[1] for p in ps}) > 1:
        raise ValueError(f"every experiment must have the same outputs p; got {[p.shape[1] for p in ps]}")
    return torch.cat(ps), torch.cat(ts), flat


def _measured(t: torch.Tensor, skip_missing: bool) -> torch.Tensor | None:
    """The (T, p) mask of the measured samples of pooled measurements ``t`` (not NaN) when ``skip_missing`` is set and
    some are missing; None when every sample counts (the plain formulas, unchanged)."""
    if not isinstance(skip_missing, bool):
        raise ValueError(f"skip_missing must be a bool (True: a NaN in y_true is a missing sample, left out); got "
                         f"{skip_missing!r}")
    if not skip_missing:
        return None
    missing = torch.isnan(t)
    return ~missing if bool(missing.any()) else None


def _mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean over time (dim 0) per channel of x (T, p), over the samples where ``mask`` is True (all with None):
    Σ_{t: mask} x_t / T_k, NaN for a channel without such a sample."""
    if mask is None:
        return x.mean(0)
    return torch.where(mask, x, torch.zeros_like(x)).sum(0) / mask.sum(0)


def undefined_scale(std: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Where an output's NRMSE has no normalisation: its samples are constant up to rounding,

        std ≤ 10 ε |mean|        (ε: float64's machine epsilon)

    (one sample, or samples equal up to rounding: the population std of 50 copies of 0.1 is 1.4e-17, not 0), the
    test :func:`ssmkit.sysid.wiener.channel_scale` applies to normalise such a channel by 1.

    Args:
        std: (p,) the population std of each output over its scored samples.
        mean: (p,) their mean.

    Returns:
        (p,) bool, True where the output is constant (False for NaN: an output with no sample is NaN already).
    """
    return std <= 10 * torch.finfo(torch.float64).eps * mean.abs()


def _scale(t: torch.Tensor, mask: torch.Tensor | None, normalise: str) -> torch.Tensor:
    """The measured output's population std or range (max − min) per channel, over the samples where ``mask`` is
    True (all with None); NaN for a channel constant there (:func:`undefined_scale`: its NRMSE is undefined)."""
    if mask is None:
        mean, std = t.mean(0), t.std(0, correction=0)
        spread = t.amax(0) - t.amin(0)
    else:
        mean = _mean(t, mask)
        std = _mean((t - mean) ** 2, mask).sqrt()
        inf = torch.full_like(t, math.inf)
        spread = torch.where(mask, t, -inf).amax(0) - torch.where(mask, t, inf).amin(0)
    scale = std if normalise == "std" else spread
    return torch.where(undefined_scale(std, mean), torch.full_like(scale, math.nan), scale)


def rmse(y_pred, y_true, n_init: int = 0, skip_missing: bool = False) -> torch.Tensor:
    """Root-mean-square error per output channel, in the output's unit.

    Args:
        y_pred: (L,) or (L, p) simulated output, or a list of them (one per experiment).
        y_true: the measured output(s), same shapes.
        n_init: samples skipped at the start of each experiment.
        skip_missing: a NaN in ``y_true`` is a missing measurement, left out (module docstring); False: it makes
            the channel's score NaN.

    Returns:
        (p,) float64 (a 0-d tensor for (L,) signals).
    """
    p, t, flat = _pooled(y_pred, y_true, n_init)
    out = _mean((p - t) ** 2, _measured(t, skip_missing)).sqrt()
    return out.squeeze(0) if flat else out


def mae(y_pred, y_true, n_init: int = 0, skip_missing: bool = False) -> torch.Tensor:
    """Mean absolute error per output channel (same arguments and shapes as :func:`rmse`).

    Args:
        y_pred: (L,) or (L, p) simulated output, or a list of them.
        y_true: the measured output(s).
        n_init: samples skipped at the start of each experiment.
        skip_missing: a NaN in ``y_true`` is a missing measurement, left out (module docstring).

    Returns:
        (p,) float64 (0-d for (L,) signals).
    """
    p, t, flat = _pooled(y_pred, y_true, n_init)
    out = _mean((p - t).abs(), _measured(t, skip_missing))
    return out.squeeze(0) if flat else out


def nrmse(y_pred, y_true, n_init: int = 0, normalise: str = "std", skip_missing: bool = False) -> torch.Tensor:
    """RMSE divided by the measured output's std (default) or range, after the window.

    Args:
        y_pred: (L,) or (L, p) simulated output, or a list of them.
        y_true: the measured output(s).
        n_init: samples skipped at the start of each experiment.
        normalise: ``"std"`` (population std of y_true, the standard) or ``"range"`` (max - min, SysIdentPy).
        skip_missing: a NaN in ``y_true`` is a missing measurement, left out of the RMSE and of the std or range
            (module docstring).

    Returns:
        (p,) float64 (0-d for (L,) signals); NaN for an output constant over its scored samples, one measured
        sample included (:func:`undefined_scale`: no normalisation).
    """
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {NORMALISATIONS}; got {normalise!r}")
    p, t, flat = _pooled(y_pred, y_true, n_init)
    mask = _measured(t, skip_missing)
    err = _mean((p - t) ** 2, mask).sqrt()
    out = err / _scale(t, mask, normalise)
    return out.squeeze(0) if flat else out


def fit_percent(y_pred, y_true, n_init: int = 0, skip_missing: bool = False) -> torch.Tensor:
    """The standard fit index 100 (1 - RMSE / std(y)) per output channel.

    Args:
        y_pred: (L,) or (L, p) simulated output, or a list of them.
        y_true: the measured output(s).
        n_init: samples skipped at the start of each experiment.
        skip_missing: a NaN in ``y_true`` is a missing measurement, left out (module docstring).

    Returns:
        (p,) float64 in percent (0-d for (L,) signals); NaN where the NRMSE is undefined (a constant output).
    """
    return 100.0 * (1.0 - nrmse(y_pred, y_true, n_init, skip_missing=skip_missing))


def r_squared(y_pred, y_true, n_init: int = 0, skip_missing: bool = False) -> torch.Tensor:
    """R² = 1 - (RMSE / std(y))² per output channel (the window is honoured, unlike a known pitfall elsewhere).

    Args:
        y_pred: (L,) or (L, p) simulated output, or a list of them.
        y_true: the measured output(s).
        n_init: samples skipped at the start of each experiment.
        skip_missing: a NaN in ``y_true`` is a missing measurement, left out (module docstring).

    Returns:
        (p,) float64 (0-d for (L,) signals).
    """
    return 1.0 - nrmse(y_pred, y_true, n_init, skip_missing=skip_missing) ** 2


def sysid_metrics(y_pred, y_true, n_init: int = 0, names: Sequence[str] = ("rmse", "nrmse", "fit", "r2", "mae"),
                  skip_missing: bool = False) -> dict[str, list[float]]:
    """Every metric at once, as plain lists (one value per output channel) for reports.

    Args:
        y_pred: (L,) or (L, p) simulated output, or a list of them.
        y_true: the measured output(s).
        n_init: samples skipped at the start of each experiment.
        names: which of ``rmse``, ``nrmse``, ``nrmse_range``, ``fit``, ``r2``, ``mae`` to compute.
        skip_missing: a NaN in ``y_true`` is a missing measurement, left out of every score (module docstring).

    Returns:
        {name: [value per output channel]} plus ``n_init`` and ``samples`` (T_k, the samples scored per output
        channel, pooled over the experiments: all of them after the windows, or with ``skip_missing`` the measured
        ones).
    """
    table = {
        "rmse": lambda: rmse(y_pred, y_true, n_init, skip_missing),
        "nrmse": lambda: nrmse(y_pred, y_true, n_init, skip_missing=skip_missing),
        "nrmse_range": lambda: nrmse(y_pred, y_true, n_init, normalise="range", skip_missing=skip_missing),
        "fit": lambda: fit_percent(y_pred, y_true, n_init, skip_missing),
        "r2": lambda: r_squared(y_pred, y_true, n_init, skip_missing),
        "mae": lambda: mae(y_pred, y_true, n_init, skip_missing),
    }
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):  # "rmse" or None
        raise ValueError(f"names must be a list or tuple of metric names from {sorted(table)}; got {names!r}")
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise ValueError(f"unknown metric names {unknown}; known: {sorted(table)}")
    out: dict[str, list[float]] = {name: torch.atleast_1d(table[name]()).tolist() for name in names}
    out["n_init"] = [float(n_init)]
    _, t, _ = _pooled(y_pred, y_true, n_init)
    mask = _measured(t, skip_missing)
    out["samples"] = [t.shape[0]] * t.shape[1] if mask is None else mask.sum(0).tolist()
    return out
