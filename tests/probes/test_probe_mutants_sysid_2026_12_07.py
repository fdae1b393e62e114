"""Mutation probe (2026-12-07, second sysid round) of sysid/averaging, sysid/datafiles, sysid/nlbench, sysid/recipes,
analysis/onnx_liquid, ops/function_call and ops/opaque: the mutants that the modules' own tests (test_averaging,
test_nlbench, test_nlbench_recipes_reference, test_published_records, test_benchmarks, test_timescale, the own-data
probe, the Liquid-S4 tests of test_onnx_sequence and test_onnx_sequence_reference, test_forward_ad_ops,
test_function_inputs, test_compile_native) let survive. Each test names the mutants it kills (ids of the round's table
in the report) and checks the real code against an independent reference: a weighted sum written out in float64,
numpy slices of a fixture file written here, a float64 loop of the layer's equations, torch's own dispatch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.io import savemat
from torch import nn

from ssmkit.sysid.averaging import WeightAverage
from tests.conftest import DEVICE

F64 = torch.float64


# ------------------------------------------------------------------------------------------------------------------
# sysid/averaging.py


def _ema_weights(T: int, beta: float) -> list[float]:
    """The weight of iterate k (1-based) in θ̄_T, written out: (1 - β_k) Π_{j>k} β_j with β_j = min(β, 1 - 1/j)."""
    rates = [min(beta, 1.0 - 1.0 / j) for j in range(1, T + 1)]
    return [(1.0 - rates[k]) * float(np.prod(rates[k + 1:])) for k in range(T)]


class _Tied(nn.Module):
    """An embedding and an output layer sharing one weight (``state_dict`` lists it twice), and an untied bias."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(4, 3, dtype=F64, device=DEVICE)
        self.out = nn.Linear(3, 4, dtype=F64, device=DEVICE)
        self.out.weight = self.emb.weight


@pytest.mark.parametrize("beta", [0.5, 0.8])
def test_tied_weights_are_averaged_once_per_update(beta):
    """Kills A9 (a weight held under two names folded in once per name: rate β_t² for it). The bug this round fixed."""
    torch.manual_seed(0)
    m = _Tied()
    assert list(m.state_dict()) == ["emb.weight", "out.weight", "out.bias"]
    avg = WeightAverage(m, beta)
    weights, biases = [], []
    for t in range(1, 9):
        with torch.no_grad():
            m.emb.weight.copy_(torch.randn(4, 3, dtype=F64))
            m.out.bias.copy_(torch.randn(4, dtype=F64))
        weights.append(m.emb.weight.detach().clone())
        biases.append(m.out.bias.detach().clone())
        avg.update(m)
        w = _ema_weights(t, beta)
        assert sum(w) == pytest.approx(1.0, abs=1e-14)
        want_w = sum(c * x for c, x in zip(w, weights))
        want_b = sum(c * x for c, x in zip(w, biases))
        assert torch.allclose(avg.module.emb.weight, want_w, rtol=0, atol=1e-13), t
        assert torch.allclose(avg.module.out.bias, want_b, rtol=0, atol=1e-13), t
    assert avg.module.out.weight is avg.module.emb.weight  # still one tensor in the copy


def test_a_bool_beta_is_refused():
    """Kills A10 (False, an int 0 to isinstance, taken as β = 0)."""
    with pytest.raises(ValueError, match="beta must be a number in"):
        WeightAverage(nn.Linear(2, 2), False)


# ------------------------------------------------------------------------------------------------------------------
# sysid/nlbench.py


def test_silverbox_multisine_split_is_int_of_three_quarters_on_any_length(tmp_path):
    """Kills N6 (round instead of int: equal at the official 86 750 samples, 65 062.5 rounding to even, one sample
    apart at 86 746). nonlinear_benchmarks 1.0.1 splits the multisine block at int(0.75·len); a file cut short and read
    with check=False keeps that rule. Reference: numpy slices of the fixture by integer arithmetic."""
    from ssmkit.sysid.nlbench import silverbox

    n = 40650 + 86746
    u = np.cos(0.003 * np.arange(n))[None, :]
    y = np.arange(n, dtype=np.float64)[None, :] / 3
    savemat(tmp_path / "SNLS80mV.mat", {"V1": u, "V2": y})
    bench = silverbox(tmp_path, check=False)
    s = 86746 * 3 // 4  # 65 059 (65 059.5 rounds to 65 060)
    (tr,) = bench.train
    ms = bench.test[0]
    assert (len(tr), len(ms)) == (s, 86746 - s)
    assert np.array_equal(tr.u[:, 0].cpu().numpy(), u[0, 40650:40650 + s])
    assert np.array_equal(ms.y[:, 0].cpu().numpy(), y[0, 40650 + s:])


