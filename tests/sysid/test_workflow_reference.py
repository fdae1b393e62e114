"""The identification workflow's bookkeeping against hand-worked references: the model a recipe builds (its stored
constructor arguments), the fit options a recipe gives, the records held out for validation (split by hand), the
pieces outside k-fold blocks, the out-of-fold RMSE of members whose simulation is known exactly, the scores of
`evaluate` in the benchmark's unit and the periodic steady state of a one-pole system in closed form."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from ssmkit.sysid.fit import Block, SimulationFit
from ssmkit.sysid.records import IORecord, SysidBenchmark
from ssmkit.sysid.recipes import Recipe
from ssmkit.sysid import workflow
from ssmkit.sysid.workflow import (build_model, evaluate, fit_config, held_out, identify, out_of_fold_rmse,
                                   outside_blocks, periodic_steady_state, simulate_test)


class Bench:
    """What build_model reads of a benchmark."""

    def __init__(self, m=1, p=1, dt=0.5, n_init=20):
        self.n_inputs, self.n_outputs, self.dt, self.n_init = m, p, dt, n_init
        self.name = "stub"  # and the signals' names (stop 58)
        self.inputs = tuple(f"input {j + 1}" for j in range(m))
        self.outputs = tuple(f"output {k + 1}" for k in range(p))


def ramp_record(n: int, k: int, name: str, p: int = 1) -> IORecord:
    u = torch.arange(n, dtype=torch.float64)[:, None] + 100 * k
    y = torch.arange(n, dtype=torch.float64)[:, None].repeat(1, p) * 0.5 - k
    return IORecord(u, y, 1.0, name)


# ---------------------------------------------------------------------------------------------------------------
# build_model


def test_build_model_passes_the_recipe_to_the_deep_wiener():
    r = Recipe(d_model=3, n_layers=2, d_state=6, activation="tanh", timescale=(1.0, 8.0), encoder_window=12,
               ssm_lr=0.002, output_range=(-1.0, 2.0))
    m = build_model(Bench(m=2, p=3, dt=0.5, n_init=20), "s4d", r)
    a = m.arguments
    assert (a["n_inputs"], a["n_outputs"], a["d_model"], a["n_layers"], a["layer"]) == (2, 3, 3, 2, "s4d")
    assert a["layer_options"] == {"d_state": 6, "lr": 0.002}
    assert a["activation"] == "tanh" and a["dt"] == 0.5 and a["timescale"] == (1.0, 8.0)
    assert a["encoder_window"] == 12 and a["output_range"] == (-1.0, 2.0)
    assert "time_varying" not in a and "block_activations" not in a
    assert m.layers[0].dt_min == pytest.approx(0.5 / 8.0) and m.layers[0].dt_max == pytest.approx(0.5 / 1.0)
    assert m.u_mean.dtype == torch.float32  # dtype None: float32
    assert build_model(Bench(), "s4d", Recipe(d_model=2, n_layers=1, d_state=2),
                       dtype=torch.float64).u_mean.dtype == torch.float64
    # no ssm_lr: the layer's own default rate
    assert build_model(Bench(), "s4d", Recipe(d_model=2, n_layers=1, d_state=2)).arguments["layer_options"] == {
        "d_state": 2}
    # a predictor reads [u_t, y_{t-1}] and has no encoder
    p = build_model(Bench(m=2, p=3), "s4d", dataclasses.replace(r, output_range=None), mode="prediction")
    assert p.arguments["n_inputs"] == 5 and p.arguments["encoder_window"] == 0


def test_build_model_leaves_out_the_options_a_layer_does_not_take():
    import inspect

    from ssmkit.layers.registry import layer_class

    for name in ("lru", "s5", "ema", "dlr", "rglru"):  # rglru: no d_state; lru, ema: no Δ
        params = inspect.signature(layer_class(name).__init__).parameters
        recipe = Recipe(d_model=2, n_layers=1, d_state=16, ssm_lr=0.001,
                        timescale=(1.0, 8.0) if "dt_min" in params else None)
        m = build_model(Bench(), name, recipe)
        want = {k: v for k, v in (("d_state", 16), ("lr", 0.001)) if k in params}
        assert m.arguments["layer_options"] == want, name
        assert m.arguments["timescale"] == ((1.0, 8.0) if "dt_min" in params else None), name


def test_build_model_encoder_window_against_the_init_window():
    r = Recipe(d_model=2, n_layers=1, d_state=2, encoder_window=20)
    assert build_model(Bench(n_init=20), "s4d", r).encoder_window == 20  # = n_init: allowed
    with pytest.raises(ValueError, match="exceeds the benchmark's init window n_init = 19"):
        build_model(Bench(n_init=19), "s4d", r)
    with pytest.raises(ValueError, match="exceeds the benchmark's init window n_init = 1"):
        build_model(Bench(n_init=1), "s4d", r)
    assert build_model(Bench(n_init=0), "s4d", r).encoder_window == 0  # nothing unscored to read: from rest
    # a training-only encoder of n samples when the model has none of its own
    t = Recipe(d_model=2, n_layers=1, d_state=2, train_encoder=7)
    assert build_model(Bench(n_init=0), "s4d", t).encoder_window == 7
    assert build_model(Bench(n_init=20), "s4d", t).encoder_window == 7
    with pytest.raises(ValueError, match="train_encoder starts the training windows"):
        build_model(Bench(n_init=20), "s4d", dataclasses.replace(t, encoder_window=5))
    with pytest.raises(ValueError, match="train_encoder starts the training windows"):
        build_model(Bench(n_init=20), "s4d", t, mode="prediction")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="train_encoder must be an int >= 0"):
            build_model(Bench(), "s4d", dataclasses.replace(t, train_encoder=bad))


def test_build_model_first_activation_and_a_selective_layer():
    r = Recipe(d_model=2, n_layers=3, d_state=2, activation="relu", first_activation="tanh")
    m = build_model(Bench(), "s4d", r)
    assert m.arguments["block_activations"] == ("tanh", "relu", "relu")
    for bad in ("sigmoid", 3):
        with pytest.raises(ValueError, match="first_activation must be None or one of"):
            build_model(Bench(), "s4d", dataclasses.replace(r, first_activation=bad))
    s = build_model(Bench(), "mamba", Recipe(d_model=2, n_layers=1, d_state=2))
    assert s.arguments.get("time_varying") is True
    assert "time_varying" not in build_model(Bench(), "s4d", Recipe(d_model=2, n_layers=1, d_state=2)).arguments


# ---------------------------------------------------------------------------------------------------------------
# fit_config


def test_fit_config_maps_every_recipe_option():
    r = Recipe(window=33, batch_size=5, steps=77, lr=0.0123, weight_decay=0.04, ssm_weight_decay=0.3, decay=0.97,
               washout=4, val_fraction=0.15, val_every=6, patience=9, schedule="cosine", min_steps=11, average=0.9,
               level_weight=(1.5, 3.0), censor=False, train_encoder=0)
    got = fit_config(r, seed=42)
    want = SimulationFit(window=33, batch_size=5, steps=77, lr=0.0123, weight_decay=0.04, ssm_weight_decay=0.3,
                         decay=0.97, washout=4, val_fraction=0.15, val_every=6, patience=9, seed=42,
                         schedule="cosine", min_steps=11, average=0.9, level_weight=(1.5, 3.0), censor=False,
                         validate_from_rest=False)
    assert dataclasses.asdict(got) == dataclasses.asdict(want)
    assert fit_config(r).seed == 0  # the default seed
    assert fit_config(dataclasses.replace(r, train_encoder=3)).validate_from_rest is True


# ---------------------------------------------------------------------------------------------------------------
# held_out and outside_blocks


def test_held_out_splits_the_last_records_by_hand():
    recs = [ramp_record(10, k, f"r{k}") for k in range(4)]
    train, val = held_out(recs, Recipe(val_records=2, val_fraction=0.3))
    assert [r.name for r in train] == ["r0", "r1"]
    # the last 30 % of r2 and of r3: cut = round(10 · 0.7) = 7
    assert [r.u[:, 0].tolist() for r in val] == [[207.0, 208.0, 209.0], [307.0, 308.0, 309.0]]
    assert [r.y[:, 0].tolist() for r in val] == [[1.5, 2.0, 2.5], [0.5, 1.0, 1.5]]
    # the validated tail must hold the encoder's samples and 2 more: 3 samples admit encoder_window 1, not 2
    assert len(held_out(recs, Recipe(val_records=1, val_fraction=0.3, encoder_window=1))[1][0]) == 3
    with pytest.raises(ValueError, match="too short"):
        held_out(recs, Recipe(val_records=1, val_fraction=0.3, encoder_window=2))
    # one training sample is enough before the tail (min_train = 1): 0.9 of 10 leaves 1, 0.96 leaves 0 -> refused
    assert len(held_out(recs, Recipe(val_records=1, val_fraction=0.9))[1][0]) == 9
    with pytest.raises(ValueError, match="too short"):
        held_out(recs, Recipe(val_records=1, val_fraction=0.96))
    assert held_out(recs, Recipe(val_records=3, val_fraction=0.5))[0] == [recs[0]]
    for bad in (1.0, True, "1"):
        with pytest.raises(ValueError, match="val_records must be an int >= 0"):
            held_out(recs, Recipe(val_records=bad))
    for frac in (1.0, -0.1):
        with pytest.raises(ValueError, match="val_fraction in"):
            held_out(recs, Recipe(val_records=1, val_fraction=frac))


def test_outside_blocks_cuts_each_record_around_its_blocks():
    recs = [ramp_record(10, 0, "a"), ramp_record(7, 1, "b"), ramp_record(5, 2, "c")]
    blocks = [Block(0, 3, 7), Block(1, 0, 2), Block(1, 5, 7), Block(0, 8, 9)]  # c holds no block
    pieces = outside_blocks(recs, blocks)
    assert [p.name for p in pieces] == ["a[0:3]", "a[7:8]", "a[9:10]", "b[2:5]", "c[0:5]"]
    assert [p.u[:, 0].tolist() for p in pieces] == [[0.0, 1.0, 2.0], [7.0], [9.0], [102.0, 103.0, 104.0],
                                                    [200.0, 201.0, 202.0, 203.0, 204.0]]
    assert [p.y[:, 0].tolist() for p in pieces][1] == [3.5] and pieces[3].y[:, 0].tolist() == [0.0, 0.5, 1.0]
    assert all(p.dt == 1.0 for p in pieces)
    # overlapping blocks: nothing between them is kept twice or resurrected
    over = outside_blocks([recs[0]], [Block(0, 2, 6), Block(0, 4, 5), Block(0, 5, 8)])
    assert [p.name for p in over] == ["a[0:2]", "a[8:10]"]
    assert outside_blocks([recs[0]], [Block(0, 0, 10)]) == []
    assert [p.name for p in outside_blocks([recs[0]], [])] == ["a[0:10]"]


# ---------------------------------------------------------------------------------------------------------------
# out_of_fold_rmse


class Gain(nn.Module):
    """A stand-in for a DeepWiener from rest: ŷ_t = g · u_t on every output (no encoder)."""

    encoder_window = 0

    def __init__(self, g: float, p: int = 1) -> None:
        super().__init__()
        self.g, self.p = g, p
        self.register_buffer("u_mean", torch.zeros(1, dtype=torch.float64))

    def forward(self, u, state=None, return_state=True):
        return self.g * u[..., :1].repeat(1, 1, self.p), None


def test_out_of_fold_rmse_pools_each_members_held_out_block():
    recs = [ramp_record(10, 0, "a", p=2), ramp_record(7, 1, "b", p=2)]
    members = [Gain(2.0, p=2), Gain(-1.0, p=2)]
    # K = 3 blocks, boundaries round(i L / 3): a: [0, 3) [3, 7) [7, 10); b: [0, 2) [2, 5) [5, 7)
    # member 0 holds out block 2, member 1 block 0
    errs = []
    for g, spans in ((2.0, ((0, 7, 10), (1, 5, 7))), (-1.0, ((0, 0, 3), (1, 0, 2)))):
        for rec, lo, hi in spans:
            r = recs[rec]
            errs.append(g * r.u[lo:hi].numpy().repeat(2, axis=1) - r.y[lo:hi].numpy())
    e = np.concatenate(errs)
    want = np.sqrt((e ** 2).mean(0))
    got = out_of_fold_rmse(members, recs, [2, 0], 3)
    assert isinstance(got, list) and len(got) == 2
    np.testing.assert_allclose(got, want, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# evaluate and simulate_test


def _bench(n_init: int, scale: float, test_len: int = 12) -> SysidBenchmark:
    t = torch.arange(test_len, dtype=torch.float64)[:, None]
    test = [IORecord(t, 3.0 * t + 1.0, 1.0, "t0"), IORecord(t + 1, (t + 1) ** 1.5, 1.0, "t1")]
    train = [IORecord(t, t, 1.0, "train")]
    return SysidBenchmark("toy", "toy", train, test, n_init, "mV", scale=scale)


def test_evaluate_scores_after_the_init_window_in_the_benchmarks_unit():
    bench = _bench(n_init=3, scale=1000.0)
    model = Gain(2.0)
    scores = evaluate(model, bench)
    for rec, entry, sim in zip(bench.test, scores["records"], scores["simulations"]):
        y, yhat = rec.y[3:, 0].numpy(), 2.0 * rec.u[3:, 0].numpy()
        err = yhat - y
        assert entry["name"] == rec.name
        torch.testing.assert_close(sim, 2.0 * rec.u)  # the whole simulation, init window included
        assert entry["rmse"][0] == pytest.approx(1000.0 * math.sqrt((err ** 2).mean()), rel=1e-12)
        assert entry["mae"][0] == pytest.approx(1000.0 * np.abs(err).mean(), rel=1e-12)
        fit = 100 * (1 - np.linalg.norm(err) / np.linalg.norm(y - y.mean()))
        assert entry["fit"][0] == pytest.approx(fit, rel=1e-12)  # unitless: not scaled
    # the init window is not scored: an error there changes nothing
    with_start_error = _bench(n_init=3, scale=1000.0)
    for r in with_start_error.test:
        r.y[:3] += 50.0
    again = evaluate(model, with_start_error)
    assert [e["rmse"] for e in again["records"]] == [e["rmse"] for e in scores["records"]]


def test_simulate_test_of_a_predictor_runs_free_after_the_init_window(monkeypatch):
    calls = []
    monkeypatch.setattr(workflow, "free_run", lambda model, r, n: calls.append((r.name, n)) or r.y)
    assert simulate_test(None, _bench(n_init=4, scale=1.0), "prediction")[1] is not None
    assert simulate_test(None, _bench(n_init=0, scale=1.0), "prediction") is not None
    assert calls == [("t0", 4), ("t1", 4), ("t0", 1), ("t1", 1)]  # at least the first sample is read


def test_simulate_test_allows_an_encoder_as_long_as_the_init_window():
    class Enc(Gain):
        encoder_window = 3

        def estimate_state(self, u, y):
            return None

    bench = _bench(n_init=3, scale=1.0)
    sims = simulate_test(Enc(1.0), bench)
    torch.testing.assert_close(sims[0][:3], bench.test[0].y[:3])  # the encoder's samples are the measurement
    with pytest.raises(ValueError, match="encoder_window 3 exceeds the benchmark's init window n_init = 2"):
        simulate_test(Enc(1.0), _bench(n_init=2, scale=1.0))


# ---------------------------------------------------------------------------------------------------------------
# periodic_steady_state


def _one_pole(u, a=0.6):
    """y_t = a y_{t-1} + u_t from rest, (L, 1) -> (L, 1) float64, a Python loop."""
    y, prev = [], 0.0
    for v in u[:, 0].tolist():
        prev = a * prev + v
        y.append(prev)
    return torch.tensor(y, dtype=torch.float64)[:, None]


class OnePole(nn.Module):
    """A stand-in model from rest: y_t = 0.6 y_{t-1} + u_t."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("u_mean", torch.zeros(1, dtype=torch.float64))

    def forward(self, u, state=None, return_state=True):
        return _one_pole(u[0])[None], None


