"""Probe of 2026-12-05: silent wrong answers where the channels of multi-input multi-output data meet in
``ssmkit.sysid`` and in the analysis of MIMO deep Wiener models. The data are a known system with 2 inputs and 3
outputs at very different scales (inputs ~1e-3 and ~1e3 with offsets, outputs ~1e-3, ~1e3 around 1e4, and ~1), two
first-order filters with poles 0.9 and 0.7 mixed into the outputs; every number is checked against a reference
computed here from the definitions (numpy statistics and metrics, the model's own ``step`` loop, the composition of
the exported block with the encoder, skip and decoder, a DFT of the forward's impulse response, finite differences).

Findings (both fixed, a test each failing before the fix):

1. *The data-driven initialisation broke on a constant channel* (``ssmkit.sysid.init``: ``subspace_poles``,
   ``arx_poles``, hence ``init_from_data`` and ``first_layer_init="data"``, the Cascaded Tanks and Bouc-Wen default).
   Each channel was divided by its std + 1e-300; for a channel that is constant in the estimation data (an input held
   still in a MIMO test, a dead sensor) numpy's std over axis 0 is not 0 but rounding (2.3e-16 for 5e-3 over 3 500
   samples, up to ~1e-11 of the value on long records), so the channel's rounding was blown up to the size of the
   other channels or beyond. On the noise-free system (poles {0.7, 0.9}): a constant third output of 1e4 gave the
   order-2 subspace poles {0, 1.0} and the automatic order {1.0}; a constant output of 0.3 made the automatic order
   take a third pole at z = 1.0 (``init_from_data`` wrote the modes |z| = {0.9999, 0.9, 0.7} into the layer: the slow
   spurious mode the init's docs warn ruins long simulations); a constant output of 5e-3 gave the order-2 poles
   {0.869, 1.0}, with 1 % output noise too; a constant input of 1e4 gave the ARX poles {±7e-161}. Now a constant channel keeps the scale 1, the rule of
   ``DeepWiener``'s own normalisation (computed by torch, whose std of a constant is 0): the poles are {0.7, 0.9} in
   every case.
2. *The periodicity check of the periodic steady state ignored small inputs* (``workflow.periodic_steady_state``,
   ``evaluate(..., steady_state=k)``): samples a period apart had to agree to 1e-6 of the largest |u| over *all*
   inputs, so beside an input of ~2e3 an input of ~1e-3 that was not periodic at all (differing by 3.6e-3, 120 % of
   its own largest value) passed, and the "steady state" was primed with the wrong input. Now each input is checked
   against its own size.

Checked and right (kept as guards): the normalisation per channel from the training part only (tail and k-fold: the
held-out block's outputs left out, its inputs in, as documented); permuting the data's outputs and inputs permutes the
trained model exactly (no encoder, encoder, k-fold blocks), so output k is trained against measured output k; the
training loss normalises each output by its own std; ``evaluate`` and the ``ssmkit sysid`` command's results.json
per output (RMSE, MAE, NRMSE, fit, R²) against a ``step`` loop of the saved model; ``ssmkit analyze``'s equilibria per
input (μ_i ± 2σ_i of the training part, DC gain [point, output, input] against finite differences of long
simulations); prediction mode (free run and one-step predictions per output); the k-fold ensemble's out-of-fold RMSE
per output and its test scores; each exported block composed with encoder, skip, decoder and the per-channel scales
is the model's frequency response from input i to output j; the subspace and ARX poles of the MIMO system at
disparate scales, invariant to permuting channels; the censored error elementwise per output.

Noticed and left alone (documented design): ``output_range`` and ``level_weight`` were one range / one level in
physical units for every output (since test_probe_sysid_scores_2026_12_05 they take one per output too, and the
validation score is the NRMSE averaged over the outputs); a benchmark has one ``unit`` and ``scale`` for all outputs;
``simulation.png`` and ``error_spectrum.png`` draw output 1 only; ``ssmkit sysid`` reads registered benchmarks, not a
user's CSV.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from scipy import signal

from ssmkit.cli import main
from ssmkit.sysid import benchmarks
from ssmkit.sysid.fit import SimulationFit, fit_simulation, fold_blocks
from ssmkit.sysid.init import arx_poles, init_from_data, subspace_poles
from ssmkit.sysid.recipes import Recipe
from ssmkit.sysid.records import IORecord, SysidBenchmark
from ssmkit.sysid.wiener import DeepWiener
from ssmkit.sysid.workflow import evaluate, identify, periodic_steady_state
from tests.probes.test_probe_analysis_2026_12_05 import pulse_responses

F64 = torch.float64
N_INIT = 10
TRUE_POLES = np.array([0.7, 0.9])


def mimo_record(n: int, seed: int, name: str = "r", dt: float = 0.1, noise: float = 0.0) -> IORecord:
    """2 inputs (1e-3 around 5e-3, 1e3 around 2e3), 3 outputs: 1e-3 (x0 + x1/2), 1e3 (x1 - 0.3 x0) + 1e4 and
    tanh(2 x0), x0 and x1 the inputs' normalised parts through poles 0.9 and 0.7 (plus output noise of ``noise``
    times each linear output's std)."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((n, 2))
    u = np.stack([1e-3 * e[:, 0] + 5e-3, 1e3 * e[:, 1] + 2e3], 1)
    x0 = signal.lfilter([0.1], [1, -0.9], e[:, 0])
    x1 = signal.lfilter([0.3], [1, -0.7], e[:, 1])
    y = np.stack([1e-3 * (x0 + 0.5 * x1), 1e3 * (x1 - 0.3 * x0) + 1e4, np.tanh(2 * x0)], 1)
    if noise:
        y[:, :2] += noise * y[:, :2].std(0) * rng.standard_normal((n, 2))
    return IORecord(torch.tensor(u), torch.tensor(y), dt, name)


