"""The bench suites' arithmetic against references written here (mutation testing, twenty-fifth round).

References: the bounds of docs/benchmarks.md as closed forms (bytes = element counts × itemsize of u, y, du, dy and
the state; flops per core op, each also counted independently in tests/probes/test_probe_bench_flops_2026_12_05.py);
the timing statistics recomputed with ``statistics`` from times the test itself sets, through a fake clock
(``time.perf_counter`` replaced by a counter that only the stubbed work advances) or a stubbed timer that returns
scripted seconds; the cases' names and shapes read back from what each suite builds; the bare
step as a float64 loop. No real time is asserted and nothing sleeps.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics

import pytest
import torch
from tests.conftest import signature_defaults

import ssmkit.bench.backward as backward
import ssmkit.bench.cases as cases
import ssmkit.bench.contention as contention
import ssmkit.bench.core as core
import ssmkit.bench.crossover as crossover
import ssmkit.bench.limits as limits
import ssmkit.bench.step as step
import ssmkit.layers as layers
from ssmkit.bench.peers import Case, PeerUnavailable
from ssmkit.ops import get_backend


class FakeClock:
    """``time.perf_counter`` that moves only when the test says so (``advance``)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr("time.perf_counter", fake)
    return fake


def scripted(values):
    """A ``_once``/``_timed`` stand-in: calls ``fn`` and returns the next of ``values``."""
    it = iter(values)

    def timer(fn):
        fn()
        return next(it)

    return timer


# ----------------------------------------------------------------------------------------------------- limits


def test_limit_probe_defaults_are_the_documented_ones():
    assert signature_defaults(limits.copy_bandwidth) == {"megabytes": 256, "repeats": 5}
    assert signature_defaults(limits.gemm_flops) == {"size": 2048, "repeats": 3}
    assert signature_defaults(limits.time_interleaved) == {"warmup": 1}
    assert limits.MODES == ("forward", "forward_backward", "step")


@pytest.mark.parametrize("megabytes,repeats,n_expected,timed", [(1, 3, 262144, 3), (0, 0, 1, 1), (2, 1, 524288, 1)])
def test_copy_bandwidth_is_the_bytes_moved_over_the_best_copy(monkeypatch, clock, megabytes, repeats, n_expected,
                                                              timed):
    """2 × 4 bytes × n elements (read + written, float32) over the fastest timed copy; one untimed first touch."""
    durations = iter([0.5, 0.2, 0.4])
    calls = []

    def fake_copy(self, src):
        calls.append((self.numel(), src.numel(), float(src[0])))
        if len(calls) > 1:  # the first copy (the pages' first touch) is not timed
            clock.advance(next(durations))
        return self

    monkeypatch.setattr(torch.Tensor, "copy_", fake_copy)
    rate = limits.copy_bandwidth(megabytes, repeats)
    assert calls == [(n_expected, n_expected, 1.0)] * (timed + 1)
    best = min([0.5, 0.2, 0.4][:timed])
    assert rate == pytest.approx(2 * 4 * n_expected / best, rel=1e-12)


@pytest.mark.parametrize("size,repeats,timed", [(3, 3, 3), (5, 0, 1)])
def test_gemm_flops_is_two_size_cubed_over_the_best_product(monkeypatch, clock, size, repeats, timed):
    durations = iter([0.3, 0.1, 0.2])
    shapes = []

    def fake_matmul(a, b):
        shapes.append((tuple(a.shape), tuple(b.shape)))
        if len(shapes) > 1:  # the first product is a warm-up
            clock.advance(next(durations))
        return a

    monkeypatch.setattr(torch.Tensor, "__matmul__", fake_matmul)
    rate = limits.gemm_flops(size, repeats)
    assert shapes == [((size, size), (size, size))] * (timed + 1)
    assert rate == pytest.approx(2 * size**3 / min([0.3, 0.1, 0.2][:timed]), rel=1e-12)


@pytest.mark.parametrize("B,L,H,N,s", [(2, 7, 3, 5, 4), (3, 1, 4, 2, 8)])
def test_bounds_are_the_documented_element_counts(B, L, H, N, s):
    """The LTI op: forward: u in, y out; forward+backward: u in and y out, then u again, dy in and du out; step per
    token: u in, y out, a state of N read and written per channel."""
    u = y = du = dy = B * L * H  # elements
    state = B * H * N
    assert limits.lti_bytes("forward", B, L, H, N, s) == (u + y) * s
    assert limits.lti_bytes("forward_backward", B, L, H, N, s) == (u + y + u + dy + du) * s
    assert limits.lti_bytes("step", B, L, H, N, s) == L * (B * H * s + B * H * s + 2 * state * s)
    # another fixed-size state (S reals per sequence), and a state growing by an entry of Q reals per token: token t
    # reads the t entries held and writes the new one
    S, Q = 11, 3
    per_token = [B * H + B * H + 2 * B * S + B * Q * t + B * Q for t in range(L)]
    assert limits.lti_bytes("step", B, L, H, N, s, state=S, cache=Q) == sum(per_token) * s
    assert limits.lti_bytes("step", B, L, H, N, s, state=S) == L * (2 * B * H + 2 * B * S) * s
    for mode in ("forward", "forward_backward"):  # the state is a step's only
        assert limits.lti_bytes(mode, B, L, H, N, s, state=S, cache=Q) == limits.lti_bytes(mode, B, L, H, N, s)
    for mode in limits.MODES:
        assert isinstance(limits.lti_bytes(mode, B, L, H, N, s), float)


@pytest.mark.parametrize("B,L,H,M", [(2, 7, 3, 5), (3, 1, 4, 2)])
def test_lti_flops_are_the_documented_closed_forms(B, L, H, M):
    """Per step and batch row: a bank of complex modes 11 per channel and mode, of real modes 4; one shared system
    6·M + 8·H·M (complex), M + 4·H·M (real); forward and step B·L times that, forward+backward 3x."""
    per_step = {(True, False): 11 * H * M, (False, False): 4 * H * M,
                (True, True): 6 * M + 8 * H * M, (False, True): M + 4 * H * M}
    for (complex_modes, shared), n in per_step.items():
        kwargs = {"complex_modes": complex_modes, "shared": shared}
        assert limits.lti_flops("forward", B, L, H, M, **kwargs) == B * L * n
        assert limits.lti_flops("step", B, L, H, M, **kwargs) == B * L * n
        assert limits.lti_flops("forward_backward", B, L, H, M, **kwargs) == 3 * B * L * n
        for mode in limits.MODES:
            assert isinstance(limits.lti_flops(mode, B, L, H, M, **kwargs), float)