def test_periodic_steady_state_of_a_one_pole_system_in_closed_form():
    # y_t = a y_{t-1} + u_t from rest; over a period-P input its steady state starts from y_{-1} = s with
    # s = a^P s + Σ_j a^{P-1-j} u_j, i.e. s = Σ_j a^{P-1-j} u_j / (1 - a^P)
    a, P = 0.6, 5
    one = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0], dtype=torch.float64)
    simulate = _one_pole

    s = sum(a ** (P - 1 - j) * float(one[j]) for j in range(P)) / (1 - a ** P)
    want, prev = [], s
    for v in one.tolist() * 2:
        prev = a * prev + v
        want.append(prev)
    want = np.array(want)
    u = one.repeat(2)[:, None]
    for prime, tol in ((1, a ** (P * 1)), (3, a ** (P * 3))):
        got = periodic_steady_state(simulate, u, period=P, prime=prime)[:, 0].numpy()
        assert got.shape == (2 * P,)
        # the transient left after `prime` periods: a^{prime·P + t + 1} s exactly
        np.testing.assert_allclose(got - want, -s * a ** (prime * P + np.arange(1, 2 * P + 1)), atol=1e-13)
        assert np.abs(got - want).max() <= abs(s) * tol
    # period None: the record is one period
    got = periodic_steady_state(simulate, one[:, None])[:, 0].numpy()
    np.testing.assert_allclose(got - want[:P], -s * a ** (P + np.arange(1, P + 1)), atol=1e-13)
    # a model on a periodic record: one period primed by default, or `prime`
    record = IORecord(u, u, 1.0, "periodic", period=P)
    np.testing.assert_allclose(workflow.simulate_periodic(OnePole(), record)[:, 0].numpy() - want,
                               -s * a ** (P + np.arange(1, 2 * P + 1)), atol=1e-13)
    np.testing.assert_allclose(workflow.simulate_periodic(OnePole(), record, 3)[:, 0].numpy() - want,
                               -s * a ** (3 * P + np.arange(1, 2 * P + 1)), atol=1e-13)