def mimo_bench() -> SysidBenchmark:
    return SysidBenchmark("mimo_probe", "MIMO probe", [mimo_record(500, 0, "train")],
                          [mimo_record(300, 5, "t1"), mimo_record(200, 6, "t2")], N_INIT, "SI")


def np_scores(y_hat: np.ndarray, y: np.ndarray, n_init: int) -> dict[str, np.ndarray]:
    """RMSE, MAE, NRMSE (population std), fit % and R² per output after the init window, from the definitions."""
    e, yy = y_hat[n_init:] - y[n_init:], y[n_init:]
    r = np.sqrt(np.mean(e ** 2, axis=0))
    sd = np.sqrt(np.mean((yy - yy.mean(0)) ** 2, axis=0))
    return {"rmse": r, "mae": np.mean(np.abs(e), axis=0), "nrmse": r / sd, "fit": 100 * (1 - r / sd),
            "r2": 1 - (r / sd) ** 2}


def step_loop(model, record: IORecord, n_enc: int) -> np.ndarray:
    """The model's simulation of a record by its own ``step``, from the encoder's state after the first ``n_enc``
    samples (those returned as measured) or from rest."""
    u, y = record.u[None], record.y[None]
    with torch.no_grad():
        state = model.estimate_state(u[:, :n_enc], y[:, :n_enc]) if n_enc else model.initial_state(1)
        out = []
        for t in range(n_enc, len(record)):
            y_t, state = model.step(u[:, t], state)
            out.append(y_t[0].double())
    return torch.cat([record.y[:n_enc], torch.stack(out)]).numpy()


def small_model(enc: int = 0, **kw) -> DeepWiener:
    return DeepWiener(2, 3, d_model=4, n_layers=kw.pop("n_layers", 2), layer_options={"d_state": 4}, dt=0.1,
                      encoder_window=enc, encoder_hidden=8, dtype=F64, **kw)


# ----------------------------------------------------------------------------------------------------------------
# normalisation and training per channel


