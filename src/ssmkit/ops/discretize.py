"""Discretisation of continuous-time diagonal and DPLR state-space models.

Implements the zero-order-hold and bilinear rules of "On the Parameterization and Initialization of
Diagonal State Space Models" (S4D, arXiv 2206.11893, §3) and "Efficiently Modeling Long Sequences with
Structured State Spaces" (S4, arXiv 2111.00396, eq. 3). The continuous system dx/dt = A x + B u becomes
x_k = A_bar x_{k-1} + B_bar u_k with step size dt.

Against the control textbooks' discretisations (scipy.signal.cont2discrete, MATLAB's c2d), which give
x[k+1] = A_d x[k] + B_d u[k], y[k] = C_d x[k] + D_d u[k]: the poles (A_bar = A_d) and DC gains agree, but the SSM
recurrence reads u_k before the output y_k = C x_k + D u_k, so with y's D left aside the transfer functions differ by
a factor (tests/analysis/test_discretisation_conventions.py):
    ZOH:      H_SSM(z) = z · H_zoh(z)                (one sample ahead of the sampled continuous system)
    bilinear: H_SSM(z) = 2z/(z + 1) · H_tustin(z)    (B_bar = dt B/(1 - dt Lambda/2) is not Tustin's input map)

The DPLR (S4) forms -- dense and Woodbury bilinear, and the O(N) step -- live in :mod:`ssmkit.ops.dplr`;
``bilinear_dplr`` is re-exported here. Discretisation is elementwise: one torch path (:func:`zoh_torch`), and for the
zero-order hold on the CPU under the ``"auto"`` and ``"native"`` backends a C version of it (:mod:`ssmkit.ops.native.zoh`:
two calls instead of ~50 small ops, several of them on torch's thread pool, which beside a busy process each wait for a
worker); :func:`zoh_reference` is the direct formula that the tests compare against.

A single-precision zero-order hold is evaluated in double precision and rounded once, as the C code does (on MPS, which
has no float64, in single). The sensitive step is z = Δ Λ: e^z turns z's absolute error into a relative one, and with
Im z of order 10³ (fast poles, large N) a float32 z (or a float32 Δ = exp(log Δ)) is off by 10³·6e-8 = 6e-5 in phase.
In float32 the torch path's S4D ∂log Δ was 1.2e-4 off its float64 value at N 256, Δ 0.5-5 (the C code 1.1e-7); formed
from double, 8.6e-8. The cost is a few casts of (H, N) tensors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssmkit.ops.dplr import bilinear_dplr  # noqa: F401  (re-export: the DPLR forms live in ssmkit.ops.dplr)
from ssmkit.ops.backend import tracing
from ssmkit.ops.function_call import apply_function, jvp_twin
from ssmkit.ops.powers import power_table
from ssmkit.utils import check_floating

# phi(z) = (exp(z) - 1)/z is evaluated by its Taylor series for |z| < _SERIES_RADIUS. Degree 17 truncates
# at |z| = 1 after 1/19! ~ 8e-18 (below float64 eps), and the direct formula loses at most ~e*eps for |z| >= 1.
_SERIES_RADIUS = 1.0
_SERIES_COEFFS = [1.0 / math.factorial(k + 1) for k in range(18)]  # coefficient of z^k

_WIDE = {torch.float32: torch.float64, torch.complex64: torch.complex128}


def widen(x: Tensor) -> Tensor:
    """x in double precision when it is single precision (float32 -> float64, complex64 -> complex128), except on MPS
    (no float64 there); else x itself. Differentiable: the gradient comes back in x's dtype.

    Args:
        x: real or complex tensor, any shape.

    Returns:
        x's values, of x's shape, in the wider dtype.
    """
    wide = _WIDE.get(x.dtype)
    return x if wide is None or x.device.type == "mps" else x.to(wide)


def _check_complex(x: Tensor, name: str, letters: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a complex torch.Tensor {letters}; got {type(x).__name__}")
    if not x.is_complex():
        raise ValueError(f"{name} must be {letters} complex (complex64 or complex128); got {x.dtype}")


def _check_diagonal(Lambda: Tensor, B: Tensor, dt: Tensor) -> None:
    _check_complex(Lambda, "Lambda", "(H, N)")
    _check_complex(B, "B", "(H, N)")
    check_floating(dt, "dt")
    if Lambda.dim() != 2:
        raise ValueError(f"Lambda must be (H, N) complex; got shape {tuple(Lambda.shape)}")
    H, N = Lambda.shape
    if B.shape != Lambda.shape:
        raise ValueError(f"B must be (H, N) = ({H}, {N}) like Lambda; got shape {tuple(B.shape)}")
    if dt.shape != (H, 1):
        raise ValueError(f"dt must be (H, 1) = ({H}, 1) (broadcast along N only); got shape {tuple(dt.shape)}")


_COEFFS: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _series_coefficients(dtype: torch.dtype, device: torch.device) -> Tensor:
    """The series coefficients 1/(k+1)! (18,) in ``dtype`` on ``device``, made once per dtype and device (eagerly a new
    tensor was one dispatch, and a host-to-device copy on a GPU, at every discretisation: tests/perf). Made outside
    inference mode, so that a cached tensor may be saved for a backward later."""
    key = (dtype, device)
    coeffs = _COEFFS.get(key)
    if coeffs is None:
        with torch.inference_mode(False):
            coeffs = _COEFFS[key] = torch.tensor(_SERIES_COEFFS, dtype=dtype, device=device)
    return coeffs


def _expm1_over_z(z: Tensor) -> Tensor:
    """phi(z) = (exp(z) - 1)/z elementwise, accurate (values and gradients) near z = 0."""
    small = z.abs() < _SERIES_RADIUS
    # Each branch only sees inputs where it is accurate and finite, so the unused branch gives no NaN gradient.
    z_series = torch.where(small, z, torch.zeros_like(z))
    z_direct = torch.where(small, torch.ones_like(z), z)
    # the powers z^0..z^17 by one cumprod (power_table) and the polynomial as one product with the coefficients (a
    # Horner loop was 34 small ops; the per-op dispatch cost dominates at this (H, N) size, issue 16). power_table's
    # backward is the formula Σ k z^{k-1} g_k: cumprod's own backward takes its zero-handling path here (z_series is 0
    # wherever |z| >= 1), 20 ops and 2.2 ms of a 52 ms S4D forward+backward (B 8, L 4 096, H 128, N 64, 2 threads)
    powers = power_table(z_series, len(_SERIES_COEFFS))  # (..., 18): z^0..z^17
    # while compiling, the coefficients made real, then cast: a complex tensor constant in a graph that inductor
    # compiles for CUDA becomes a Triton copy of a complex buffer, and Triton has no complex dtype ("InductorError:
    # KeyError: 'complex64'", torch 2.11: pytorch/pytorch#191330); the cast runs as an aten copy. Eagerly one op (the
    # cast's copy is one more dispatch: tests/perf). The same values either way: each coefficient rounded to z's real
    # dtype, imaginary part 0.
    if tracing():
        coeffs = torch.tensor(_SERIES_COEFFS, dtype=z.real.dtype, device=z.device).to(z.dtype)  # (18,)
    else:
        coeffs = _series_coefficients(z.dtype, z.device)  # (18,)
    series = torch.matmul(powers, coeffs)  # (...)
    if tracing():  # compile, torch.func: the same numbers by standard ops (e - e.detach() is 0 in value)
        e = torch.exp(z_direct)
        direct = (torch.expm1(z_direct).detach() + (e - e.detach())) / z_direct
    else:  # eagerly one op, as before (tests/perf)
        direct = apply_function(_Expm1, z_direct) / z_direct
    return torch.where(small, series, direct)


class _Expm1(torch.autograd.Function):
    """e^z - 1 with e^z as its derivative. torch differentiates expm1 as expm1(z) + 1, which where Re z << 0 is
    expm1's rounding (~eps), not e^z ≈ 0; φ'(z) = (e^z - φ)/z then carries eps/|z| against the true 1/z²: at z = ΔΛ
    with Δ = e^30 the float64 ∂Im Λ was 1.2 % off and ∂log Δ 2e-3 for 0, a float32 S4D's ∂log Δ at Δ = e^10 4e-3 of
    its largest gradient (the C code was right). The backward is built of torch ops: double backward works.

    Forward-mode AD: :func:`_expm1_over_z` takes its torch-ops form there (``tracing()`` is True under forward AD),
    so this Function is not called; its twin :class:`_Expm1Jvp` serves a caller that reaches it all the same."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z):  # type: ignore[override]
        return torch.expm1(z)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return grad * torch.exp(z).conj()


