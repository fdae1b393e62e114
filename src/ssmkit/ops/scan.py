"""The diagonal LTI SSM over a sequence: its loop reference, its dispatch, its FFT path and its final state.

Diagonal LTI SSM, recurrent view (Gu, Gupta, Goel, Ré, "On the Parameterization and Initialization of
Diagonal State Space Models", arXiv 2206.11893, §2):

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,    y_t = Re(Σ_n C_n x_{t,n}) + D u_t

Three algorithms, one signature:
- ``ssm_scan_reference``: the loop over t (the oracle).
- ``ssm_scan_chunked`` (:mod:`ssmkit.ops.chunked`): the chunked matmul ("SSD") algorithm, time domain.
- ``ssm_scan_fft``: the convolution view (arXiv 2206.11893 eq. 5), frequency domain:
  y = K ∗ u + y_state with K_l = Re Σ_n C_n B̄_n Ā_n^l (+ D on K_0) and the initial state's output
  y_state,l = Re Σ_n C_n Ā_n^{l+1} x_{-1,n}; its final state comes from :func:`ssm_final_state_chunked`.

The final state alone, x_{L-1} = Ā^L x_{-1} + Σ_l Ā^{L-1-l} B̄ u_l, has a loop reference and a GEMM path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.ops._checks import check_chunk_size, check_params, check_skip
from ssmkit.ops.backend import dispatch
from ssmkit.ops.chunked import pack, ssm_scan_chunked, transpose, unpack, wide_int_power, wide_power_table
from ssmkit.ops.fftconv import causal_conv
from ssmkit.ops.kernels import initial_state_output, vandermonde
from ssmkit.ops.native.diagonal import native_diagonal_ok, ssm_scan_native
from ssmkit.ops.native.gate import prefer_native
from ssmkit.ops.powers import power_table
from ssmkit.ops.symbolic import symbolic_length
from ssmkit.ops.triton_gate import prefer_triton, ssm_scan_triton

# ----------------------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------------------


def ssm_scan_reference(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    *,
    return_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Diagonal SSM by a plain loop over time (the oracle of :func:`ssm_scan`).

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,  y_t = Re(Σ_n C_n x_{t,n}) + D u_t  (arXiv 2206.11893 §2, recurrent view).

    Args:
        u: (B, L, H) real input.
        A_bar: (H, N) complex (or real) discrete state matrix (diagonal).
        B_bar: (H, N) complex (or real) discrete input matrix.
        C: (H, N) complex (or real) output matrix; pass 2·C for conjugate-pair halves.
        state: (B, H, N) complex (or real) state x_{-1}, or None for zeros.
        D: (H,) real skip (feed-through), y_t += D u_t; None for no skip.
        return_state: whether to return the final state (else None in its place).

    Returns:
        y (B, L, H) real in u's dtype, and the final state x_{L-1} (B, H, N) in A_bar's dtype (or None).
    """
    check_params(u, state, A_bar=A_bar, B_bar=B_bar, C=C)
    check_skip(D, u)
    Bsz, _, H = u.shape
    x = state if state is not None else u.new_zeros((Bsz, H, A_bar.shape[1]), dtype=A_bar.dtype)  # (B, H, N)
    ys = []
    for u_t in u.unbind(1):  # unbind, not u[:, t]: its backward is one stack, not L full-size zero tensors
        x = A_bar * x + B_bar * u_t[..., None]  # (B, H, N)
        y_t = (C * x).sum(-1)  # (B, H)
        ys.append(y_t.real if y_t.is_complex() else y_t)
    y = torch.stack(ys, dim=1)  # (B, L, H)
    return (y if D is None else y + D * u), (x if return_state else None)  # (B, L, H), (B, H, N)


def ssm_final_state_reference(
    u: torch.Tensor, A_bar: torch.Tensor, B_bar: torch.Tensor, state: torch.Tensor | None = None
) -> torch.Tensor:
    """Final state of the diagonal SSM by a plain loop (the oracle of :func:`ssm_final_state`).

    x_{L-1} = Ā^L ⊙ x_{-1} + Σ_l Ā^{L-1-l} ⊙ B̄ u_l  (arXiv 2206.11893 §2, unrolled recurrence).

    Args:
        u: (B, L, H) real input.
        A_bar: (H, N) complex (or real).
        B_bar: (H, N) complex (or real).
        state: (B, H, N) complex (or real) state x_{-1}, or None for zeros.

    Returns:
        x_{L-1}: (B, H, N) in A_bar's dtype.
    """
    check_params(u, state, A_bar=A_bar, B_bar=B_bar)
    Bsz, _, H = u.shape
    x = state if state is not None else u.new_zeros((Bsz, H, A_bar.shape[1]), dtype=A_bar.dtype)  # (B, H, N)
    for u_t in u.unbind(1):
        x = A_bar * x + B_bar * u_t[..., None]  # (B, H, N)
    return x


