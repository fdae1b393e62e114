"""The machine's limits measured in the same run as a benchmark, and the lower bounds of a case under them.

Two limits, each measured by the run that uses it (a figure from another day on a shared machine says little):

    copy bandwidth  bytes read + written per second by ``dst.copy_(src)`` of a buffer larger than the caches
    FLOP rate       float32 flops (2 per multiply-add) per second of a large square GEMM (this BLAS's practical peak)

and two lower bounds of a case, in the fused model of docs/benchmarks.md (a kernel that never writes its states
over time, nor anything else it does not return). The bytes bound is that of the layer's core op, the op whose
tensors every implementation of the layer must read or write at least once; each op's docstring gives its formula
(s bytes per element):

    lti        the diagonal LTI scan or FFT convolution (S4, S4D, S5, ...; :func:`lti_bytes`): u in, y out
    selective  Mamba's selective scan (:func:`selective_bytes`): u, Δ, z, B and C in, y out
    ssd        Mamba-2's SSD scan (:func:`ssd_bytes`): x, Δ, B and C in, y and the final state out
    attention  causal softmax attention, flash-style (:func:`attention_bytes`): q, k and v in, o out
    rglru      the RG-LRU recurrence of Hawk (:func:`rglru_bytes`): x and the gates r, i in, h out

Counted: every tensor with a batch axis that the op reads or writes; the parameters (no batch axis, read once per
call) are left out. A forward+backward reads the forward's inputs again (the gradients exist only after the
forward), reads the gradient of each output the loss uses, and writes the gradient of each input: 3x the inputs, 2x
y (the loss is of y alone) and 1x any other output (the SSD's final state). A ``step`` case runs L tokens from the
initial state, each reading and writing the state (an LTI layer's own, :func:`state_reals`). :func:`core_op` says
which op a layer class runs (:data:`TIME_VARYING_CORE_OPS`, else its zoo entry) and :func:`layer_bytes` reads the
op's sizes from the built layer.

The FLOP bound is that of the same core op (:func:`layer_flops`, :data:`CORE_OPS`): the real additions, subtractions
and multiplications of the recurrence or contraction the op defines, a multiply-add counting 2 (as the GEMM rate
counts 2·m·n·k), each product formed once (per-channel constants folded where the op allows it). Each op's docstring
gives its formula:

    lti        the recurrence of the layer's state (:func:`lti_flops`): a bank of modes per channel, or S5's and LRU's
               one system shared by the channels; a long convolution (SGConv, Hyena, H3's shift SSM) the cheaper of
               its direct sum and an FFT convolution (:func:`conv_flops`)
    selective  Mamba's recurrence per channel and state, and Δ's low-rank projection (:func:`selective_flops`)
    ssd        Mamba-2's recurrence per head on its P × N state (:func:`ssd_flops`)
    attention  q·k and p·v over the causal pairs (:func:`attention_flops`)
    rglru      the RG-LRU's gate algebra and recurrence (:func:`rglru_flops`)

Not counted: transcendental functions (exp, expm1, softplus, sigmoid, the square root), the softmax's max, sum and
division, a skip D ⊙ u and a gate; so each bound is below what its op does. forward+backward is 3x forward: for
each product of the forward whose two factors carry gradients the backward forms one product per factor (exact for
the contractions); recomputing the forward in the backward, as the chunked paths do, is not counted. A ``step`` case
does the forward's arithmetic, one position per token. An SSM layer's FFT path computes the same y by transforms
whose count does not grow with N (:func:`conv_flops`: 8·log2(2L) - 10 flops per position and channel, 94 at
L 4 096, against the recurrence's 5.5·N, 352 at N 64): the LTI bound is the recurrence's, the op's own definition,
and an FFT row may in principle exceed it.

The achieved fraction of a bound is bound time / measured time (1.0 = at the limit).
"""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.utils._pytree as pytree

import ssmkit.layers as layers
from ssmkit.ops.rows import plain_linear

MODES = ("forward", "forward_backward", "step")


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second moved by ``dst.copy_(src)`` (read + written) for float32 buffers of ``megabytes``.

    Args:
        megabytes: size of each buffer in MB (256 is far above any CPU cache; tests pass 1).
        repeats: copies timed; the best is kept (the machine's capability, not its noise).

    Returns:
        bytes / second (2 × buffer size / best time).
    """
    n = max(1, megabytes * (1 << 20) // 4)
    src = torch.ones(n)
    dst = torch.empty(n)
    dst.copy_(src)  # first touch of the pages
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(max(1, repeats)))
    return 2 * 4 * n / best


def gemm_flops(size: int = 2048, repeats: int = 3) -> float:
    """Float32 flops per second of a (size × size) @ (size × size) GEMM (2·size³ flops), best of ``repeats``.

    Args:
        size: the matrix side (2048 is enough to reach the BLAS peak; tests pass 64).
        repeats: products timed.

    Returns:
        flops / second.
    """
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(max(1, repeats)))
    return 2 * size**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")


def _check_sizes(**sizes: int) -> None:
    """Raise ``ValueError`` unless every size is an int >= 1, naming the first that is not."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1; got {value!r}")


