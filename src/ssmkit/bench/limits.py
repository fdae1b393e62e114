"""The machine's limits measured in the same run as a benchmark, and the lower bounds of a case under them.

Two limits, each measured by the run that uses it (a figure from another day on a shared machine says little):

    copy bandwidth  bytes read + written per second by ``dst.copy_(src)`` of a buffer larger than the caches
    FLOP rate       float32 multiply-adds per second of a large square GEMM (the practical peak of this BLAS)

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

The FLOP bound is the fused-scan model for every layer: ``6·B·L·H·N`` forward (per batch row, step and channel: N/2
complex modes, a complex multiply-add of the state, the input and the output term ≈ 12 real flops each);
forward+backward 3x forward; step ``6·B·H·N`` per token.

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
    """The core op whose bytes bound a layer class's cases, one of :data:`CORE_OPS`.

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
                     f"time-invariant ({why}): its bytes bound is unknown")


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


def bound_flops(mode: str, batch: int, length: int, d_model: int, d_state: int) -> float:
    """The minimum flops of a case (module docstring): 6·B·L·H·N forward, 3x that forward+backward.

    Args:
        mode: one of :data:`MODES`.
        batch, length, d_model, d_state: B, L, H, N.
    """
    forward = 6.0 * batch * length * d_model * d_state
    if mode in ("forward", "step"):
        return forward
    if mode == "forward_backward":
        return 3 * forward
    raise ValueError(f"mode must be one of {MODES}; got {mode!r}")


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