def test_normalisation_is_per_channel_from_the_training_part_only():
    recs = [mimo_record(400, 0, "a"), mimo_record(300, 1, "b")]
    cfg = SimulationFit(window=32, batch_size=4, steps=1, val_fraction=0.25, val_every=1)
    torch.manual_seed(0)
    model = small_model()
    fit_simulation(model, recs, config=cfg)
    cut = [int(round(len(r) * 0.75)) for r in recs]  # the validated tail is left out
    U = np.concatenate([r.u[:c].numpy() for r, c in zip(recs, cut)])
    Y = np.concatenate([r.y[:c].numpy() for r, c in zip(recs, cut)])
    np.testing.assert_allclose(model.u_mean.numpy(), U.mean(0), rtol=1e-12)
    np.testing.assert_allclose(model.u_std.numpy(), U.std(0), rtol=1e-12)
    np.testing.assert_allclose(model.y_mean.numpy(), Y.mean(0), rtol=1e-12)
    np.testing.assert_allclose(model.y_std.numpy(), Y.std(0), rtol=1e-12)
    # k-fold: the held-out block's outputs do not enter the output scaling; the inputs are known and do (documented)
    blocks = fold_blocks([len(r) for r in recs], 3, 1)
    model = small_model()
    fit_simulation(model, recs, config=SimulationFit(window=32, batch_size=4, steps=1, val_every=1), blocks=blocks)
    keep = [np.r_[0:b.start, b.stop:len(r)] for r, b in zip(recs, blocks)]
    Y = np.concatenate([r.y.numpy()[k] for r, k in zip(recs, keep)])
    U = np.concatenate([r.u.numpy() for r in recs])
    np.testing.assert_allclose(model.y_mean.numpy(), Y.mean(0), rtol=1e-12)
    np.testing.assert_allclose(model.y_std.numpy(), Y.std(0), rtol=1e-12)
    np.testing.assert_allclose(model.u_mean.numpy(), U.mean(0), rtol=1e-12)
    np.testing.assert_allclose(model.u_std.numpy(), U.std(0), rtol=1e-12)


@pytest.mark.parametrize("enc, kfold", [(0, False), (8, False), (8, True)], ids=["rest", "encoder", "kfold"])
def test_permuting_outputs_and_inputs_of_the_data_permutes_the_trained_model(enc, kfold):
    """Output k must be trained against measured output k (and input i read as input i): with the data's outputs and
    inputs permuted and the starting weights permuted alike (decoder rows, encoder columns, the state encoder's
    [u, y] features per past sample), training gives the same model permuted, up to rounding."""
    recs = [mimo_record(400, 0, "a"), mimo_record(300, 1, "b")]
    perm, iperm = [2, 0, 1], [1, 0]
    permuted = [IORecord(r.u[:, iperm], r.y[:, perm], r.dt, r.name) for r in recs]
    torch.manual_seed(1)
    a = small_model(enc)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.decoder.weight.copy_(a.decoder.weight[perm])
        b.decoder.bias.copy_(a.decoder.bias[perm])
        b.encoder.weight.copy_(a.encoder.weight[:, iperm])
        if enc:
            w = a.state_encoder[0].weight.view(-1, enc, 5)  # per past sample: [u (2), y (3)]
            b.state_encoder[0].weight.copy_(w[:, :, iperm + [2 + k for k in perm]].reshape(-1, enc * 5))
    cfg = SimulationFit(window=32, batch_size=4, steps=30, val_fraction=0.25, val_every=5, lr=1e-2)
    blocks = fold_blocks([len(r) for r in recs], 3, 1) if kfold else None
    ha = fit_simulation(a, recs, config=cfg, blocks=blocks)
    hb = fit_simulation(b, permuted, config=cfg, blocks=blocks)
    np.testing.assert_allclose(b.y_std.numpy(), a.y_std.numpy()[perm], rtol=1e-14)
    np.testing.assert_allclose(b.u_mean.numpy(), a.u_mean.numpy()[iperm], rtol=1e-14)
    for (sa, va), (sb, vb) in zip(ha["val_rmse"], hb["val_rmse"]):  # per output, in the data's units
        assert sa == sb
        np.testing.assert_allclose(vb, np.array(va)[perm], rtol=1e-9)
    with torch.no_grad():
        ya = a(recs[0].u[None])[0][0]
        yb = b(recs[0].u[None][:, :, iperm])[0][0]
    assert ya[:, 0].std() < 1e-2 and ya[:, 1].std() > 10  # the outputs' scales: 1e-3-ish and 1e3-ish
    err = ((yb - ya[:, perm]).abs().amax(0) / ya[:, perm].std(0)).numpy()
    assert err.max() < 1e-10, err