def _divides(groups: int, name: str, total: int, total_name: str) -> None:
    if total % groups:
        raise ValueError(f"{name} must divide {total_name} = {total}; got {name}={groups}")


def lti_bytes(mode: str, batch: int, length: int, channels: int, d_state: int, itemsize: int,
              state: int | None = None, cache: int = 0) -> float:
    """The minimum bytes of a diagonal LTI scan or FFT convolution y = K ⊛ u over H channels (the layer's u and y).

        forward           2·B·L·H·s       u read, y written
        forward+backward  5·B·L·H·s       the forward's u in, y out; the backward's u again, dy in, du out
        step              B·s·Σ_{t<L} (2·H + 2·state + cache·(t + 1))
                          = B·s·(L·(2·H + 2·state + cache) + cache·L·(L - 1)/2)

    A step reads u and writes y (H each), reads the fixed-size state and writes the next one (``state`` reals per
    sequence; the default H·N is a bank of H systems of N reals, as S4D's N/2 complex modes per channel), and, where
    the state also holds every input so far (Hyena's long convolutions), reads the t entries it holds at token t and
    writes the new one (``cache`` reals per entry; a functional step must return the state, but need not copy the
    entries it keeps). Complex entries count as two reals.

    The parameters (and the kernel K, which a fused kernel forms from them) are not counted; ``length`` counts the
    tokens of a ``step`` case, run from the initial state (an empty cache).

    Args:
        mode: one of :data:`MODES`.
        batch, length, channels, d_state: B, L, H, N.
        itemsize: s, bytes per element (4 for float32).
        state: reals in one sequence's fixed-size state (a step only), or None for H·N.
        cache: reals per entry of a state that grows by one entry per token (a step only), or 0.
    """
    _check_mode(mode)
    _check_sizes(batch=batch, length=length, channels=channels, d_state=d_state, itemsize=itemsize)
    if mode == "forward":
        return 2.0 * batch * length * channels * itemsize
    if mode == "forward_backward":
        return 5.0 * batch * length * channels * itemsize
    state = channels * d_state if state is None else state
    if isinstance(state, bool) or not isinstance(state, int) or state < 0:
        raise ValueError(f"state must be an int >= 0 or None; got {state!r}")
    if isinstance(cache, bool) or not isinstance(cache, int) or cache < 0:
        raise ValueError(f"cache must be an int >= 0; got {cache!r}")
    per_row = length * (2 * channels + 2 * state + cache) + cache * (length * (length - 1) // 2)
    return float(itemsize) * batch * per_row


def state_reals(layer: layers.SequenceLayer) -> tuple[int, int]:
    """The reals of one sequence's state of ``layer`` (complex entries count twice), from its ``state_spec``: those of
    the fixed-size tensors, and those of one entry of the tensors that grow by an entry per token (0 if none).

    Args:
        layer: a built layer with a recurrent step.

    Returns:
        (fixed-size reals, reals per entry of the growing tensors).
    """
    fixed = per_entry = 0
    for spec in pytree.tree_leaves(layer.state_spec()):
        reals = 2 if spec.dtype.is_complex else 1
        if spec.growing is None:
            fixed += math.prod(spec.shape) * reals
        else:
            per_entry += math.prod(n for axis, n in enumerate(spec.shape) if axis != spec.growing) * reals
    return fixed, per_entry


def selective_bytes(mode: str, batch: int, length: int, channels: int, d_state: int, itemsize: int,
                    groups: int = 1, delta_width: int | None = None, gate: bool = True,
                    final_state: bool = False) -> float:
    """The minimum bytes of Mamba's selective scan (:func:`ssmkit.ops.selective.selective_scan`) over E channels.

    Per position the scan reads I = E + R + g·E + 2·G·N elements: u (E); Δ (R = E, or R = the rank of W_Δ where the
    scan is given the low-rank δ and W_Δ and forms Δ = W_Δ δ itself, as the Mamba layer calls it); the gate z (g = 1
    with a gate, else 0); B and C (G·N each, one pair per group of E/G channels). It writes y (E):

        forward           s·B·(L·(I + E) + f·E·N)         f = 1 where the final state (B, E, N) is returned
        forward+backward  s·B·(L·(3·I + 2·E) + f·E·N)     the inputs again, dy in and the inputs' gradients out
        step              s·B·L·(I + E + 2·E·N)           per token one position, the state read and written

    The final state is written once; its gradient is not read (the loss is of y). A, D, b_Δ and W_Δ are parameters.

    Args:
        mode: one of :data:`MODES`.
        batch, length, channels, d_state: B, L, E, N.
        itemsize: s, bytes per element.
        groups: G, the groups of channels sharing B and C (1: shared by all, Mamba-1).
        delta_width: R, the elements of Δ read per position (None: E).
        gate: whether the gate z is read.
        final_state: whether the scan returns the final state.
    """
    _check_mode(mode)
    delta = channels if delta_width is None else delta_width
    _check_sizes(batch=batch, length=length, channels=channels, d_state=d_state, itemsize=itemsize, groups=groups,
                 delta_width=delta)
    _divides(groups, "groups", channels, "channels")
    inputs = channels + delta + (channels if gate else 0) + 2 * groups * d_state  # I per position
    state = channels * d_state if final_state else 0
    if mode == "forward":
        return float(itemsize) * batch * (length * (inputs + channels) + state)
    if mode == "forward_backward":
        return float(itemsize) * batch * (length * (3 * inputs + 2 * channels) + state)
    return float(itemsize) * batch * length * (inputs + channels + 2 * channels * d_state)


def ssd_bytes(mode: str, batch: int, length: int, heads: int, headdim: int, d_state: int, itemsize: int,
              groups: int = 1) -> float:
    """The minimum bytes of Mamba-2's SSD scan (:func:`ssmkit.ops.ssd.ssd`) over H heads of P channels, from rest.

    Per position the scan reads I = H·P + H + 2·G·N elements -- x (H·P), Δ (H), B and C (G·N each) -- and writes y
    (H·P); the op always returns the final state (B, H, P, N), written once:

        forward           s·B·(L·(I + H·P) + H·P·N)
        forward+backward  s·B·(L·(3·I + 2·H·P) + H·P·N)     the inputs again, dy in and the inputs' gradients out
        step              s·B·L·(I + H·P + 2·H·P·N)         per token one position, the state read and written

    The final state's gradient is not read (the loss is of y; a loss of the state would add H·P·N per batch row), and
    an initial state would add H·P·N read (3x forward+backward). A is a parameter.

    Args:
        mode: one of :data:`MODES`.
        batch, length, heads, headdim, d_state: B, L, H, P, N.
        itemsize: s, bytes per element.
        groups: G, the groups of heads sharing B and C.
    """
    _check_mode(mode)
    _check_sizes(batch=batch, length=length, heads=heads, headdim=headdim, d_state=d_state, itemsize=itemsize,
                 groups=groups)
    _divides(groups, "groups", heads, "heads")
    channels = heads * headdim
    inputs = channels + heads + 2 * groups * d_state  # I per position
    state = channels * d_state
    if mode == "forward":
        return float(itemsize) * batch * (length * (inputs + channels) + state)
    if mode == "forward_backward":
        return float(itemsize) * batch * (length * (3 * inputs + 2 * channels) + state)
    return float(itemsize) * batch * length * (inputs + channels + 2 * state)


def attention_bytes(mode: str, batch: int, length: int, heads: int, head_dim: int, itemsize: int,
                    window: int | None = None) -> float:
    """The minimum bytes of causal softmax attention (:func:`ssmkit.ops.attention.causal_attention`), A heads of P.

    With d = A·P elements per position of each of q, k, v and o:

        forward           4·B·L·d·s     q, k, v read, o written
        forward+backward  11·B·L·d·s    q, k, v again, do in, dq, dk, dv out
        step              B·d·s·Σ_{t<L} (6 + 2·c_t)   per token q, k, v in, c_t cached keys and values in, the new key
                          and value into the cache, o out; c_t = t, or min(t, window - 1) with a window

    Without a window the step sum is B·d·s·L·(L + 5). The L×L scores are not counted: ssmkit's ``chunked`` path
    (``auto``'s) calls PyTorch's fused ``scaled_dot_product_attention``, which never writes them to memory; the
    ``reference`` path forms them, and its fraction of this bound shows what that costs.

    Args:
        mode: one of :data:`MODES`.
        batch, length, heads, head_dim: B, L, A, P.
        itemsize: s, bytes per element.
        window: the positions a query sees (itself included), or None for all earlier ones.
    """
    _check_mode(mode)
    _check_sizes(batch=batch, length=length, heads=heads, head_dim=head_dim, itemsize=itemsize)
    if window is not None:
        _check_sizes(window=window)
    d = heads * head_dim
    if mode == "forward":
        return 4.0 * batch * length * d * itemsize
    if mode == "forward_backward":
        return 11.0 * batch * length * d * itemsize
    if window is None or length <= window:
        cached = length * (length - 1) // 2  # Σ_{t<L} t
    else:
        cached = window * (window - 1) // 2 + (length - window) * (window - 1)  # t up to W - 1, then W - 1 each
    return float(batch) * d * itemsize * (6 * length + 2 * cached)


def rglru_bytes(mode: str, batch: int, length: int, channels: int, itemsize: int) -> float:
    """The minimum bytes of the RG-LRU recurrence (:func:`ssmkit.ops.rglru.rglru`) over D channels, from rest.

        forward           4·B·L·D·s     x and the gates r, i read, h written (the final state is its last row)
        forward+backward  11·B·L·D·s    x, r, i again, dh in, dx, dr, di out
        step              5·B·L·D·s     per token x, r, i and the state read, the new state (the output) written

    Λ is a parameter.

    Args:
        mode: one of :data:`MODES`.
        batch, length, channels: B, L, D.
        itemsize: s, bytes per element.
    """
    _check_mode(mode)
    _check_sizes(batch=batch, length=length, channels=channels, itemsize=itemsize)
    per = {"forward": 4, "forward_backward": 11, "step": 5}[mode]
    return float(per) * batch * length * channels * itemsize


# The core op of each time-varying layer class; an LTI layer (its zoo entry's time_varying is False) runs an LTI scan
# or convolution: "lti". Mega and Liquid-S4 are time-varying, but the LTI op (their EMA, S4's convolution: u in, y out)
# is the one they must run at least: a lower bound that leaves out Mega's attention and Liquid-S4's input products.
TIME_VARYING_CORE_OPS: dict[type, str] = {
    layers.Mamba: "selective",
    layers.Mamba2: "ssd",
    layers.Attention: "attention",
    layers.RGLRU: "rglru",
    layers.Mega: "lti",
    layers.LiquidS4: "lti",
}


def core_op(layer_class: type) -> str:
    """The core op whose bytes and FLOP bounds bound a layer class's cases, one of :data:`CORE_OPS`.

    The class or its nearest base in :data:`TIME_VARYING_CORE_OPS`, else ``"lti"`` for a class whose zoo entry
    (:class:`ssmkit.layers.ZooEntry`) declares it time-invariant.

    Args:
        layer_class: a :class:`ssmkit.layers.SequenceLayer` subclass.
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, layers.SequenceLayer)):
        raise ValueError(f"layer_class must be a SequenceLayer subclass; got {layer_class!r}")
    for cls in layer_class.__mro__:
        if cls in TIME_VARYING_CORE_OPS:
            return TIME_VARYING_CORE_OPS[cls]
    zoo = layer_class.zoo
    if zoo is not None and not zoo.time_varying:
        return "lti"
    why = "no zoo entry" if zoo is None else "its zoo entry says time-varying"
    raise ValueError(f"{layer_class.__name__} has no core op in TIME_VARYING_CORE_OPS and is not declared "
                     f"time-invariant ({why}): its bounds are unknown")


def _selective_sizes(layer) -> dict:
    # the layer hands the scan δlow (R per position) and W_Δ unless dt_proj is wrapped (then Δ, E per position)
    low = plain_linear(layer.dt_proj)
    return {"channels": layer.d_inner, "d_state": layer.d_state, "delta_width": layer.rank if low else None}


def _lti_state(layer, mode: str) -> dict:
    """The state sizes of :func:`lti_bytes` for a step of ``layer``: its fixed-size state and, for a time-invariant
    layer, the entries of its growing state (Hyena's inputs so far, which the long convolutions read at every token).
    A time-varying layer held to the LTI op (Mega, Liquid-S4) counts its fixed-size state only: Mega's key/value cache
    is its attention's, which the bound leaves out as the forward bound does."""
    if mode != "step":
        return {}
    fixed, per_entry = state_reals(layer)
    time_invariant = not any(cls in TIME_VARYING_CORE_OPS for cls in type(layer).__mro__)
    return {"state": fixed, "cache": per_entry if time_invariant else 0}


_LAYER_BYTES = {  # core op -> (layer, mode, B, L, N, s) -> bytes, the sizes read from the built layer
    "lti": lambda layer, mode, B, L, N, s: lti_bytes(mode, B, L, layer.d_model, N, s, **_lti_state(layer, mode)),
    "selective": lambda layer, mode, B, L, N, s: selective_bytes(mode, B, L, itemsize=s, **_selective_sizes(layer)),
    "ssd": lambda layer, mode, B, L, N, s: ssd_bytes(mode, B, L, layer.nheads, layer.headdim, layer.d_state, s,
                                                     groups=layer.ngroups),
    "attention": lambda layer, mode, B, L, N, s: attention_bytes(mode, B, L, layer.n_heads, layer.head_dim, s,
                                                                 window=layer.window),
    "rglru": lambda layer, mode, B, L, N, s: rglru_bytes(mode, B, L, layer.lru_width, s),
}
CORE_OPS = tuple(_LAYER_BYTES)


def layer_bytes(layer: layers.SequenceLayer, mode: str, batch: int, length: int, d_state: int,
                itemsize: int) -> tuple[str, float]:
    """The bytes bound of a case of ``layer``: its core op (:func:`core_op`) and that op's minimum bytes, with the
    op's sizes read from the layer (Mamba's inner channels and rank, Mamba-2's heads, attention's heads, ...; an LTI
    step's state from the layer's ``state_spec``, :func:`state_reals`: S5's and LRU's M modes shared by the channels,
    H3's two SSMs, SGConv's F - 1 past inputs per channel, Hyena's inputs so far).

    As the cases run it: ``return_state=False`` (no final state, except the SSD's, which the op always returns), the
    loss of y alone, steps from the layer's initial state.

    Args:
        layer: a built :class:`ssmkit.layers.SequenceLayer`.
        mode: one of :data:`MODES`.
        batch, length: B, L (tokens for ``step``).
        d_state: the case's N (an LTI step counts the state of the layer, which is built with this N).
        itemsize: s, bytes per element.

    Returns:
        (the core op's name, bytes).
    """
    op = core_op(type(layer))
    return op, _LAYER_BYTES[op](layer, mode, batch, length, d_state, itemsize)


def _per_mode(mode: str, forward: float) -> float:
    """forward+backward is 3x the forward (module docstring); forward and step are the forward's count."""
    return 3.0 * forward if mode == "forward_backward" else float(forward)


def lti_flops(mode: str, batch: int, length: int, channels: int, modes: int, complex_modes: bool = True,
              shared: bool = False) -> float:
    """The minimum flops of the diagonal LTI recurrence x_t = Ā ⊙ x_{t-1} + B̄ u_t, y_t = Re(C x_t) (arXiv 2206.11893
    §2; arXiv 2208.04933 eq. 2-3 for one shared system), per step and batch row:

        a bank, each of the H channels its own M modes (S4D, S4, DSS, DLR, EMA, ...):
            complex modes   11·H·M    Ā ⊙ x' (4 mul, 2 add), + u_t (1 add), Re(C̃ x') into y_t (2 mul, 2 add)
            real modes      4·H·M     ā x' (1 mul), + u_t (1 add), c̃ x' into y_t (1 mul, 1 add)
        one system of M modes shared by the H channels (``shared``: S5, LRU):
            complex modes   6·M + 8·H·M   Ā ⊙ x (6 per mode); B̄ u_t, a complex-by-real multiply-add per mode and
                                          channel (4); Re(C x_t), 2 real multiply-adds per channel and mode (4)
            real modes      M + 4·H·M

        forward           B·L·(per step)
        forward+backward  3x forward
        step              B·L·(per step)    L tokens, one step each

    A bank's B̄ (a number per channel and mode) is folded into its states: x' = x / B̄ runs x'_t = Ā ⊙ x'_{t-1} + u_t
    and gives the same y with C̃ = C ⊙ B̄ (formed once per call, not counted). A shared system's dense B̄ and C
    cannot be folded so. The skip D u_t is not counted, nor a bidirectional layer's second scan. An FFT convolution of
    the same kernel costs :func:`conv_flops`' transforms instead, fewer at a large M: this is the recurrence's count.

    Args:
        mode: one of :data:`MODES`.
        batch, length, channels, modes: B, L, H, M.
        complex_modes: whether the modes (Ā, the state) are complex.
        shared: one system of M modes read by every channel (True) or a bank of M modes per channel (False).
    """
    _check_mode(mode)
    _check_sizes(batch=batch, length=length, channels=channels, modes=modes)
    H, M = channels, modes
    if shared:
        per_step = (6 * M + 8 * H * M) if complex_modes else (M + 4 * H * M)
    else:
        per_step = (11 if complex_modes else 4) * H * M
    return _per_mode(mode, float(batch) * length * per_step)


def rfft_flops(n: int) -> float:
    """The flops of a real FFT (or of its inverse) of n points: 2·n·log2 n - 4·n + 6, the real-data split-radix count
    (Sorensen, Jones, Heideman & Burrus 1987; exact for n a power of two: 2, 6 and 22 flops at n = 2, 4, 8), taken as
    the model for other n. (The modified split-radix FFT of Johnson & Frigo 2007 needs ~5.6 % fewer.)

    Args:
        n: the transform's length, >= 2.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2; got {n!r}")
    return 2.0 * n * math.log2(n) - 4.0 * n + 6.0


def conv_flops(mode: str, batch: int, length: int, channels: int, taps: int | None = None) -> float:
    """The minimum flops of a causal depthwise convolution y_t = Σ_k K_k u_{t-k} with F taps per channel (SGConv's
    kernel, H3's shift SSM; ``taps`` None: every earlier input, Hyena's implicit filters), per batch row and channel
    the cheaper of its direct sum and an FFT convolution (arXiv 2111.00396 §3.3):

        direct = 2·Σ_{t<L} min(t + 1, F)        a multiply-add per tap an output sees
        fft = 2·r(n) + 3·n - 4, n = 2·L          rfft of u and irfft of y (:func:`rfft_flops` r(n) each), and the
                                                 spectra's product: n/2 - 1 complex bins (6) and 2 real ones (1)

        forward           B·H·min(direct, fft)
        forward+backward  B·H·min(3·direct, 2·fft + 3·n - 4)   du and dK are convolutions of ``direct`` each; by FFT
                                                               rfft(dy), two products and the irfft of du (dK's
                                                               irfft is per channel)
        step              B·H·direct                           each token convolves the inputs so far (no transform)

    The kernel's own formation and transform, once per channel and call, are left out (a batch row's share is 1/B);
    so is the skip on the current tap (folded into K_0). n is the least padded length; the FFT path may take a
    longer one (:func:`ssmkit.ops.fftconv.causal_conv_fft`).

    Args:
        mode: one of :data:`MODES`.
        batch, length, channels: B, L, H.
        taps: F, or None for an unbounded kernel (as many taps as the sequence).
    """
    _check_mode(mode)
    _check_sizes(batch=batch, length=length, channels=channels)
    if taps is not None:
        _check_sizes(taps=taps)
    F, L = (length if taps is None else min(taps, length)), length
    seen = F * (F + 1) // 2 + (L - F) * F  # Σ_{t<L} min(t + 1, F)
    direct = 2.0 * seen
    n = 2 * L
    product = 3 * n - 4
    fft = 2 * rfft_flops(n) + product
    per = {"forward": min(direct, fft), "forward_backward": min(3 * direct, 2 * fft + product), "step": direct}[mode]
    return float(batch) * channels * per


def selective_flops(mode: str, batch: int, length: int, channels: int, d_state: int,
                    delta_width: int | None = None) -> float:
    """The minimum flops of Mamba's selective scan (:func:`ssmkit.ops.selective.selective_scan`, arXiv 2312.00752
    Algorithm 2) over E channels of N states. Per position and channel:

        Δ A_n (N mul), Δ u (1 mul), h_n = exp(Δ A_n) h_n + (Δ u) B_n (2 mul, 1 add per state), y = Σ_n C_n h_n
        (N multiply-adds): 6·N + 1; and where the scan forms Δ = W_Δ δ + b_Δ from the low-rank δ (R per position),
        R multiply-adds: 2·R more.

        forward           B·L·E·(6·N + 1 + 2·R)    (R = 0 where Δ is given whole)
        forward+backward  3x forward
        step              the forward's, one position per token

    Not counted: softplus and exp, the bias b_Δ added to a whole Δ, the skip D ⊙ u and the gate y ⊙ SiLU(z) (5 flops
    per position and channel).

    Args:
        mode: one of :data:`MODES`.
        batch, length, channels, d_state: B, L, E, N.
        delta_width: R, the rank of W_Δ where the scan forms Δ itself from δlow (the Mamba layer's call), or None
            where it is given Δ.
    """
    _check_mode(mode)
    _check_sizes(batch=batch, length=length, channels=channels, d_state=d_state)
    if delta_width is not None:
        _check_sizes(delta_width=delta_width)
    per = 6 * d_state + 1 + (2 * delta_width if delta_width is not None else 0)
    return _per_mode(mode, float(batch) * length * channels * per)


def ssd_flops(mode: str, batch: int, length: int, heads: int, headdim: int, d_state: int) -> float:
    """The minimum flops of Mamba-2's SSD recurrence (:func:`ssmkit.ops.ssd.ssd`, arXiv 2405.21060 §3) over H heads,
    each with a P × N state. Per position and head:

        Δ A (1 mul), Δ x (P mul), H_t = exp(Δ A) H_{t-1} + (Δ x) B_tᵀ (2 mul, 1 add per entry: 3·P·N), y = H_t C_t
        (P·N multiply-adds: 2·P·N): 5·P·N + P + 1

        forward           B·L·H·(5·P·N + P + 1)
        forward+backward  3x forward
        step              the forward's, one position per token

    exp is not counted. The chunked algorithm's quadratic in-chunk form does more (the recurrence's count is the
    least); the contraction y = H C is the part FlopCounterMode counts in :func:`ssmkit.ops.ssd.ssd_reference`.

    Args:
        mode: one of :data:`MODES`.
        batch, length, heads, headdim, d_state: B, L, H, P, N.
    """
    _check_mode(mode)
    _check_sizes(batch=batch, length=length, heads=heads, headdim=headdim, d_state=d_state)
    P, N = headdim, d_state
    return _per_mode(mode, float(batch) * length * heads * (5 * P * N + P + 1))


def causal_pairs(length: int, window: int | None = None) -> int:
    """The (query, key) pairs of causal attention over L positions: L·(L + 1)/2, or Σ_{i<L} min(i + 1, W) with a
    window of W positions (itself included).

    Args:
        length: L.
        window: W, or None for all earlier positions.
    """
    _check_sizes(length=length)
    if window is None or window >= length:
        return length * (length + 1) // 2
    _check_sizes(window=window)
    return window * (window + 1) // 2 + (length - window) * window


def attention_flops(mode: str, batch: int, length: int, heads: int, head_dim: int, window: int | None = None) -> float:
    """The minimum flops of causal softmax attention (:func:`ssmkit.ops.attention.causal_attention`, arXiv 1706.03762
    eq. 1) over A heads of P: per batch row and head, for each (query i, key j) pair the query sees, q_i · k_j and
    p_ij v_j (P multiply-adds each: 4·P), over the :func:`causal_pairs` c of L positions:

        forward           4·B·A·P·c          c = L·(L + 1)/2: the causal half of the L × L scores (and their products)
        forward+backward  3x forward         dQ = dS K, dK = dSᵀ Q, dV = Pᵀ dO and dP = dO Vᵀ over the same pairs
        step              4·B·A·P·c          token t sees c_t + 1 keys (c_t cached): the same pairs in all

    Not counted: the softmax (max, exp, sum, division: ~4 flops per pair), the 1/√P scale (folded into q), a flash
    backward's recompute of the scores (a fifth product) and the masked-out half a square kernel computes.

    Args:
        mode: one of :data:`MODES`.
        batch, length, heads, head_dim: B, L, A, P.
        window: the positions a query sees (itself included), or None for all earlier ones.
    """
    _check_mode(mode)
    _check_sizes(batch=batch, length=length, heads=heads, head_dim=head_dim)
    if window is not None:
        _check_sizes(window=window)
    return _per_mode(mode, 4.0 * batch * heads * head_dim * causal_pairs(length, window))


def rglru_flops(mode: str, batch: int, length: int, channels: int) -> float:
    """The minimum flops of the RG-LRU recurrence (:func:`ssmkit.ops.rglru.rglru`, arXiv 2402.19427 §2.4) over D
    channels. Per position and channel:

        log a_t = r_t·(-c softplus(-Λ)) (1 mul), 2 log a_t under √(1 - a_t²) = √(-expm1(2 log a_t)) (1 mul),
        i_t x_t times that multiplier (2 mul), h_t = a_t h_{t-1} + (·) (1 mul, 1 add): 6

        forward           6·B·L·D
        forward+backward  3x forward
        step              6·B·L·D    one position per token

    Not counted: exp, expm1, the square root, and softplus(-Λ) (per channel, not per position).

    Args:
        mode: one of :data:`MODES`.
        batch, length, channels: B, L, D.
    """
    _check_mode(mode)
    _check_sizes(batch=batch, length=length, channels=channels)
    return _per_mode(mode, 6.0 * batch * length * channels)


def lti_layer_flops(layer: layers.SequenceLayer, mode: str, batch: int, length: int) -> float:
    """The LTI op's FLOP bound of an LTI layer (or of Mega's and Liquid-S4's LTI part), from the built layer:

        DiagonalLTILayer (S4D, DSS, DLR, EMA)   :func:`lti_flops` over its H channels of M modes, complex or real
        MIMODiagonalLTILayer (S5, LRU)          :func:`lti_flops` of its one system of M modes (``shared``)
        S4, Liquid-S4                           its H channels of N/2 complex modes (the DPLR state matrix counted
                                                as the diagonal one it is similar to; Liquid-S4's input products
                                                left out)
        GSS                                     its SSM's H/4 channels
        Mega                                    its EMA's H channels of N real modes (the attention left out)
        H3                                      its diagonal SSM on P·P·(H/P) channels, and the shift SSM's N taps per
                                                channel (:func:`conv_flops`; the products with q and v left out)
        SGConv                                  :func:`conv_flops` with its K_len taps per channel
        Hyena                                   :func:`conv_flops` of its O = order - 1 long convolutions per channel,
                                                unbounded (the short convolution and the gates left out)

    Args:
        layer: a built layer whose :func:`core_op` is ``"lti"``.
        mode: one of :data:`MODES`.
        batch, length: B, L (tokens for ``step``).
    """
    if isinstance(layer, layers.DiagonalLTILayer):
        return lti_flops(mode, batch, length, layer.d_model, layer.n_modes, complex_modes=layer.complex_modes)
    if isinstance(layer, layers.MIMODiagonalLTILayer):
        return lti_flops(mode, batch, length, layer.d_model, layer.n_modes, shared=True)
    if isinstance(layer, layers.S4):  # and Liquid-S4: the state (H, N/2) complex
        H, M = layers.S4.state_spec(layer).shape  # Liquid-S4's own state_spec adds its past inputs
        return lti_flops(mode, batch, length, H, M)
    if isinstance(layer, (layers.GSS, layers.H3)):
        ssm = layer.ssm
        copies = layer.head_dim ** 2 if isinstance(layer, layers.H3) else 1
        flops = lti_flops(mode, batch, length, copies * ssm.d_model, ssm.n_modes, complex_modes=ssm.complex_modes)
        if isinstance(layer, layers.H3):
            flops += conv_flops(mode, batch, length, layer.d_model, taps=layer.d_state)
        return flops
    if isinstance(layer, layers.Mega):
        ema = layer.ema
        return lti_flops(mode, batch, length, ema.d_model, ema.n_modes, complex_modes=ema.complex_modes)
    if isinstance(layer, layers.SGConv):
        return conv_flops(mode, batch, length, layer.d_model, taps=layer.kernel_length)
    if isinstance(layer, layers.Hyena):
        return conv_flops(mode, batch, length, (layer.order - 1) * layer.d_model)
    raise ValueError(f"{type(layer).__name__} runs the LTI op but has no FLOP model in lti_layer_flops "
                     "(its recurrence or convolution is not declared): its FLOP bound is unknown")


_LAYER_FLOPS = {  # core op -> (layer, mode, B, L) -> flops, the sizes read from the built layer
    "lti": lti_layer_flops,
    "selective": lambda layer, mode, B, L: selective_flops(mode, B, L, layer.d_inner, layer.d_state,
                                                           delta_width=_selective_sizes(layer)["delta_width"]),
    "ssd": lambda layer, mode, B, L: ssd_flops(mode, B, L, layer.nheads, layer.headdim, layer.d_state),
    "attention": lambda layer, mode, B, L: attention_flops(mode, B, L, layer.n_heads, layer.head_dim,
                                                           window=layer.window),
    "rglru": lambda layer, mode, B, L: rglru_flops(mode, B, L, layer.lru_width),
}


def layer_flops(layer: layers.SequenceLayer, mode: str, batch: int, length: int, d_state: int) -> tuple[str, float]:
    """The FLOP bound of a case of ``layer``: its core op (:func:`core_op`) and that op's minimum flops, with the op's
    sizes read from the layer as :func:`layer_bytes` reads them (Mamba's inner channels, state and rank, Mamba-2's
    heads, attention's heads and window, RG-LRU's width; an LTI layer's modes, :func:`lti_layer_flops`).

    Args:
        layer: a built :class:`ssmkit.layers.SequenceLayer`.
        mode: one of :data:`MODES`.
        batch, length: B, L (tokens for ``step``).
        d_state: the case's N (the layer is built with it; the op's state size is read from the layer).

    Returns:
        (the core op's name, flops).
    """
    _check_mode(mode)
    _check_sizes(batch=batch, length=length, d_state=d_state)
    op = core_op(type(layer))
    return op, float(_LAYER_FLOPS[op](layer, mode, batch, length))


def time_interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of every function, in ``repeats`` rounds that each call every function once.

    Interleaving makes a ratio of two entries compare times taken under the same machine conditions (the
    shared VM drifts by ±50 % over minutes).

    Args:
        fns: name -> callable of no argument.
        repeats: rounds (>= 1).
        warmup: untimed calls of each function first.

    Returns:
        name -> list of ``repeats`` seconds.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            times[name].append(_timed(fn))
    return times


def median(values: list[float]) -> float:
    """The median of a non-empty list."""
    return statistics.median(values)