# ------------------------------------------------------------------------------------------------------------------
# sysid/recipes.py


def _record(n: int, dt: float, name: str):
    from ssmkit.sysid.records import IORecord

    t = torch.arange(n, dtype=F64)[:, None]
    return IORecord(torch.sin(0.1 * t), torch.cos(0.1 * t), dt, name)


def test_the_generic_window_is_set_by_the_shortest_estimation_record():
    """Kills R9 (the longest record sets the window). Two estimation records of 150 and 600 samples, n_init 20: the
    shortest keeps round(0.8 · 150) = 120 samples before its validation tail, 100 after the encoder's 20 (by hand)."""
    from ssmkit.sysid.recipes import recipe_for_data
    from ssmkit.sysid.records import SysidBenchmark

    bench = SysidBenchmark("mine", "Mine", [_record(600, 0.5, "long"), _record(150, 0.5, "short")],
                           [_record(200, 0.5, "test")], 20, "V")
    r = recipe_for_data(bench)
    assert r.window == 120 - 20 and r.encoder_window == 20
    assert r.timescale == pytest.approx((0.5 / 10, 0.5 * 100), rel=1e-15)  # τ = Ts/Δ for Δ in 0.01-10 samples


def test_the_generic_recipe_refuses_a_validation_tail_shorter_than_the_encoders_samples():
    """Kills R11 (the check skipped) and R12 (off by one). The gap this round closed (recipes.py): recipe_for_data returned a recipe for a 100-sample record with n_init 50
    (window 30) that training then refused in split_tail, with a message blaming the window. Reference: fit.split_tail,
    which the training calls with min_val = encoder_window + 2; n_init 10: a 60-sample record keeps round(0.8 · 60) =
    48 and a tail of 12 = 10 + 2 (accepted by both), a 55-sample one a tail of 55 - 44 = 11 (refused by both)."""
    from ssmkit.sysid.fit import split_tail
    from ssmkit.sysid.recipes import recipe_for_data
    from ssmkit.sysid.records import SysidBenchmark

    test = [_record(200, 0.5, "test")]
    ok = SysidBenchmark("mine", "Mine", [_record(60, 0.5, "est")], test, 10, "V")
    r = recipe_for_data(ok)
    assert r.window == 48 - 10
    train, val = split_tail(ok.train, r.val_fraction, r.window + r.encoder_window, r.encoder_window + 2)
    assert (len(train[0]), len(val[0])) == (48, 12)
    short = SysidBenchmark("mine", "Mine", [_record(55, 0.5, "est")], test, 10, "V")
    with pytest.raises(ValueError, match=r"too short"):
        split_tail(short.train, r.val_fraction, 16, r.encoder_window + 2)
    with pytest.raises(ValueError, match=r"the shortest estimation record \(55 samples\) leaves a validation tail "
                                         r"\(20%\) of 11 samples, fewer than the encoder's 10 \+ 2"):
        recipe_for_data(short)


def test_the_generic_recipe_is_the_documented_one():
    """Kills R10 (no early stopping in the generic recipe). recipes.py documents it: Recipe's default sizes (H = N = 16,
    4 blocks), one run, tail validation, 2 000 steps, early stopping as F-16: the same horizon of validations without
    improvement in steps (patience × val_every), F-16's 20 × 50 = 1 000."""
    from ssmkit.sysid.recipes import DATA_RECIPE, RECIPES, Recipe

    default = Recipe()
    for f in ("d_model", "n_layers", "d_state", "activation"):  # "Sizes: Recipe's defaults"
        assert getattr(DATA_RECIPE, f) == getattr(default, f), f
    assert (DATA_RECIPE.d_model, DATA_RECIPE.n_layers, DATA_RECIPE.d_state) == (16, 4, 16)
    assert (DATA_RECIPE.restarts, DATA_RECIPE.validation, DATA_RECIPE.steps) == (1, "tail", 2000)
    f16 = RECIPES["f16"]
    assert DATA_RECIPE.patience is not None
    assert DATA_RECIPE.patience * DATA_RECIPE.val_every == f16.patience * f16.val_every == 1000


# ------------------------------------------------------------------------------------------------------------------
# ops/function_call.py


