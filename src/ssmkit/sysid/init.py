"""Data-driven initialisation of a deep Wiener model's first LTI layer (a future direction of Bonassi et al.,
arXiv 2312.06211, §"future research": start the eigenvalues from a best linear approximation or a subspace
estimate of the data rather than HiPPO or a random ring).

    z = subspace_poles(bench.train, order=8)          # discrete poles of a linear model of the data
    init_from_data(model, bench.train)                 # poles of such a model (order picked from the singular
                                                       # values unless order=...), written into model.layers[0]
    init_from_data(model, bench.train, layers=4)       # ... into each of model.layers[0:4]

Estimates (both pool several experiments without concatenating them):

- :func:`arx_poles`, the best linear approximation by least squares: the ARX model
  y_t + a₁ y_{t−1} + … + a_n y_{t−n} = Σ_j Σ_{k=0..n} b_{jk} u_{j,t−k}  (one output, every input, common denominator);
  the poles are the roots of z^n + a₁ z^{n−1} + … + a_n. Unbiased for noise-free data; biased by output noise,
  and so by a nonlinearity's distortion: on a Wiener system (Gaussian input, whose best linear approximation has G's
  poles) ARX and PO-MOESP alike miss them by a bias that more data do not remove (0.04 for G → x + 0.1x³, probe 22).
- :func:`subspace_poles`, PO-MOESP (Verhaegen 1994), for several inputs and outputs: block Hankel matrices of i
  past and i future samples, an LQ factorisation, the SVD of the future outputs' part explained by the past,
  Γ_i from its n leading singular vectors, A = Γ_i[:−p]⁺ Γ_i[p:], the poles = eig(A).

Offsets: each record's ARX regressors and target, and its block Hankel rows, are centred (their means over the
record removed), which estimates a constant per record along: the relations y = G u + d hold exactly between the
centred rows, so an output offset d (an operating point, a sensor offset, the mean that an even nonlinearity adds)
costs nothing. Uncentred, such an offset on noise-free linear data needs a pole at z = 1: with d = 0.5 the ARX poles
were off by 0.24 and the subspace ones by 0.44, and the automatic order took a sixth pole (probe 22). On a
2-period Bouc-Wen training record (mean y = −9e-4 std y) the uncentred order-16 fit had a pole at |z| = 1.017 (clipped
to r_max: the 0.9999 below); centred, its largest |z| is 0.987.

Poles → layer (:func:`set_discrete_poles`): one complex mode per conjugate pair (the one with Im z ≥ 0) or per
real pole, the slowest (largest |z|) first; |z| is clipped into [r_min, r_max] (r_max < 1: Schur, so stable).
The parametrisation is inverted exactly, so the layer's discrete eigenvalues equal the poles:

- S4D (ZOH): λ = log(z)/Δ per channel (Re λ = log|z|/Δ < 0); bilinear: λ = (2/Δ)(z − 1)/(z + 1). Δ is kept.
- S5: the same with its per-mode Δ.   DLR: Λ = log z (a = √(−log|z|), b = arg z).
- LRU: ν = log(−log|z|), θ = log(arg z) (arg z floored at 1e-4: θ parametrises a positive phase; a real pole
  keeps a negligible rotation), γ = √(1 − |z|²) as the LRU's own initialisation.

Modes beyond the estimated ones keep their current (HiPPO, ring, ...) values. By default the order is read off the
subspace singular values (their largest drop): a full-order fit (every mode) adds spurious slow poles — on Bouc-Wen
a real pole at |z| = 0.9999 that training windows cannot see, which ruined long simulations (docs/results.md). :func:`ring_poles` draws the LRU-style
ring initialisation for comparisons.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ssmkit.sysid.records import IORecord
from ssmkit.sysid.wiener import channel_scale

SUPPORTED = ("s4d", "s5", "dlr", "lru")


def _arrays(records: Sequence[IORecord] | IORecord) -> list[tuple[np.ndarray, np.ndarray]]:
    recs = [records] if isinstance(records, IORecord) else list(records)
    if not recs or not all(isinstance(r, IORecord) for r in recs):
        raise ValueError("records must be an IORecord or a non-empty list of IORecords")
    widths = {(r.u.shape[1], r.y.shape[1]) for r in recs}
    if len(widths) > 1:
        raise ValueError(f"every record must have the same inputs m and outputs p; got (m, p) in {sorted(widths)}")
    _check_one_period(recs)
    missing = [r.name for r in recs if r.n_missing]
    if missing:
        raise ValueError(f"records {missing} have missing outputs (NaN in IORecord.y): the ARX and subspace estimates "
                         "read every output sample; estimate from records measured throughout, or keep the layer's "
                         "own initialisation")
    return [(r.u.detach().cpu().numpy().astype(np.float64), r.y.detach().cpu().numpy().astype(np.float64)) for r in recs]


def _check_one_period(records: list[IORecord]) -> None:
    """Raise ``ValueError`` unless the records are sampled regularly at one Ts (to 1e-9 relative): the ARX and
    subspace estimates read consecutive samples as one period apart, so an irregularly sampled record
    (``IORecord.t``) or records at two rates would give poles per sample of no one period (a second-order system
    sampled at random times with 60 % of its samples dropped: Re s −0.47 for −0.30, and Im s 1.18 for 0.95)."""
    irregular = [r.name for r in records if r.t is not None]
    if irregular:
        raise ValueError(f"records {irregular} are irregularly sampled (IORecord.t): the ARX and subspace estimates "
                         "read consecutive samples as one sampling time apart; estimate from regularly sampled "
                         "records, or keep the layer's own initialisation")
    first = records[0]
    for r in records[1:]:
        if not math.isclose(r.dt, first.dt, rel_tol=1e-9):
            raise ValueError(f"every record must be sampled at one Ts for a pole estimate: record {r.name!r} every "
                             f"{r.dt!r} s, {first.name!r} every {first.dt!r} s")


def _check_model_period(model: torch.nn.Module, records: Sequence[IORecord] | IORecord) -> None:
    """Raise ``ValueError`` when ``model`` states a sampling time ``dt`` (a DeepWiener) other than the records' Ts
    (to 1e-9 relative): their poles z are per record sample, and written into a model that takes another step they
    would be its poles per its own sample (records at 0.2 s into a model at 0.1 s: every continuous pole twice as
    fast). A bare layer states none: its poles are per sample of whatever it runs."""
    own = getattr(model, "dt", None)
    if not isinstance(own, (int, float)) or isinstance(own, bool):
        return
    recs = [records] if isinstance(records, IORecord) else list(records)
    for r in recs:
        if isinstance(r, IORecord) and not math.isclose(r.dt, float(own), rel_tol=1e-9):
            raise ValueError(f"the model samples every dt = {float(own)!r} s but record {r.name!r} every Ts = {r.dt!r} "
                             "s: its poles are per record sample; initialise a model built at the records' Ts "
                             f"(DeepWiener(..., dt={r.dt!r}); build_model does)")


def _scales(x: np.ndarray) -> np.ndarray:
    """The std over time of x (L, c) per channel, 1 where the channel is constant up to rounding: the scaling of
    :class:`ssmkit.sysid.DeepWiener`'s normalisation (computed by torch: numpy's std over axis 0 of a constant column
    is not 0 but up to ~1e-11 of its value). Divided by its std plus 1e-300, as before, a constant channel (an input
    held still, a dead sensor) had its rounding blown up to the size of the other channels or far beyond, and the
    poles came out at z = 1 and 0 instead of the system's (probe of 2026-12-05, MIMO)."""
    return channel_scale(torch.from_numpy(x)).numpy()


