"""Whether a native (C) kernel runs here, decided once per (op, dtype) by building it and a smoke call.

The smoke call runs the op's kernel at a tiny size -- an initial state, a chunk boundary, several channel blocks --
and compares its outputs and every gradient with the op's reference in the same dtype; any difference, build error
or crash marks the kernel unusable, with the reason, for the rest of the process. ``"auto"`` asks
:func:`native_available`; a forced ``"native"`` that cannot run raises with :func:`native_status`'s reason.
"""

from __future__ import annotations

import functools
import math

import torch

from ssmkit.ops.backend import check_forward_ad, constant_under_compile
from ssmkit.ops.native.build import NativeBuildError
from ssmkit.ops.opaque import custom_ops_allowed, eager_views_and_autograd

OPS = ("selective_scan", "ssm_scan", "causal_conv1d", "linear_recurrence", "cauchy", "zoh", "dropout", "ssd",
       "gated_norm", "rglru", "mamba2_step", "mamba_step", "rglru_step", "fft_blocks", "cauchy_pairs", "bank_irregular",
       "irregular_mimo", "irregular_dplr")
DTYPES = {torch.float32: "float32", torch.float64: "float64"}
_STATUS: dict[tuple[str, str], tuple[bool, str]] = {}


@constant_under_compile  # under torch.compile: called once while tracing, its answer kept in the graph
def native_status(op: str, dtype: torch.dtype = torch.float32) -> tuple[bool, str]:
    """Whether the native kernel of ``op`` runs here for real dtype ``dtype``, and why not: (ok, reason).

    Args:
        op: one of :data:`OPS`.
        dtype: the real dtype of the op's input u (float32 or float64).
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}; got {op!r}")
    name = DTYPES.get(dtype)
    if name is None:
        return False, f"the native kernels run in float32 or float64, not {dtype}"
    key = (op, name)
    if key not in _STATUS:
        try:
            # the smoke call differentiates: its tensors must not be inference tensors, even when the process's first
            # call comes inside torch.inference_mode (a server's), which failed it and lost the kernel for the process;
            # and its tensors are the CPU's inside a `with torch.device("meta"/"cuda")` block too (its generator draws
            # failed there, and the kernel was lost for the process just the same)
            with torch.inference_mode(False), torch.device("cpu"):
                _smoke(op, dtype)
            _STATUS[key] = (True, "built and checked against the reference")
        except NativeBuildError as err:
            _STATUS[key] = (False, str(err))
        except Exception as err:  # a wrong result or a crash in the smoke call: never use the kernel
            _STATUS[key] = (False, f"the smoke call failed: {type(err).__name__}: {err}")
    return _STATUS[key]


def require_native(name: str, op: str, dtype: torch.dtype, device: torch.device, what: str) -> None:
    """Raise ``RuntimeError`` unless a call of ``name`` forced to the ``"native"`` backend can run ``op``'s kernel: the
    inputs on the CPU, the kernel usable for ``dtype`` (:func:`native_status`'s reason otherwise), and no forward-mode
    AD active (the kernels compute no tangent: :func:`ssmkit.ops.backend.check_forward_ad`).

    Args:
        name: the public op's name, first in the message.
        op: one of :data:`OPS`.
        dtype: the real dtype the kernel runs in.
        device: the device of the inputs (the one reported when it is not the CPU).
        what: how the message names the inputs on ``device`` (``"x is"``, ``"the inputs are"``).
    """
    check_forward_ad(name, "native")
    if device.type != "cpu":
        raise RuntimeError(f"{name}: backend 'native' runs on the CPU; {what} on {device}")
    ok, why = native_status(op, dtype)
    if not ok:
        raise RuntimeError(f"{name}: backend 'native' cannot run here: {why}")


def native_available(op: str, dtype: torch.dtype = torch.float32) -> bool:
    """True when :func:`native_status` says the native kernel of ``op`` runs here in ``dtype``."""
    return native_status(op, dtype)[0]


def prefer_native(op: str, x: torch.Tensor) -> bool:
    """Whether ``"auto"`` takes the native kernel of ``op`` for input x: x on the CPU, the kernel usable for x's real
    dtype (complex -> its real part), and neither a torch.func transform (the kernels have no batching rule) nor
    ``torch.export`` (a program naming ssmkit's ops could not run without ssmkit and a C compiler) tracing.
    ``torch.compile`` takes the kernels, as custom ops (:mod:`ssmkit.ops.opaque`).

    Args:
        op: one of :data:`OPS`.
        x: the op's main input (its device and dtype decide).
    """
    from ssmkit.ops._checks import REAL_OF

    if not isinstance(x, torch.Tensor):
        return False  # not a tensor: the portable path's own checks name it (a ValueError, not an AttributeError here)
    if x.device.type != "cpu" or not custom_ops_allowed():
        return False
    return native_available(op, REAL_OF.get(x.dtype, x.dtype))


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _compare(fast, ref, args: list[torch.Tensor], weight: torch.Tensor, dtype: torch.dtype) -> None:
    """Outputs and every gradient of ``fast`` and ``ref`` on ``args`` agree to the dtype's tolerance, or raise."""
    # Identity hooks shield the smoke call's own autograd from a caller's: torch.utils.checkpoint's non-reentrant mode
    # counts the tensors saved inside its region, and a process's first native call inside one ran this there. Inside a
    # custom op's body the autograd dispatch keys are excluded and enable_grad alone records nothing: the smoke call
    # failed there and marked the kernel unusable for the process (compile2), so the keys are switched back on.
    with torch.inference_mode(False), eager_views_and_autograd(), torch.enable_grad(), \
            torch.autocast("cpu", enabled=False), torch.autograd.graph.saved_tensors_hooks(_same, _same):
        outs = []
        for fn in (fast, ref):
            leaves = [a.clone().requires_grad_() for a in args]
            y, h = fn(*leaves)
            loss = (y * weight[:, : y.shape[1]]).abs().square().sum() + h.abs().square().sum()  # weight (1, ≥L, 1)
            outs.append([y.detach(), h.detach(), *torch.autograd.grad(loss, leaves)])
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for a, b in zip(*outs):
        if not bool(((a - b).abs().max() <= tol * b.abs().max().clamp_min(1.0)).item()):
            raise RuntimeError("the kernel's result differs from the reference")


def _smoke(op: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    f64 = torch.float64

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=f64).to(dtype)

    more: list[list[torch.Tensor]] = []  # further argument sets for the same fast/ref pair
    back = None  # a second (fast, ref) pair checked on every argument set
    if op == "selective_scan":
        from ssmkit.ops.native.selective import scan_unchecked
        from ssmkit.ops.selective import selective_scan_reference

        # two groups of 70 channels, each a full block of 64 (the vector code) and a tail of 6 (the lane loops); a
        # chunk boundary inside L (with 35 channels per group the full-block code ran in no smoke call: 12 mutants
        # there passed it, caught by the tests only)
        Bsz, L, H, N, G = 2, 11, 140, 3, 2
        args = [rand(Bsz, L, H), rand(Bsz, L, H), -torch.rand(H, N, generator=g, dtype=f64).to(dtype) - 0.5,
                rand(Bsz, L, G, N), rand(Bsz, L, G, N), rand(Bsz, H, N)]
        args += [rand(H), rand(Bsz, L, H), rand(H)]  # D, z, b_Δ
        fast = lambda *a: scan_unchecked(*a[:5], a[6], a[7], a[8], True, a[5], True, 4)  # noqa: E731
        ref = lambda *a: selective_scan_reference(*a[:5], a[6], a[7], a[8], True, a[5])  # noqa: E731
        # and with the low-rank δ = δlow W_Δᵀ formed in the kernel (delta_proj, R = 5)
        fused = lambda *a: scan_unchecked(*a[:5], a[6], a[7], a[8], True, a[5], True, 4, a[9])  # noqa: E731
        unfused = lambda *a: ref(a[0], torch.nn.functional.linear(a[1], a[9]), *a[2:9])  # noqa: E731
        weight = torch.linspace(-1, 1, 2 * L, dtype=dtype).view(1, 2 * L, 1)
        _compare(fused, unfused, [args[0], rand(Bsz, L, 5), *args[2:], rand(H, 5)], weight, dtype)
    elif op == "linear_recurrence":
        from ssmkit.ops.native.recurrence import recurrence_unchecked
        from ssmkit.ops.recurrence import linear_recurrence_reference

        Bsz, L, H = 2, 11, 40  # two channel blocks; a complex time-invariant gate and a real time-varying one
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        a = torch.polar(torch.rand(H, generator=g, dtype=f64) * 0.5 + 0.4, rand(H).double()).to(cdtype)
        bc = torch.complex(rand(Bsz, L, H), rand(Bsz, L, H)).to(cdtype)
        hc = torch.complex(rand(Bsz, H), rand(Bsz, H)).to(cdtype)
        weight = torch.linspace(-1, 1, L, dtype=dtype).view(1, L, 1)
        _compare(recurrence_unchecked, linear_recurrence_reference, [a, bc, hc], weight, dtype)
        args = [torch.rand(Bsz, L, H, generator=g, dtype=f64).to(dtype), rand(Bsz, L, H), rand(Bsz, H)]
        _compare(recurrence_unchecked, linear_recurrence_reference, args, weight, dtype)
        # and the other two full-block copies (real time-invariant, complex time-varying): without them a mutant that
        # ran the real time-invariant block as complex passed the smoke call and crashed in the tests
        _compare(recurrence_unchecked, linear_recurrence_reference, [args[0][0, 0], *args[1:]], weight, dtype)
        _compare(recurrence_unchecked, linear_recurrence_reference, [a * args[0], bc, hc], weight, dtype)
        return
    elif op == "cauchy":
        from ssmkit.ops.cauchy import cauchy_reference
        from ssmkit.ops.native.cauchy import sums_unchecked

        # two numerators per channel; the points in blocks of 64 forward and 256 backward, each with a tail (at W 70
        # the backward ran one block: 5 mutants of its block loop passed the smoke call, caught by the tests alone)
        S, G, N, W = 2, 3, 5, 300
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        v = torch.complex(rand(S, G, N), rand(S, G, N)).to(cdtype)
        z = torch.complex(torch.zeros(G, W, dtype=f64), 10 * torch.rand(G, W, generator=g, dtype=f64)).to(cdtype)
        w = torch.complex(-0.5 - torch.rand(G, N, generator=g, dtype=f64), rand(G, N).double()).to(cdtype)
        weight = torch.linspace(-1, 1, W, dtype=dtype)
        pair = lambda fn: lambda *a: (fn(*a), a[2])  # noqa: E731  (the sums, and w as a stand-in "state")
        _compare(pair(sums_unchecked), pair(cauchy_reference), [v, z, w], weight.view(1, 1, W), dtype)
        # and with the points fixed (S4's): the backward without ∂z
        fixed = lambda fn: lambda v, w: (fn(v, z, w), w)  # noqa: E731
        _compare(fixed(sums_unchecked), fixed(cauchy_reference), [v, w], weight.view(1, 1, W), dtype)
        return
    elif op == "zoh":
        from ssmkit.ops.discretize import exp_phi_torch, zoh_torch
        from ssmkit.ops.native.zoh import exp_phi_native, zoh_native, zoh_native_log

        # |Δ Λ| from ~0.05 to ~7, on both sides of the series' radius 1 (with Δ drawn from [0, 1) every |Δ Λ| was above
        # 1.2: the series ran in no smoke call); Λ and Δ as given, in S4D's log form (zoh_log), and exp_phi (DSS)
        H, M = 3, 4
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        lam = torch.complex(-torch.rand(H, M, generator=g, dtype=f64) * 2, 3 * rand(H, M).double()).to(cdtype)
        B, dt = torch.complex(rand(H, M), rand(H, M)).to(cdtype), torch.tensor([[0.03], [0.3], [1.0]], dtype=dtype)
        weight = torch.linspace(-1, 1, M, dtype=dtype).view(1, M)
        _compare(zoh_native, zoh_torch, [lam, B, dt], weight, dtype)
        from_log = lambda a, b, B, log_dt: zoh_torch(torch.complex(-a.exp(), b), B, log_dt.exp()[:, None])  # noqa: E731
        _compare(zoh_native_log, from_log, [(-lam.real).log(), lam.imag, B, dt.log().view(H)], weight, dtype)
        _compare(exp_phi_native, exp_phi_torch, [dt * lam], weight, dtype)
        return
    elif op == "bank_irregular":
        from ssmkit.ops.irregular_bank import bank_irregular_scan_reference
        from ssmkit.ops.native.irregular_bank import bank_unchecked, gap_table

        # three channel blocks with a tail (4 or 8 channels each), a span boundary (64 steps) inside L, an initial
        # state, gaps from 0.05 to 3 (and their gradients), |Δ Λ| on both sides of 1; both rules
        Bsz, L, H, M = 2, 70, 19, 3
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        crand = lambda *s: torch.complex(rand(*s), rand(*s)).to(cdtype)  # noqa: E731
        lam = torch.complex(-0.1 - torch.rand(H, M, generator=g, dtype=f64), 4 * rand(H, M).double()).to(cdtype)
        dt = (0.02 + torch.rand(H, generator=g, dtype=f64)).to(dtype)
        tau = (0.05 + 2.95 * torch.rand(Bsz, L, generator=g, dtype=f64)).to(dtype)
        args = [rand(Bsz, L, H), lam, crand(H, M), crand(H, M), dt, tau, rand(H), crand(Bsz, H, M)]
        weight = torch.linspace(-1, 1, L, dtype=dtype).view(1, L, 1)
        # a first row of 3 distinct gaps (the kernels' gap tables) beside a second of 70 (per step)
        few = torch.tensor([1.0, 2.0, 0.5], dtype=f64)[torch.randint(0, 3, (L,), generator=g)]
        few[:3] = torch.tensor([1.0, 2.0, 0.5], dtype=f64)
        tau_few = torch.stack([few.to(dtype), tau[1]])
        if gap_table(tau_few.to(f64).contiguous(), M, False).count.tolist() != [3, 0]:
            raise RuntimeError("the gap-table rule no longer picks the smoke call's rows")
        for rule in ("zoh", "bilinear"):
            fast = lambda *a: bank_unchecked(*a[:7], rule, a[7], True)  # noqa: E731
            ref = lambda *a: bank_irregular_scan_reference(*a[:7], rule, a[7])  # noqa: E731
            _compare(fast, ref, args, weight, dtype)
            # and real modes (every Im Λ 0: Mega's EMA), whose ZOH steps skip the sines and cosines, and a real first
            # mode among complex ones (S4D-Lin's n = 0): a block's phases are judged by all of its modes (after the
            # loop, this ran the bilinear rule only, which forms no sines: wrong real-mode steps passed it)
            for modes in (lam.real + 0j, torch.cat([lam[:, :1].real + 0j, lam[:, 1:]], 1)):
                _compare(fast, ref, [args[0], modes.to(cdtype), *args[2:]], weight, dtype)
            # and real tensors Λ, B, C and x0: the kernel's real variant (ib_forward_real / ib_backward_real)
            _compare(fast, ref, [a.real.contiguous() if a.is_complex() else a for a in args], weight, dtype)
            # and gaps of few values (dropped samples): the kernels' gap tables, complex and real
            for case in (args, [a.real.contiguous() if a.is_complex() else a for a in args]):
                _compare(fast, ref, [*case[:5], tau_few, *case[6:]], weight, dtype)
        _smoke_bank_lanes(dtype)
        return
    elif op == "cauchy_pairs":
        from ssmkit.ops.cauchy import cauchy_pairs_reference
        from ssmkit.ops.native.cauchy_pairs import pair_sums_unchecked

        S, H, M, W = 3, 2, 5, 300  # three numerators; two blocks of points (256 and a tail of 44)
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        v = torch.complex(rand(S, H, M), rand(S, H, M)).to(cdtype)
        y = (10 * rand(H, W)).to(dtype)  # points of both signs
        w = torch.complex(-0.5 - torch.rand(H, M, generator=g, dtype=f64), 3 * rand(H, M).double()).to(cdtype)
        weight = torch.linspace(-1, 1, W, dtype=dtype)
        pair = lambda fn: lambda *a: (fn(*a), a[2])  # noqa: E731  (the sums, and w as a stand-in "state")
        _compare(pair(pair_sums_unchecked), pair(cauchy_pairs_reference), [v, y, w], weight.view(1, 1, W), dtype)
        return
    elif op == "fft_blocks":
        from ssmkit.ops.native.spectral import load_padded, spectral_grads, store_block

        b, L, c, n = 2, 70, 19, 150  # tiles of 64 steps and 16 channels with tails; strided (transposed) views
        x = rand(b, c, L).transpose(1, 2)  # (b, L, c), channel stride 1 apart: a view
        buf = torch.full((b, c, n), 7.0, dtype=dtype)
        load_padded(x, buf)
        y = torch.zeros(b, L + 3, c, dtype=dtype)[:, 1 : L + 1]  # a view inside a larger tensor
        store_block(buf, y)
        if not (torch.equal(buf[..., :L], x.transpose(1, 2)) and bool((buf[..., L:] == 7).all())
                and torch.equal(y, x)):
            raise RuntimeError("the kernel's result differs from the reference")
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        F = 1030  # two frequency blocks (1 024 and a tail)
        U, dY, K = (torch.complex(rand(*s), rand(*s)).to(cdtype) for s in ((b, c, F), (b, c, F), (c, F)))
        acc = torch.complex(rand(c, F), rand(c, F)).to(cdtype)
        want_acc, want_dY = acc + (U.conj() * dY).sum(0), dY * K.conj()
        dY_u, dY_k, acc_k, dY_0 = dY.clone(), dY.clone(), acc.clone(), dY.clone()
        spectral_grads(U, dY, K, acc)
        spectral_grads(None, dY_u, K, None)  # and each half alone (fftblocks asks for the one gradient it needs)
        spectral_grads(U, dY_k, None, acc_k)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        for a, w in ((acc, want_acc), (dY, want_dY), (dY_u, want_dY), (acc_k, want_acc), (dY_k, dY_0)):
            if not bool(((a - w).abs().max() <= tol * w.abs().max()).item()):
                raise RuntimeError("the kernel's result differs from the reference")
        return
    elif op == "irregular_mimo":
        _smoke_irregular_mimo(dtype, rand, g)
        return
    elif op == "irregular_dplr":
        _smoke_irregular_dplr(dtype, rand, g)
        return
    elif op == "dropout":
        from ssmkit.ops.native.dropout import masked_scale
        from ssmkit.ops.philox import dropout_reference

        x = rand(2, 8192 + 37)  # two work items of 16 384 elements, a partial block of counters
        for p, seed in ((0.3, 12345), (0.9, (1 << 62) + 7)):  # a seed with both key words nonzero
            if not torch.equal(masked_scale(x, p, seed), dropout_reference(x, p, seed)):
                raise RuntimeError("the kernel's result differs from the reference")
        return
    elif op == "ssd":
        from ssmkit.ops.native.ssd import ssd_unchecked
        from ssmkit.ops.ssd import ssd_reference

        Bsz, L, H, P, N, G = 2, 11, 4, 70, 3, 2  # two channel blocks (64 and a tail of 6), two heads per group
        args = [rand(Bsz, L, H, P), torch.rand(Bsz, L, H, generator=g, dtype=f64).to(dtype) + 0.05,
                -torch.rand(H, generator=g, dtype=f64).to(dtype) - 0.5, rand(Bsz, L, G, N), rand(Bsz, L, G, N),
                rand(Bsz, H, P, N)]
        fast = lambda *a: ssd_unchecked(*a, 4)  # noqa: E731  (chunks of 4 steps: a boundary inside L)
        ref = ssd_reference
        weight = torch.linspace(-1, 1, 2 * L, dtype=dtype).view(1, 2 * L, 1, 1)
        _compare(fast, ref, args, weight, dtype)
        return
    elif op == "gated_norm":
        from ssmkit.ops.gated_norm import gated_rmsnorm_reference
        from ssmkit.ops.native.gated_norm import gated_rmsnorm_unchecked

        Bsz, L, E, G = 2, 70, 12, 3  # three items of 64 rows (the last partial); one group ~1e3 times the others
        scale = torch.tensor([1.0, 1e3, 0.1], dtype=f64).repeat_interleave(E // G).to(dtype)
        args = [rand(Bsz, L, E) * scale, rand(Bsz, L, E), 1 + 0.3 * rand(E), rand(Bsz, L, E), rand(E)]
        weight = torch.linspace(-1, 1, L, dtype=dtype).view(1, L, 1)
        for nbg in (False, True):
            pair = lambda fn: lambda y, z, w, x, D: (fn(y, z, w, G, 1e-5, nbg, x, D), w)  # noqa: E731
            _compare(pair(gated_rmsnorm_unchecked), pair(gated_rmsnorm_reference), args, weight, dtype)
            no_skip = lambda fn: lambda y, z, w: (fn(y, z, w, G, 1e-5, nbg), w)  # noqa: E731
            _compare(no_skip(gated_rmsnorm_unchecked), no_skip(gated_rmsnorm_reference), args[:3], weight, dtype)
        return
    elif op == "rglru":
        from ssmkit.ops.native.rglru import rglru_unchecked
        from ssmkit.ops.rglru import rglru_torch

        # gates near 0 and 1 (a_t near 1: the expm1 series; near 0: e^x - 1); two channel blocks, a full one and one of
        # 6, 26 or 42 channels: the per-lane loop, and float32 passes of 2 and 3 vectors ending in one that overlaps
        # the one before it (AVX-512; AVX2: passes of 2, the last overlapping). With H 70 alone the overlapping vector
        # and the 3-vector pass ran in no smoke call (2 mutants there passed it, one of them writing past the block)
        Bsz, L = 2, 11
        resets = torch.zeros(Bsz, L, dtype=torch.bool)
        resets[0, 3] = resets[1, 0] = True
        weight = torch.linspace(-1, 1, 2 * L, dtype=dtype).view(1, 2 * L, 1)
        for H in (70, 90, 106):
            gate = lambda: torch.rand(Bsz, L, H, generator=g, dtype=f64).to(dtype) * 0.98 + 0.01  # noqa: E731
            args = [rand(Bsz, L, H), gate(), gate(), rand(H) * 3, rand(Bsz, H)]
            for flags in (None, resets):
                fast = lambda x, r, i, Lam, h0: rglru_unchecked(x, r, i, Lam, 8.0, h0, flags)  # noqa: E731
                ref = lambda x, r, i, Lam, h0: rglru_torch(x, r, i, Lam, 8.0, h0, flags, "reference")  # noqa: E731
                _compare(fast, ref, args, weight, dtype)
        return
    elif op in ("mamba2_step", "mamba_step", "rglru_step"):
        from ssmkit.layers.mamba import Mamba  # (layers import ops: imported here, when the smoke call runs)
        from ssmkit.layers.mamba2 import Mamba2
        from ssmkit.layers.rglru import RGLRU

        options = {"mamba2_step": [{"ngroups": 2}, {"norm_before_gate": True, "D_has_hdim": True, "conv_bias": False},
                                   {"rmsnorm": False}, {"rmsnorm": False, "D_has_hdim": True}],  # both skips unnormed
                   "mamba_step": [{}, {"conv_bias": False, "d_conv": 2}], "rglru_step": [{}, {"conv_width": 2}]}[op]
        if op == "mamba2_step":  # 12 heads of 4
            cls, sizes = Mamba2, {"d_model": 24, "d_state": 5, "headdim": 4, "expand": 2}
        elif op == "mamba_step":
            cls, sizes = Mamba, {"d_model": 24, "d_state": 5}
        else:  # 3 blocks of 8 in the gates; the second row starts a segment at the fourth token
            cls, sizes = RGLRU, {"d_model": 24, "n_heads": 3}
        for opts in options:
            _smoke_step(_undrawn_layer(functools.partial(cls, **sizes, **opts, dtype=dtype), rand), rand, dtype)
        return
    elif op == "causal_conv1d":
        from ssmkit.ops.conv import causal_conv1d_reference
        from ssmkit.ops.native.conv import conv_unchecked

        # W = 4 (the fused four-tap loops) with a bias, a state and SiLU, one channel's pre-activation near -100 (SiLU's
        # e^{-a} past float32's range: expr, not expr_le88); then over two time blocks (64 steps and a tail of 6) W = 4
        # without a bias or a state, and W = 3 (the tap-by-tap loops) without SiLU. With the first case alone (L 6), 17
        # of 39 mutants of causal_conv.c passed the smoke call; it refuses 15 of them now (one, SiLU' past float32's
        # range, was caught by no test either; the other two: one equivalent, one of x's time stride: x is contiguous)
        Bsz, L, H, W = 2, 6, 70, 4  # L > W - 1 and a state
        args = [rand(Bsz, L, H), rand(H, W), rand(H), rand(Bsz, H, W - 1)]
        args[2][0] = -100.0  # (and y + 1 compared: the loss's gradient is not ~0 there, where SiLU is, so SiLU' counts)
        silu = lambda y, s: (torch.nn.functional.silu(y), s)  # noqa: E731
        shift = lambda y, s: (y + 1, s)  # noqa: E731
        fast = lambda *a: shift(*conv_unchecked(*a, True, "silu"))  # noqa: E731
        ref = lambda *a: shift(*silu(*causal_conv1d_reference(*a)))  # noqa: E731
        long = torch.linspace(-1, 1, 70, dtype=dtype).view(1, 70, 1)
        _compare(lambda x, w: conv_unchecked(x, w, None, None, True, "silu"),
                 lambda x, w: silu(*causal_conv1d_reference(x, w)), [rand(Bsz, 70, H), rand(H, 4)], long, dtype)
        _compare(lambda *a: conv_unchecked(*a, True, None), causal_conv1d_reference,
                 [rand(Bsz, 70, H), rand(H, 3), rand(H), rand(Bsz, H, 2)], long, dtype)
    else:
        from ssmkit.ops.native.diagonal import scan_unchecked
        from ssmkit.ops.scan import ssm_scan_reference

        Bsz, L, H, N = 2, 11, 19, 3  # two channel blocks, a chunk boundary inside L
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        crand = lambda *s: torch.complex(rand(*s), rand(*s)).to(cdtype)  # noqa: E731
        A = torch.polar(torch.rand(H, N, generator=g, dtype=f64) * 0.5 + 0.4, rand(H, N).double()).to(cdtype)
        args = [rand(Bsz, L, H), A, crand(H, N), crand(H, N), crand(Bsz, H, N), rand(H)]
        fast = lambda *a: scan_unchecked(*a, True, 4)  # noqa: E731
        ref = lambda *a: ssm_scan_reference(*a)  # noqa: E731
        more.append([args[0], torch.rand(H, N, generator=g, dtype=f64).to(dtype) * 0.9, rand(H, N), rand(H, N),
                     rand(Bsz, H, N), args[5]])  # real modes: the kernel's real variant
        # and backwards in time (the two-sided layers' anti-causal half): the reference on the flipped input, flipped
        back = (lambda *a: scan_unchecked(*a, True, 4, True),
                lambda u, *a: (lambda y, h: (y.flip(1), h))(*ssm_scan_reference(u.flip(1), *a)))  # noqa: E731
    weight = torch.linspace(-1, 1, 2 * L, dtype=dtype).view(1, 2 * L, 1)
    for case in (args, *more):
        _compare(fast, ref, case, weight, dtype)
        if back is not None:
            _compare(*back, case, weight, dtype)


def _smoke_bank_lanes(dtype: torch.dtype) -> None:
    """The irregular bank's ZOH input term of one step, lane by lane: x = (e^z − 1) w from x = 0 with u = 1, Δ = τ = 1
    and B = Λ = z (w = B/Λ as the kernel's wrapper forms it), against expm1(a) cos b − 2 sin²(b/2) + i e^a sin b in
    float64 (e^a at a ≥ −700: the kernel's clamp), each lane to 1e-14 (float32: 2e-7) of its |e^z − 1|. The lanes, in
    blocks of 8 whose half phases b/2 are of one range (the AVX-512 and AVX2 items): Re z from −1e-12 to past the
    clamp at −700 and half phases at sincos' quadrant edges; half phases of 1e5 to 1.5e6 (the vector reduction's three
    parts of π/2); half phases past 1.6e6 (libm's sin and cos, every lane of the step); real modes (no sines and
    cosines); slight phases, 1e-4 to 1e-11 (not the real modes' shortcut). The bank above draws |sz| of 1e-3 to 40
    only: wrong bits of the vector expm1 and sincos (a dropped Cody-Waite part, a polynomial term, the clamp's masks,
    libm's lane loop, the real modes' sine) passed it with the float64 kernel 1e-12 to 1e-5 off and the float32 one up
    to 1e-6 (a mutation probe: 11 mutants of irregular_bank.c that its tests caught, 7 that they missed)."""
    from ssmkit.ops.native.irregular_bank import bank_unchecked

    q = [(-0.01, 2 * (math.pi / 4 + k * math.pi / 2) - 1e-9) for k in (-2, -1, 0, 1)]
    lanes = [(-1e-12, 1e-4), (-3e-10, 3e-11), (-0.3466, 0.2), (-0.3465, 1.5707), (-3.0, 2.4), (-20.0, -4.7),
             (-50.0, 7.0), (-300.0, -10.0), (-800.0, 1.0), (-1000.0, -2.0), (-745.5, 0.0), (-710.0, 3.0), *q]
    lanes += [(-1e-3, (-1) ** k * (2e5 + 3.9e5 * k)) for k in range(8)]  # half phases 1e5 to 1.5e6
    lanes += [(-1e-3, (-1) ** k * (3.3e6 + 4.1e5 * k)) for k in range(4)]  # past 1.6e6
    lanes += [(-1e-3, (-1) ** k * 10.0 ** (8 + k)) for k in range(4)]
    lanes += [(a, 0.0) for a in (-1e-9, -0.3466, -2.0, -50.0, -699.0, -800.0, -1e-3, -1.5)]  # real: no phases
    lanes += [(-10.0 ** -k, (-1) ** k * 10.0 ** -(k + 4)) for k in range(8)]  # slight phases, 1e-4 to 1e-11
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    lam = torch.tensor([complex(a, b) for a, b in lanes], dtype=torch.complex128).to(cdtype).view(-1, 1)
    H = lam.shape[0]
    with torch.no_grad():
        _, x = bank_unchecked(torch.ones(1, 1, H, dtype=dtype), lam, lam, lam, torch.ones(H, dtype=dtype),
                              torch.ones(1, 1, dtype=dtype), None, "zoh", None, True)
    z = lam.to(torch.complex128)[:, 0]
    a, b = z.real, z.imag
    e = torch.complex(torch.expm1(a) * torch.cos(b) - 2 * torch.sin(b / 2) ** 2,
                      torch.exp(a.clamp_min(-700.0)) * torch.sin(b))
    want = e * (z / z)  # w = B/Λ = Λ/Λ: 1 to rounding
    tol = 1e-14 if dtype == torch.float64 else 2e-7
    if not bool(((x[0, :, 0].to(torch.complex128) - want).abs() <= tol * want.abs()).all().item()):
        raise RuntimeError("the kernel's result differs from the reference")


def _undrawn_layer(build, rand) -> torch.nn.Module:
    """The layer ``build()`` makes, on the CPU, with every parameter drawn from the smoke call's own generator (``rand``:
    N(0, 1/fan-in) entries) instead of by the layer's initialisation. It is built on the meta device, so nothing is drawn
    from torch's global generator, nor is it seeded, saved or restored: other threads may be drawing from it. (The
    smoke call seeded it inside ``torch.random.fork_rng``: a thread drawing meanwhile got the seeded stream, and the
    restore at the end undid its draws.)"""
    with torch.device("meta"):
        layer = build()
    layer = layer.to_empty(device="cpu")
    with torch.no_grad():
        for p in layer.parameters():  # a matrix's (or a convolution's) entries scaled by 1/√fan-in: outputs O(1)
            p.copy_(rand(*p.shape) / math.sqrt(p.shape[-1] if p.dim() > 1 else 4))
    return layer


def _smoke_step(layer, rand, dtype: torch.dtype) -> None:
    """A mixer's fused step (``_step_native``) against its PyTorch step (``_step_torch``), six tokens from a random
    state (the RG-LRU's with a segment start): outputs and both parts of the state."""
    from ssmkit.layers.rglru import RGLRU

    x = rand(2, 6, layer.d_model)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    with torch.no_grad():
        start = layer.initial_state(2)
        fused = slow = type(start)(*(rand(*t.shape) for t in start))  # a state to continue from
        for t in range(6):
            reset = (torch.tensor([False, t == 3]),) if isinstance(layer, RGLRU) else ()
            y_fast, fused = layer._step_native(x[:, t], fused, *reset)
            y_slow, slow = layer._step_torch(x[:, t], slow, *reset)
            for a, b in zip((y_fast, *fused), (y_slow, *slow)):
                if not bool(((a - b).abs().max() <= tol * b.abs().max().clamp_min(1.0)).item()):
                    raise RuntimeError("the kernel's result differs from the reference")


def _smoke_irregular_mimo(dtype: torch.dtype, rand, g: torch.Generator) -> None:
    """The irregularly sampled MIMO modes' kernel (:mod:`ssmkit.ops.native.irregular_mimo`) against the float64 loop
    x_t = Ā_t x_{t-1} + gain_t v_t with Ā, gain from :func:`ssmkit.ops.irregular.irregular_discretize`: states, the
    final state and the gradients of v, Λ, Δ, the gaps and x0, both rules; 37 modes (items of 4 vectors: with AVX-512
    a full one and one of a 5-mode vector and three empty ones; with AVX2 two full ones and a tail), gaps from 0.05 to
    3 with |Δ τ Λ| on both sides of 1, then real modes (no phases)."""
    from ssmkit.ops.irregular import irregular_discretize
    from ssmkit.ops.native.irregular_mimo import modes_unchecked
    from ssmkit.ops.recurrence import linear_recurrence_reference

    Bsz, L, M = 2, 11, 37
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    crand = lambda *s: torch.complex(rand(*s), rand(*s)).to(cdtype)  # noqa: E731
    lam = torch.complex(-0.1 - torch.rand(M, generator=g, dtype=torch.float64), 4 * rand(M).double())
    dt = 0.02 + torch.rand(M, generator=g, dtype=torch.float64)
    tau = (0.05 + 2.95 * torch.rand(Bsz, L, generator=g, dtype=torch.float64)).to(dtype)
    weight = torch.linspace(-1, 1, 2 * L, dtype=dtype).view(1, 2 * L, 1)
    for rule in ("zoh", "bilinear"):
        def fast(v, Lam, d, t, x0):
            w = d.to(Lam.dtype) if rule == "bilinear" else 1 / Lam
            x = modes_unchecked(v, d * Lam, w, t, x0, rule)
            return x, x[:, -1]

        def ref(v, Lam, d, t, x0):
            A_bar, gain = irregular_discretize(Lam, d, t, rule)
            x = linear_recurrence_reference(A_bar.to(cdtype), gain.to(cdtype) * v, x0)[0]
            return x, x[:, -1]

        for modes in (lam, lam.real + 0j):
            _compare(fast, ref, [crand(Bsz, L, M), modes, dt, tau, crand(Bsz, M)], weight, dtype)


def _smoke_irregular_dplr(dtype: torch.dtype, rand, g: torch.Generator) -> None:
    """The irregularly sampled DPLR kernel (:mod:`ssmkit.ops.native.irregular_dplr`) against the loop
    :func:`ssmkit.ops.irregular_dplr.dplr_irregular_scan_reference` in the same dtype: the forward alone (y and the
    final state), then through autograd every gradient (u, Λ, P, B, C, Δ, the gaps, D and the initial state, from y
    and the final state) with checkpoints every 4 steps (two chunk boundaries in L 9, the last chunk partial); ranks 1
    and 2, an initial state, a skip D, 11 channels (a full channel block and a tail with AVX2's 4 lanes and AVX-512's
    8), gaps from 0.05 to 5."""
    from ssmkit.ops.irregular_dplr import dplr_irregular_scan_reference
    from ssmkit.ops.native.irregular_dplr import dplr_unchecked

    Bsz, L, H, M = 2, 9, 11, 3
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    crand = lambda *s: torch.complex(rand(*s), rand(*s)).to(cdtype)  # noqa: E731
    lam = torch.complex(-0.1 - torch.rand(H, M, generator=g, dtype=torch.float64), 4 * rand(H, M).double()).to(cdtype)
    dt = (0.02 + torch.rand(H, generator=g, dtype=torch.float64)).to(dtype)
    tau = (0.05 + 4.95 * torch.rand(Bsz, L, generator=g, dtype=torch.float64)).to(dtype)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for r in (1, 2):
        args = [rand(Bsz, L, H), lam, 0.5 * crand(r, H, M), crand(H, M), crand(H, M), dt, tau, rand(H),
                crand(Bsz, H, M)]
        with torch.no_grad():
            y, x = dplr_unchecked(*args, True)
            y_ref, x_ref = dplr_irregular_scan_reference(*args)
        for a, b in ((y, y_ref), (x, x_ref)):
            if not bool(((a - b).abs().max() <= tol * b.abs().max().clamp_min(1.0)).item()):
                raise RuntimeError("the kernel's result differs from the reference")
        fast = lambda *a: dplr_unchecked(*a, True, 4)  # noqa: E731  (the C backward, chunks of 4 steps)
        _compare(fast, dplr_irregular_scan_reference, args, torch.linspace(-1, 1, L, dtype=dtype).view(1, L, 1), dtype)
