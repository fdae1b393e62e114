"""Long convolutions of an LTI SSM by FFT, and the output contribution of an initial state.

Implements the convolutional view y = K ∗ u of "Efficiently Modeling Long Sequences with Structured
State Spaces" (S4, Gu, Goel, Ré; arXiv 2111.00396, §3.3): the causal convolution of each channel with its
kernel, computed as irfft(rfft(u) · rfft(K)) with an FFT length n ≥ 2L (zero padding, so the circular
convolution equals the linear one on the first L outputs). Also the two-sided (bidirectional) form used by
S4's ``bidirectional=True`` and the output of a nonzero initial state of a diagonal SSM, which is the
"state forwarding" of S4/S4D (arXiv 2206.11893; shared/notes/core-checked.md §2).

Every op has a direct O(L²) (or O(L·N)) loop ``<op>_reference`` beside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.ops.backend import get_backend, unavailable
from ssmkit.ops.kernels import vandermonde_gemm

_REAL = (torch.float32, torch.float64)
_COMPLEX = (torch.complex64, torch.complex128)


# --------------------------------------------------------------------------------------------------
# Input checks


def _check_real(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless x is a float32/float64 tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dtype not in _REAL:
        raise ValueError(f"{name} must be float32 or float64; got {x.dtype}")


def _check_conv_args(u: torch.Tensor, K: torch.Tensor, bidirectional: bool) -> None:
    """Check u (B, L, H) and K (H, L_k) -- or (2, H, L_k) when bidirectional -- with L_k >= L."""
    _check_real(u, "u")
    _check_real(K, "K")
    if u.dim() != 3 or 0 in u.shape:
        raise ValueError(f"u must be (B, L, H) with every size >= 1; got shape {tuple(u.shape)}")
    _, L, H = u.shape
    if bidirectional:
        if K.dim() != 3 or K.shape[0] != 2 or K.shape[1] != H:
            raise ValueError(f"K must be (2, H, L_k) = (2, {H}, >={L}) for u of shape {tuple(u.shape)}; "
                             f"got shape {tuple(K.shape)}")
    elif K.dim() != 2 or K.shape[0] != H:
        raise ValueError(f"K must be (H, L_k) = ({H}, >={L}) for u of shape {tuple(u.shape)}; "
                         f"got shape {tuple(K.shape)}")
    if K.shape[-1] < L:
        raise ValueError(f"K must have at least L={L} taps (last dimension); got shape {tuple(K.shape)}")
    if K.dtype != u.dtype:
        raise ValueError(f"K must have u's dtype {u.dtype}; got {K.dtype}")


def _fft_size(n_min: int) -> int:
    """Smallest even n >= n_min whose prime factors are 2, 3 and 5 (fast sizes for pocketfft and cuFFT)."""
    n = n_min + (n_min % 2)
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 2


def _dispatch(op: str) -> str:
    """The path for an FFT op: "reference", or "fft" for auto/chunked/fft; "triton" raises."""
    backend = get_backend()
    if backend == "triton":
        raise unavailable(op, backend, "it has no Triton kernel; use 'auto' (torch.fft runs on GPU)")
    return "reference" if backend == "reference" else "fft"


# --------------------------------------------------------------------------------------------------
# Causal convolution


def causal_conv_reference(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Causal depthwise convolution by a loop over lags: y[b, t, h] = Σ_{s≤t} K[h, t−s] u[b, s, h].

    arXiv 2111.00396 §3.3 (y = K̄ ∗ u). O(L²) work; the test oracle.

    Args:
        u: (B, L, H) real input (float32 or float64).
        K: (H, L_k) real kernel with L_k >= L, same dtype as u; only the first L taps are used.

    Returns:
        (B, L, H) output, u's dtype.
    """
    _check_conv_args(u, K, bidirectional=False)
    L = u.shape[1]
    y = torch.zeros_like(u)  # (B, L, H)
    for j in range(L):  # lag j = t − s
        y[:, j:, :] += K[:, j] * u[:, : L - j, :]  # (B, L−j, H)
    return y


def _time_spectrum(x: torch.Tensor, n: int) -> torch.Tensor:
    """rfft along time of x (B, L, H) zero padded to length n: (B, H, n//2 + 1) complex."""
    L = x.shape[1]
    return torch.fft.rfft(F.pad(x.transpose(1, 2), (0, n - L)))  # (B, H, n//2 + 1)