def test_training_loss_normalises_each_output_by_its_own_std():
    """One window covers the whole record (every draw is the same window): the first loss is
    mean_t,k ((ŷ_k - y_k) / σ_k)² with σ_k the population std of output k, ŷ the starting weights' simulation with the
    data's means and stds (numpy) as scales. Unnormalised, it would be ~1e6 (output 1 is in the thousands)."""
    rec = mimo_record(200, 2, "a")
    torch.manual_seed(0)
    model = small_model()
    start = copy.deepcopy(model)
    h = fit_simulation(model, [rec], config=SimulationFit(window=200, batch_size=3, steps=1, val_fraction=0.0))
    u, y = rec.u.numpy(), rec.y.numpy()
    with torch.no_grad():
        for name, value in (("u_mean", u.mean(0)), ("u_std", u.std(0)), ("y_mean", y.mean(0)), ("y_std", y.std(0))):
            getattr(start, name).copy_(torch.tensor(value))
    y_hat = step_loop(start, rec, 0)
    ref = np.mean(((y_hat - y) / y.std(0)) ** 2)
    assert abs(h["train_loss"][0] / ref - 1) < 1e-12
    assert ref < 100


# ----------------------------------------------------------------------------------------------------------------
# scores per output: evaluate, the CLI's results.json, ssmkit analyze