def _check_order(order: int) -> None:
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be an int >= 1 (the number of poles); got {order!r}")


def arx_poles(records: Sequence[IORecord] | IORecord, order: int, output_index: int = 0) -> np.ndarray:
    """Poles of the least-squares ARX model of one output from every input (module docstring).

    Args:
        records: the estimation records (each (L, m) inputs and (L, p) outputs).
        order: n, the number of poles.
        output_index: which output.

    Returns:
        (n,) complex poles.
    """
    _check_order(order)
    data = _arrays(records)
    n = order
    p = data[0][1].shape[1]
    if isinstance(output_index, bool) or not isinstance(output_index, int) or not 0 <= output_index < p:
        raise ValueError(f"output_index must be an int in [0, {p}) (the records have p = {p} outputs); got {output_index!r}")
    rows, rhs = [], []
    u_std = _scales(np.concatenate([u for u, _ in data]))
    y_std = _scales(np.concatenate([y[:, output_index:output_index + 1] for _, y in data]))[0]
    for u, y in data:
        yy, uu = y[:, output_index] / y_std, u / u_std
        L = yy.shape[0]
        if L <= n + 1:
            continue
        t = np.arange(n, L)
        past_y = np.stack([-yy[t - k] for k in range(1, n + 1)], axis=1)
        past_u = np.concatenate([uu[t - k] for k in range(n + 1)], axis=1)
        phi = np.concatenate([past_y, past_u], axis=1)
        # centred per record: a constant per record (an operating point, a sensor offset) is estimated along
        rows.append(phi - phi.mean(0))
        rhs.append(yy[t] - yy[t].mean())
    if not rows:
        raise ValueError(f"every record is too short for an ARX model of order {order}")
    theta = np.linalg.lstsq(np.concatenate(rows), np.concatenate(rhs), rcond=None)[0]
    return np.roots(np.concatenate([[1.0], theta[:n]])).astype(np.complex128)