def _from_spectrum(Y: torch.Tensor, n: int, L: int) -> torch.Tensor:
    """The first L samples of irfft(Y, n), back in time-major layout: Y (B, H, n//2 + 1) -> (B, L, H)."""
    return torch.fft.irfft(Y, n=n)[..., :L].transpose(1, 2).contiguous()  # (B, L, H)


class _CircularConv(torch.autograd.Function):
    """y[t] = Σ_{s<L} k[(t − s) mod n] u[s] for t < L, by FFT, with the adjoint FFTs as its backward.

    u (B, L, H) real, k (H, n) real circular filter (n >= L); returns (B, L, H). The backward is
    du[s] = Σ_t k[(t − s) mod n] dy[t] = irfft(conj(k̂) · dŷ)[s] and
    dk[m] = Σ_b Σ_t dy[t] u[(t − m) mod n] = irfft(Σ_b conj(û) · dŷ)[m]: one rfft and two irfft, where
    autograd's generic rfft backward runs a full complex FFT (measured fwd+bwd 142 ms against 185 ms,
    B=8, H=128, L=4096, 2 CPU cores).
    Under ``create_graph=True`` the same formulas are rebuilt from u and k with history, so second
    derivatives are exact too.
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        n, L = k.shape[-1], u.shape[1]
        U = _time_spectrum(u, n)  # (B, H, n//2 + 1)
        K_f = torch.fft.rfft(k)  # (H, n//2 + 1)
        ctx.save_for_backward(u, k, U, K_f)
        return _from_spectrum(U * K_f, n, L)  # (B, L, H)

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        u, k, U, K_f = ctx.saved_tensors
        n, L = k.shape[-1], u.shape[1]
        if torch.is_grad_enabled():  # create_graph=True: spectra with history, for second derivatives
            U, K_f = _time_spectrum(u, n), torch.fft.rfft(k)
        dY = _time_spectrum(dy, n)  # (B, H, n//2 + 1)
        du = _from_spectrum(dY * K_f.conj(), n, L) if ctx.needs_input_grad[0] else None  # (B, L, H)
        dk = torch.fft.irfft((dY * U.conj()).sum(0), n=n) if ctx.needs_input_grad[1] else None  # (H, n)
        return du, dk


def causal_conv_fft(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Causal depthwise convolution by FFT: y = irfft(rfft(u, n) · rfft(K, n), n)[:L], n >= 2L.

    arXiv 2111.00396 §3.3. Same result as :func:`causal_conv_reference`; n is the smallest even
    2·3·5-smooth size >= 2L, so the circular convolution never wraps onto the first L outputs.

    Args:
        u: (B, L, H) real input (float32 or float64).
        K: (H, L_k) real kernel with L_k >= L, same dtype as u; only the first L taps are used.

    Returns:
        (B, L, H) output, u's dtype.
    """
    _check_conv_args(u, K, bidirectional=False)
    L = u.shape[1]
    n = _fft_size(2 * L)
    k = F.pad(K[:, :L], (0, n - L))  # (H, n): taps 0..L−1, then zeros (no wrap-around onto t < L)
    return _CircularConv.apply(u, k)