def test_periodic_steady_state_checks_periodicity_relative_to_the_input():
    P = 4
    one = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64) * 1e-9
    u = one.repeat(2)[:, None]
    ident = lambda v: v  # noqa: E731
    u[P + 1, 0] += 2e-15  # within 1e-6 of max |u| = 3e-9
    assert periodic_steady_state(ident, u, period=P).shape == (2 * P, 1)
    u[P + 1, 0] += 1e-14  # 1.2e-14 > 1e-6 · 3e-9: not periodic
    with pytest.raises(ValueError, match="not periodic with period 4"):
        periodic_steady_state(ident, u, period=P)
    z = torch.zeros(8, 1, dtype=torch.float64)
    assert periodic_steady_state(ident, z, period=P).abs().max() == 0  # an all-zero input is periodic
    three = one.repeat(3)[:, None]  # every sample against the one a period earlier, over three periods
    assert periodic_steady_state(ident, three, period=P).shape == (3 * P, 1)
    three[2 * P + 3, 0] += 1e-12
    with pytest.raises(ValueError, match="not periodic with period 4"):
        periodic_steady_state(ident, three, period=P)
    # "differ by up to 1e-6 of max |u|" is admitted: max |u| = 1e6, a gap of exactly 1.0 passes, 1.0000001 does not
    big = torch.tensor([[1e6], [5.0], [1e6], [6.0]], dtype=torch.float64)
    assert periodic_steady_state(ident, big, period=2).shape == (4, 1)
    big[3, 0] += 1e-7
    with pytest.raises(ValueError, match="not periodic with period 2"):
        periodic_steady_state(ident, big, period=2)
    # one sample is a record of one period; none is not a record
    one = torch.tensor([[2.0]], dtype=torch.float64)
    torch.testing.assert_close(periodic_steady_state(lambda v: 3 * v, one, prime=2), 3 * one)
    with pytest.raises(ValueError, match=r"u must be an \(L, m\) tensor with L >= 1; got \(0, 1\)"):
        periodic_steady_state(ident, one[:0])
    for bad in (True, 2.0, -4):
        with pytest.raises(ValueError, match="period must be None or an int P >= 1"):
            periodic_steady_state(ident, u, period=bad)