class _Double(torch.autograd.Function):
    """y = 2x, with no jvp of its own (as the Functions torch.compile traces)."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return 2 * g


def _twin():
    from ssmkit.ops.function_call import _TWINS, jvp_twin

    if _Double not in _TWINS:
        @jvp_twin(_Double)
        class _DoubleJvp(_Double):
            @staticmethod
            def jvp(ctx, t):
                return 2 * t
    return _TWINS[_Double]


def test_the_twin_is_called_under_forward_ad_only():
    """Kills F8 (the twin called outside forward-mode AD too: dynamo refuses a Function that defines jvp, so a compiled
    model would break its graph there). Reference: the Function's backward node in eager and grad mode is the base's
    own, and under forward AD the tangent is 2·t (the twin's jvp, by hand)."""
    from torch.autograd import forward_ad as fwAD

    from ssmkit.ops.function_call import apply_function

    twin = _twin()
    x = torch.randn(5, dtype=F64, requires_grad=True)
    y = apply_function(_Double, x)
    assert type(y.grad_fn).__name__ == "_DoubleBackward" and twin.__name__ == "_DoubleJvp"
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g, torch.full_like(x, 2.0))
    t = torch.randn(5, dtype=F64)
    with fwAD.dual_level():
        out = apply_function(_Double, fwAD.make_dual(x.detach(), t))
        assert torch.equal(fwAD.unpack_dual(out).tangent, 2 * t)


# ------------------------------------------------------------------------------------------------------------------
# ops/opaque.py


def _fake_parts(x: torch.Tensor) -> list[torch.Tensor]:
    return [torch.empty_like(x), torch.empty(x.shape, dtype=torch.float64, device=x.device)]


_OPS: dict[str, object] = {}


def _conj_parts():
    """A kernel call whose body makes lazy views: conj(x) and Im(conj(x)) (a negative-bit view of Im x)."""
    from ssmkit.ops.opaque import kernel_op

    if "conj" not in _OPS:
        @kernel_op("probe_mutants_sysid_conj_parts", _fake_parts)
        def conj_parts(x: torch.Tensor) -> list[torch.Tensor]:
            return [x.conj() * 1, x.conj().imag * 1]

        _OPS["conj"] = conj_parts
    return _OPS["conj"]


def test_a_kernel_ops_body_reads_conjugate_and_negative_views_as_in_eager_mode():
    """Kills O3 (the op's body without the guard) and O4 (the guard without the Negative key): in a compiled graph
    (AOTAutograd, as torch.compile's default backend runs it) the op's body runs below the Conjugate and Negative keys;
    conj(x) and Im(conj(x)) must still be numpy's conj(x) and -Im(x), as in the eager call."""
    fn = _conj_parts()
    x = torch.tensor([1 + 2j, -3 + 0.5j, 0.25 - 4j], dtype=torch.complex128, device=DEVICE)
    ref = np.conj(x.cpu().numpy())
    compiled = torch.compile(lambda x: [p * 1 for p in fn(x)], backend="aot_eager", fullgraph=True)
    for conj, neg_imag in (fn(x), compiled(x)):
        assert np.array_equal(conj.resolve_conj().cpu().numpy(), ref)
        assert np.array_equal(neg_imag.resolve_neg().cpu().numpy(), ref.imag)


def test_eager_calls_do_not_dispatch_the_custom_op():
    """Kills O2 (eager calls through the op: the dispatcher's overhead on every kernel call, which kernel_op exists to
    avoid in eager mode). Reference: torch's profiler records ``ssmkit::<name>`` for a call of the op itself, and no
    such event for the eager call."""
    fn = _conj_parts()
    x = torch.tensor([1 + 1j], dtype=torch.complex128)
    name = "ssmkit::probe_mutants_sysid_conj_parts"
    for call, dispatched in ((fn, False), (fn.op, True)):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            call(x)
        assert (name in {e.name for e in prof.events()}) == dispatched


def test_absent_if_zero_by_its_definition():
    """Kills O7 (a zero gradient kept) and O10 (any → all: a gradient with a zero entry dropped). None for None and for
    an all-zero tensor, the tensor itself otherwise (also with zeros among its entries, and for -0.0 + tiny)."""
    from ssmkit.ops.opaque import absent_if_zero

    assert absent_if_zero(None) is None
    assert absent_if_zero(torch.zeros(3, 2, dtype=F64)) is None
    assert absent_if_zero(torch.tensor([-0.0, 0.0])) is None
    for g in (torch.tensor([0.0, 1e-300, 0.0], dtype=F64), torch.tensor([0j, 1j]), torch.ones(2, 2)):
        assert absent_if_zero(g) is g