def causal_conv(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Causal depthwise convolution y[b, t, h] = Σ_{s≤t} K[h, t−s] u[b, s, h] (arXiv 2111.00396 §3.3).

    Backends (``ssmkit.ops.set_backend``):
        ``"reference"`` -- :func:`causal_conv_reference` (loop over lags);
        ``"auto"``, ``"chunked"``, ``"fft"`` -- :func:`causal_conv_fft` (torch.fft rfft/irfft, any device);
        ``"triton"`` -- raises ``RuntimeError`` (no Triton kernel).

    Args:
        u: (B, L, H) real input (float32 or float64).
        K: (H, L_k) real kernel with L_k >= L, same dtype as u; only the first L taps are used.

    Returns:
        (B, L, H) output, u's dtype.
    """
    if _dispatch("causal_conv") == "reference":
        return causal_conv_reference(u, K)
    return causal_conv_fft(u, K)


# --------------------------------------------------------------------------------------------------
# Bidirectional convolution


def bidirectional_conv_reference(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Two-sided depthwise convolution by loops over lags.

    y[b, t, h] = Σ_{s≤t} K[0, h, t−s] u[b, s, h] + Σ_{s>t} K[1, h, s−t−1] u[b, s, h]:
    the forward kernel K[0] acts at lags 0, 1, …; the backward kernel's tap K[1, h, m] acts at lag −(m+1),
    so the current input is counted once (by K[0]). This is S4's bidirectional layer (arXiv 2111.00396),
    where K[1] is the kernel of a second SSM run on the time-reversed sequence and shifted by one step.

    Args:
        u: (B, L, H) real input (float32 or float64).
        K: (2, H, L_k) real kernels (forward, backward) with L_k >= L, same dtype as u.

    Returns:
        (B, L, H) output, u's dtype.
    """
    _check_conv_args(u, K, bidirectional=True)
    L = u.shape[1]
    y = torch.zeros_like(u)  # (B, L, H)
    for j in range(L):  # forward lag j = t − s >= 0
        y[:, j:, :] += K[0, :, j] * u[:, : L - j, :]  # (B, L−j, H)
    for m in range(L - 1):  # backward lag s − t = m + 1
        y[:, : L - m - 1, :] += K[1, :, m] * u[:, m + 1 :, :]  # (B, L−m−1, H)
    return y


def bidirectional_conv_fft(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Two-sided depthwise convolution by one FFT (convention of :func:`bidirectional_conv_reference`).

    The two kernels form one circular filter of length n >= 2L: k[j] = K[0, j] for 0 <= j < L,
    k[n − 1 − m] = K[1, m] for 0 <= m < L (lag −(m+1)), zeros between;
    y = irfft(rfft(u) · rfft(k))[:L].

    Args:
        u: (B, L, H) real input (float32 or float64).
        K: (2, H, L_k) real kernels (forward, backward) with L_k >= L, same dtype as u.

    Returns:
        (B, L, H) output, u's dtype.
    """
    _check_conv_args(u, K, bidirectional=True)
    L = u.shape[1]
    n = _fft_size(2 * L)
    gap = K.new_zeros(K.shape[1], n - 2 * L)  # (H, n − 2L)
    k = torch.cat([K[0, :, :L], gap, K[1, :, :L].flip(-1)], dim=-1)  # (H, n): lags 0..L−1, then −L..−1
    return _CircularConv.apply(u, k)


def bidirectional_conv(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Two-sided depthwise convolution: y[t] = Σ_{s≤t} K[0, t−s] u[s] + Σ_{s>t} K[1, s−t−1] u[s].

    arXiv 2111.00396 (bidirectional S4). K[1]'s tap 0 acts at lag −1 (the next input); see
    :func:`bidirectional_conv_reference`.

    Backends (``ssmkit.ops.set_backend``):
        ``"reference"`` -- :func:`bidirectional_conv_reference` (loops over lags);
        ``"auto"``, ``"chunked"``, ``"fft"`` -- :func:`bidirectional_conv_fft` (torch.fft, any device);
        ``"triton"`` -- raises ``RuntimeError`` (no Triton kernel).

    Args:
        u: (B, L, H) real input (float32 or float64).
        K: (2, H, L_k) real kernels (forward, backward) with L_k >= L, same dtype as u.

    Returns:
        (B, L, H) output, u's dtype.
    """
    if _dispatch("bidirectional_conv") == "reference":
        return bidirectional_conv_reference(u, K)
    return bidirectional_conv_fft(u, K)


# --------------------------------------------------------------------------------------------------
# Output of an initial state


def _check_state_args(C: torch.Tensor, A_bar: torch.Tensor, state: torch.Tensor, L: int) -> None:
    """Check C, A_bar (H, N) and state (B, H, N) of one float/complex dtype, and L >= 1."""
    for name, x in (("C", C), ("A_bar", A_bar), ("state", state)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        if x.dtype not in _REAL + _COMPLEX:
            raise ValueError(f"{name} must be float32, float64, complex64 or complex128; got {x.dtype}")
    if A_bar.dim() != 2:
        raise ValueError(f"A_bar must be (H, N) (2 dimensions); got shape {tuple(A_bar.shape)}")
    H, N = A_bar.shape
    if tuple(C.shape) != (H, N):
        raise ValueError(f"C must be (H, N) = ({H}, {N}) to match A_bar; got shape {tuple(C.shape)}")
    if state.dim() != 3 or tuple(state.shape[1:]) != (H, N) or state.shape[0] < 1:
        raise ValueError(f"state must be (B, H, N) = (?, {H}, {N}); got shape {tuple(state.shape)}")
    if not (C.dtype == A_bar.dtype == state.dtype):
        raise ValueError(
            f"C, A_bar and state must have one dtype; got {C.dtype}, {A_bar.dtype}, {state.dtype}"
        )
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"L must be an int >= 1; got {L!r}")


def initial_state_output_reference(
    C: torch.Tensor, A_bar: torch.Tensor, state: torch.Tensor, L: int
) -> torch.Tensor:
    """Output of an initial state by the free recurrence x_l = Ā x_{l−1}, y_l = Re(C x_l), x_{−1} = s.

    y0[b, l, h] = Re Σ_n C[h, n] Ā[h, n]^{l+1} s[b, h, n] (S4D state forwarding, arXiv 2206.11893;
    shared/notes/core-checked.md §2: s is the state before the first input). Loop over l; the oracle.

    Args:
        C: (H, N) output weights, real or complex (pass 2·C for conjugate-pair S4D modes).
        A_bar: (H, N) discrete diagonal state matrix Ā, same dtype as C.
        state: (B, H, N) initial state s = x_{−1}, same dtype as C.
        L: number of output steps, >= 1.

    Returns:
        (B, L, H) real output (float32 for float32/complex64 inputs, float64 otherwise).
    """
    _check_state_args(C, A_bar, state, L)
    x = state
    ys = []
    for _ in range(L):
        x = A_bar * x  # (B, H, N): x_l = Ā x_{l−1}
        y = (C * x).sum(-1)  # (B, H)
        ys.append(y.real if y.is_complex() else y)
    return torch.stack(ys, dim=1)  # (B, L, H)


def initial_state_output_vandermonde(
    C: torch.Tensor, A_bar: torch.Tensor, state: torch.Tensor, L: int
) -> torch.Tensor:
    """Output of an initial state as a batched Vandermonde product: y0[b, l, h] = Re Σ_n W Ā^l.

    With W[b, h, n] = C[h, n] Ā[h, n] s[b, h, n] (arXiv 2206.11893 §3 kernel with the state folded into
    B̄: B̄_s = Ā s); computed by :func:`ssmkit.ops.kernels.vandermonde_gemm`, never allocating (B, H, N, L).

    Args:
        C: (H, N) output weights, real or complex (pass 2·C for conjugate-pair S4D modes).
        A_bar: (H, N) discrete diagonal state matrix Ā, same dtype as C.
        state: (B, H, N) initial state s = x_{−1}, same dtype as C.
        L: number of output steps, >= 1.

    Returns:
        (B, L, H) real output (float32 for float32/complex64 inputs, float64 otherwise).
    """
    _check_state_args(C, A_bar, state, L)
    W = C * A_bar * state  # (B, H, N)
    return vandermonde_gemm(W, A_bar, L).transpose(1, 2).contiguous()  # (B, L, H)


def initial_state_output(C: torch.Tensor, A_bar: torch.Tensor, state: torch.Tensor, L: int) -> torch.Tensor:
    """Output of an initial state s = x_{−1}: y0[b, l, h] = Re Σ_n C[h, n] Ā[h, n]^{l+1} s[b, h, n].

    S4D state forwarding (arXiv 2206.11893; shared/notes/core-checked.md §2: y_l += 2Re(C Ā^{l+1} s) for
    conjugate pairs, so pass 2·C there). Add it to the convolution output of the zero-state response.

    Backends (``ssmkit.ops.set_backend``):
        ``"reference"`` -- :func:`initial_state_output_reference` (loop over l);
        ``"auto"``, ``"chunked"``, ``"fft"`` -- :func:`initial_state_output_vandermonde` (power table + GEMM);
        ``"triton"`` -- raises ``RuntimeError`` (no Triton kernel).

    Args:
        C: (H, N) output weights, real or complex.
        A_bar: (H, N) discrete diagonal state matrix Ā, same dtype as C.
        state: (B, H, N) initial state s = x_{−1}, same dtype as C.
        L: number of output steps, >= 1.

    Returns:
        (B, L, H) real output (float32 for float32/complex64 inputs, float64 otherwise).
    """
    if _dispatch("initial_state_output") == "reference":
        return initial_state_output_reference(C, A_bar, state, L)
    return initial_state_output_vandermonde(C, A_bar, state, L)