# ---------------------------------------------------------------------------------------------------------------
# identify's restarts, k-fold and averaging, with scripted runs (no training)


def _sysid_bench(p: int = 2) -> SysidBenchmark:
    rng = np.random.default_rng(3)

    def rec(n, name):
        return IORecord(torch.from_numpy(rng.standard_normal((n, 1))), torch.from_numpy(rng.standard_normal((n, p))),
                        0.5, name)

    return SysidBenchmark("toy", "toy", [rec(40, "a"), rec(30, "b")], [rec(20, "t")], 0, "V")


RECIPE = Recipe(d_model=2, n_layers=1, d_state=2, window=8, val_fraction=0.25)


def _script(monkeypatch, scores):
    """Replace train_run by an untrained model from torch.manual_seed(run_seed) and a scripted history."""
    calls = []

    def fake(bench, layer, recipe, train, val, run_seed, mode="simulation", dtype=None, fold=None, log=False,
             device=None):
        calls.append({"seed": run_seed, "fold": fold, "train": [r.name for r in train],
                      "val": None if val is None else [(r.name, len(r)) for r in val], "mode": mode, "log": log})
        torch.manual_seed(run_seed)
        model = build_model(bench, layer, recipe, mode, dtype)
        return model, {"best_val_nrmse": scores[run_seed], "best_val_rmse": scores[run_seed],
                       "best_step": 10 * run_seed, "steps": run_seed + 1, "seconds": 0.5 * run_seed, "mode": mode}

    monkeypatch.setattr(workflow, "train_run", fake)
    return calls