def test_sysid_cli_results_and_analyze_equilibria_per_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(benchmarks.BENCHMARKS, "mimo_probe", lambda folder=None: mimo_bench())
    out = tmp_path / "run"
    args = ["sysid", "--benchmark", "mimo_probe", "--model", "s4d", "--out", str(out), "--steps", "10",
            "--recipe.d_model", "4", "--recipe.n_layers", "1", "--recipe.d_state", "4", "--recipe.window", "32",
            "--recipe.batch_size", "4", "--recipe.encoder_window", str(N_INIT), "--recipe.activation", "tanh",
            "--recipe.timescale", "[0.1, 1.0]", "--no-plots"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    model = DeepWiener.from_checkpoint(torch.load(out / "model.pt", weights_only=True))
    bench = mimo_bench()
    assert [r["name"] for r in results["test"]] == ["t1", "t2"]
    for entry, rec in zip(results["test"], bench.test):
        ref = np_scores(step_loop(model, rec, N_INIT), rec.y.numpy(), N_INIT)
        for key in ("rmse", "mae", "nrmse", "fit", "r2"):
            np.testing.assert_allclose(entry[key], ref[key], rtol=1e-5, err_msg=key)  # a float32 model
        assert entry["rmse"][1] > 1e3 * entry["rmse"][0]  # in each output's own units
    assert main(["analyze", str(out / "model.pt"), "--no-plots", "--out", str(tmp_path / "an")]) == 0
    capsys.readouterr()
    eq = json.loads((tmp_path / "an" / "analysis.json").read_text())["equilibria"]
    train = bench.train[0]
    cut = int(round(len(train) * 0.8))  # the recipe's validated tail is not the training part
    mu, sd = train.u[:cut].numpy().mean(0), train.u[:cut].numpy().std(0)
    assert [sw["input"] for sw in eq] == [0, 1]
    m64 = copy.deepcopy(model).double()
    length = 1500

    def settle(u0: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return m64(torch.tensor(u0).expand(1, length, 2).clone())[0][0, -1].numpy()

    for i, sw in enumerate(eq):
        u = np.array(sw["u"])
        np.testing.assert_allclose(u[[0, -1], i], [mu[i] - 2 * sd[i], mu[i] + 2 * sd[i]], rtol=0, atol=1e-6 * sd[i])
        np.testing.assert_allclose(u[:, 1 - i], mu[1 - i], rtol=0, atol=1e-6 * sd[1 - i])
        gain = np.array(sw["dc_gain"])  # (points, outputs, inputs)
        assert gain.shape == (21, 3, 2)
        for g in (0, 13):
            np.testing.assert_allclose(sw["y"][g], settle(u[g]), rtol=1e-6, atol=1e-9 * np.abs(sw["y"][g]).max())
            h = 1e-4 * sd[i]
            du = np.eye(2)[i] * h
            slope = (settle(u[g] + du) - settle(u[g] - du)) / (2 * h)  # (outputs,) for input i
            np.testing.assert_allclose(gain[g, :, i], slope, rtol=1e-4, atol=1e-6 * np.abs(slope).max())


def test_prediction_mode_per_output_against_step_loops():
    bench = mimo_bench()
    recipe = Recipe(d_model=4, n_layers=1, d_state=4, window=32, batch_size=4, steps=15, val_every=5, lr=1e-2)
    model, _ = identify(bench, "s4d", recipe, mode="prediction", dtype=F64)
    assert model.n_inputs == 5 and model.n_outputs == 3
    scores = evaluate(model, bench, mode="prediction")
    for entry, rec in zip(scores["records"], bench.test):
        u, y = rec.u, rec.y
        with torch.no_grad():  # free run: measured y_{t-1} while t < n_init, then the model's own
            state, prev, free = model.initial_state(1), y[0], [y[0]]
            one_state, one = model.initial_state(1), [y[0]]
            for t in range(1, len(rec)):
                y_t, state = model.step(torch.cat([u[t], prev])[None], state)
                free.append(y_t[0])
                prev = y[t] if t < N_INIT else y_t[0]
                o_t, one_state = model.step(torch.cat([u[t], y[t - 1]])[None], one_state)
                one.append(o_t[0])
        ref = np_scores(torch.stack(free).numpy(), y.numpy(), N_INIT)
        np.testing.assert_allclose(entry["rmse"], ref["rmse"], rtol=1e-10)
        np.testing.assert_allclose(entry["fit"], ref["fit"], rtol=1e-10)
        np.testing.assert_allclose(entry["one_step_rmse"], np_scores(torch.stack(one).numpy(), y.numpy(), N_INIT)["rmse"],
                                   rtol=1e-10)


def test_kfold_ensemble_out_of_fold_and_test_scores_per_output():
    bench = SysidBenchmark("mimo", "MIMO", [mimo_record(500, 0, "a"), mimo_record(400, 1, "b")],
                           [mimo_record(300, 5, "t1")], N_INIT, "SI")
    recipe = Recipe(d_model=4, n_layers=1, d_state=4, window=32, batch_size=4, steps=10, val_every=5, lr=1e-2,
                    encoder_window=N_INIT, restarts=3, validation="kfold", combine="average")
    ensemble, history = identify(bench, "s4d", recipe, dtype=F64)
    errors = []
    for j, member in enumerate(ensemble.members):  # member j held out block j of every record
        for rec in bench.train:
            lo, hi = int(round(j * len(rec) / 3)), int(round((j + 1) * len(rec) / 3))
            lo = max(lo, N_INIT)  # the encoder's samples are not scored
            errors.append(step_loop(member, rec, N_INIT)[lo:hi] - rec.y[lo:hi].numpy())
    per_output = np.sqrt(np.mean(np.concatenate(errors) ** 2, axis=0))
    assert abs(history["best_val_rmse"] / per_output.mean() - 1) < 1e-10
    rec = bench.test[0]
    mean_sim = np.mean([step_loop(m, rec, N_INIT) for m in ensemble.members], axis=0)
    ref = np_scores(mean_sim, rec.y.numpy(), N_INIT)
    entry = evaluate(ensemble, bench)["records"][0]
    for key in ("rmse", "fit", "mae"):
        np.testing.assert_allclose(entry[key], ref[key], rtol=1e-10, err_msg=key)


# ----------------------------------------------------------------------------------------------------------------
# analysis: input i -> output j


@pytest.mark.parametrize("name, options", [("s4d", {"d_state": 4}), ("s5", {"d_state": 4, "blocks": 1}),
                                           ("lru", {"d_state": 4, "r_max": 0.8})], ids=["s4d", "s5", "lru"])
def test_exported_block_composed_with_the_scales_is_the_models_response_from_input_i_to_output_j(name, options):
    """One linear block (σ = identity): y = σ_y ⊙ W (G(z) + F) E (u / σ_u) + const, with G the block's exported
    state space (a bank of H SISO systems or one H × H system) at Ts; against the DFT of the model's forward response to
    a unit pulse in input i, entry by entry (gains from 1e-7 to 4e5)."""
    torch.manual_seed(0)
    extra = {"timescale": (0.1, 0.5)} if name != "lru" else {}
    model = DeepWiener(2, 3, d_model=4, n_layers=1, layer=name, layer_options=options, activation=None, dt=0.1,
                       dtype=F64, **extra)
    with torch.no_grad():
        model.u_mean.copy_(torch.tensor([5e-3, 2e3]))
        model.u_std.copy_(torch.tensor([1e-3, 1e3]))
        model.y_mean.copy_(torch.tensor([0.0, 1e4, 0.5]))
        model.y_std.copy_(torch.tensor([1e-3, 1e3, 1.0]))
        model.skips[0].weight.mul_(0.3)
    (ss,) = model.state_space()
    assert ss.dt == 0.1
    omega = np.array([0.0, 1.0, 7.0, np.pi / 0.1])
    H = ss.frequency_response(omega)
    if ss.nsystems == 4:
        G = np.zeros((4, 4, omega.size), complex)
        for h in range(4):
            G[h, h] = H[h, 0, 0]
    else:
        G = H[0]
    W, E, F = (model.decoder.weight.detach().numpy(), model.encoder.weight.detach().numpy(),
               model.skips[0].weight.detach().numpy())
    ref = np.einsum("jh,hkw,ki->jiw", W, G + F[:, :, None], E)
    ref = ref * model.y_std.numpy()[:, None, None] / model.u_std.numpy()[None, :, None]
    length = 400
    h = pulse_responses(model, length, 2)
    assert np.abs(h[..., -20:]).max() < 1e-12 * np.abs(h).max()
    dft = np.einsum("jil,lw->jiw", h, np.exp(-1j * np.outer(np.arange(length), omega * 0.1)))
    scale = np.abs(ref).max(axis=2, keepdims=True)  # each (output, input) entry on its own size
    assert np.abs((dft - ref) / scale).max() < 1e-9


# ----------------------------------------------------------------------------------------------------------------
# the data-driven initialisation with several inputs and outputs


def test_subspace_and_arx_poles_of_the_mimo_system_at_disparate_scales():
    recs = [mimo_record(2000, 0, "a"), mimo_record(1500, 1, "b")]
    linear = [IORecord(r.u, r.y[:, :2], r.dt, r.name) for r in recs]
    np.testing.assert_allclose(np.sort(subspace_poles(linear, order=2).real), TRUE_POLES, atol=1e-9)
    np.testing.assert_allclose(np.sort(subspace_poles(linear).real), TRUE_POLES, atol=1e-9)  # automatic order 2
    swapped = [IORecord(r.u[:, [1, 0]], r.y[:, [1, 0]], r.dt, r.name) for r in linear]
    np.testing.assert_allclose(np.sort(subspace_poles(swapped, order=2).real), TRUE_POLES, atol=1e-9)
    for k in (0, 1):  # each linear output has the common denominator (1 - 0.9 q⁻¹)(1 - 0.7 q⁻¹)
        np.testing.assert_allclose(np.sort(arx_poles(recs, 2, output_index=k).real), TRUE_POLES, atol=1e-9)
    with pytest.raises(ValueError, match=r"output_index must be an int in \[0, 3\)"):
        arx_poles(recs, 2, output_index=3)


def with_constant(records: list[IORecord], value: float, where: str) -> list[IORecord]:
    out = []
    for r in records:
        c = torch.full((len(r), 1), value, dtype=F64)
        u, y = (torch.cat([r.u, c], 1), r.y) if where == "u" else (r.u, torch.cat([r.y, c], 1))
        out.append(IORecord(u, y, r.dt, r.name))
    return out


def test_a_constant_channel_does_not_move_the_data_driven_poles():
    """Finding 1: a channel constant in the estimation data (an input held still, a dead sensor) gave poles at
    z = 1 and 0 instead of {0.7, 0.9} (numbers in the module docstring)."""
    recs = [IORecord(r.u, r.y[:, :2], r.dt, r.name) for r in (mimo_record(2000, 0, "a"), mimo_record(1500, 1, "b"))]
    for value in (1e4, 0.3, 5e-3):
        for where in ("u", "y"):
            data = with_constant(recs, value, where)
            np.testing.assert_allclose(np.sort(subspace_poles(data, order=2).real), TRUE_POLES, atol=1e-9)
            np.testing.assert_allclose(np.sort(subspace_poles(data).real), TRUE_POLES, atol=1e-9)
            np.testing.assert_allclose(np.sort(arx_poles(data, 2, output_index=1).real), TRUE_POLES, atol=1e-9)
    noisy = [IORecord(r.u, r.y[:, :2], r.dt, r.name)
             for r in (mimo_record(2000, 0, "a", noise=0.01), mimo_record(1500, 1, "b", noise=0.01))]
    for value in (5e-3, 0.3):
        poles = np.sort(subspace_poles(with_constant(noisy, value, "y"), order=2).real)
        np.testing.assert_allclose(poles, TRUE_POLES, atol=2e-3)  # before: {0.869, 1.0} for 5e-3
        np.testing.assert_allclose(np.sort(subspace_poles(with_constant(noisy, value, "y")).real), TRUE_POLES, atol=2e-3)
    # into a model: the first layer's exported poles hold the system's, and no spurious slow mode
    torch.manual_seed(0)
    model = DeepWiener(2, 3, d_model=4, n_layers=1, layer_options={"d_state": 8}, dt=0.1, dtype=F64)
    z = init_from_data(model, with_constant(recs, 0.3, "y"))  # before: a third mode at |z| = 0.9999 written
    np.testing.assert_allclose(np.sort(np.abs(z)), TRUE_POLES, atol=1e-9)
    poles = np.abs(model.state_space()[0].poles())  # (the layer's other modes keep their own init)
    assert all(np.abs(poles - p).min() < 1e-9 for p in TRUE_POLES) and poles.max() < 0.9999 - 1e-6


# ----------------------------------------------------------------------------------------------------------------
# periodic steady state, saturating outputs


def test_periodicity_is_checked_per_input():
    """Finding 2: a non-periodic input of ~1e-3 beside a periodic one of ~2e3 passed the check."""
    g = torch.Generator().manual_seed(0)
    P = 64
    big = torch.randn(P, generator=g, dtype=F64).repeat(3) * 1e3 + 2e3
    small = torch.randn(3 * P, generator=g, dtype=F64) * 1e-3
    with pytest.raises(ValueError, match="not periodic with period 64: input 0's samples"):
        periodic_steady_state(lambda v: v, torch.stack([small, big], 1), P)
    with pytest.raises(ValueError, match="not periodic with period 64: input 1's samples"):
        periodic_steady_state(lambda v: v, torch.stack([big, small], 1), P)
    periodic = torch.stack([small[:P].repeat(3), big], 1)  # both periodic: accepted, the record's part returned
    primed = periodic_steady_state(lambda v: 2 * v, periodic, P, prime=2)
    torch.testing.assert_close(primed, 2 * periodic, rtol=0, atol=0)


def test_output_range_is_one_range_for_every_output_and_censoring_is_elementwise():
    # a range per output is tested in test_probe_sysid_scores_2026_12_05; an empty pair or an array is refused
    for bad in (((0.0, 0.0), (1.0, 2.0)), np.array([0.0, 1.0])):
        with pytest.raises(ValueError, match="output_range must be None or"):
            DeepWiener(2, 2, output_range=bad)
    model = DeepWiener(2, 3, d_model=4, n_layers=1, layer_options={"d_state": 4}, output_range=(-1.0, 1.0), dtype=F64)
    g = torch.Generator().manual_seed(3)
    y_hat = 2 * torch.randn(2, 40, 3, generator=g, dtype=F64)
    y = (1.5 * torch.randn(2, 40, 3, generator=g, dtype=F64)).clamp(-1.0, 1.0)
    ref = torch.empty_like(y)
    for idx in np.ndindex(*y.shape):  # a measurement at a limit says only "at or beyond it"
        a, b = float(y_hat[idx]), float(y[idx])
        ref[idx] = min(a - 1.0, 0.0) if b >= 1.0 else max(a + 1.0, 0.0) if b <= -1.0 else a - b
    assert int((y.abs() == 1.0).sum()) > 20
    torch.testing.assert_close(model.censored_error(y_hat, y), ref, rtol=0, atol=0)
    torch.testing.assert_close(model.saturate(y_hat), y_hat.clamp(-1.0, 1.0), rtol=0, atol=0)