def _hankel(x: np.ndarray, first: int, rows: int, cols: int) -> np.ndarray:
    """Block Hankel (rows·c, cols) of x (L, c) starting at sample ``first``."""
    return np.concatenate([x[first + i: first + i + cols].T for i in range(rows)], axis=0)


def subspace_poles(records: Sequence[IORecord] | IORecord, order: int | None = None, horizon: int | None = None,
                   max_order: int = 16) -> np.ndarray:
    """Poles of a PO-MOESP subspace estimate of the records' linear dynamics (every input and output).

    Args:
        records: the estimation records (each (L, m) inputs and (L, p) outputs).
        order: n, the state dimension; None picks it at the largest drop between consecutive singular values
            (σ_k / σ_{k+1}) among the first ``max_order`` (the usual reading of an N4SID singular-value plot).
        horizon: i, block rows of past and of future (default max(2n, 10), n = ``order`` or ``max_order``);
            i · p must exceed n.
        max_order: the largest order considered when ``order`` is None.

    Returns:
        (n,) complex poles.
    """
    if order is not None:
        _check_order(order)
    _check_order(max_order)
    n_max = order if order is not None else max_order
    data = _arrays(records)
    i = horizon if horizon is not None else max(2 * n_max, 10)
    m, p = data[0][0].shape[1], data[0][1].shape[1]
    if isinstance(i, bool) or not isinstance(i, int) or i * p <= n_max:
        raise ValueError(f"horizon must be an int with horizon · p > order ({n_max}, p = {p}); got {horizon!r}")
    u_std = _scales(np.concatenate([u for u, _ in data]))
    y_std = _scales(np.concatenate([y for _, y in data]))
    blocks = []
    for u, y in data:
        u, y = u / u_std, y / y_std
        cols = u.shape[0] - 2 * i + 1
        if cols < 1:
            continue
        block = np.concatenate([_hankel(u, i, i, cols), _hankel(u, 0, i, cols), _hankel(y, 0, i, cols),
                                _hankel(y, i, i, cols)], axis=0)
        blocks.append(block - block.mean(axis=1, keepdims=True))  # rows centred per record (offsets; docstring)
    if not blocks:
        raise ValueError(f"every record is shorter than 2 · horizon = {2 * i} samples")
    H = np.concatenate(blocks, axis=1) / math.sqrt(sum(b.shape[1] for b in blocks))
    R = np.linalg.qr(H.T, mode="r")  # H = Rᵀ Qᵀ: Rᵀ is the L of the LQ factorisation
    Lq = R.T
    mf, wp = m * i, (m + p) * i
    L32 = Lq[mf + wp:, mf:mf + wp]  # future outputs explained by the past, the future inputs removed
    U, s, _ = np.linalg.svd(L32, full_matrices=False)
    if n_max > s.size:
        cols = sum(b.shape[1] for b in blocks)
        raise ValueError(
            f"order {n_max} exceeds the {s.size} singular values available: the records give {cols} Hankel columns "
            f"for {2 * (m + p) * i} block rows (horizon {i}); use longer records or a smaller horizon"
        )
    if order is None:
        head = np.maximum(s[: n_max + 1], 1e-300 * s[0])
        order = int(np.argmax(head[:-1] / head[1:])) + 1 if head.size > 1 else 1
    gamma = U[:, :order] * np.sqrt(s[:order])
    A = np.linalg.lstsq(gamma[:-p], gamma[p:], rcond=None)[0]
    return np.linalg.eigvals(A).astype(np.complex128)