# ----------------------------------------------------------------------------------------------------
# Final state, matmul-shaped
# ----------------------------------------------------------------------------------------------------


def ssm_final_state_chunked(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    B_bar: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Final state of the diagonal SSM, matmul-shaped; equals :func:`ssm_final_state_reference`.

    x_{L-1} = Ā^L x_{-1} + Σ_c (Ā^T)^{nc-1-c} Σ_k Ā^{T-1-k} B̄ u_{cT+k}  (arXiv 2206.11893 §2 unrolled, grouped
    into nc chunks of T steps; zeros are prepended so that the chunks end at L-1).

    Args:
        u: (B, L, H) real input.
        A_bar: (H, N) complex (or real).
        B_bar: (H, N) complex (or real).
        state: (B, H, N) complex (or real) state x_{-1}, or None for zeros.
        chunk_size: T, steps per chunk; min(T, L) is used.

    Returns:
        x_{L-1}: (B, H, N) in A_bar's dtype.
    """
    check_params(u, state, A_bar=A_bar, B_bar=B_bar)
    check_chunk_size(chunk_size)
    Bsz, L, H = u.shape
    is_complex = A_bar.is_complex()
    T = min(chunk_size, L)
    n_chunks = -(-L // T)
    # 1. Ā^k (k <= T) in double precision, and the rows Ā^{T-1-k} B̄ that map a chunk's inputs to its end state.
    wide = wide_power_table(A_bar, T + 1)  # (H, N, T+1), double precision
    powers = wide.to(A_bar.dtype)  # (H, N, T+1), each power rounded once
    to_state = pack((powers[..., :T].flip(-1) * B_bar[..., None]).transpose(1, 2))  # (H, T, 2N)
    # 2. Every chunk's input part as one GEMM (zero inputs before the start add nothing).
    pad = n_chunks * T - L
    u_pad = F.pad(u, (0, 0, pad, 0)) if pad else u  # (B, nc·T, H)
    u_c = transpose(u_pad.reshape(Bsz * n_chunks * T, H)).reshape(H, Bsz * n_chunks, T)  # (H, B·nc, T)
    z = unpack(torch.bmm(u_c, to_state).reshape(H, Bsz, n_chunks, -1), is_complex)  # (H, B, nc, N)
    # 3. Decay each chunk's part to the end: (Ā^T)^{nc-1-c}, each power from Ā in double and rounded once (raised from
    # the rounded Ā^T, its one rounding grew nc-fold: the final state 3.4e-5 off at L = 262 144, |λ| >= 0.9999).
    decay = power_table(wide[..., T], n_chunks).to(A_bar.dtype).flip(-1)  # (H, N, nc)
    x = (z * decay.transpose(1, 2)[:, None]).sum(2)  # (H, B, N)
    # 4. The initial state's term Ā^L x_{-1}.
    if state is not None:
        x = x + wide_int_power(A_bar, L)[:, None] * state.permute(1, 0, 2)  # (H, B, N)
    return x.permute(1, 0, 2).contiguous()  # (B, H, N)


# ----------------------------------------------------------------------------------------------------
# Convolution (FFT) path
# ----------------------------------------------------------------------------------------------------


def ssm_scan_fft(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    *,
    return_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Diagonal SSM by its convolution view; equals :func:`ssm_scan_reference`.

    y = K ∗ u + y_state, K_l = Re Σ_n C_n B̄_n Ā_n^l + D δ_l (arXiv 2206.11893 eq. 5; the skip rides on tap 0),
    y_state,l = Re Σ_n C_n Ā_n^{l+1} x_{-1,n} (the initial state's free response). Steps, each with an
    explicit backend: (1) K by the power-table GEMM (:func:`ssmkit.ops.kernels.vandermonde`, ``"chunked"``);
    (2) the causal convolution by FFT (:func:`ssmkit.ops.fftconv.causal_conv`, ``"fft"``); (3) y_state by
    the same GEMM (:func:`ssmkit.ops.kernels.initial_state_output`, ``"chunked"``); (4) the final state by
    :func:`ssm_final_state_chunked`, skipped when ``return_state`` is False.

    Args:
        u: (B, L, H) real input.
        A_bar: (H, N) complex (or real) discrete state matrix (diagonal).
        B_bar: (H, N) complex (or real) discrete input matrix.
        C: (H, N) complex (or real) output matrix; pass 2·C for conjugate-pair halves.
        state: (B, H, N) complex (or real) state x_{-1}, or None for zeros.
        D: (H,) real skip (feed-through), y_t += D u_t; None for no skip.
        return_state: whether to compute the final state (else None is returned in its place).

    Returns:
        y (B, L, H) real in u's dtype, and the final state x_{L-1} (B, H, N) in A_bar's dtype (or None).
    """
    check_params(u, state, A_bar=A_bar, B_bar=B_bar, C=C)
    check_skip(D, u)
    L = u.shape[1]
    # 1. The kernel, with the skip on tap 0.
    K = vandermonde(C * B_bar, A_bar, L, backend="chunked")  # (H, L)
    if D is not None:
        K = torch.cat([K[:, :1] + D[:, None], K[:, 1:]], dim=1)  # (H, L): K_0 + D
    # 2. The zero-state response.
    y = causal_conv(u, K, backend="fft")  # (B, L, H)
    # 3. The initial state's response.
    if state is not None:
        y = y + initial_state_output(C, A_bar, state, L, backend="chunked")  # (B, L, H)
    # 4. The final state.
    x = ssm_final_state_chunked(u, A_bar, B_bar, state) if return_state else None  # (B, H, N)
    return y, x


# ----------------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------------

_SCAN = {"reference": ssm_scan_reference, "chunked": ssm_scan_chunked, "fft": ssm_scan_fft, "triton": ssm_scan_triton,
         "native": ssm_scan_native}

# ``auto``'s choice between the chunked scan and the FFT path where the C kernel does not run (no compiler, not
# the CPU), keyed by (device type, return_state): the FFT path is taken for L in [lo, hi) (hi None: no
# upper end); elsewhere, and for a None entry, the chunked scan. The CPU entries are what ``ssmkit bench crossover``
# printed on the quiet 2-core VM (2026-11-30, B = 8, H = 128, N = 64; docs/benchmarks.md): the FFT path was faster
# only at L = 512 with the final state (0.86x the chunked time) and at L = 256-512 without it (0.52-0.53x), and slower
# from L = 1024 on (1.2-1.9x with the state). CUDA: to be measured on the GPU.
FFT_LENGTHS: dict[tuple[str, bool], tuple[int, int | None] | None] = {
    ("cpu", True): (512, 1024),
    ("cpu", False): (256, 1024),
    # measured on an H200 (docs/benchmarks.md, B 8, H 128, N 64, float32, y only): the FFT path is the fastest from
    # L = 1024 to 16384 (1.3-1.4x the chunked scan; 1024 is the shortest measured) and the chunked scan at L = 2^20
    # (1.5x); the crossover between is not measured: 2^17 is the two lengths' geometric middle. With the final state
    # asked for (extra GEMMs on the FFT path; not measured) the same range, so that asking for the state does not
    # change y's path (the protocol: y bit for bit the same either way; a chunked y differed in the last bits)
    ("cuda", True): (1, 131072),
    ("cuda", False): (1, 131072),
}
# "auto" takes the fused Triton scan on CUDA only when this is True: on the H200 it was slower than the FFT path at
# every measured shape (equal at L = 1024, 2.1-9.5x slower from L = 4096; its grid was one program per (row, block of
# channels), too few to fill the GPU: docs/benchmarks.md). The kernel has since been given a chunk-parallel grid
# (ssmkit.ops.triton.scan.plan_groups), not yet timed on a GPU. It stays available as backend="triton".
TRITON_SCAN_IN_AUTO = False


def auto_scan_backend(u: torch.Tensor, return_state: bool = True, A_bar: torch.Tensor | None = None) -> str:
    """The path ``"auto"`` takes for :func:`ssm_scan` (unless :data:`TRITON_SCAN_IN_AUTO`): ``"native"`` (the C
    kernel) on the CPU for complex or real Ā where it runs and no torch.func transform or export traces; else ``"fft"`` when
    L lies in the measured FFT range of :data:`FFT_LENGTHS` for u's device type and ``return_state``, else
    ``"chunked"``.

    Args:
        u: (B, L, H) input.
        return_state: whether the final state is asked for (the FFT path pays extra GEMMs for it).
        A_bar: (H, N) the state matrix (its dtype decides whether the C kernel takes it), or None: not the kernel.

    Returns:
        ``"native"``, ``"fft"`` or ``"chunked"``.
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 3:  # the chunked path's checks name what is wrong
        return "chunked"
    if symbolic_length(u.shape[1]):  # exporting with a dynamic L: the chunked scan has a guard-free form
        return "chunked"
    if A_bar is not None and native_diagonal_ok(u, A_bar) is None and prefer_native("ssm_scan", u):
        return "native"
    span = FFT_LENGTHS.get((u.device.type, bool(return_state)))
    if span is None:
        return "chunked"
    lo, hi = span
    L = u.shape[1]
    return "fft" if L >= lo and (hi is None or L < hi) else "chunked"
_FINAL_STATE = {"reference": ssm_final_state_reference, "chunked": ssm_final_state_chunked}


def ssm_scan(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    *,
    return_state: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Diagonal LTI SSM over a sequence, from ``state``; the path is chosen by the backend.

    x_t = Ā ⊙ x_{t-1} + B̄ u_t,  y_t = Re(Σ_n C_n x_{t,n}) + D u_t  (arXiv 2206.11893 §2; real parameters:
    no Re). The skip D rides on K_0 (the chunked path's Toeplitz diagonal, the FFT kernel's tap 0), so it
    costs no extra pass.

    Backends: ``"reference"`` -> :func:`ssm_scan_reference` (loop); ``"chunked"`` ->
    :func:`ssmkit.ops.chunked.ssm_scan_chunked` (chunked GEMMs); ``"fft"`` -> :func:`ssm_scan_fft` (kernel +
    FFT convolution; the final state by chunked GEMMs); ``"triton"`` -> the fused Triton kernels
    (:mod:`ssmkit.ops.triton_gate`: CUDA after a successful smoke call, or the CPU interpreter under
    ``TRITON_INTERPRET=1``; raises elsewhere); ``"native"`` -> :func:`ssmkit.ops.native.ssm_scan_native` (the C
    kernel, CPU, complex or real parameters); ``"auto"`` -> :func:`auto_scan_backend` (the C kernel on the CPU;
    else the chunked scan, or the FFT path over the measured range of L of :data:`FFT_LENGTHS`, per device; the
    Triton kernel only where :data:`TRITON_SCAN_IN_AUTO` says, False since it was slower on an H200). Every path is
    twice differentiable (the native and Triton kernels' backwards then go through the chunked scan:
    :mod:`ssmkit.ops.twice`).

    Args:
        u: (B, L, H) real input (float32 or float64).
        A_bar: (H, N) complex (or real) discrete state matrix (diagonal).
        B_bar: (H, N) complex (or real) discrete input matrix.
        C: (H, N) complex (or real) output matrix; pass 2·C for conjugate-pair halves.
        state: (B, H, N) complex (or real) state x_{-1}, or None for zeros.
        D: (H,) real skip (feed-through), y_t += D u_t; None for no skip.
        return_state: whether to compute the final state; with False the second result is None and the
            ``"fft"`` path skips the final-state GEMMs entirely (training usually discards the state).
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        y (B, L, H) real in u's dtype, and the final state x_{L-1} (B, H, N) in A_bar's dtype (or None).
    """
    def auto() -> str:
        use_kernel = TRITON_SCAN_IN_AUTO and prefer_triton(u, "ssm_scan")
        return "triton" if use_kernel else auto_scan_backend(u, return_state, A_bar)

    impl = dispatch("ssm_scan", _SCAN, backend, auto=auto)
    return impl(u, A_bar, B_bar, C, state, D, return_state=return_state)


def ssm_final_state(
    u: torch.Tensor,
    A_bar: torch.Tensor,
    B_bar: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Final state x_{L-1} of the diagonal SSM without computing y; the path is chosen by the backend.

    x_{L-1} = Ā^L ⊙ x_{-1} + Σ_l Ā^{L-1-l} ⊙ B̄ u_l  (arXiv 2206.11893 §2, unrolled recurrence).

    Backends: ``"reference"`` -> :func:`ssm_final_state_reference` (loop); ``"chunked"`` ->
    :func:`ssm_final_state_chunked` (GEMM-shaped, any device); ``"auto"`` -> ``"chunked"``; ``"fft"`` and
    ``"triton"`` raise (a final state has no frequency-domain form).

    Args:
        u: (B, L, H) real input.
        A_bar: (H, N) complex (or real).
        B_bar: (H, N) complex (or real).
        state: (B, H, N) complex (or real) state x_{-1}, or None for zeros.
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        x_{L-1}: (B, H, N) in A_bar's dtype.
    """
    impl = dispatch("ssm_final_state", _FINAL_STATE, backend, auto="chunked")
    return impl(u, A_bar, B_bar, state)