def _sim(model, u):
    with torch.no_grad():
        return model(u[None], return_state=False)[0][0].double().numpy()


def test_restarts_train_from_seed_k_to_seed_k_plus_k_minus_1_and_keep_the_best(monkeypatch):
    bench = _sysid_bench()
    calls = _script(monkeypatch, {6: 0.3, 7: 0.1, 8: 0.2})
    model, history = identify(bench, "s4d", dataclasses.replace(RECIPE, restarts=3), seed=2, dtype=torch.float64)
    assert [c["seed"] for c in calls] == [6, 7, 8] and all(c["fold"] is None for c in calls)
    assert all(c["train"] == ["a", "b"] and c["val"] is None for c in calls)  # val_records 0: fit_simulation's tails
    assert not any(c["log"] for c in calls)  # quiet by default
    torch.manual_seed(7)
    want = build_model(bench, "s4d", RECIPE, dtype=torch.float64)
    for name, value in model.state_dict().items():
        assert torch.equal(value, want.state_dict()[name]), name
    assert history["seed"] == 7 and history["best_val_rmse"] == 0.1 and history["best_step"] == 70
    assert history["seconds"] == 0.5 * (6 + 7 + 8)
    assert history["restarts"] == [{"seed": s, "best_val_nrmse": v, "best_val_rmse": v, "best_step": 10 * s,
                                    "steps": s + 1, "seconds": 0.5 * s} for s, v in ((6, 0.3), (7, 0.1), (8, 0.2))]
    # a tie keeps the first run; one run has no "restarts" entry
    calls = _script(monkeypatch, {0: 0.5})
    _, single = identify(bench, "s4d", RECIPE, dtype=torch.float64)
    assert "restarts" not in single and single["seconds"] == 0.0 and [c["seed"] for c in calls] == [0]
    _script(monkeypatch, {2: 0.2, 3: 0.2})  # seed 1 of 2 restarts: seeds 2 and 3
    model, tie = identify(bench, "s4d", dataclasses.replace(RECIPE, restarts=2), seed=1, dtype=torch.float64)
    torch.manual_seed(2)
    first = build_model(bench, "s4d", RECIPE, dtype=torch.float64)
    assert tie["seed"] == 2 and tie["best_step"] == 20
    for name, value in model.state_dict().items():
        assert torch.equal(value, first.state_dict()[name]), name