def test_eager_views_and_autograd_lets_a_custom_ops_body_record_a_graph():
    """Kills O9 (the autograd keys left excluded: inside a custom op's body ``torch.enable_grad()`` records nothing,
    and the native kernels' gradient smoke test failed there). The op's body takes d(Σ x³)/dx with autograd; the
    reference is 3x² by hand."""
    from ssmkit.ops.opaque import eager_views_and_autograd

    if "grad" not in _OPS:
        @torch.library.custom_op("ssmkit::probe_mutants_sysid_cube_grad", mutates_args=())
        def cube_grad(x: torch.Tensor) -> torch.Tensor:
            with eager_views_and_autograd(), torch.enable_grad():
                leaf = x.detach().clone().requires_grad_(True)
                (g,) = torch.autograd.grad((leaf ** 3).sum(), leaf)
            return g

        _OPS["grad"] = cube_grad
    x = torch.tensor([0.5, -2.0, 3.0], dtype=F64, device=DEVICE)
    assert torch.allclose(_OPS["grad"](x), 3 * x ** 2, rtol=1e-15, atol=0)


# ------------------------------------------------------------------------------------------------------------------
# analysis/onnx_liquid.py


def _liquid_loop(layer, u: np.ndarray) -> np.ndarray:
    """Liquid-S4 in float64 numpy from the module docstring's equations, on the layer's control-convention realisation
    (ξ_{k+1} = A ξ_k + B v_k, y_k = C ξ_k + D' v_k, D' = D + K_0): s_t = Σ_{p=2}^{P} β^{p-1} f(u_t ... u_{t-p+1}) with
    zeros before the sequence; KB drives the core with u + s and subtracts D s, PB drives it with u and adds K_0 s."""
    system = layer._state_space()
    A, Bm, C, Dp = (np.asarray(getattr(system, k), dtype=np.float64) for k in ("A", "B", "C", "D"))
    D = layer.D.detach().double().cpu().numpy()
    beta = layer._beta().detach().double().cpu().numpy()
    P, kind = layer.liquid_degree, layer.liquid_kernel
    f = {None: lambda v: v, "tanh": np.tanh, "lecun": lambda v: 1.7159 * np.tanh(0.666 * v)}[layer.liquid_contract]
    Bsz, L, Hc = u.shape
    padded = np.concatenate([np.zeros((Bsz, P - 1, Hc)), u], axis=1)
    y = np.zeros_like(u)
    for b in range(Bsz):
        for h in range(Hc):
            xi = np.zeros(A.shape[1])
            for t in range(L):
                s = sum(beta[h] ** (p - 1) * f(np.prod(padded[b, t + P - p:t + P, h])) for p in range(2, P + 1))
                v = u[b, t, h] + s if kind == "kb" else u[b, t, h]
                out = C[h, 0] @ xi + Dp[h, 0, 0] * v
                y[b, t, h] = out - D[h] * s if kind == "kb" else out + (Dp[h, 0, 0] - D[h]) * s
                xi = A[h] @ xi + Bm[h, :, 0] * v
    return y


@pytest.mark.parametrize("variant", [0, 1])
def test_real_liquid_s4_equals_a_float64_loop_and_return_state_false_gives_none(variant):
    """Kills L14 (the state returned although return_state=False; the layer itself returns None there). The forward,
    a chunked continuation from the returned state and the step loop against the float64 loop above (PB of degree 2;
    KB of degree 3 with LeCun's tanh)."""
    from ssmkit.analysis.onnx_liquid import RealLiquidS4
    from ssmkit.analysis.onnx_sequence import RealLTISequence
    from tests.conftest import H, make_layer, variants

    layer = make_layer("liquid_s4", variants("liquid_s4")[variant], dtype=F64).eval()
    real = RealLiquidS4(layer, lambda system, dtype: RealLTISequence(system, dtype), F64)
    x = torch.randn(2, 13, H, dtype=F64, generator=torch.Generator().manual_seed(4))
    want = _liquid_loop(layer, x.numpy())
    real, x = real.to(DEVICE), x.to(DEVICE)
    with torch.no_grad():
        y, none = real(x, return_state=False)
        assert none is None and layer(x, return_state=False)[1] is None
        assert np.allclose(y.cpu().numpy(), want, rtol=0, atol=1e-12)
        y1, state = real(x[:, :6])
        y2, _ = real(x[:, 6:], state)
        assert np.allclose(torch.cat([y1, y2], 1).cpu().numpy(), want, rtol=0, atol=1e-12)
        state, steps = real.initial_state(2), []
        for t in range(13):
            y_t, state = real.step(x[:, t], state)
            steps.append(y_t)
        assert np.allclose(torch.stack(steps, 1).cpu().numpy(), want, rtol=0, atol=1e-12)
