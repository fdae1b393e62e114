"""Long convolutions of an LTI SSM by FFT.

Implements the convolutional view y = K ∗ u of "Efficiently Modeling Long Sequences with Structured
State Spaces" (S4, Gu, Goel, Ré; arXiv 2111.00396, §3.3): the causal convolution of each channel with its
kernel, computed as irfft(rfft(u) · rfft(K)) with an FFT length n ≥ 2L (zero padding, so the circular
convolution equals the linear one on the first L outputs). Also the two-sided (bidirectional) form used by
S4's ``bidirectional=True``. (The output of a nonzero initial state of a diagonal SSM, the "state forwarding" of
S4/S4D, is :func:`ssmkit.ops.kernels.initial_state_output`.)

Every op has a direct O(L²) loop ``<op>_reference`` beside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.ops import fftblocks
from ssmkit.ops.backend import dispatch, forward_ad_active, tracing
from ssmkit.ops.function_call import apply_function, jvp_twin
from ssmkit.ops.opaque import custom_ops_allowed, exporting, kernel_op

_REAL = (torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------------
# Input checks


def _check_real(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless x is a float32/float64 tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dtype not in _REAL:
        raise ValueError(f"{name} must be float32 or float64; got {x.dtype}")


def _check_conv_args(u: torch.Tensor, K: torch.Tensor, bidirectional: bool) -> None:
    """Check u (B, L, H) and K (H, L_k) -- or (2, H, L_k) when bidirectional -- with L_k >= L, of u's dtype and
    device."""
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
    if K.device != u.device:  # the CPU blocks' in-place product with a meta k̂ was a silent no-op: y = u
        raise ValueError(f"K must be on u's device {u.device}; got {K.device}")


def _fft_size(n_min: int) -> int:
    """Smallest even n >= n_min whose prime factors are 2, 3 and 5 (fast sizes for pocketfft and cuFFT). For a
    symbolic n_min (``torch.export`` with a dynamic length) the even n >= n_min itself: the search branches on the
    value, which would specialise the exported program to one length (any n >= 2L - 1 gives the same convolution).
    The same while torch.compile traces: dynamo shows a symbolic n_min as an int (``isinstance(n_min, SymInt)`` is
    False there), and the search's guards on L's prime factors recompiled an FFT-convolution layer at every new
    length (probe 18); a static compile pays an FFT of a less smooth size (2L = 514 at L = 257, not 540)."""
    if isinstance(n_min, torch.SymInt) or torch.compiler.is_compiling():
        return n_min + n_min % 2
    n = max(2, n_min + (n_min % 2))  # (n_min <= 0 looped forever: 0 has no prime factors to divide out)
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 2


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
    """The first L samples of irfft(Y, n), back in time-major layout: Y (B, H, n//2 + 1) -> (B, L, H).

    While exporting, as 2 Re ifft(Z) with Z_k = w_k Y_k zero padded to n, w_0 = w_{n/2} = 1/2 (n even) and 1 else
    (the positive half of the Hermitian spectrum; the same numbers): onnxruntime (1.32) failed at run time on the DFT
    node that torch's ONNX exporter writes for irfft ("OutputMLValue"), and runs a complex inverse DFT. (Slicing out
    the negative frequencies instead made torch.export guard L >= 3: a slice of L - 1 bins.)
    """
    if exporting():
        k = torch.arange(Y.shape[-1], device=Y.device)
        half = (k == 0) | ((k == n // 2) & (n % 2 == 0))  # the bins counted once in the Hermitian sum
        Z = torch.view_as_real(Y * torch.where(half, 0.5, 1.0).to(Y.real.dtype))  # (B, H, n//2 + 1, 2)
        Z = torch.view_as_complex(F.pad(Z, (0, 0, 0, n - Y.shape[-1])))  # (B, H, n): pad the real pairs (ONNX
        # converts no complex pad)
        y = 2 * torch.fft.ifft(Z).real  # (B, H, n)
    else:
        y = torch.fft.irfft(Y, n=n)
    return y[..., :L].transpose(1, 2).contiguous()  # (B, L, H)


def _spectrum_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.complex128 if x.dtype == torch.float64 else torch.complex64


def _blockwise(x: torch.Tensor, n: int) -> bool:
    """The passes by cache-sized blocks (:mod:`ssmkit.ops.fftblocks`) for x (B, L, H) and FFT length n: eagerly on the
    CPU without a graph being recorded, when the padded signal is more than one block, or one block of at least
    :data:`ssmkit.ops.fftblocks.ONE_BLOCK_BYTES` where the passes around the FFTs run in C; the whole-array ops on
    other devices, under torch.func and torch.compile tracing, while exporting, for a differentiable backward
    (``create_graph``), and for a smaller block (with the PyTorch passes the blocks' extra ops cost ~15 % at
    (4, 256, 32) forward+backward)."""
    if x.device.type != "cpu" or torch.is_grad_enabled() or tracing() or exporting():
        return False
    size = x.shape[0] * x.shape[-1] * n * x.element_size()
    return size > fftblocks.BLOCK_BYTES or (size >= fftblocks.ONE_BLOCK_BYTES and fftblocks.native_passes(x.dtype))


def _conv_forward_fake(u: torch.Tensor, k: torch.Tensor) -> list[torch.Tensor]:
    (Bsz, L, H), n = u.shape, k.shape[-1]
    c = _spectrum_dtype(u)
    return [u.new_empty(Bsz, L, H), u.new_empty(Bsz, H, n // 2 + 1, dtype=c), k.new_empty(H, n // 2 + 1, dtype=c)]


@kernel_op("circular_conv_forward", _conv_forward_fake)
def _conv_forward(u: torch.Tensor, k: torch.Tensor) -> list[torch.Tensor]:
    """[y (B, L, H), û (B, H, n//2 + 1), k̂ (H, n//2 + 1)] of ``_CircularConv``'s forward."""
    if _blockwise(u, k.shape[-1]):
        return fftblocks.conv_forward_blocked(u, k)
    n, L = k.shape[-1], u.shape[1]
    U = _time_spectrum(u, n)  # (B, H, n//2 + 1)
    K_f = torch.fft.rfft(k)  # (H, n//2 + 1)
    return [_from_spectrum(U * K_f, n, L), U, K_f]  # (B, L, H), spectra


def _conv_grads(U: torch.Tensor, K_f: torch.Tensor, dy: torch.Tensor, n: int, L: int, need_u: bool, need_k: bool
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(∂u (B, L, H), ∂k (H, n)) of ``_CircularConv`` from the spectra û (B, H, n//2 + 1), k̂ (H, n//2 + 1) and dy
    (B, L, H); None for one not needed: du = irfft(conj(k̂) · dŷ), dk = irfft(Σ_b conj(û) · dŷ)."""
    if _blockwise(dy, n):
        return fftblocks.conv_grads_blocked(U, K_f, dy, n, L, need_u, need_k)
    dY = _time_spectrum(dy, n)  # (B, H, n//2 + 1)
    du = _from_spectrum(dY * K_f.conj(), n, L) if need_u else None  # (B, L, H)
    dk = torch.fft.irfft((dY * U.conj()).sum(0), n=n) if need_k else None  # (H, n)
    return du, dk


def _conv_backward_fake(u, k, U, K_f, dy, need_u, need_k) -> list[torch.Tensor]:
    return [torch.empty_like(u), torch.empty_like(k)]


@kernel_op("circular_conv_backward", _conv_backward_fake)
def _conv_backward(u: torch.Tensor, k: torch.Tensor, U: torch.Tensor, K_f: torch.Tensor, dy: torch.Tensor,
                   need_u: bool, need_k: bool) -> list[torch.Tensor]:
    """[∂u (B, L, H), ∂k (H, n)] of ``_CircularConv`` by :func:`_conv_grads` (zeros for one not needed: an op returns
    tensors), without a graph."""
    du, dk = _conv_grads(U, K_f, dy, k.shape[-1], u.shape[1], need_u, need_k)
    return [torch.zeros_like(u) if du is None else du, torch.zeros_like(k) if dk is None else dk]


def _opaque(fn):
    """``fn`` as its custom op while torch.compile traces (not torch.export: ``custom_ops_allowed``), else itself.
    Traced, Inductor laid the zero-padded (B, H, n) signal out time-major (strides (n·H, 1, H), fused with the
    transpose), and each rfft along that stride-H axis copied it first and ran 2-3x slower than eager's (compiled S4,
    B 8, L 4 096, H 128); as an op, the FFTs run as in eager."""
    return fn if custom_ops_allowed() else fn.__wrapped__


class _CircularConv(torch.autograd.Function):
    """y[t] = Σ_{s<L} k[(t − s) mod n] u[s] for t < L, by FFT, with the adjoint FFTs as its backward.

    u (B, L, H) real, k (H, n) real circular filter (n >= L); returns (B, L, H). The backward is
    du[s] = Σ_t k[(t − s) mod n] dy[t] = irfft(conj(k̂) · dŷ)[s] and
    dk[m] = Σ_b Σ_t dy[t] u[(t − m) mod n] = irfft(Σ_b conj(û) · dŷ)[m]: one rfft and two irfft, where
    autograd's generic rfft backward runs a full complex FFT (measured fwd+bwd 142 ms against 185 ms,
    B=8, H=128, L=4096, 2 CPU cores).
    Under ``create_graph=True`` the same formulas are rebuilt from u and k with history, so second
    derivatives are exact too. The forward also returns the spectra û, k̂ (non-differentiable) so that
    ``setup_context`` can save them; every step is a pure tensor op, so torch.func's generated vmap rule
    batches it.

    Forward-mode AD: :class:`_CircularConvJvp`. Under forward AD the backward recomputes the spectra from u and k, as
    under ``create_graph``, so that forward over reverse (``torch.func.hessian``) sees their tangents (the saved
    spectra carry none).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(u: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, U, K_f = _opaque(_conv_forward)(u, k)  # (B, L, H), spectra
        return y, U, K_f

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        u, k = inputs
        _, U, K_f = output
        ctx.mark_non_differentiable(U, K_f)
        ctx.set_materialize_grads(False)  # no zero tensors for the spectra's (never used) gradients
        ctx.save_for_backward(u, k, U, K_f)

    @staticmethod
    def backward(ctx, dy: torch.Tensor, _dU, _dK) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if dy is None:  # y did not reach the loss
            return None, None
        u, k, U, K_f = ctx.saved_tensors
        n, L = k.shape[-1], u.shape[1]
        need_u, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled() or forward_ad_active():  # create_graph=True or forward AD: spectra with history
            # (second derivatives) or with tangents (forward-over-reverse)
            U, K_f = _time_spectrum(u, n), torch.fft.rfft(k)
        elif torch.compiler.is_compiling() and custom_ops_allowed():  # one op in a compiled graph (see _opaque)
            du, dk = _conv_backward(u, k, U, K_f, dy, need_u, need_k)
            return (du if need_u else None), (dk if need_k else None)
        return _conv_grads(U, K_f, dy, n, L, need_u, need_k)


@jvp_twin(_CircularConv)
class _CircularConvJvp(_CircularConv):
    """:class:`_CircularConv` with its forward derivative, called under forward-mode AD (``ops.function_call``): y is
    bilinear in (u, k), so ẏ = irfft(rfft(u̇) · k̂ + û · rfft(k̇))[:L] from the forward's spectra (one rfft per tangent
    and one irfft, exact). The spectra outputs get no tangent."""

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _CircularConv.setup_context(ctx, inputs, output)
        u, k = inputs
        ctx.save_for_forward(*output[1:])  # û, k̂
        ctx.n, ctx.L = k.shape[-1], u.shape[1]

    @staticmethod
    def jvp(ctx, u_dot: torch.Tensor | None, k_dot: torch.Tensor | None):
        U, K_f = ctx.saved_tensors
        n, L = ctx.n, ctx.L
        Y_dot = None  # (B, H, n//2 + 1): the spectrum of ẏ
        if u_dot is not None:
            Y_dot = _time_spectrum(u_dot, n) * K_f
        if k_dot is not None:
            term = U * torch.fft.rfft(k_dot)  # (B, H, n//2 + 1)
            Y_dot = term if Y_dot is None else Y_dot + term
        if Y_dot is None:
            return None, None, None
        return _from_spectrum(Y_dot, n, L), None, None  # (B, L, H)


def _circular_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """y[t] = Σ_{s<L} k[(t − s) mod n] u[s], t < L: u (B, L, H), k (H, n) -> (B, L, H) (see ``_CircularConv``).
    Without a gradient to come (no_grad, or neither input requires one), on the CPU by blocks that keep no spectrum."""
    if not (torch.is_grad_enabled() and (u.requires_grad or k.requires_grad)):
        with torch.no_grad():
            if _blockwise(u, k.shape[-1]):
                return fftblocks.conv_forward_blocked(u, k, keep_spectrum=False)[0]
    return apply_function(_CircularConv, u, k)[0]


def causal_conv_fft(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Causal depthwise convolution by FFT: the first L samples of irfft(rfft(u) · rfft(K)), both zero padded to a length >= 2L.

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
    return _circular_conv(u, k)


_CAUSAL_CONV = {"reference": causal_conv_reference, "fft": causal_conv_fft}


def causal_conv(u: torch.Tensor, K: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Causal depthwise convolution y[b, t, h] = Σ_{s≤t} K[h, t−s] u[b, s, h] (arXiv 2111.00396 §3.3).

    Backends: ``"reference"`` -> :func:`causal_conv_reference` (loop over lags); ``"fft"`` ->
    :func:`causal_conv_fft` (torch.fft rfft/irfft, any device); ``"auto"`` -> ``"fft"``; ``"chunked"`` and
    ``"triton"`` raise.

    Args:
        u: (B, L, H) real input (float32 or float64).
        K: (H, L_k) real kernel with L_k >= L, same dtype as u; only the first L taps are used.
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        (B, L, H) output, u's dtype.
    """
    return dispatch("causal_conv", _CAUSAL_CONV, backend, auto="fft")(u, K)


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
    return _circular_conv(u, k)


_BIDIRECTIONAL_CONV = {"reference": bidirectional_conv_reference, "fft": bidirectional_conv_fft}


def bidirectional_conv(u: torch.Tensor, K: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Two-sided depthwise convolution: y[t] = Σ_{s≤t} K[0, t−s] u[s] + Σ_{s>t} K[1, s−t−1] u[s].

    arXiv 2111.00396 (bidirectional S4). K[1]'s tap 0 acts at lag −1 (the next input); see
    :func:`bidirectional_conv_reference`.

    Backends: ``"reference"`` -> :func:`bidirectional_conv_reference` (loops over lags); ``"fft"`` ->
    :func:`bidirectional_conv_fft` (torch.fft, any device); ``"auto"`` -> ``"fft"``; ``"chunked"`` and
    ``"triton"`` raise.

    Args:
        u: (B, L, H) real input (float32 or float64).
        K: (2, H, L_k) real kernels (forward, backward) with L_k >= L, same dtype as u.
        backend: one of :data:`ssmkit.ops.BACKENDS` for this call, or None for the context's backend.

    Returns:
        (B, L, H) output, u's dtype.
    """
    return dispatch("bidirectional_conv", _BIDIRECTIONAL_CONV, backend, auto="fft")(u, K)