@jvp_twin(_Expm1)
class _Expm1Jvp(_Expm1):
    """:class:`_Expm1` with its forward derivative, called under forward-mode AD (``ops.function_call``): ż e^z, the
    same derivative as its backward (e^z ≈ 0 where Re z << 0, not expm1's rounding)."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        _Expm1.setup_context(ctx, inputs, output)
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def jvp(ctx, z_dot):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return z_dot * torch.exp(z)


def exp_phi(z: Tensor) -> tuple[Tensor, Tensor]:
    """(e^z, φ(z)) elementwise, φ(z) = (e^z - 1)/z accurate near z = 0 (values and gradients): the two functions of a
    zero-order hold, for parametrisations that form z = Δ Λ themselves (DSS). On the CPU under ``"auto"`` or
    ``"native"`` one C call forward and one backward (:mod:`ssmkit.ops.native.zoh`; torch's complex exp and expm1 run on
    its thread pool from 4 096 values); else :func:`exp_phi_torch`.

    Args:
        z: complex tensor, any shape.

    Returns:
        (e^z, φ(z)), each of z's shape and dtype.
    """
    _check_complex(z, "z", "(any shape)")
    if _native_here((z,)):
        from ssmkit.ops.native.zoh import exp_phi_native

        return exp_phi_native(z)
    return exp_phi_torch(z)


def exp_phi_torch(z: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`exp_phi` by torch ops: the path on every device, and the reference of the C code."""
    return torch.exp(z), _expm1_over_z(z)