def test_val_records_hold_out_the_tail_of_the_last_records_for_every_run(monkeypatch):
    bench = _sysid_bench()
    calls = _script(monkeypatch, {0: 0.3, 1: 0.1})
    identify(bench, "s4d", dataclasses.replace(RECIPE, restarts=2, val_records=1), dtype=torch.float64)
    # b (30 samples) held out whole from training; its last 25 %: cut = round(30 · 0.75) = 22 (8 samples)
    assert [(c["train"], c["val"]) for c in calls] == [(["a"], [("b [22:]", 8)])] * 2


def test_kfold_best_keeps_the_lowest_run_of_each_block_and_scores_it_out_of_fold(monkeypatch):
    bench = _sysid_bench()
    scores = {4: 0.5, 5: 0.2, 6: 0.1, 7: 0.9}
    calls = _script(monkeypatch, scores)
    recipe = dataclasses.replace(RECIPE, restarts=4, folds=2, validation="kfold", combine="best")
    ensemble, history = identify(bench, "s4d", recipe, seed=1, dtype=torch.float64)
    assert [(c["seed"], c["fold"]) for c in calls] == [(4, 0), (5, 1), (6, 0), (7, 1)]
    assert all(c["train"] == ["a", "b"] and c["val"] is None for c in calls)
    # block 0 is kept from seed 6 (0.1 < 0.5), block 1 from seed 5 (0.2 < 0.9)
    kept = {}
    for s in (6, 5):
        torch.manual_seed(s)
        kept[s] = build_model(bench, "s4d", recipe, dtype=torch.float64)
    assert len(ensemble.members) == 2
    for member, s in zip(ensemble.members, (6, 5)):
        for name, value in member.state_dict().items():
            assert torch.equal(value, kept[s].state_dict()[name]), (s, name)
    # out of fold: seed 6 scored on a[0:20], b[0:15]; seed 5 on a[20:40], b[15:30] (boundaries round(i L / 2))
    errs = []
    for s, spans in ((6, ((0, 0, 20), (1, 0, 15))), (5, ((0, 20, 40), (1, 15, 30)))):
        for rec, lo, hi in spans:
            r = bench.train[rec]
            errs.append(_sim(kept[s], r.u)[lo:hi] - r.y[lo:hi].numpy())
    e = np.concatenate(errs)
    per_output = np.sqrt((e ** 2).mean(0))
    assert history["best_val_rmse"] == pytest.approx(per_output.mean(), rel=1e-10)
    assert history["best_step"] == [60, 50] and history["steps"] == 5 + 6 + 7 + 8
    assert history["seconds"] == 0.5 * (4 + 5 + 6 + 7) and history["seed"] is None
    assert (history["combine"], history["validation"], history["folds"], history["mode"]) == ("best", "kfold", 2,
                                                                                              "simulation")
    assert [(r["seed"], r["fold"], r["kept"]) for r in history["restarts"]] == [(4, 0, False), (5, 1, True),
                                                                               (6, 0, True), (7, 1, False)]
    # "average" keeps every run; folds None: K = restarts
    calls = _script(monkeypatch, {0: 0.3, 1: 0.2, 2: 0.1})
    avg, h = identify(bench, "s4d", dataclasses.replace(recipe, restarts=3, folds=None, combine="average"),
                      dtype=torch.float64)
    assert [c["fold"] for c in calls] == [0, 1, 2] and len(avg.members) == 3 and h["folds"] == 3
    assert all(r["kept"] for r in h["restarts"])
    _script(monkeypatch, scores)  # "average" of 4 runs on 2 blocks: all four kept, not the best of each block
    avg, h = identify(bench, "s4d", dataclasses.replace(recipe, combine="average"), seed=1, dtype=torch.float64)
    assert len(avg.members) == 4 and all(r["kept"] for r in h["restarts"]) and h["best_step"] == [40, 50, 60, 70]