@pytest.mark.parametrize("B,L,H,F", [(2, 7, 3, 4), (3, 1, 4, 2), (1, 300, 2, None), (2, 30, 3, 1000)])
def test_conv_flops_take_the_cheaper_of_the_direct_sum_and_the_fft(B, L, H, F):
    """Direct: 2 flops per tap an output sees; FFT at n = 2L: two real transforms and the spectra's product."""
    taps = [min(t + 1, L if F is None else F) for t in range(L)]
    direct = 2 * sum(taps)
    n = 2 * L
    r = 2 * n * math.log2(n) - 4 * n + 6
    fft = 2 * r + 6 * (n // 2 - 1) + 2
    assert limits.conv_flops("forward", B, L, H, F) == pytest.approx(B * H * min(direct, fft), rel=1e-15)
    assert limits.conv_flops("forward_backward", B, L, H, F) == pytest.approx(
        B * H * min(3 * direct, 4 * r + 3 * (fft - 2 * r)), rel=1e-15)
    assert limits.conv_flops("step", B, L, H, F) == B * H * direct
    assert (direct < fft) == (L < 300)  # both branches are taken


def test_the_time_varying_ops_flops_are_the_documented_closed_forms():
    B, L = 2, 7
    E, N, R = 6, 5, 3
    assert limits.selective_flops("forward", B, L, E, N) == B * L * E * (6 * N + 1)
    assert limits.selective_flops("forward", B, L, E, N, delta_width=R) == B * L * E * (6 * N + 1 + 2 * R)
    H, P = 4, 3
    assert limits.ssd_flops("forward", B, L, H, P, N) == B * L * H * (5 * P * N + P + 1)
    A, W = 3, 4
    assert limits.attention_flops("forward", B, L, A, P) == 4 * B * A * P * L * (L + 1) // 2
    assert limits.attention_flops("forward", B, L, A, P, window=W) == 4 * B * A * P * sum(
        min(i + 1, W) for i in range(L))
    assert limits.causal_pairs(L, W) == 10 + 3 * 4 and limits.causal_pairs(L, 99) == limits.causal_pairs(L) == 28
    assert limits.rglru_flops("forward", B, L, E) == 6 * B * L * E
    for fn in (lambda m: limits.selective_flops(m, B, L, E, N, delta_width=R), lambda m: limits.ssd_flops(
            m, B, L, H, P, N), lambda m: limits.attention_flops(m, B, L, A, P, window=W),
               lambda m: limits.rglru_flops(m, B, L, E)):
        assert fn("step") == fn("forward") and fn("forward_backward") == 3 * fn("forward")
        assert all(isinstance(fn(m), float) for m in limits.MODES)


@pytest.mark.parametrize("B,L,E,N,G,R,gate,final,s", [(2, 7, 6, 5, 1, 3, True, False, 4),
                                                      (3, 1, 4, 2, 2, None, False, True, 8)])
def test_selective_bound_is_the_element_counts_of_its_tensors(B, L, E, N, G, R, gate, final, s):
    """u, Δ (R or E per position), z (with the gate), B and C (G·N each) in, y out, the final state out when returned;
    forward+backward: the inputs again, dy in and each input's gradient out; step: one position per token and the
    state (E·N) read and written."""
    u = z_ = y = dy = B * L * E
    delta = B * L * (E if R is None else R)
    z = z_ if gate else 0
    b = c = B * L * G * N
    inputs = u + delta + z + b + c
    state = B * E * N if final else 0
    kwargs = {"groups": G, "delta_width": R, "gate": gate, "final_state": final}
    assert limits.selective_bytes("forward", B, L, E, N, s, **kwargs) == (inputs + y + state) * s
    assert limits.selective_bytes("forward_backward", B, L, E, N, s, **kwargs) == (
        inputs + y + state + inputs + dy + inputs) * s
    per_token = (inputs + y) // L + 2 * B * E * N
    assert limits.selective_bytes("step", B, L, E, N, s, **kwargs) == L * per_token * s
    # Mamba-1 as the layer calls it: E = 2·64, N = 16, R = 4, gate, no final state: 420 elements per position
    assert limits.selective_bytes("forward", 2, 512, 128, 16, 4, delta_width=4) == 2 * 512 * 420 * 4


@pytest.mark.parametrize("B,L,H,P,N,G,s", [(2, 7, 4, 3, 5, 2, 4), (3, 1, 1, 2, 6, 1, 8)])
def test_ssd_bound_is_the_element_counts_of_its_tensors(B, L, H, P, N, G, s):
    """x (H·P), Δ (H), B and C (G·N) in, y (H·P) and the final state (H·P·N) out; forward+backward: the inputs again,
    dy in, their gradients out (the final state's gradient not read); step: one position and the state in and out."""
    x = y = dy = B * L * H * P
    dt = B * L * H
    b = c = B * L * G * N
    inputs = x + dt + b + c
    final = B * H * P * N
    assert limits.ssd_bytes("forward", B, L, H, P, N, s, groups=G) == (inputs + y + final) * s
    assert limits.ssd_bytes("forward_backward", B, L, H, P, N, s, groups=G) == (
        inputs + y + final + inputs + dy + inputs) * s
    assert limits.ssd_bytes("step", B, L, H, P, N, s, groups=G) == L * ((inputs + y) // L + 2 * final) * s
    # the final state is what the earlier formula (bench gpu's, 4·B·L·(2HP + H + 2N)) left out
    assert limits.ssd_bytes("forward", 2, 5, 3, 4, 6, 4) == 4 * 2 * 5 * (2 * 3 * 4 + 3 + 2 * 6) + 4 * 2 * 3 * 4 * 6


@pytest.mark.parametrize("B,L,A,P,window,s", [(2, 7, 3, 4, None, 4), (3, 9, 1, 2, 4, 8), (1, 3, 2, 2, 5, 4)])
def test_attention_bound_is_the_element_counts_of_its_tensors(B, L, A, P, window, s):
    """q, k, v in, o out (no L×L scores); forward+backward: q, k, v again, do in, dq, dk, dv out; step t: q, k, v in,
    the cached keys and values of the positions it sees in, the new key and value into the cache, o out."""
    q = k = v = o = B * L * A * P
    assert limits.attention_bytes("forward", B, L, A, P, s, window=window) == (q + k + v + o) * s
    assert limits.attention_bytes("forward_backward", B, L, A, P, s, window=window) == (
        2 * (q + k + v) + o + o + (q + k + v)) * s
    total = 0
    for t in range(L):
        cached = t if window is None else min(t, window - 1)
        total += B * A * P * (3 + 2 * cached + 2 + 1)
    assert limits.attention_bytes("step", B, L, A, P, s, window=window) == total * s
    if window is None:
        assert limits.attention_bytes("step", B, L, A, P, s) == B * A * P * L * (L + 5) * s


@pytest.mark.parametrize("B,L,D,s", [(2, 7, 3, 4), (3, 1, 5, 8)])
def test_rglru_bound_is_the_element_counts_of_its_tensors(B, L, D, s):
    """x, r, i in, h out; forward+backward: x, r, i again, dh in, dx, dr, di out; step: x, r, i and the state in,
    the new state out."""
    x = r = i = h = B * L * D
    assert limits.rglru_bytes("forward", B, L, D, s) == (x + r + i + h) * s
    assert limits.rglru_bytes("forward_backward", B, L, D, s) == (2 * (x + r + i) + h + h + (x + r + i)) * s
    assert limits.rglru_bytes("step", B, L, D, s) == L * B * D * (3 + 1 + 1) * s


def test_bounds_refuse_an_unknown_mode():
    layer = layers.build("s4d", d_model=2, d_state=4)
    for bound in (lambda m: limits.lti_bytes(m, 1, 1, 1, 1, 4), lambda m: limits.selective_bytes(m, 1, 1, 1, 1, 4),
                  lambda m: limits.ssd_bytes(m, 1, 1, 1, 1, 1, 4),
                  lambda m: limits.attention_bytes(m, 1, 1, 1, 1, 4), lambda m: limits.rglru_bytes(m, 1, 1, 1, 4),
                  lambda m: limits.lti_flops(m, 1, 1, 1, 1), lambda m: limits.conv_flops(m, 1, 1, 1),
                  lambda m: limits.selective_flops(m, 1, 1, 1, 1), lambda m: limits.ssd_flops(m, 1, 1, 1, 1, 1),
                  lambda m: limits.attention_flops(m, 1, 1, 1, 1), lambda m: limits.rglru_flops(m, 1, 1, 1),
                  lambda m: limits.layer_flops(layer, m, 1, 1, 4)):
        with pytest.raises(ValueError, match=r"mode must be one of \('forward', 'forward_backward', 'step'\); got 'b'"):
            bound("b")


@pytest.mark.parametrize("call,message", [
    (lambda: limits.lti_bytes("forward", 0, 1, 1, 1, 4), "batch must be an int >= 1; got 0"),
    (lambda: limits.lti_bytes("forward", 1, 1, 1, 1, 2.0), "itemsize must be an int >= 1; got 2.0"),
    (lambda: limits.lti_bytes("step", 1, 1, 1, 1, 4, state=-1), "state must be an int >= 0 or None; got -1"),
    (lambda: limits.lti_bytes("step", 1, 1, 1, 1, 4, cache=True), "cache must be an int >= 0; got True"),
    (lambda: limits.selective_bytes("forward", 1, 1, 6, 1, 4, groups=4),
     "groups must divide channels = 6; got groups=4"),
    (lambda: limits.selective_bytes("forward", 1, 1, 6, 1, 4, delta_width=0), "delta_width must be an int >= 1; got 0"),
    (lambda: limits.ssd_bytes("forward", 1, 1, 3, 2, 1, 4, groups=2), "groups must divide heads = 3; got groups=2"),
    (lambda: limits.ssd_bytes("step", 1, -1, 3, 2, 1, 4), "length must be an int >= 1; got -1"),
    (lambda: limits.attention_bytes("step", 1, 1, 1, 1, 4, window=0), "window must be an int >= 1; got 0"),
    (lambda: limits.attention_bytes("forward", 1, 1, True, 1, 4), "heads must be an int >= 1; got True"),
    (lambda: limits.rglru_bytes("forward", 1, 1, 0, 4), "channels must be an int >= 1; got 0"),
    (lambda: limits.lti_flops("forward", 1, 1, 2, 0), "modes must be an int >= 1; got 0"),
    (lambda: limits.conv_flops("step", 1, 3, 2, taps=0), "taps must be an int >= 1; got 0"),
    (lambda: limits.selective_flops("forward", 1, 1, 2, 3, delta_width=1.0),
     "delta_width must be an int >= 1; got 1.0"),
    (lambda: limits.ssd_flops("forward", 1, 1, 2, 0, 3), "headdim must be an int >= 1; got 0"),
    (lambda: limits.attention_flops("forward", 1, 4, 1, 1, window=0), "window must be an int >= 1; got 0"),
    (lambda: limits.rglru_flops("step", 0, 1, 1), "batch must be an int >= 1; got 0"),
    (lambda: limits.rfft_flops(1), "n must be an int >= 2; got 1"),
    (lambda: limits.causal_pairs(0), "length must be an int >= 1; got 0"),
    (lambda: limits.layer_flops(layers.build("s4d", d_model=2, d_state=4), "forward", 1, 1, 0),
     "d_state must be an int >= 1; got 0"),
])
def test_bounds_refuse_sizes_that_are_not_positive_ints(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_every_registered_layer_has_a_core_op_declared_by_its_zoo_entry_or_the_table():
    """Time-invariant layers (their zoo entries) run the LTI op; each time-varying one is in the table by class."""
    ops = {name: limits.core_op(layers.layer_class(name)) for name in layers.available()}
    assert set(ops.values()) <= set(limits.CORE_OPS)
    assert limits.CORE_OPS == ("lti", "selective", "ssd", "attention", "rglru")
    for name, op in ops.items():
        cls = layers.layer_class(name)
        if cls.zoo.time_varying:
            assert cls in limits.TIME_VARYING_CORE_OPS, name
        else:
            assert op == "lti", name
    assert {n: o for n, o in ops.items() if o != "lti"} == {"mamba": "selective", "mamba2": "ssd",
                                                             "attention": "attention", "rglru": "rglru"}
    assert (ops["mega"], ops["liquid_s4"]) == ("lti", "lti")  # time-varying, bounded by their LTI op

    class MyMamba(layers.Mamba):  # a subclass keeps its base's op
        pass

    assert limits.core_op(MyMamba) == "selective"


def test_core_op_refuses_a_layer_without_a_declared_op():
    class Changing(layers.SequenceLayer):
        zoo = layers.ZooEntry(paper="arXiv 0000.00000", structure="diagonal", parametrisation="a", discretisation="b",
                              time_varying=True, stable_by_construction=False, stability="c", step_cost="O(H)",
                              sequence_cost="O(L H)")

    with pytest.raises(ValueError, match=r"Changing has no core op in TIME_VARYING_CORE_OPS and is not declared "
                                         r"time-invariant \(its zoo entry says time-varying\)"):
        limits.core_op(Changing)

    class Undeclared(layers.SequenceLayer):
        pass

    with pytest.raises(ValueError, match=r"\(no zoo entry\): its bounds are unknown"):
        limits.core_op(Undeclared)
    with pytest.raises(ValueError, match="layer_class must be a SequenceLayer subclass; got 'mamba'"):
        limits.core_op("mamba")


@pytest.mark.parametrize("name,options,op,sizes", [
    ("mamba", {"d_model": 40, "d_state": 6}, "selective", lambda m, B, L, s: limits.selective_bytes(
        m, B, L, 80, 6, s, delta_width=3)),  # E = 2·40, R = ⌈40/16⌉
    ("mamba", {"d_model": 32, "d_state": 4, "expand": 3, "dt_rank": 5}, "selective",
     lambda m, B, L, s: limits.selective_bytes(m, B, L, 96, 4, s, delta_width=5)),
    ("mamba2", {"d_model": 32, "d_state": 6, "headdim": 16, "ngroups": 2}, "ssd",
     lambda m, B, L, s: limits.ssd_bytes(m, B, L, 4, 16, 6, s, groups=2)),  # E/P = 64/16 heads
    ("attention", {"d_model": 12, "head_dim": 4}, "attention",
     lambda m, B, L, s: limits.attention_bytes(m, B, L, 3, 4, s)),
    ("attention", {"d_model": 12, "n_heads": 2, "head_dim": 8, "window": 3}, "attention",
     lambda m, B, L, s: limits.attention_bytes(m, B, L, 2, 8, s, window=3)),
    ("rglru", {"d_model": 8, "lru_width": 12}, "rglru", lambda m, B, L, s: limits.rglru_bytes(m, B, L, 12, s)),
    # the LTI forward has no N; its step reads the layer's own state (N = 6: H·6 reals), not the case's N (5 here)
    ("s4d", {"d_model": 8, "d_state": 6}, "lti", lambda m, B, L, s: limits.lti_bytes(m, B, L, 8, 5, s, state=48)),
    ("s5", {"d_model": 8, "d_state": 32}, "lti",  # one system of M = 16 complex modes shared by the H channels
     lambda m, B, L, s: limits.lti_bytes(m, B, L, 8, 5, s, state=32)),
    ("hyena", {"d_model": 8, "order": 3}, "lti",  # order 3, O = 2: the short convolution's last 2 inputs of the
     lambda m, B, L, s: limits.lti_bytes(m, B, L, 8, 5, s, state=64, cache=16)),  # (O + 2)·H projections, O·H per input
    ("mega", {"d_model": 8, "d_state": 4}, "lti",  # the EMA's H·N; the key/value cache is attention's, left out
     lambda m, B, L, s: limits.lti_bytes(m, B, L, 8, 5, s, state=32)),
])
def test_layer_bytes_reads_the_op_sizes_from_the_layer(name, options, op, sizes):
    """The sizes come from the built layer's options (inner channels, rank, heads, groups, window, width, an LTI
    layer's state)."""
    layer = layers.build(name, **options)
    for mode in limits.MODES:
        for B, L, s in ((2, 9, 4), (1, 3, 8)):
            assert limits.layer_bytes(layer, mode, B, L, 5, s) == (op, sizes(mode, B, L, s))


def test_layer_bytes_counts_the_full_delta_when_mamba_forms_it_itself():
    """A wrapped dt_proj (a LoRA, a hook) is called by the layer, which then hands the scan Δ (E per position)."""
    layer = layers.build("mamba", d_model=16, d_state=4)
    layer.dt_proj = torch.nn.Sequential(layer.dt_proj)
    assert limits.layer_bytes(layer, "forward", 2, 5, 4, 4) == (
        "selective", limits.selective_bytes("forward", 2, 5, 32, 4, 4))


def test_time_interleaved_warms_up_then_times_each_function_once_per_round(clock):
    log = []
    cost = {"a": 0.25, "b": 1.5}

    def make(name):
        def fn():
            log.append(name)
            clock.advance(cost[name])
            cost[name] += 1.0  # each call of a function takes a second longer than the one before
        return fn

    times = limits.time_interleaved({"a": make("a"), "b": make("b")}, repeats=3, warmup=2)
    assert log == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert times == {"a": [2.25, 3.25, 4.25], "b": [3.5, 4.5, 5.5]}
    log.clear()
    assert limits.time_interleaved({"a": make("a")}, repeats=0, warmup=0) == {"a": [5.25]}
    assert log == ["a"]
    assert list(limits.time_interleaved({"b": make("b"), "a": make("a")}, repeats=1)) == ["b", "a"]


def test_time_interleaved_times_with_the_default_warmup(clock):
    calls = []

    def fn():
        calls.append(1)
        clock.advance(0.5)

    assert limits.time_interleaved({"f": fn}, 2) == {"f": [0.5, 0.5]}
    assert len(calls) == 3


@pytest.mark.parametrize("values", [[3.0, 1.0, 2.0], [4.0, 1.0, 3.0, 2.0], [7.5]])
def test_median_is_the_statistics_median(values):
    assert limits.median(values) == statistics.median(values)
    assert limits.median(values) == float(torch.tensor(values, dtype=torch.float64).quantile(0.5))


# ------------------------------------------------------------------------------------------------------- core


@pytest.mark.parametrize("name,length,expected", [
    ("s4", 16, {"d_model": 5, "d_state": 6, "l_max": 16}),
    ("s4", None, {"d_model": 5, "d_state": 6}),
    ("s4d", 16, {"d_model": 5, "d_state": 6}),
    ("hyena", 16, {"d_model": 5, "l_max": 16}),
    ("attention", 16, {"d_model": 5}),
])
def test_build_for_bench_passes_only_the_options_the_layer_has(monkeypatch, name, length, expected):
    seen = []
    monkeypatch.setattr(layers, "build", lambda n, **options: seen.append((n, options)) or "built")
    assert core.build_for_bench(name, 5, 6, length) == "built"
    assert seen == [(name, expected)]


def test_once_times_the_call(clock):
    calls = []
    clock.advance(3.0)
    assert core._once(lambda: calls.append(clock.advance(0.75))) == 0.75
    assert calls == [None]


class RecordingLayer(torch.nn.Module):
    """y = w·x and a state h = w·x[:, -1] that record, per call, the backend, return_state and grad mode."""

    def __init__(self, backends):
        super().__init__()
        self.backends = backends
        self.w = torch.nn.Parameter(torch.tensor(2.0))
        self.calls = []
        self.inputs = []

    def forward(self, x, return_state=True):
        self.calls.append((get_backend(), return_state, torch.is_grad_enabled(), tuple(x.shape)))
        self.inputs.append(x.detach())
        y = self.w * x
        return y, (self.w * x[:, -1] if return_state else None)


class RecordingGradients(backward.OutputGradients):
    log: list = []

    def backward(self, *outputs):
        RecordingGradients.log.append(tuple(o is not None for o in outputs))
        super().backward(*outputs)


@pytest.mark.parametrize("layer_backends,expected_backends", [
    (("reference", "chunked", "fft", "native"), ["auto", "chunked", "fft", "reference"]),
    (("reference", "chunked"), ["auto", "chunked", "reference"]),
    (("fft", "reference"), ["auto", "fft", "reference"]),
])
def test_measure_layer_rows_are_medians_of_interleaved_rounds(monkeypatch, layer_backends, expected_backends):
    layer = RecordingLayer(layer_backends)
    built = []
    monkeypatch.setattr(core, "build_for_bench", lambda *args: built.append(args) or layer)
    monkeypatch.setattr(core, "OutputGradients", RecordingGradients)
    RecordingGradients.log = []
    repeats, B, H, N, L = 3, 2, 3, 4, 5
    kinds = {b: (["forward", "forward_backward"] + (["forward_no_state", "forward_backward_no_state"]
                                                    if b != "reference" else [])) for b in expected_backends}
    schedule = [(b, k) for _ in range(repeats) for b in expected_backends for k in kinds[b]]
    values = [1.0 + 0.37 * i + 0.05 * (i % 4) ** 2 for i in range(len(schedule))]  # distinct, not monotone in rounds
    monkeypatch.setattr(core, "_once", scripted(values))
    rows = core.measure_layer("s4d", B, H, N, L, repeats)
    assert built == [("s4d", H, N, L)]

    times = {(b, k): [] for b, k in schedule}
    for (b, k), v in zip(schedule, values):
        times[(b, k)].append(v)
    assert [r["backend"] for r in rows] == expected_backends
    for r in rows:
        b = r["backend"]
        assert r["layer"] == "s4d"
        assert r["forward_s"] == statistics.median(times[(b, "forward")])
        assert r["forward_backward_s"] == statistics.median(times[(b, "forward_backward")])
        if b == "reference":
            assert r["forward_no_state_s"] is None and r["forward_backward_no_state_s"] is None
        else:
            assert r["forward_no_state_s"] == statistics.median(times[(b, "forward_no_state")])
            assert r["forward_backward_no_state_s"] == statistics.median(times[(b, "forward_backward_no_state")])
        for kind in ("forward", "forward_backward"):
            ratios = [ref / t for ref, t in zip(times[("reference", kind)], times[(b, kind)])]
            assert r[f"{kind}_speedup"] == pytest.approx(statistics.median(ratios), rel=1e-15)

    # the calls: one warm-up forward and forward+backward of every fast path (not the loop), then the rounds
    expected_calls = []
    for b in expected_backends[:-1]:
        expected_calls += [(b, True, False), (b, True, True)]
    for b, k in schedule:
        expected_calls.append((b, "no_state" not in k, k.startswith("forward_backward")))
    assert [c[:3] for c in layer.calls] == expected_calls
    assert {c[3] for c in layer.calls} == {(B, L, H)}
    # every forward+backward goes through the fixed output gradients, with the state when it was asked for
    fb = [k for _, k in schedule if k.startswith("forward_backward")]
    assert RecordingGradients.log == [(True, True)] * len(expected_backends[:-1]) + [
        (True, "no_state" not in k) for k in fb]
    # the gradient is the last call's alone (cleared before each): y = w x, h = w x[:, -1] from the fixed ∂ℓ/∂y, ∂ℓ/∂h
    x = layer.inputs[-1]
    assert all(torch.equal(x, other) for other in layer.inputs)  # one input throughout
    g = backward.OutputGradients()
    g_y, g_h = g.grad_for(x), g.grad_for(x[:, -1])
    assert layer.w.grad.item() == pytest.approx(float((g_y * x).sum() + (g_h * x[:, -1]).sum()), rel=1e-5)
    # the input is drawn after a fixed seed: a second run sees the same one
    torch.manual_seed(123)
    monkeypatch.setattr(core, "_once", scripted(values))
    core.measure_layer("s4d", B, H, N, L, repeats)
    assert torch.equal(layer.inputs[-1], x)


def test_measure_layer_times_a_real_layer_with_the_real_clock_kept_out(monkeypatch):
    """A real S4D: the forward runs without a graph, the forward+backward leaves the input's gradient."""
    seen = []
    monkeypatch.setattr(core, "_once", lambda fn: seen.append(fn()) or 1.0)
    rows = core.measure_layer("s4d", 1, 2, 4, 6, 1)
    assert [r["backend"] for r in rows] == ["auto", "chunked", "fft", "reference"]
    assert all(r["forward_speedup"] == 1.0 and r["forward_s"] == 1.0 for r in rows)
    assert seen == [None] * (4 * 3 + 2)


def fake_machine_rows():
    return [{"layer": "s4d", "backend": "auto", "forward_s": 0.0123, "forward_backward_s": 0.0456,
             "forward_no_state_s": 0.0071, "forward_backward_no_state_s": 0.0302, "forward_speedup": 12.34,
             "forward_backward_speedup": 5.67},
            {"layer": "s4d", "backend": "reference", "forward_s": 0.5, "forward_backward_s": 0.9,
             "forward_no_state_s": None, "forward_backward_no_state_s": None, "forward_speedup": 1.0,
             "forward_backward_speedup": 1.0}]


def test_core_main_passes_its_defaults_and_prints_the_table(monkeypatch, tmp_path, capsys):
    seen = []
    monkeypatch.setattr(core, "measure_layer", lambda *args: seen.append(args) or fake_machine_rows())
    monkeypatch.setattr(core, "machine", lambda: "the machine")
    assert core.main([]) == 0
    assert seen == [(name, 8, 128, 64, 4096, 3) for name in core.LAYERS]
    assert core.LAYERS == ("s4d", "s4", "s5", "lru")
    out = capsys.readouterr().out
    assert out.startswith("ssmkit bench core: B=8, H=128, N=64, L=4096; the machine\n| layer | backend | forward ms | "
                          "vs loop | forward+backward ms | vs loop | forward, no state | fwd+bwd, no state |\n"
                          "|---|---|---|---|---|---|---|---|\n")
    assert "| s4d | auto | 12.3 | 12.3x | 45.6 | 5.7x | 7.1 | 30.2 |" in out
    assert "| s4d | reference | 500.0 | 1.0x | 900.0 | 1.0x | - | - |" in out
    seen.clear()
    path = tmp_path / "core.json"
    assert core.main(["--batch", "2", "--d-model", "3", "--d-state", "4", "--length", "5", "--repeats", "6",
                      "--layers", "s4d", "dss", "--json", str(path)]) == 0
    assert seen == [("s4d", 2, 3, 4, 5, 6), ("dss", 2, 3, 4, 5, 6)]
    result = json.loads(path.read_text())
    assert result == {"shape": "B=2, H=3, N=4, L=5", "machine": "the machine", "results": fake_machine_rows() * 2}


def test_machine_reads_the_cpu_model_from_proc_cpuinfo(monkeypatch):
    import io

    text = "processor\t: 0\nvendor_id\t: X\nmodel name\t: Test CPU @ 1.00GHz: rev 2\nmodel name\t: other\n"
    monkeypatch.setattr(core, "open", lambda path: io.StringIO(text) if path == "/proc/cpuinfo" else None,
                        raising=False)
    monkeypatch.setattr(core.os, "cpu_count", lambda: 7)
    monkeypatch.setattr(core.torch, "get_num_threads", lambda: 3)
    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")
    assert core.machine() == (f"Test CPU @ 1.00GHz: rev 2, 7 cores, torch {torch.__version__}, 3 threads, "
                              "GOMP_SPINCOUNT=5")


@pytest.mark.parametrize("processor,expected", [("the processor", "the processor"), ("", "the machine type")])
def test_machine_falls_back_to_platform_without_cpuinfo(monkeypatch, processor, expected):
    import io

    def no_file(path):
        raise OSError("no such file")

    monkeypatch.setattr(core.platform, "processor", lambda: processor)
    monkeypatch.setattr(core.platform, "machine", lambda: "the machine type")
    monkeypatch.setattr(core, "open", no_file, raising=False)
    assert core.machine().startswith(f"{expected}, ")
    monkeypatch.setattr(core, "open", lambda path: io.StringIO("processor\t: 0\n"), raising=False)
    assert core.machine().startswith(f"{expected}, ")  # no "model name" line


# ------------------------------------------------------------------------------------------------------ cases


@pytest.fixture
def recorded_runners(monkeypatch):
    """ssmkit_runner and peer_runner replaced by recorders; ``refuse`` names what raises PeerUnavailable."""
    log = {"ssmkit": [], "peer": [], "refuse": set()}

    def ssmkit_runner(case, backend):
        log["ssmkit"].append(backend)
        if backend in log["refuse"]:
            raise PeerUnavailable(f"no {backend} here")
        return f"run-{backend}"

    def peer_runner(peer, case, s4_file=None):
        log["peer"].append((peer, s4_file))
        if peer in log["refuse"]:
            raise PeerUnavailable(f"{peer} is missing")
        return f"run-{peer}"

    monkeypatch.setattr(cases, "ssmkit_runner", ssmkit_runner)
    monkeypatch.setattr(cases, "peer_runner", peer_runner)
    return log


@pytest.mark.parametrize("layer,mode,reference,expected", [
    ("s4d", "forward", False, ["auto", "chunked", "fft"]),
    ("s4d", "forward_backward", True, ["auto", "chunked", "fft", "reference"]),
    ("s4", "forward", True, ["auto", "fft", "reference"]),
    ("lru", "forward", False, ["auto", "chunked"]),
    ("s4d", "step", True, ["auto"]),
])
def test_implementations_are_auto_the_fast_backends_and_the_peers(recorded_runners, layer, mode, reference,
                                                                   expected):
    case = Case(layer, 1, 8, 2, 4, "float32", mode)
    fns, notes = cases.implementations(case, ["loop", "mambapy"], "s4.py", reference)
    assert fns == {**{f"ssmkit[{b}]": f"run-{b}" for b in expected}, "loop": "run-loop", "mambapy": "run-mambapy"}
    assert notes == []
    assert recorded_runners["ssmkit"] == expected
    assert recorded_runners["peer"] == [("loop", "s4.py"), ("mambapy", "s4.py")]


def test_implementations_note_what_cannot_run(recorded_runners):
    recorded_runners["refuse"] |= {"chunked", "loop"}
    case = Case("s4d", 1, 8, 2, 4, "float32", "forward")
    fns, notes = cases.implementations(case, ["loop", "mambapy"], None, True)
    # the first backend that cannot run ends the list (the later ones would fail the same way)
    assert recorded_runners["ssmkit"] == ["auto", "chunked"]
    assert fns == {"ssmkit[auto]": "run-auto", "mambapy": "run-mambapy"}
    assert notes == ["ssmkit[chunked] skipped for s4d forward: no chunked here", "loop skipped: loop is missing"]


@pytest.mark.parametrize("dtype,itemsize", [("float32", 4), ("float64", 8)])
def test_measure_case_rows_carry_the_bounds_and_the_fractions(monkeypatch, dtype, itemsize):
    case = Case("s4d", 2, 24, 3, 6, dtype, "forward_backward")
    seen = []

    def implementations(c, peers, s4_file, reference):
        seen.append((c, peers, s4_file, reference))
        return {"ssmkit[auto]": None, "loop": None}, ["a note"]

    times = {"ssmkit[auto]": [0.3, 0.1, 0.2, 0.7], "loop": [2.0, 4.0, 3.0]}
    monkeypatch.setattr(cases, "implementations", implementations)
    monkeypatch.setattr(cases, "time_interleaved", lambda fns, repeats: seen.append((list(fns), repeats)) or times)
    rows, notes = cases.measure_case(case, ["loop"], "s4.py", True, 4, bandwidth=1e9, flops=3e10)
    assert notes == ["a note"]
    assert seen == [(case, ["loop"], "s4.py", True), (["ssmkit[auto]", "loop"], 4)]
    b = 5 * 2 * 24 * 3 * itemsize  # u in, y out; u, dy in, du out
    f = 3 * 11 * 2 * 24 * 3 * 3  # 3x the recurrence's 11 flops per batch row, step, channel and complex mode (N/2 = 3)
    assert [r["impl"] for r in rows] == ["ssmkit[auto]", "loop"]
    for r in rows:
        t = statistics.median(times[r["impl"]])
        assert r["seconds"] == t and r["seconds_all"] == times[r["impl"]]
        assert r["bound_bytes"] == b and r["bound_flops"] == f and r["bytes_model"] == r["flops_model"] == "lti"
        assert r["bytes_fraction"] == pytest.approx(b / 1e9 / t, rel=1e-14)
        assert r["flops_fraction"] == pytest.approx(f / 3e10 / t, rel=1e-14)
        assert r["case"] == f"s4d-B2-L24-H3-N6-{dtype}-forward_backward"
        assert (r["layer"], r["batch"], r["length"], r["d_model"], r["d_state"], r["dtype"], r["mode"]) == (
            "s4d", 2, 24, 3, 6, dtype, "forward_backward")


@pytest.mark.parametrize("layer,H,N,mode,model,expected,flops", [
    # E = 2·24 = 48, R = ⌈24/16⌉ = 2, N = 6: per position u, δlow, z, B, C = 48 + 2 + 48 + 12 in, y = 48 out;
    # 48 channels of 6·6 + 1 + 2·2 flops
    ("mamba", 24, 6, "forward", "selective", 2 * 10 * (110 + 48), 2 * 10 * 48 * 41),
    ("mamba", 24, 6, "forward_backward", "selective", 2 * 10 * (3 * 110 + 2 * 48), 3 * 2 * 10 * 48 * 41),
    # E = 64, one head of P = 64, G = 1: x, Δ, B, C = 64 + 1 + 12 in, y = 64 out, the final state 64·6 out;
    # one head of 5·64·6 + 64 + 1 flops
    ("mamba2", 32, 6, "forward", "ssd", 2 * (10 * (77 + 64) + 384), 2 * 10 * 1985),
    ("mamba2", 32, 6, "forward_backward", "ssd", 2 * (10 * (3 * 77 + 2 * 64) + 384), 3 * 2 * 10 * 1985),
    # one head of 64 (max(1, 24 // 64) heads): 4·64 flops per causal pair, 55 pairs over 10 positions
    ("attention", 24, 6, "forward", "attention", 4 * 2 * 10 * 64, 4 * 2 * 64 * 55),
    ("rglru", 24, 6, "step", "rglru", 5 * 2 * 10 * 24, 6 * 2 * 10 * 24),
    # S5 at N 16: one system of M = 8 complex modes shared by the 24 channels, 6·8 + 8·24·8 flops per step
    ("s5", 24, 16, "forward", "lti", 2 * 2 * 10 * 24, 2 * 10 * (48 + 1536)),
])
def test_measure_case_rows_use_the_bound_of_the_layers_core_op(monkeypatch, layer, H, N, mode, model, expected,
                                                                flops):
    case = Case(layer, 2, 10, H, N, "float32", mode)
    monkeypatch.setattr(cases, "implementations", lambda *args: ({"ssmkit[auto]": None}, []))
    monkeypatch.setattr(cases, "time_interleaved", lambda fns, repeats: {"ssmkit[auto]": [0.5]})
    (row,), _ = cases.measure_case(case, [], None, False, 1, bandwidth=1e6, flops=1e9)
    assert (row["bytes_model"], row["bound_bytes"]) == (model, expected * 4)
    assert (row["flops_model"], row["bound_flops"]) == (model, flops)
    assert row["bytes_fraction"] == pytest.approx(expected * 4 / 1e6 / 0.5, rel=1e-14)
    assert row["flops_fraction"] == pytest.approx(flops / 1e9 / 0.5, rel=1e-14)
    assert cases.case_bounds(case) == ((model, expected * 4), (model, flops))


def test_the_bounds_read_the_layer_as_the_rows_time_it():
    """SGConv's taps follow its l_max, which the timed layer sets to L (a step case's layer keeps the default 1 024):
    a step of 2 000 tokens convolves up to 2 000 inputs per channel, or 1 024."""
    forward = Case("sgconv", 1, 2000, 2, 4, "float32", "forward")
    step = Case("sgconv", 1, 2000, 2, 4, "float32", "step")
    assert cases.bound_layer(forward).kernel_length == 2048 and cases.bound_layer(step).kernel_length == 1024
    assert cases.case_bounds(step)[1] == ("lti", limits.conv_flops("step", 1, 2000, 2, taps=1024))
    assert cases.case_bounds(forward)[1] == ("lti", limits.conv_flops("forward", 1, 2000, 2, taps=2048))


def plot_rows():
    rows = []
    for impl, scale in (("ssmkit[fft]", 1.0), ("loop", 3.0), ("official-s4", 0.5), ("ssmkit[auto]", 2.0)):
        for L in (64, 1, 8):  # not in order: the plot sorts by L
            t = scale * 1e-6 * L + 1e-5
            rows.append({"case": f"s4d-L{L}", "impl": impl, "layer": "s4d", "batch": 2, "d_model": 3, "d_state": 4,
                         "dtype": "float32", "mode": "forward", "length": L, "seconds": t,
                         "bytes_fraction": 0.1 * scale + L / 1000, "flops_fraction": 0.01 * scale + L / 100})
    return rows


def test_plot_draws_time_and_time_over_the_expected_complexity(monkeypatch, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(cases, "save_figure", lambda fig, path: figures.append((fig, path)))
    rows = plot_rows()
    before = matplotlib.get_backend()
    matplotlib.use("pdf")
    try:
        paths = cases.plot(rows, str(tmp_path))
        assert matplotlib.get_backend().lower() == "agg"  # no display needed
    finally:
        matplotlib.use(before)
    assert paths == [str(tmp_path / "time_vs_length.png"), str(tmp_path / "bounds.png")]
    assert [p for _, p in figures] == paths
    ax_t, ax_n = figures[0][0].axes
    assert ax_t.get_xscale() == "log" and ax_t.get_yscale() == "log" and ax_n.get_xscale() == "log"
    impls = sorted({r["impl"] for r in rows})  # the groups in sorted order: only the implementation differs here
    assert len(ax_t.lines) == len(ax_n.lines) == len(impls)
    for impl, line_t, line_n in zip(impls, ax_t.lines, ax_n.lines):
        rs = sorted((r for r in rows if r["impl"] == impl), key=lambda r: r["length"])
        Ls = [r["length"] for r in rs]
        fft = impl in ("ssmkit[fft]", "official-s4")
        expected = [r["seconds"] / (r["length"] * max(1.0, math.log2(r["length"])) if fft else r["length"])
                    for r in rs]
        assert list(line_t.get_xdata()) == Ls == list(line_n.get_xdata()) == [1, 8, 64]
        assert list(line_t.get_ydata()) == pytest.approx([1e3 * r["seconds"] for r in rs], rel=1e-14)
        assert list(line_n.get_ydata()) == pytest.approx([1e9 * v for v in expected], rel=1e-14)
        label = f"s4d forward {impl} (B2 H3 N4 float32)"
        assert line_t.get_label() == label
        assert line_n.get_label() == label + (" / L log2 L" if fft else " / L")
    (ax,) = figures[1][0].axes
    bars = ax.patches
    assert len(bars) == 2 * len(rows)
    for i, r in enumerate(rows):
        b, f = bars[i], bars[len(rows) + i]
        assert b.get_width() == pytest.approx(r["bytes_fraction"]) and f.get_width() == pytest.approx(
            r["flops_fraction"])
        assert b.get_y() + b.get_height() / 2 == pytest.approx(i - 0.2)
        assert f.get_y() + f.get_height() / 2 == pytest.approx(i + 0.2)
        assert b.get_height() == pytest.approx(0.4) and f.get_height() == pytest.approx(0.4)
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"{r['case']} {r['impl']}" for r in rows]
    assert {t.get_fontsize() for t in ax.get_yticklabels()} == {6.0}
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "achieved fraction (1 = at the limit)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["of the bytes bound", "of the FLOP bound"]
    # the axes' labels, the legends, the tight layout (the default subplot box starts at x = 0.125) and the closing
    assert (ax_t.get_xlabel(), ax_t.get_ylabel(), ax_t.get_title()) == ("L", "ms", "time against L")
    assert (ax_n.get_xlabel(), ax_n.get_ylabel()) == ("L", "ns per L (scans) or per L log2 L (FFT)")
    assert ax_n.get_title() == "time / expected complexity (flat = as expected)"
    for a in (ax_t, ax_n):
        texts = a.get_legend().get_texts()
        assert [t.get_text() for t in texts] == [line.get_label() for line in a.lines]
        assert {t.get_fontsize() for t in texts} == {6.0}
    for fig, _ in figures:
        assert fig.axes[0].get_position().x0 < 0.1
        assert not plt.fignum_exists(fig.number)
    assert list(figures[0][0].get_size_inches()) == pytest.approx([12, 4.5])
    assert list(figures[1][0].get_size_inches()) == pytest.approx([12, 0.3 * len(rows) + 1.5])


def test_cases_main_runs_every_combination_and_prints_the_ratios(monkeypatch, tmp_path, capsys):
    seen = {"measure": [], "limits": []}
    monkeypatch.setattr(cases, "copy_bandwidth", lambda mb: seen["limits"].append(("copy", mb)) or 2e9)
    monkeypatch.setattr(cases, "gemm_flops", lambda size: seen["limits"].append(("gemm", size)) or 5e10)
    monkeypatch.setattr(cases, "machine", lambda: "the machine")
    monkeypatch.setattr(cases, "plot", lambda rows, out: [])

    def measure_case(case, peers, s4_file, reference, repeats, bandwidth, flops):
        seen["measure"].append((case, peers, s4_file, reference, repeats, bandwidth, flops))
        t = 0.001 * case.length
        auto = [{"case": case.name, "impl": "ssmkit[auto]", "seconds": t, "bytes_fraction": 0.5,
                 "flops_fraction": 0.25}]
        loop = [{"case": case.name, "impl": "loop", "seconds": 3 * t, "bytes_fraction": 0.125,
                 "flops_fraction": 0.0625}]
        return (loop if case.mode == "step" else auto + loop), [f"note {case.mode}", "same note"]  # step: no auto

    monkeypatch.setattr(cases, "measure_case", measure_case)
    out = tmp_path / "out"
    out.mkdir()  # an existing folder is fine
    argv = ["--layers", "s4d", "dss", "--batch", "1", "2", "--length", "8", "--d-model", "3", "--d-state", "4",
            "--dtype", "float64", "--modes", "forward", "step", "--peers", "loop", "--s4-file", "f.py",
            "--reference", "--repeats", "2", "--copy-mb", "3", "--gemm-size", "16", "--out", str(out)]
    assert cases.main(argv) == 0
    assert seen["limits"] == [("copy", 3), ("gemm", 16)]
    expected_cases = [Case(layer, b, 8, 3, 4, "float64", mode) for layer in ("s4d", "dss") for b in (1, 2)
                      for mode in ("forward", "step")]
    assert [m[0] for m in seen["measure"]] == expected_cases
    assert all(m[1:] == (["loop"], "f.py", True, 2, 2e9, 5e10) for m in seen["measure"])
    printed = capsys.readouterr().out
    assert printed.startswith("ssmkit bench cases; the machine; copy 2.0 GB/s, GEMM 50.0 GFLOP/s\n| case | "
                              "implementation | ms | x ssmkit[auto] | of bytes bound | of FLOP bound |\n"
                              "|---|---|---|---|---|---|\n")
    assert printed.endswith(f"wrote {out / 'bench.json'} (no matplotlib: no plots)\n")
    assert "| s4d-B1-L8-H3-N4-float64-forward | loop | 24.00 | 3.00 | 12.5 % | 6.25 % |" in printed
    assert "| s4d-B1-L8-H3-N4-float64-forward | ssmkit[auto] | 8.00 | 1.00 | 50 % | 25 % |" in printed
    assert "| dss-B2-L8-H3-N4-float64-step | loop | 24.00 | nan | 12.5 % | 6.25 % |" in printed
    assert printed.count("note: same note") == 1 and printed.count("note: note step") == 1
    result = json.loads((out / "bench.json").read_text())
    assert result["machine"] == "the machine" and result["threads"] == torch.get_num_threads()
    assert result["copy_bandwidth_bytes_per_s"] == 2e9 and result["gemm_flops_per_s"] == 5e10
    assert result["notes"] == ["note forward", "same note", "note step"]
    assert len(result["rows"]) == 3 * len(expected_cases) // 2


def test_cases_main_defaults(monkeypatch, tmp_path, capsys):
    seen = []
    monkeypatch.setattr(cases, "copy_bandwidth", lambda mb: seen.append(("copy", mb)) or 1.0)
    monkeypatch.setattr(cases, "gemm_flops", lambda size: seen.append(("gemm", size)) or 1.0)
    monkeypatch.setattr(cases, "plot", lambda rows, out: [f"{out}/a.png", f"{out}/b.png"])
    monkeypatch.setattr(cases, "measure_case", lambda *args: seen.append(args) or ([], []))
    monkeypatch.chdir(tmp_path)
    assert cases.main([]) == 0
    assert (tmp_path / "bench-out" / "bench.json").exists()
    assert seen[:2] == [("copy", 256), ("gemm", 2048)]
    got = [(c.layer, c.batch, c.length, c.d_model, c.d_state, c.dtype, c.mode) for c, *_ in seen[2:]]
    assert got == [(layer, 8, L, 128, 64, "float32", mode) for layer in ("s4d", "s4") for L in (1024, 4096, 16384)
                   for mode in ("forward", "forward_backward")]
    assert all(args[1:5] == (list(cases.PEERS), None, False, 3) for args in seen[2:])
    assert capsys.readouterr().out.endswith(
        f"wrote {os.path.join('bench-out', 'bench.json')}, bench-out/a.png, bench-out/b.png\n")


# -------------------------------------------------------------------------------------------------- crossover


@pytest.mark.parametrize("d_state,M", [(64, 32), (5, 2), (1, 1)])
def test_scan_problem_shapes_and_ranges(d_state, M):
    u, A_bar, B_bar, C, D = crossover.scan_problem(3, 40, d_state, 7)
    assert u.shape == (3, 7, 40) and u.dtype == torch.float32
    for t in (A_bar, B_bar, C):
        assert t.shape == (40, M) and t.dtype == torch.complex64
    assert D.shape == (40,) and D.dtype == torch.float32
    again = crossover.scan_problem(3, 40, d_state, 7, "cpu")
    assert all(torch.equal(a, b) for a, b in zip((u, A_bar, B_bar, C, D), again))  # seeded
    radius, angle = A_bar.abs(), A_bar.angle()
    assert radius.min() >= 0.9 - 1e-6 and radius.max() <= 0.9999 + 1e-6  # stable, long memory
    assert (angle >= 0).all() and (angle < math.pi).all()  # the upper half-plane


def test_scan_problem_draws_cover_their_ranges():
    u, A_bar, B_bar, C, D = crossover.scan_problem(4, 64, 64, 64)
    radius, angle = A_bar.abs(), A_bar.angle()
    assert radius.min() < 0.901 and radius.max() > 0.999 and radius.max() <= 0.9999 + 1e-6
    assert angle.max() > 3.1 and angle.min() < 0.01
    for z in (B_bar, C):  # standard complex normals: E|z|² = 1, both parts drawn
        assert 0.9 < float(z.abs().square().mean()) < 1.1 and float(z.imag.abs().mean()) > 0.5
    for x in (u, D):
        assert abs(float(x.mean())) < 0.3 and 0.8 < float(x.std()) < 1.2
    assert not torch.equal(B_bar, C)


@pytest.mark.parametrize("ratios,expected", [
    ({512: 0.5}, (512, None)),
    ({512: 1.0}, None),
    ({2048: 0.9, 256: 1.5, 1024: 0.8, 512: 0.7}, (512, None)),
    ({256: 0.9, 512: 1.0, 1024: 0.9, 2048: 1.1}, (256, 512)),  # equally long runs: the first one
    ({256: 0.5, 512: 2.0, 1024: 0.5, 2048: 0.6, 4096: 3.0, 8192: 0.1}, (1024, 4096)),
    ({256: 1.5, 512: 0.5, 1024: 0.4, 2048: 2.0, 4096: 0.3, 8192: 0.2, 16384: 0.1}, (4096, None)),
    ({256: 0.5, 512: 0.5, 1024: 0.5, 2048: 2.0, 4096: 0.5, 8192: 0.5}, (256, 2048)),  # a shorter run later
    ({}, None),
])
def test_fft_span_is_the_longest_winning_run(ratios, expected):
    assert crossover.fft_span(ratios) == expected


def test_crossover_main_times_both_paths_and_prints_the_entries(monkeypatch, tmp_path, capsys):
    calls = []

    def ssm_scan(u, A_bar, B_bar, C, D=None, return_state=True, backend="auto"):
        calls.append((tuple(u.shape), tuple(A_bar.shape), D is not None, return_state, backend,
                      torch.is_grad_enabled()))
        problem = crossover.scan_problem(2, 3, 6, u.shape[1])
        assert all(torch.equal(a, b) for a, b in zip((u, A_bar, B_bar, C, D), problem))  # each in its place

    # fft / chunked per L and state: fft wins at 16 and 32 with the state and only at 32 without
    fft_over = {(8, True): 1.5, (16, True): 0.5, (32, True): 0.75, (8, False): 2.0, (16, False): 1.25,
                (32, False): 0.8}
    timed = []

    def time_interleaved(fns, repeats):
        timed.append((list(fns), repeats))
        for fn in fns.values():
            fn()
        L = calls[-1][0][1]
        out = {}
        for state in (True, False):
            chunked = [0.002 * L, 0.001 * L, 0.004 * L]
            out[("chunked", state)] = chunked
            out[("fft", state)] = [fft_over[(L, state)] * statistics.median(chunked) * k for k in (1.0, 0.5, 3.0)]
        return out

    monkeypatch.setattr(crossover, "ssm_scan", ssm_scan)
    monkeypatch.setattr(crossover, "time_interleaved", time_interleaved)
    monkeypatch.setattr(crossover, "machine", lambda: "the machine")
    path = tmp_path / "crossover.json"
    assert crossover.main(["--batch", "2", "--d-model", "3", "--d-state", "6", "--length", "8", "16", "32",
                           "--repeats", "4", "--json", str(path)]) == 0
    keys = [("chunked", True), ("chunked", False), ("fft", True), ("fft", False)]
    assert timed == [(keys, 4)] * 3
    assert [c[3:] for c in calls] == [(s, b, False) for b in ("chunked", "fft") for s in (True, False)] * 3
    assert [c[:3] for c in calls] == [((2, L, 3), (3, 3), True) for L in (8, 16, 32) for _ in range(4)]
    printed = capsys.readouterr().out
    assert printed.startswith("ssmkit bench crossover: B=2, H=3, N=6, float32, forward; the machine\n"
                              "| L | state | chunked ms | fft ms | fft / chunked |\n|---|---|---|---|---|\n")
    assert "FFT_LENGTHS[('cpu', True)] = (16, None)" in printed
    assert "FFT_LENGTHS[('cpu', False)] = (32, None)" in printed
    assert "| 16 | yes | 32.00 | 16.00 | 0.50 |" in printed and "| 8 | no | 16.00 | 32.00 | 2.00 |" in printed
    result = json.loads(path.read_text())
    assert result["fft_lengths"] == {"True": [16, None], "False": [32, None]}
    assert (result["batch"], result["d_model"], result["d_state"], result["machine"]) == (2, 3, 6, "the machine")
    assert [(r["length"], r["return_state"]) for r in result["rows"]] == [
        (L, s) for L in (8, 16, 32) for s in (True, False)]
    for r in result["rows"]:
        assert r["chunked_s"] == pytest.approx(0.002 * r["length"])
        assert r["fft_s"] == pytest.approx(fft_over[(r["length"], r["return_state"])] * 0.002 * r["length"])
        assert r["fft_over_chunked"] == pytest.approx(fft_over[(r["length"], r["return_state"])])


def test_crossover_main_defaults(monkeypatch):
    seen = []
    monkeypatch.setattr(crossover, "scan_problem", lambda *args: seen.append(args) or (None,) * 5)
    monkeypatch.setattr(crossover, "time_interleaved", lambda fns, repeats: seen.append(repeats) or {
        k: [1.0] for k in fns})
    assert crossover.main([]) == 0
    assert crossover.DEFAULT_LENGTHS == [256 * 2**k for k in range(9)]
    assert seen == [x for L in crossover.DEFAULT_LENGTHS for x in ((8, 128, 64, L, "cpu"), 5)]


# ------------------------------------------------------------------------------------------------------- step


def test_bare_diagonal_step_against_a_float64_loop():
    g = torch.Generator().manual_seed(5)
    Bn, H, M = 2, 3, 4
    u = torch.randn(Bn, H, generator=g, dtype=torch.float64)
    x = torch.randn(Bn, H, M, generator=g, dtype=torch.complex128)
    A, Bb, C = (torch.randn(H, M, generator=g, dtype=torch.complex128) for _ in range(3))
    D = torch.randn(H, generator=g, dtype=torch.float64)
    y, x_next = step.bare_diagonal_step(u, x, A, Bb, C, D)
    for b in range(Bn):
        for h in range(H):
            acc = 0j
            for m in range(M):
                x_bhm = complex(A[h, m]) * complex(x[b, h, m]) + complex(Bb[h, m]) * float(u[b, h])
                assert complex(x_next[b, h, m]) == pytest.approx(x_bhm, rel=1e-12, abs=1e-12)
                acc += complex(C[h, m]) * x_bhm
            assert float(y[b, h]) == pytest.approx(2 * acc.real + float(D[h]) * float(u[b, h]), rel=1e-12, abs=1e-12)


def probe_bare_stepper(batch, H, N):
    """Ā, B̄, C, D of ``bare_stepper`` read back through its step: from x = 0 a unit input gives x = B̄; a zero
    input then gives Ā B̄; with no input a state e_m steps to Ā_m e_m and gives y = 2 Re (C Ā)_m, i·e_m gives
    −2 Im (C Ā)_m; then D = y(u = 1, x = 0) − 2 Re Σ C B̄."""
    fn, x0 = step.bare_stepper(batch, H, N)
    M = N // 2
    ones, zeros = torch.ones(batch, H), torch.zeros(batch, H)
    y1, x1 = fn(ones, x0)
    _, x2 = fn(zeros, x1)
    B_bar = x1[0]
    A_bar = x2[0] / B_bar
    columns = []
    for m in range(M):
        e_m = torch.nn.functional.one_hot(torch.full((1, H), m), M).to(torch.complex64)  # (1, H, M)
        re, im = fn(zeros[:1], e_m)[0][0], fn(zeros[:1], 1j * e_m)[0][0]
        columns.append(torch.complex(re / 2, -im / 2))
    C = torch.stack(columns, -1) / A_bar
    D = y1[0] - 2 * (C * B_bar).sum(-1).real
    return x0, A_bar, B_bar, C, D


@pytest.mark.parametrize("batch,H,N", [(2, 3, 8), (1, 5, 6)])
def test_bare_stepper_shapes(batch, H, N):
    x0, A_bar, B_bar, C, D = probe_bare_stepper(batch, H, N)
    assert x0.shape == (batch, H, N // 2) and x0.dtype == torch.complex64 and not x0.abs().any()
    assert A_bar.shape == B_bar.shape == (H, N // 2) and D.shape == (H,)
    radius = A_bar.abs()
    assert radius.min() >= 0.45 - 1e-5 and radius.max() <= 0.95 + 1e-5


def test_bare_stepper_draws_cover_their_ranges():
    x0, A_bar, B_bar, C, D = probe_bare_stepper(1, 256, 32)  # 4 096 modes
    radius, angle = A_bar.abs(), A_bar.angle()
    assert radius.min() < 0.452 and radius.max() > 0.948
    assert angle.min() > -1e-4 and angle.max() < math.pi and angle.max() > 3.1 and angle.min() < 0.01
    assert 0.9 < float(B_bar.abs().square().mean()) < 1.1 and float(B_bar.imag.abs().mean()) > 0.5
    assert 0.9 < float(C.abs().square().mean()) < 1.1 and float(C.imag.abs().mean()) > 0.5
    assert abs(float(D.mean())) < 0.2 and 0.85 < float(D.std()) < 1.15
    assert torch.equal(step.bare_stepper(1, 256, 32)[0](torch.ones(1, 256), x0)[1][0], B_bar)  # seeded


def test_time_steps_times_the_steps_and_threads_the_state(clock):
    from ssmkit.layers.cache import _FROZEN

    seen = []

    def fn(u_t, state):
        seen.append((tuple(u_t.shape), state, _FROZEN.get() != 0))
        clock.advance(0.125)
        return None, state + 1

    inputs = torch.zeros(5, 2, 3)
    clock.advance(7.0)
    assert step._time_steps(fn, 10, inputs, frozen=False) == (0.625, 15)
    assert seen == [((2, 3), 10 + i, False) for i in range(5)]
    seen.clear()
    assert step._time_steps(fn, 0, inputs[:2], frozen=True) == (0.25, 2)
    assert [s[2] for s in seen] == [True, True]


def test_time_steppers_rows_are_medians_over_interleaved_rounds(clock):
    """Each entry's step costs a scripted time per round (its state counts the steps it ran, which tells the round);
    the warm-up of steps // 4 steps is free."""
    from ssmkit.layers.cache import _FROZEN

    steps, repeats, warm = 8, 3, 2
    cost = {"bare": [1.0, 3.0, 2.0], "s4d": [5.0, 4.0, 9.0], "s4d (frozen)": [2.0, 7.0, 2.5]}  # µs per step per round
    start = {"bare": 0, "s4d": 100, "s4d (frozen)": 200}
    log = []

    def stepper(name):
        def fn(u_t, state):
            log.append((name, state, tuple(u_t.shape), torch.is_grad_enabled(), _FROZEN.get() != 0))
            done = state - start[name]  # steps this entry ran before this one
            if done >= warm:
                clock.advance(1e-6 * cost[name][(done - warm) // steps])
            return None, state + 1
        return fn

    names = list(cost)
    rows = step.time_steppers({n: (stepper(n), start[n]) for n in names}, 2, 3, steps, repeats)
    order = [n for n in names for _ in range(warm)] + [n for _ in range(repeats) for n in names for _ in range(steps)]
    assert [entry[0] for entry in log] == order
    for n in names:  # one thread of state from the warm-up through every round
        assert [entry[1] for entry in log if entry[0] == n] == list(range(start[n], start[n] + warm + repeats * steps))
    assert {entry[2] for entry in log} == {(2, 3)} and not any(entry[3] for entry in log)
    assert all(entry[4] == entry[0].endswith(" (frozen)") for entry in log)
    assert [r["layer"] for r in rows] == names
    for r in rows:
        t = statistics.median([1e-6 * c for c in cost[r["layer"]]])
        assert (r["batch"], r["d_model"]) == (2, 3)
        assert r["us_per_step"] == pytest.approx(1e6 * t, rel=1e-9)
        assert r["tokens_per_s"] == pytest.approx(2 / t, rel=1e-9)
        ratios = [s / b for s, b in zip(cost[r["layer"]], cost["bare"])]
        assert r["vs_bare"] == pytest.approx(statistics.median(ratios), rel=1e-9)


def test_time_steppers_warms_up_at_least_one_step(clock):
    seen = []
    step.time_steppers({"bare": (lambda u, s: seen.append(s) or clock.advance(1.0) or (None, s + 1), 0)}, 1, 1, 3, 1)
    assert seen == [0, 1, 2, 3]  # one warm-up step (3 // 4 = 0), then 3 timed


def test_measure_shape_times_the_bare_step_and_each_layer_twice(monkeypatch):
    captured = []

    def time_steppers(steppers, batch, d_model, steps, repeats):
        captured.append((steppers, batch, d_model, steps, repeats))
        return [{"layer": name} for name in steppers]

    monkeypatch.setattr(step, "time_steppers", time_steppers)
    rows = step.measure_shape(["s4d", "lru"], 2, 3, 4, 5, 6)
    (steppers, *args), = captured
    assert args == [2, 3, 5, 6]
    assert list(steppers) == ["bare", "s4d", "s4d (frozen)", "lru", "lru (frozen)"]
    assert rows == [{"layer": name, "d_state": 4} for name in steppers]
    bare_fn, bare_state = steppers["bare"]
    assert bare_state.shape == (2, 3, 2) and bare_state.dtype == torch.complex64
    for name in ("s4d", "lru"):
        (fn, state), (fn_frozen, state_frozen) = steppers[name], steppers[name + " (frozen)"]
        layer = fn.__self__
        assert fn == layer.step and fn_frozen == layer.step and not layer.training
        assert layer.d_model == 3
        assert state is not state_frozen
        assert [t.shape for t in (state if isinstance(state, tuple) else (state,))] == [
            t.shape for t in (lambda s: s if isinstance(s, tuple) else (s,))(layer.initial_state(2))]
    # the layers are built after a fixed seed: a second call builds the same weights
    torch.manual_seed(99)
    step.measure_shape(["s4d"], 2, 3, 4, 5, 6)
    again = captured[-1][0]["s4d"][0].__self__
    assert all(torch.equal(a, b) for a, b in zip(steppers["s4d"][0].__self__.parameters(), again.parameters()))


def test_step_main_passes_every_shape_and_prints_tokens_per_second(monkeypatch, tmp_path, capsys):
    seen = []

    def measure_shape(names, batch, d_model, d_state, steps, repeats):
        seen.append((names, batch, d_model, d_state, steps, repeats))
        return [{"layer": "bare", "batch": batch, "d_model": d_model, "us_per_step": 12.345,
                 "tokens_per_s": 1234567.8, "vs_bare": 1.0, "d_state": d_state}]

    monkeypatch.setattr(step, "measure_shape", measure_shape)
    monkeypatch.setattr(step, "machine", lambda: "the machine")
    assert step.main([]) == 0
    assert seen == [(layers.available(), b, h, 64, 400, 7) for b in (1, 8) for h in (128, 256)]
    out = capsys.readouterr().out
    assert out.startswith("ssmkit bench step: N=64, float32, no_grad, 400 steps x 7 rounds; the machine\n"
                          "| layer | B | H | µs/step | tokens/s | x bare |\n|---|---|---|---|---|---|\n")
    assert "| bare | 8 | 256 | 12.3 | 1,234,568 | 1.00x |" in out
    seen.clear()
    path = tmp_path / "step.json"
    assert step.main(["--layers", "s4d", "--batch", "2", "--d-model", "3", "5", "--d-state", "6", "--steps", "7",
                      "--repeats", "2", "--json", str(path)]) == 0
    assert seen == [(["s4d"], 2, 3, 6, 7, 2), (["s4d"], 2, 5, 6, 7, 2)]
    result = json.loads(path.read_text())
    assert result["d_state"] == 6 and result["machine"] == "the machine" and len(result["results"]) == 2


# --------------------------------------------------------------------------------------------------- backward


def test_output_gradients_are_standard_normal_draws_fixed_by_the_seed():
    grads = backward.OutputGradients(seed=4)
    assert signature_defaults(backward.OutputGradients) == {"seed": 0}
    real = grads.grad_for(torch.empty(64, 128, dtype=torch.float64))
    assert real.dtype == torch.float64 and real.is_contiguous()
    assert abs(float(real.mean())) < 0.03 and 0.97 < float(real.var()) < 1.03
    cplx = grads.grad_for(torch.empty(64, 128, dtype=torch.complex64))
    assert cplx.dtype == torch.complex64  # standard complex normal: E|z|² = 1, each part of variance 1/2
    assert 0.97 < float(cplx.abs().square().mean()) < 1.03 and 0.47 < float(cplx.imag.var()) < 0.53
    single = grads.grad_for(torch.empty(64, 128))
    assert single.dtype == torch.float32 and not torch.equal(single.double(), real)  # a dtype is its own key
    # a second object with the same seed draws the same tensors in the same order; another seed does not
    same = backward.OutputGradients(seed=4)
    assert torch.equal(same.grad_for(torch.empty(64, 128, dtype=torch.float64)), real)
    assert torch.equal(same.grad_for(torch.empty(64, 128, dtype=torch.complex64)), cplx)
    other = backward.OutputGradients(seed=5)
    assert not torch.equal(other.grad_for(torch.empty(64, 128, dtype=torch.float64)), real)
    # every new key gets a new draw, not the first one again
    firsts = [backward.OutputGradients(seed=4).grad_for(torch.empty(n)) for n in (3, 3)]
    seconds = grads.grad_for(torch.empty(3))
    assert torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[0], seconds)


# ------------------------------------------------------------------------------------------------- contention


def test_count_ops_counts_the_second_call():
    x = torch.ones(3)
    calls = []

    def fn():
        calls.append(1)
        y = x + 1
        if len(calls) > 1:  # the second call does two more ops than the first
            y = (y * 2).sum()
        return y

    assert contention.count_ops(fn) == 3 and len(calls) == 2
    with contention.OpCounter() as counter:
        (x + x) * x + x
    assert counter.counts == {"aten.add": 2, "aten.mul": 1} and counter.total == 3


class FakeProcess:
    log: list = []

    def __init__(self, args, stdout=None, stderr=None):
        self.args, self.stdout, self.stderr = args, stdout, stderr
        FakeProcess.log.append(("start", args[-1]))

    def poll(self):
        return None

    def terminate(self):
        FakeProcess.log.append(("terminate", id(self)))

    def kill(self):
        FakeProcess.log.append(("kill", id(self)))

    def wait(self, timeout=None):
        FakeProcess.log.append(("wait", id(self), timeout))
        if timeout is not None and self.hang:
            raise contention.subprocess.TimeoutExpired(self.args, timeout)
        return 0


@pytest.mark.parametrize("hang", [False, True])
def test_busy_processes_start_n_and_stop_each_by_its_id(monkeypatch, hang):
    import subprocess
    import sys

    FakeProcess.log = []
    FakeProcess.hang = hang
    sleeps = []
    monkeypatch.setattr(contention.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(contention.time, "sleep", sleeps.append)
    with pytest.raises(RuntimeError, match="inside"):
        with contention.busy_processes(2, "matmul") as procs:
            assert len(procs) == 2 and sleeps == [0.5]
            assert all(p.args == [sys.executable, "-c", contention.BUSY["matmul"]] for p in procs)
            assert all(p.stdout == p.stderr == subprocess.DEVNULL for p in procs)
            raise RuntimeError("inside")
    a, b = (id(p) for p in procs)
    stop = [("terminate", a), ("terminate", b), ("wait", a, 5)]
    stop += [("kill", a), ("wait", a, None)] if hang else []
    stop += [("wait", b, 5)] + ([("kill", b), ("wait", b, None)] if hang else [])
    assert FakeProcess.log == [("start", contention.BUSY["matmul"])] * 2 + stop
    FakeProcess.log = []
    with contention.busy_processes(0) as procs:
        assert procs == []
    assert sleeps == [0.5, 0] and FakeProcess.log == []
    with pytest.raises(ValueError, match=r"kind must be one of \('spin', 'matmul'\); got 'idle'"):
        with contention.busy_processes(1, "idle"):
            pass
    assert signature_defaults(contention.busy_processes) == {"kind": "spin"}


def test_busy_programs_run_forever_in_the_documented_way():
    spin, matmul = contention.BUSY["spin"], contention.BUSY["matmul"]
    assert spin == "while True:\n    pass\n"
    assert "torch.set_num_threads(1)" in matmul and "a = torch.randn(512, 512)" in matmul
    assert matmul.endswith("while True:\n    a @ a\n")
    compile(matmul, "busy", "exec")


def test_contention_measure_rows_are_slowdowns_of_medians(monkeypatch):
    log = []
    case = Case("s4d", 2, 16, 3, 4, "float32", "forward")

    def implementations(c, peers, s4_file, reference):
        log.append(("impl", c, peers, s4_file, reference))
        return {"ssmkit[auto]": "fa", "loop": "fl"}, ["a note"]

    @__import__("contextlib").contextmanager
    def busy_processes(n, kind):
        log.append(("busy", n, kind))
        yield []
        log.append(("stopped",))

    alone = {"ssmkit[auto]": [3.0, 1.0, 2.0], "loop": [4.0, 8.0]}
    loaded = {"ssmkit[auto]": [9.0, 5.0, 6.0], "loop": [10.0, 30.0, 20.0, 40.0]}

    def time_interleaved(fns, repeats, warmup=1):
        log.append(("time", list(fns.values()), repeats, warmup))
        return alone if warmup else loaded

    monkeypatch.setattr(contention, "implementations", implementations)
    monkeypatch.setattr(contention, "busy_processes", busy_processes)
    monkeypatch.setattr(contention, "time_interleaved", time_interleaved)
    monkeypatch.setattr(contention, "count_ops", lambda fn: {"fa": 11, "fl": 7}[fn])
    rows, notes = contention.measure(case, ["loop"], "s4.py", 3, "matmul", 5)
    assert notes == ["a note"]
    assert log == [("impl", case, ["loop"], "s4.py", False), ("time", ["fa", "fl"], 5, 1), ("busy", 3, "matmul"),
                   ("time", ["fa", "fl"], 5, 0), ("stopped",)]
    assert [r["impl"] for r in rows] == ["ssmkit[auto]", "loop"]
    for r, ops in zip(rows, (11, 7)):
        a, b = statistics.median(alone[r["impl"]]), statistics.median(loaded[r["impl"]])
        assert r == {"case": "s4d-B2-L16-H3-N4-float32-forward", "impl": r["impl"], "aten_ops": ops, "alone_s": a,
                     "loaded_s": b, "slowdown": b / a, "alone_all": alone[r["impl"]], "loaded_all": loaded[r["impl"]]}


def test_contention_main_runs_every_case_and_prints_the_loaded_range(monkeypatch, tmp_path, capsys):
    seen = []

    def measure(case, peers, s4_file, busy, kind, repeats):
        seen.append((case, peers, s4_file, busy, kind, repeats))
        return [{"case": case.name, "impl": "loop", "aten_ops": 12, "alone_s": 0.002, "loaded_s": 0.005,
                 "slowdown": 2.5, "alone_all": [0.002], "loaded_all": [0.007, 0.0031, 0.005]}], ["n1", "n1"]

    monkeypatch.setattr(contention, "measure", measure)
    monkeypatch.setattr(contention, "machine", lambda: "the machine")
    assert contention.main([]) == 0
    assert seen == [(Case("s4d", 8, 4096, 128, 64, "float32", mode), ["official-s4"], None, 1, "spin", 5)
                    for mode in ("forward", "forward_backward")]
    out = capsys.readouterr().out
    assert out.startswith("ssmkit bench contention: 1 busy process(es) (spin); the machine\n| case | implementation | "
                          "aten ops | alone ms | loaded ms | slow-down | loaded range ms |\n|---|---|---|---|---|---|---|\n")
    assert "| s4d-B8-L4096-H128-N64-float32-forward | loop | 12 | 2.00 | 5.00 | 2.50x | 3.10-7.00 |" in out
    assert out.count("note: n1") == 1
    seen.clear()
    path = tmp_path / "contention.json"
    argv = ["--layers", "s4d", "dss", "--batch", "2", "--length", "8", "16", "--d-model", "3", "--d-state", "4",
            "--dtype", "float64", "--modes", "step", "--peers", "loop", "--s4-file", "f.py", "--busy", "0",
            "--busy-kind", "matmul", "--repeats", "2", "--json", str(path)]
    assert contention.main(argv) == 0
    assert [s[0] for s in seen] == [Case(layer, 2, L, 3, 4, "float64", "step") for layer in ("s4d", "dss")
                                    for L in (8, 16)]
    assert all(s[1:] == (["loop"], "f.py", 0, "matmul", 2) for s in seen)
    result = json.loads(path.read_text())
    assert (result["busy"], result["busy_kind"], result["machine"], result["notes"]) == (0, "matmul", "the machine",
                                                                                         ["n1"])
    assert len(result["rows"]) == 4


def test_contention_main_refuses_a_negative_busy_count(capsys):
    with pytest.raises(SystemExit) as exit_:
        contention.main(["--busy", "-1"])
    assert exit_.value.code == 2
    assert "--repeats must be >= 1 and --busy >= 0" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- the scripts


@pytest.mark.parametrize("suite,argv", [
    ("core", ["--layers", "s4d", "--batch", "1", "--d-model", "2", "--d-state", "2", "--length", "4",
              "--repeats", "1"]),
    ("crossover", ["--batch", "1", "--d-model", "2", "--d-state", "2", "--length", "4", "--repeats", "1"]),
    ("step", ["--layers", "s4d", "--batch", "1", "--d-model", "2", "--d-state", "2", "--steps", "1",
              "--repeats", "1"]),
    ("contention", ["--batch", "1", "--d-model", "2", "--d-state", "2", "--length", "4", "--modes", "forward",
                    "--peers", "--busy", "0", "--repeats", "1"]),
    ("cases", ["--layers", "s4d", "--batch", "1", "--d-model", "2", "--d-state", "2", "--length", "4", "--modes",
               "forward", "--peers", "--repeats", "1", "--copy-mb", "1", "--gemm-size", "4", "--out", "OUT"]),
])
def test_each_suite_runs_as_a_script(monkeypatch, capsys, tmp_path, suite, argv):
    """``python -m ssmkit.bench.<suite>`` runs the suite's main and exits with its status."""
    import runpy
    import sys
    import warnings

    monkeypatch.setattr(sys, "argv", [suite, *[str(tmp_path) if a == "OUT" else a for a in argv]])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # no plots: they are checked above
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_:
        warnings.simplefilter("ignore", RuntimeWarning)  # the module is already imported (by this file)
        runpy.run_module(f"ssmkit.bench.{suite}", run_name="__main__")
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"ssmkit bench {suite}")


@pytest.mark.parametrize("module", [core, cases, crossover, step, contention])
def test_each_suite_describes_itself_by_its_first_docstring_line(module, capsys):
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert " ".join(module.__doc__.splitlines()[0].split()) in help_text


def test_plot_without_matplotlib_draws_nothing(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cases.plot(plot_rows(), str(tmp_path)) == []
    assert list(tmp_path.iterdir()) == []


def test_crossover_main_waits_for_an_accelerator_after_each_call(monkeypatch, capsys):
    """On a device other than the CPU every timed call ends with ``torch.cuda.synchronize()`` (asynchronous
    kernels); on the CPU none does. The scan and the synchronisation are stubs here (the meta device)."""
    events = []
    monkeypatch.setattr(crossover, "ssm_scan", lambda u, *args, **kwargs: events.append(("scan", u.device.type)))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: events.append(("sync",)))
    monkeypatch.setattr(crossover, "machine", lambda: "the machine")
    monkeypatch.setattr(crossover, "time_interleaved", lambda fns, repeats: {
        k: [1.0] for k in limits.time_interleaved(fns, repeats)})  # the calls, without dividing by a tiny time
    argv = ["--batch", "1", "--d-model", "2", "--d-state", "2", "--length", "4", "--repeats", "1"]
    assert crossover.main(argv + ["--device", "meta"]) == 0
    assert events == [("scan", "meta"), ("sync",)] * 8  # 4 entries: one warm-up and one timed call each
    assert "FFT_LENGTHS[('meta', True)]" in capsys.readouterr().out
    events.clear()
    assert crossover.main(argv) == 0
    assert events == [("scan", "cpu")] * 8