def zoh(Lambda: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order-hold discretisation of a diagonal SSM (arXiv 2206.11893 §3).

    A_bar = exp(dt Lambda),  B_bar = (A_bar - 1)/Lambda * B = dt * B * (exp(z) - 1)/z with z = dt Lambda,
    the last form evaluated by a series for |z| < 1, so Lambda -> 0 gives B_bar -> dt B (values and gradients).
    Single precision is evaluated in double and rounded once (module docstring), on every path.

    Args:
        Lambda: (H, N) complex continuous-time eigenvalues.
        B: (H, N) complex input vector.
        dt: (H, 1) real step sizes, broadcast along N only.

    Returns:
        (A_bar, B_bar): each (H, N) complex.
    """
    _check_diagonal(Lambda, B, dt)
    if _native_here((Lambda, B), (dt,)):
        from ssmkit.ops.native.zoh import zoh_native

        return zoh_native(Lambda, B, dt)
    return zoh_torch(Lambda, B, dt)


def zoh_log(log_neg_real: Tensor, imag: Tensor, B: Tensor, log_dt: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`zoh` of the parametrisation that S4D keeps: Λ = -exp(a) + i b (so Re Λ < 0), Δ = exp(log Δ).

    The same values and gradients as ``zoh(torch.complex(-a.exp(), b), B, log_dt.exp().unsqueeze(-1))``, which is
    the torch path; on the CPU under ``"auto"`` or ``"native"`` the C code (:mod:`ssmkit.ops.native.zoh`) takes the
    parameters' exponentials too (torch's exp of an (H, M) tensor runs on its thread pool from 4 096 values).

    Args:
        log_neg_real: (H, M) real a = log(-Re Λ).
        imag: (H, M) real b = Im Λ, a's dtype.
        B: (H, M) complex input vector, of a's complex dtype.
        log_dt: (H,) real log step sizes, a's dtype.

    Returns:
        (A_bar, B_bar): each (H, M) complex.
    """
    check_floating(log_neg_real, "log_neg_real")
    if log_neg_real.dim() != 2:
        raise ValueError(f"log_neg_real must be (H, M) real; got shape {tuple(log_neg_real.shape)}")
    H, M = log_neg_real.shape
    for t, name, shape in ((imag, "imag", (H, M)), (log_dt, "log_dt", (H,))):
        check_floating(t, name)
        if t.shape != shape or t.dtype != log_neg_real.dtype:
            raise ValueError(f"{name} must be {shape} {log_neg_real.dtype} like log_neg_real; got shape "
                             f"{tuple(t.shape)}, {t.dtype}")
    _check_complex(B, "B", "(H, M)")
    if B.shape != (H, M):
        raise ValueError(f"B must be (H, M) = ({H}, {M}) like log_neg_real; got shape {tuple(B.shape)}")
    if _native_here((B,), (log_neg_real, imag, log_dt)):
        from ssmkit.ops.native.zoh import zoh_native_log

        return zoh_native_log(log_neg_real, imag, B, log_dt)
    # Δ = exp(log Δ) in double, and so z = Δ Λ in zoh_torch (module docstring: a float32 Δ alone puts ~|Im z|·eps into
    # the phase of Ā); Re Λ = -e^a rounded in single is off by |Re z|·eps in z, as Ā's own rounding (one op fewer than
    # forming it in double: tests/perf)
    Lambda = torch.complex(-torch.exp(log_neg_real), imag)  # (H, M)
    return zoh(Lambda, B, torch.exp(widen(log_dt)).unsqueeze(-1))


def zoh_torch(Lambda: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`zoh` by torch ops (after its checks): the path on every device, and the reference of the C code.

    A_bar = exp(z), B_bar = dt B φ(z), z = dt Lambda, evaluated in double for single-precision inputs (module docstring)
    and rounded once to Lambda's dtype (also when dt is float64 and Lambda complex64): (H, N) complex each.
    """
    return _zoh_rounded(widen(Lambda), B, widen(dt), Lambda.dtype)


def _zoh_rounded(Lambda: Tensor, B: Tensor, dt: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """A_bar = exp(z), B_bar = (dt φ(z)) B, z = dt Lambda (Lambda (H, N) complex, dt (H, 1), perhaps wider than
    ``dtype``; B (H, N) complex ``dtype``, promoted inside the product): each rounded to ``dtype`` once, (H, N)."""
    z = dt * Lambda  # (H, N)
    A_bar, B_bar = torch.exp(z), dt * _expm1_over_z(z) * B  # (H, N) each
    if A_bar.dtype != dtype:
        A_bar, B_bar = A_bar.to(dtype), B_bar.to(dtype)
    return A_bar, B_bar


def _native_here(complex_parts: tuple[Tensor, ...], real_parts: tuple[Tensor, ...] = ()) -> bool:
    """Whether :func:`zoh`, :func:`zoh_log` or :func:`exp_phi` takes the C code (:mod:`ssmkit.ops.native.zoh`): every
    tensor on the CPU, eagerly or compiled (not under torch.func or torch.export), under the ``"auto"`` or ``"native"``
    backend (``"reference"`` and the others keep the torch path: the tests' oracle, and a forced backend's own ops),
    the complex parts of one dtype and the real parts of its real one, and the code built and checked here. (No op is
    dispatched here: the op-count budget of tests/perf counts views too.)"""
    from ssmkit.ops._checks import REAL_OF
    from ssmkit.ops.backend import get_backend
    from ssmkit.ops.native.gate import prefer_native

    first = complex_parts[0]
    if get_backend() not in ("auto", "native") or any(t.dtype != first.dtype for t in complex_parts):
        return False
    if any(t.dtype != REAL_OF.get(first.dtype) for t in real_parts):
        return False
    return all(t.device.type == "cpu" for t in complex_parts + real_parts) and prefer_native("zoh", first)


def zoh_reference(Lambda: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order hold by the direct formula A_bar = exp(dt Lambda), B_bar = (A_bar - 1)/Lambda * B.

    Same equation and arguments as :func:`zoh`; loses accuracy as |dt Lambda| -> 0 and is NaN at Lambda = 0.

    Args:
        Lambda: (H, N) complex continuous-time eigenvalues.
        B: (H, N) complex input vector.
        dt: (H, 1) real step sizes, broadcast along N only.

    Returns:
        (A_bar, B_bar): each (H, N) complex.
    """
    _check_diagonal(Lambda, B, dt)
    A_bar = torch.exp(dt * Lambda)  # (H, N)
    return A_bar, (A_bar - 1) / Lambda * B


def bilinear(Lambda: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear discretisation of a diagonal SSM (arXiv 2111.00396 eq. 3, 2206.11893 §3).

    A_bar = (1 + dt Lambda/2)/(1 - dt Lambda/2),  B_bar = dt B/(1 - dt Lambda/2).

    A_bar is Tustin's; with x_k = A_bar x_{k-1} + B_bar u_k, y_k = C x_k the transfer function is 2z/(z + 1) times
    Tustin's (scipy's ``cont2discrete(..., method="bilinear")``): same poles and DC gain (module docstring).

    Args:
        Lambda: (H, N) complex continuous-time eigenvalues.
        B: (H, N) complex input vector.
        dt: (H, 1) real step sizes, broadcast along N only.

    Returns:
        (A_bar, B_bar): each (H, N) complex.
    """
    _check_diagonal(Lambda, B, dt)
    half = dt * Lambda / 2  # (H, N)
    return (1 + half) / (1 - half), dt * B / (1 - half)