def test_average_scores_the_ensemble_on_the_tails_the_runs_validated_on(monkeypatch):
    bench = _sysid_bench()
    _script(monkeypatch, {0: 0.3, 1: 0.2})
    ensemble, history = identify(bench, "s4d", dataclasses.replace(RECIPE, restarts=2, combine="average"),
                                 dtype=torch.float64)
    members = []
    for s in (0, 1):
        torch.manual_seed(s)
        members.append(build_model(bench, "s4d", RECIPE, dtype=torch.float64))
    # the tails: a[30:40] (cut round(40 · 0.75) = 30), b[22:30] (cut round(22.5) = 22); the ensemble from rest
    errs = []
    for r, cut in zip(bench.train, (30, 22)):
        mean = (_sim(members[0], r.u[cut:]) + _sim(members[1], r.u[cut:])) / 2
        errs.append(mean - r.y[cut:].numpy())
    e = np.concatenate(errs)
    assert history["best_val_rmse"] == pytest.approx(np.sqrt((e ** 2).mean(0)).mean(), rel=1e-10)
    assert history["combine"] == "average" and history["seed"] is None and history["mode"] == "simulation"
    assert history["best_step"] == [0, 10] and history["steps"] == 1 + 2 and history["seconds"] == 0.5
    assert [r["seed"] for r in history["restarts"]] == [0, 1]
    # val_records = 1: a is trained on whole, and the ensemble is scored on b's tail b[22:30] only
    _script(monkeypatch, {0: 0.3, 1: 0.2})
    _, held = identify(bench, "s4d", dataclasses.replace(RECIPE, restarts=2, combine="average", val_records=1),
                       dtype=torch.float64)
    r = bench.train[1]
    e = (_sim(members[0], r.u[22:]) + _sim(members[1], r.u[22:])) / 2 - r.y[22:].numpy()
    assert held["best_val_rmse"] == pytest.approx(np.sqrt((e ** 2).mean(0)).mean(), rel=1e-10)
    # a tail of exactly 2 samples (the least fit_simulation validates on without an encoder) is scored too
    short = SysidBenchmark("toy", "toy", [IORecord(r.u[:8], r.y[:8], 0.5, "s")], [], 0, "V")
    _script(monkeypatch, {0: 0.3, 1: 0.2})
    _, two = identify(short, "s4d", dataclasses.replace(RECIPE, restarts=2, combine="average", window=6),
                      dtype=torch.float64)
    e = (_sim(members[0], r.u[6:8]) + _sim(members[1], r.u[6:8])) / 2 - r.y[6:8].numpy()
    assert two["best_val_rmse"] == pytest.approx(np.sqrt((e ** 2).mean(0)).mean(), rel=1e-10)
    # no validation at all: an infinite score
    _script(monkeypatch, {0: 0.3, 1: 0.2})
    _, none = identify(bench, "s4d", dataclasses.replace(RECIPE, restarts=2, combine="average", val_fraction=0.0),
                       dtype=torch.float64)
    assert none["best_val_rmse"] == math.inf


def test_prediction_mode_trains_on_the_one_step_records(monkeypatch):
    bench = _sysid_bench()
    calls = _script(monkeypatch, {0: 0.3})
    model, history = identify(bench, "s4d", RECIPE, mode="prediction", dtype=torch.float64)
    assert calls[0]["train"] == ["a (one-step-ahead)", "b (one-step-ahead)"] and calls[0]["mode"] == "prediction"
    assert model.n_inputs == 3


