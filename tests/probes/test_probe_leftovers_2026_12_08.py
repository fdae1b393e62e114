"""Probe (2026-12-08) of four items earlier reviews left: the sysid report's two spectrum branches on one regular
record, ``TrainConfig.freeze`` against ``freeze_parameters``, MQAR's splits through ``draw_splits``, and the C
kernels' fake implementations against their real outputs. Each test checks against an independent reference: a DFT
summed in a float64 loop, the parameters a part names listed by hand, the generator ``mqar_data`` itself with each
split's own seed, and the real kernel call's outputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

F64 = torch.float64


# ------------------------------------------------------------------------------------------------------------
# 1. sysid report: the FFT and the Lomb-Scargle spectra of one regular record


def _dft_amplitude(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k, |Σ_j x_j e^{−2πi kj/L}| / L) for 0 < k <= L / 2, the sum written out in float64."""
    L = len(x)
    k = np.arange(1, L // 2 + 1)
    amp = np.empty(len(k))
    for i, kk in enumerate(k):
        re = sum(x[j] * math.cos(2 * math.pi * kk * j / L) for j in range(L))
        im = sum(x[j] * math.sin(2 * math.pi * kk * j / L) for j in range(L))
        amp[i] = math.hypot(re, im) / L
    return k, amp


def test_a_regular_record_reads_the_same_in_both_spectrum_branches_below_nyquist():
    """Regular records of even and odd length (the FFT branch) and the same samples given as uniform sample times
    (``IORecord.t``: the Lomb-Scargle branch, no sample hidden) draw the same values, |DFT| / L summed in a loop, at
    every frequency k / (L Ts), 0 < k < L / 2, that both draw (the module docstring's claim; DC in neither). The FFT
    branch alone draws an even L's Nyquist bin k = L / 2, as |DFT| / L (its y label): a sinusoid A cos(πk) reads A
    there (0.5 here), where the Lomb-Scargle sum has no sine term and draws nothing."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from ssmkit.sysid.records import IORecord, SysidBenchmark
    from ssmkit.sysid.report import spectrum_figure

    n_init, ts, lengths = 4, 0.1, (40, 41)
    data = []
    for L in lengths:
        j = torch.arange(L + n_init, dtype=F64)
        g = torch.Generator().manual_seed(L)
        y = (0.8 * torch.sin(2 * math.pi * 5 * j / L + 0.3) + 0.5 * torch.cos(math.pi * j)
             + 0.1 * torch.randn(L + n_init, generator=g, dtype=F64))[:, None]
        sim = 0.9 * y + 0.05 * torch.randn(L + n_init, 1, generator=g, dtype=F64)
        data.append((j, torch.cos(0.3 * j)[:, None], y, sim))
    curves = []
    for uniform_times in (False, True):
        records = [IORecord(u, y, ts, f"L{len(j) - n_init}", t=ts * j if uniform_times else None)
                   for j, u, y, _ in data]
        fig = spectrum_figure(SysidBenchmark("b", "B", records, records, n_init, "V"), [d[3] for d in data])
        lines = fig.axes[0].lines
        assert len(lines) == 4 and ("Lomb-Scargle" in lines[0].get_label()) == uniform_times
        curves.append([(line.get_xdata(), line.get_ydata()) for line in lines])
        plt.close(fig)
    for i, (L, (_, _, y, sim)) in enumerate(zip(lengths, data)):
        y_after = y[n_init:, 0].numpy()
        k, want_measured = _dft_amplitude(y_after - y_after.mean())
        _, want_error = _dft_amplitude((sim - y)[n_init:, 0].numpy())
        for branch, top in zip(curves, (L // 2, (L - 1) // 2)):  # the FFT's (to L / 2), the Lomb-Scargle's (below)
            (f_m, a_m), (f_e, a_e) = branch[2 * i], branch[2 * i + 1]
            assert np.allclose(f_m, k[:top] / (L * ts), rtol=1e-12, atol=0) and np.array_equal(f_m, f_e)
            assert np.allclose(a_m, want_measured[:top], rtol=1e-9, atol=1e-12)
            assert np.allclose(a_e, want_error[:top], rtol=1e-9, atol=1e-12)
        assert abs(curves[0][2 * i][1][4] - 0.4) < 0.05  # the sinusoid of amplitude 0.8 at k = 5 reads about A / 2
    assert abs(curves[0][0][1][-1] - 0.5) < 0.05  # L = 40: 0.5 cos(πk) at the Nyquist bin reads about A


# ------------------------------------------------------------------------------------------------------------
# 2. TrainConfig.freeze and freeze_parameters read a part list by one rule


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(2, 3)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)])
        self.head = torch.nn.Linear(3, 1)


@pytest.mark.parametrize("text, want", [
    ("encoder", ["encoder.weight", "encoder.bias"]),
    (" blocks.1 ,head.bias", ["blocks.1.weight", "blocks.1.bias", "head.bias"]),
    ("backbone", ["encoder.weight", "encoder.bias", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight",
                  "blocks.1.bias"]),
])
def test_a_freeze_string_freezes_the_same_parameters_through_the_config(text, want):
    """``TrainConfig(freeze=text).frozen_parts()`` (what ``fit`` hands on) and the string itself freeze the
    parameters listed by hand."""
    from ssmkit.train import TrainConfig, freeze_parameters

    for parts in (text, TrainConfig(freeze=text).frozen_parts()):
        net = _Net()
        assert freeze_parameters(net, parts) == want
        assert [n for n, p in net.named_parameters() if not p.requires_grad] == want


@pytest.mark.parametrize("bad", ["ssm,", "", " , encoder", None, 3, ["encoder", ""], ["encoder", 3], {"encoder"}])
def test_freeze_parameters_refuses_what_the_config_refuses_with_a_value_error(bad):
    """An empty name or a non-string: a ValueError saying what is expected (an empty name was refused as "freeze '':
    it names no parameter of the model"; None, 3 or a set raised a TypeError), as ``TrainConfig`` refuses the
    strings; nothing is frozen."""
    from ssmkit.train import TrainConfig, freeze_parameters

    net = _Net()
    with pytest.raises(ValueError, match=r"freeze: parts must be part names, .* none of them empty; got "):
        freeze_parameters(net, bad)
    assert all(p.requires_grad for p in net.parameters())
    if isinstance(bad, str):
        with pytest.raises(ValueError, match="freeze must be None or comma-separated part names"):
            TrainConfig(freeze=bad)


# ------------------------------------------------------------------------------------------------------------
# 3. MQAR's splits through draw_splits: the examples of a seed unchanged


def test_mqar_draws_split_i_from_the_generator_of_seed_and_i():
    """Split i of (train, val, test) is ``mqar_data`` of its size from a torch generator seeded with the 64 bits of
    ``SeedSequence([seed, i])`` (``split_generator``'s documented rule, formed here by hand), stored compactly (int16
    below 32 768, int32 above): the examples recorded results were drawn with, kept bit for bit."""
    from ssmkit.data.mqar import MQARTask, mqar_data

    for vocab, dtype in ((100, torch.int16), (40_000, torch.int32)):
        task = MQARTask(length=32, num_kv_pairs=3, vocab_size=vocab, n_train=7, n_val=3, n_test=5, seed=11)
        got = task.generate()
        assert sorted(got) == ["test_x", "test_y", "train_x", "train_y", "val_x", "val_y"]
        for i, (split, n) in enumerate((("train", 7), ("val", 3), ("test", 5))):
            hi, lo = np.random.SeedSequence([11, i]).generate_state(2, dtype=np.uint32)
            want = mqar_data(n, 32, 3, vocab, generator=torch.Generator().manual_seed(int(hi) << 32 | int(lo)))
            for part, w in zip("xy", want):
                assert got[f"{split}_{part}"].dtype == dtype and torch.equal(got[f"{split}_{part}"].long(), w)


# ------------------------------------------------------------------------------------------------------------
# 4. the C kernels' fake implementations against the real kernel calls

# the gate's smoke calls that run kernels registered as custom ops (the bank's, 1.7 s each, is replaced by _bank_calls)
_SMOKED = ("selective_scan", "ssm_scan", "causal_conv1d", "linear_recurrence", "cauchy", "zoh", "ssd", "gated_norm",
           "rglru", "cauchy_pairs", "irregular_mimo", "irregular_dplr")


def _bank_calls(dtype):
    """The irregular bank's kernels, complex and real variants, with and without the gap tables (three distinct
    gaps), an initial state and gradients of the gaps."""
    from ssmkit.ops.native.irregular_bank import bank_unchecked

    g = torch.Generator().manual_seed(5)
    Bsz, L, H, M = 2, 9, 3, 2
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    rand = lambda *s: torch.randn(*s, generator=g, dtype=F64).to(dtype)  # noqa: E731
    crand = lambda *s: torch.complex(rand(*s), rand(*s)).to(cdtype)  # noqa: E731
    lam = torch.complex(-0.1 - torch.rand(H, M, generator=g, dtype=F64), rand(H, M).double()).to(cdtype)
    dt = (0.1 + torch.rand(H, generator=g, dtype=F64)).to(dtype)
    for tau in ((0.1 + torch.rand(Bsz, L, generator=g, dtype=F64)).to(dtype),
                torch.tensor([1.0, 2.0, 0.5], dtype=dtype)[torch.arange(Bsz * L).remainder(3).view(Bsz, L)]):
        for real in (False, True):
            args = [rand(Bsz, L, H), lam, crand(H, M), crand(H, M), dt, tau, rand(H), crand(Bsz, H, M)]
            args = [a.real.contiguous() if real and a.is_complex() else a for a in args]
            leaves = [a.requires_grad_() for a in args]
            y, x = bank_unchecked(*leaves[:7], "zoh", leaves[7], True)
            torch.autograd.grad((y.square().sum() + x.abs().square().sum()), leaves)
            bank_unchecked(*[a.detach() for a in args[:7]], "bilinear", None, True)  # forward only, no state


def test_every_native_kernel_fake_gives_the_real_outputs_shapes_dtypes_devices_and_strides(monkeypatch):
    """Every ``kernel_op`` of ``ssmkit.ops.native`` (the C kernels as custom ops under torch.compile) is called with
    the arguments its real call had in the gate's smoke calls (float32 and float64), under ``FakeTensorMode`` (what
    torch.compile and AOT autograd trace with) and on the meta device: each output has the real output's shape,
    dtype, stride and device (the real ones allocate with ``device="cpu"``, the fakes with ``new_empty``). A fake
    that differs would let a compiled graph plan another layout or dtype than the kernel writes."""
    import importlib
    import pkgutil

    from torch._subclasses.fake_tensor import FakeTensorMode

    import ssmkit.ops.native as native
    from ssmkit.ops.native import gate, irregular_bank
    from ssmkit.ops.native.build import NativeBuildError

    calls: list[tuple[object, tuple, list]] = []
    every = set()

    def recording(fn):
        def call(*args):
            out = fn(*args)
            calls.append((fn.op, args, out))
            return out
        call.op = fn.op
        return call

    for info in pkgutil.iter_modules(native.__path__):
        mod = importlib.import_module(f"ssmkit.ops.native.{info.name}")
        for name, fn in list(vars(mod).items()):
            if callable(fn) and hasattr(fn, "op") and getattr(fn, "__module__", None) == mod.__name__:
                every.add(fn.op)
                monkeypatch.setattr(mod, name, recording(fn))
    for real, variant in list(irregular_bank._VARIANTS.items()):  # the bank's Function reads its ops from here
        monkeypatch.setitem(irregular_bank._VARIANTS, real, variant._replace(
            forward=recording(variant.forward), backward=recording(variant.backward)))
    assert len(every) == 32
    try:
        with torch.device("cpu"):  # as the gate runs them (tensors of a CUDA default device would fail them)
            for dtype in (torch.float32, F64):
                for op in _SMOKED:
                    gate._smoke(op, dtype)
                _bank_calls(dtype)
    except NativeBuildError as err:
        pytest.skip(f"the native kernels do not build here: {err}")
    assert {op for op, _, _ in calls} == every
    seen, patterns, mode = set(), set(), FakeTensorMode()
    for op, args, real in calls:
        # one call per op, dtype and argument pattern (None or not, ranks, flags): what the fakes' outputs depend on
        pattern = (op, real[0].dtype, tuple((a.dtype, a.dim()) if isinstance(a, torch.Tensor) else
                                            a if isinstance(a, bool) or a is None else type(a) for a in args))
        if pattern in patterns:
            continue
        patterns.add(pattern)
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with mode:
            fake = op(*fake_args)
        meta = op(*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args])
        assert len(fake) == len(meta) == len(real), op
        for f, m, r in zip(fake, meta, real):
            assert (f.shape, f.dtype, f.stride(), f.device) == (r.shape, r.dtype, r.stride(), r.device), op
            assert (m.shape, m.dtype, m.stride(), m.device.type) == (r.shape, r.dtype, r.stride(), "meta"), op
        seen.add((op, real[0].real.dtype))
    assert len(seen) == 2 * len(every)  # every op in float32 and float64