def ring_poles(n_modes: int, r_min: float = 0.5, r_max: float = 0.99, max_phase: float = math.pi, seed: int = 0) -> np.ndarray:
    """The ring initialisation of the LRU (arXiv 2303.06349, App. A): |z|² uniform in [r_min², r_max²], arg z uniform
    in [0, max_phase).

    Args:
        n_modes: M, the modes.
        r_min, r_max: the ring, 0 <= r_min < r_max < 1.
        max_phase: the largest phase (rad).
        seed: the seed.

    Returns:
        (M,) complex poles.
    """
    if not 0 <= r_min < r_max < 1:
        raise ValueError(f"need 0 <= r_min < r_max < 1; got {r_min}, {r_max}")
    rng = np.random.default_rng(seed)
    r = np.sqrt(rng.uniform(r_min**2, r_max**2, n_modes))
    return r * np.exp(1j * rng.uniform(0.0, max_phase, n_modes))


def modes(poles: np.ndarray, n_modes: int, r_min: float = 1e-3, r_max: float = 0.9999) -> np.ndarray:
    """One complex mode per conjugate pair (Im z > 0 kept) or real pole, the slowest first, at most ``n_modes``,
    with |z| clipped into [r_min, r_max].

    Args:
        poles: (n,) complex poles (conjugate pairs come in pairs, as from a real model).
        n_modes: M, the layer's modes.
        r_min, r_max: the clipping of |z|.

    Returns:
        (M,) complex modes at most (fewer when fewer poles were given).
    """
    z = np.asarray(poles, dtype=np.complex128).ravel()
    scale = np.maximum(np.abs(z), 1e-12)
    real = np.abs(z.imag) <= 1e-9 * scale
    keep = np.concatenate([z[real].real.astype(np.complex128), z[~real & (z.imag > 0)]])
    keep = keep[np.argsort(-np.abs(keep), kind="stable")][:n_modes]
    radius = np.clip(np.abs(keep), r_min, r_max)
    return radius * np.exp(1j * np.angle(keep))


def _kind(layer: torch.nn.Module) -> str:
    from ssmkit.layers.registry import available, layer_class

    for name in SUPPORTED:
        if name in available() and isinstance(layer, layer_class(name)):
            return name
    raise ValueError(f"data-driven initialisation supports the layers {list(SUPPORTED)}; got {type(layer).__name__}")


@torch.no_grad()
def set_discrete_poles(layer: torch.nn.Module, z: np.ndarray) -> None:
    """Write discrete eigenvalues into the first k modes of a layer (every channel), inverting its parametrisation
    (module docstring); the other modes keep their values.

    Args:
        layer: an ``s4d``, ``s5``, ``dlr`` or ``lru`` layer.
        z: (M,) complex modes at most (from :func:`modes`), 0 < |z| < 1; the first ones are written.
    """
    kind = _kind(layer)
    z = np.asarray(z, dtype=np.complex128).ravel()
    M = layer.n_modes
    if z.size > M or z.size == 0 or not np.all((np.abs(z) > 0) & (np.abs(z) < 1)):
        raise ValueError(f"z must hold 1..{M} modes with 0 < |z| < 1 (use modes()); got {z.size} with |z| in "
                         f"[{np.abs(z).min() if z.size else 0}, {np.abs(z).max() if z.size else 0}]")
    k = z.size
    zt = torch.as_tensor(z, device="cpu")
    logz = torch.log(zt)  # (k,) log|z| + i arg z
    if kind in ("s4d", "s5"):
        dt = torch.exp(layer.log_dt.detach().double()).cpu()  # S4D (H,), S5 (M,); z is on the CPU
        if kind == "s5":
            dt = layer.step_rescale * dt[:k]  # (k,)
        else:
            dt = dt[:, None]  # (H, 1)
        if layer.discretization == "zoh":
            lam = logz / dt
        else:
            lam = (2.0 / dt) * (zt - 1) / (zt + 1)
        if kind == "s4d":
            _write(layer, "log_A_real", (slice(None), slice(k)), torch.log(-lam.real))
            _write(layer, "A_imag", (slice(None), slice(k)), lam.imag)
        else:
            _write(layer, "A_real", slice(k), lam.real)
            _write(layer, "A_imag", slice(k), lam.imag)
    elif kind == "dlr":
        _write(layer, "A_sqrt_neg_real", slice(k), torch.sqrt(-logz.real))
        _write(layer, "A_imag", slice(k), logz.imag)
    else:  # lru
        _write(layer, "log_nu", slice(k), torch.log(-logz.real))
        _write(layer, "log_theta", slice(k), torch.log(logz.imag.abs().clamp(min=1e-4)))
        _write(layer, "log_gamma", slice(k), 0.5 * torch.log1p(-zt.abs() ** 2))