def test_identify_refuses_bad_recipes_before_training(monkeypatch):
    bench = _sysid_bench()
    _script(monkeypatch, {0: 0.0, 1: 0.0})
    cases = [
        (dict(d_model=0), "d_model must be an int >= 1"), (dict(n_layers=1.0), "n_layers must be an int >= 1"),
        (dict(d_state=0), "d_state must be an int >= 1"), (dict(train_records=0), "train_records must be an int >= 1"),
        (dict(encoder_window=-1), "encoder_window must be an int >= 0"),
        (dict(val_records=-1), "val_records must be an int >= 0"),
        (dict(train_encoder=-1), "train_encoder must be an int >= 0"),
        (dict(folds=1), "folds must be None or an int K >= 2"), (dict(folds=True), "folds must be None or an int"),
        (dict(combine="median"), "combine must be one of"),
        (dict(first_layer_init="ring"), "first_layer_init must be one of"),
        (dict(data_init_layers=0), r"data_init_layers must be an int in \[1, n_layers = 1\]"),
        (dict(data_init_layers=2), r"data_init_layers must be an int in \[1, n_layers = 1\]"),
        (dict(validation="loo"), "validation must be one of"),
        (dict(validation="kfold"), "needs folds = K >= 2 blocks"),
        (dict(validation="kfold", restarts=3, folds=2), r"restarts \(3\) must be a multiple of folds \(2\)"),
        (dict(validation="kfold", restarts=2, val_records=1), "set val_records = 0"),
        (dict(restarts=2, val_fraction=0.0), "set val_fraction > 0"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            identify(bench, "s4d", dataclasses.replace(RECIPE, **change))
    # the edges that are allowed
    for change in (dict(d_model=1), dict(encoder_window=0, val_records=0, train_encoder=0), dict(folds=2),
                   dict(data_init_layers=1), dict(restarts=2, val_fraction=0.0, combine="average"),
                   dict(val_fraction=0.0), dict(validation="kfold", restarts=2)):
        identify(bench, "s4d", dataclasses.replace(RECIPE, **change))
    identify(bench, "ema", dataclasses.replace(RECIPE, d_state=1))  # one real mode per channel
    with pytest.raises(ValueError, match="simulation mode only"):
        identify(bench, "s4d", dataclasses.replace(RECIPE, first_layer_init="data"), mode="prediction")
    with pytest.raises(ValueError, match="use validation='tail' in prediction mode"):
        identify(bench, "s4d", dataclasses.replace(RECIPE, validation="kfold", restarts=2), mode="prediction")


class ArxPredictor(nn.Module):
    """A stand-in one-step predictor: ŷ_t = a u_t + b y_{t-1} from its inputs [u_t, y_{t-1}]."""

    n_inputs, n_outputs, encoder_window = 2, 1, 0

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a, self.b = a, b
        self.register_buffer("u_mean", torch.zeros(2, dtype=torch.float64))

    def forward(self, x, state=None, return_state=True):
        return self.a * x[..., :1] + self.b * x[..., 1:], None


@pytest.mark.parametrize("n_init", [0, 3])
def test_evaluate_a_predictor_scores_its_one_step_predictions_after_the_init_window(monkeypatch, n_init):
    monkeypatch.setattr(workflow, "free_run", lambda model, r, n: r.y * 0.5)  # the free run: scored as rmse
    bench = _bench(n_init=n_init, scale=10.0)
    scores = evaluate(ArxPredictor(2.0, -0.5), bench, mode="prediction")
    start = max(n_init, 1)  # ŷ_0 is the measured y_0: never scored
    for rec, entry in zip(bench.test, scores["records"]):
        u, y = rec.u[:, 0].numpy(), rec.y[:, 0].numpy()
        pred = 2.0 * u[1:] - 0.5 * y[:-1]  # ŷ_t, t >= 1
        err = pred[start - 1:] - y[start:]
        assert entry["one_step_rmse"][0] == pytest.approx(10.0 * math.sqrt((err ** 2).mean()), rel=1e-12)
        free = 0.5 * y[n_init:] - y[n_init:]
        assert entry["rmse"][0] == pytest.approx(10.0 * math.sqrt((free ** 2).mean()), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# train_run, with fit_simulation scripted


def test_train_run_seeds_builds_initialises_and_fits_as_documented(monkeypatch):
    bench = _sysid_bench()
    seen = {}

    def fit(model, train, val, config, log, blocks=None):
        seen.update(state={k: v.clone() for k, v in model.state_dict().items()}, train=[r.name for r in train],
                    val=val, config=config, blocks=blocks, log=log, window=model.encoder_window)
        return {"best_val_rmse": 0.5}

    inits = []
    monkeypatch.setattr(workflow, "fit_simulation", fit)
    monkeypatch.setattr(workflow, "init_from_data", lambda model, records, layers: inits.append(
        ([r.name for r in records], layers)))
    recipe = dataclasses.replace(RECIPE, train_encoder=3, n_layers=2, validation="kfold", folds=2, restarts=2)
    model, history = workflow.train_run(bench, "s4d", recipe, bench.train, None, 5, dtype=torch.float64, log=True)
    torch.manual_seed(5)
    want = build_model(bench, "s4d", recipe, dtype=torch.float64)
    assert seen["state"].keys() == want.state_dict().keys()
    for name, value in want.state_dict().items():
        assert torch.equal(seen["state"][name], value), name
    assert seen["window"] == 3 and model.encoder_window == 0  # trained with the encoder, returned without it
    assert seen["config"] == fit_config(recipe, 5) and seen["blocks"] is None and seen["log"] is True
    assert seen["train"] == ["a", "b"] and seen["val"] is None and inits == []
    assert history == {"best_val_rmse": 0.5, "mode": "simulation"}  # no "fold" without one
    # fold 1 of K = 2: blocks a[20:40], b[15:30]; the data initialisation reads only what lies outside them
    data = dataclasses.replace(recipe, first_layer_init="data", data_init_layers=2, train_encoder=0)
    _, history = workflow.train_run(bench, "s4d", data, bench.train, None, 6, fold=1)
    assert seen["blocks"] == [Block(0, 20, 40), Block(1, 15, 30)] and history["fold"] == 1
    assert seen["log"] is False  # quiet by default
    assert inits == [(["a[0:20]", "b[0:15]"], 2)]
    # K from restarts when folds is None: fold 2 of 3 -> a[27:40] (round(80/3) = 27), b[20:30]
    workflow.train_run(bench, "s4d", dataclasses.replace(data, folds=None, restarts=3), bench.train, None, 6, fold=2)
    assert seen["blocks"] == [Block(0, 27, 40), Block(1, 20, 30)]
    assert inits[-1] == (["a[0:27]", "b[0:20]"], 2)
    # without blocks, every training record whole
    workflow.train_run(bench, "s4d", dataclasses.replace(data, validation="tail", folds=None, restarts=1),
                       bench.train[:1], bench.train[1:], 0)
    assert inits[-1] == (["a"], 2) and [r.name for r in seen["val"]] == ["b"]