def _write(layer: torch.nn.Module, name: str, index, value: torch.Tensor) -> None:
    """``layer.<name>[index] = value`` (in the tensor's dtype): in place, or, for a tensor reparametrised with
    ``torch.nn.utils.parametrize``, by assigning the whole new value through its parametrization's
    ``right_inverse``. (Written in place, the slice of a reparametrised tensor went into the parametrization's
    output, a temporary: nothing changed, silently, and the poles came out wrong.)"""
    from torch.nn.utils import parametrize

    if not parametrize.is_parametrized(layer, name):
        tensor = getattr(layer, name)
        tensor[index] = value.to(tensor.dtype)
        return
    new = getattr(layer, name).detach().clone()
    new[index] = value.to(new.dtype)
    try:
        setattr(layer, name, new)  # through right_inverse
    except (RuntimeError, NotImplementedError) as err:
        raise ValueError(f"set_discrete_poles writes the layer's {name!r}, which is reparametrised "
                         f"(torch.nn.utils.parametrize) without a right_inverse to write it through: give the "
                         f"parametrization a right_inverse, or set the poles before registering it") from err


def init_from_data(model: torch.nn.Module, records: Sequence[IORecord] | IORecord, method: str = "subspace",
                   order: int | None = None, r_max: float = 0.9999, layers: int = 1) -> np.ndarray:
    """Initialise the first LTI layer's eigenvalues (or the first ``layers`` layers') from a linear model of the data.

    Args:
        model: a :class:`ssmkit.sysid.DeepWiener` (its first layer is set) or a supported layer itself.
        records: the estimation records.
        method: ``"subspace"`` (PO-MOESP, every input and output) or ``"arx"`` (least squares, the first output).
        order: the linear model's order; None picks it from the subspace singular values (largest drop among the
            first 2M, M the layer's modes). Modes beyond the estimated ones keep their values.
        r_max: the largest |z| written (< 1: Schur).
        layers: how many leading LTI layers of ``model`` get the same modes (1: the first; ``len(model.layers)``:
            every layer); 1 for a layer itself.

    Returns:
        (M,) complex modes at most: those written (into each of the ``layers`` layers).
    """
    stack = list(model.layers) if hasattr(model, "layers") else [model]
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= len(stack):
        raise ValueError(f"layers must be an int in [1, {len(stack)}] (the model's LTI layers); got {layers!r}")
    for layer in stack[:layers]:
        _kind(layer)
    _check_model_period(model, records)
    layer = stack[0]
    if method not in ("subspace", "arx"):
        raise ValueError(f"method must be 'subspace' or 'arx'; got {method!r}")
    top = 2 * layer.n_modes
    if method == "subspace":
        poles = subspace_poles(records, order, max_order=top)
    else:
        poles = arx_poles(records, order if order is not None else len(subspace_poles(records, None, max_order=top)))
    z = modes(poles, layer.n_modes, r_max=r_max)
    for each in stack[:layers]:
        set_discrete_poles(each, z[:each.n_modes])
    return z
