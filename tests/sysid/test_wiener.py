"""DeepWiener: the layer protocol (step = forward, encoder states), stability, sampling time, and identification of
a known Wiener system."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import signal

from ssmkit.sysid.fit import SimulationFit, fit_simulation, simulate_record, split_tail
from ssmkit.sysid.metrics import fit_percent
from ssmkit.sysid.records import IORecord
from ssmkit.sysid.wiener import DeepWiener
from tests.conftest import DEVICE, rel_err, run_steps


def model(**kw) -> DeepWiener:
    torch.manual_seed(0)
    opts = dict(n_inputs=2, n_outputs=3, d_model=4, n_layers=2, layer="s4d", layer_options={"d_state": 4},
                dtype=torch.float64, device=DEVICE)
    opts.update(kw)
    return DeepWiener(**opts)


def input_and_encoded_state(m: DeepWiener, L: int, n: int) -> tuple[torch.Tensor, list]:
    """A random input u (2, L, 2) for ``model()``'s shapes and the state its encoder estimates from n random past
    samples of u and y."""
    u = torch.randn(2, L, 2, dtype=torch.float64, device=DEVICE)
    state = m.estimate_state(torch.randn(2, n, 2, dtype=torch.float64, device=DEVICE),
                             torch.randn(2, n, 3, dtype=torch.float64, device=DEVICE))
    return u, state


def test_step_equals_forward_and_encoder_states_continue():
    m = model(encoder_window=5)
    u, state = input_and_encoded_state(m, 25, 5)
    with torch.no_grad():
        y, final = m(u, state)
        y_steps, _ = run_steps(m, u, state)
        y1, s1 = m(u[:, :11], state)
        y2, _ = m(u[:, 11:], s1)
    assert rel_err(y_steps, y) < 1e-10
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-10
    with pytest.raises(ValueError, match=r"u must be \(B, L, 2\)"):
        m(torch.randn(2, 5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"u must be on the model's device .*; got meta"):
        m(torch.randn(2, 5, 2, dtype=torch.float64, device="meta"))
    with pytest.raises(ValueError, match="needs LTI layers"):
        DeepWiener(1, 1, layer="rglru")


def test_normalisation_and_sampling_time_in_physical_units():
    m = model(dt=0.25, timescale=(0.5, 5.0))
    # Δ = Ts/τ samples for τ in [0.5, 5] s (tests/sysid/test_timescale.py checks the poles this gives)
    assert m.layers[0].dt_min == pytest.approx(0.05) and m.layers[0].dt_max == pytest.approx(0.5)
    ss = m.state_space()
    assert all(s.dt == 0.25 for s in ss)
    u = [torch.randn(100, 2, dtype=torch.float64) * 3 + 1]
    y = [torch.randn(100, 3, dtype=torch.float64) * 0.1 - 2]
    m.set_normalisation(u, y)
    assert rel_err(m.u_mean, u[0].mean(0)) < 1e-12 and rel_err(m.y_std, y[0].std(0, correction=0)) < 1e-12


@pytest.mark.parametrize("layer,opts", [("s4d", {"d_state": 4}), ("s4d", {"d_state": 4, "discretization": "bilinear"})])
def test_schur_stability_holds_for_adversarial_parameters(layer, opts):
    m = model(layer=layer, layer_options=opts)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for lay in m.layers:
            lay.log_A_real.copy_(torch.empty_like(lay.log_A_real).uniform_(-12, 8, generator=g))
            lay.A_imag.copy_(torch.empty_like(lay.A_imag).uniform_(-1e4, 1e4, generator=g))
            lay.log_dt.copy_(torch.empty_like(lay.log_dt).uniform_(-8, 6, generator=g))
    assert m.spectral_radius() < 1.0 and m.is_stable()


def test_simulations_from_different_states_converge():
    # δISS in practice: with Schur blocks and a Lipschitz σ, two simulations from different initial states under the
    # same input converge (the blocks' slowest mode here decays like exp(-0.5 · 0.05 t))
    m = model(layer_options={"d_state": 4, "dt_min": 0.05, "dt_max": 0.1})
    u = torch.randn(1, 1500, 2, dtype=torch.float64)
    with torch.no_grad():
        a, _ = m(u)
        s = [t + 5 * torch.randn_like(t) for t in m.initial_state(1)]
        b, _ = m(u, s)
    start = float((a[0, :5] - b[0, :5]).abs().max())
    assert start > 1e-2 and float((a[0, -50:] - b[0, -50:]).abs().max()) < 1e-6 * start


def test_split_tail_keeps_records_apart():
    r = IORecord(torch.arange(10.0)[:, None], torch.arange(10.0)[:, None] * 2, 1.0, "r")
    tr, va = split_tail([r, r], 0.3, 4)
    assert [len(x) for x in tr] == [7, 7] and [len(x) for x in va] == [3, 3]
    assert va[0].u[0, 0] == 7.0
    with pytest.raises(ValueError, match="too short"):
        split_tail([r], 0.3, 8)


@pytest.mark.slow
def test_identifies_a_known_wiener_system():
    b, a = signal.cheby1(2, 1, 0.1)  # a resonant 2nd-order filter, then a saturation

    def system(u):
        return np.tanh(1.5 * signal.lfilter(b, a, u))

    rng = np.random.default_rng(0)
    u, ut = rng.standard_normal(4000), rng.standard_normal(1000)
    train = [IORecord(torch.tensor(u)[:, None], torch.tensor(system(u))[:, None], 1.0, "train")]
    test = IORecord(torch.tensor(ut)[:, None], torch.tensor(system(ut))[:, None], 1.0, "test")
    torch.manual_seed(0)
    m = DeepWiener(1, 1, d_model=4, n_layers=2, layer="s4d", layer_options={"d_state": 8}, dtype=torch.float64)
    history = fit_simulation(m, train, config=SimulationFit(window=128, batch_size=16, steps=300, lr=1e-2,
                                                            val_every=50, patience=None))
    with torch.no_grad():
        y_sim, _ = simulate_record(m, test)
    assert history["best_step"] > 0
    assert float(fit_percent(y_sim, test.y, n_init=20)) > 55.0  # a linear model of it reaches ~45 %


def test_cosine_schedule_decays_every_rate_to_zero():
    import math

    r = IORecord(torch.randn(60, 2, dtype=torch.float64), torch.randn(60, 3, dtype=torch.float64), 1.0, "r")
    steps, lr = 6, 1e-2
    m = model()
    history = fit_simulation(m, [r], config=SimulationFit(window=20, batch_size=2, steps=steps, lr=lr, val_fraction=0,
                                                          schedule="cosine"))
    want = [lr * 0.5 * (1 + math.cos(math.pi * k / steps)) for k in range(1, steps + 1)]  # after step k
    assert history["lr"] == pytest.approx(want, abs=1e-15) and history["lr"][-1] == pytest.approx(0.0, abs=1e-15)
    constant = fit_simulation(model(), [r], config=SimulationFit(window=20, batch_size=2, steps=3, lr=lr, val_fraction=0))
    assert constant["lr"] == [lr] * 3
    with pytest.raises(ValueError, match="schedule must be one of"):
        fit_simulation(model(), [r], config=SimulationFit(window=20, steps=1, val_fraction=0, schedule="step"))


@pytest.mark.parametrize("layer,opts", [("mamba", {"d_state": 4}), ("rglru", {})])
def test_time_varying_blocks_step_equals_forward_and_leave_the_analysis_to_lti_blocks(layer, opts):
    with pytest.raises(ValueError, match="time_varying=True accepts selective layers"):
        model(layer=layer, layer_options=opts)
    with pytest.raises(ValueError, match="time_varying must be a bool"):
        model(layer="s4d", time_varying=1)
    m = model(layer=layer, layer_options=opts, encoder_window=4, time_varying=True)
    assert m.arguments["time_varying"] is True and not m.lti and "time_varying" not in model().arguments
    u, state = input_and_encoded_state(m, 15, 4)
    with torch.no_grad():
        y, _ = m(u, state)
        y_steps, _ = run_steps(m, u, state)
        y_rest, _ = m(u)
    assert rel_err(y_steps, y) < 1e-10
    assert rel_err(y, y_rest) > 1e-6  # the encoder's state reaches the selective layers' states
    assert m.state_space() == [] and np.isnan(m.spectral_radius()) and m.is_stable() is False  # no certificate
    again = DeepWiener.from_checkpoint(m.checkpoint()).to(DEVICE)  # built on the CPU
    with torch.no_grad():
        assert torch.equal(again(u, state)[0], y)


def test_a_float32_model_reads_float64_records_like_the_layers():
    # benchmark records are float64; a float32 model used to fail in its encoder ("mat1 and mat2 must have the same
    # dtype"). It now computes in float32 and answers in the input's dtype, as the layers do.
    m = model(dtype=torch.float32, encoder_window=3)
    u64 = torch.randn(2, 9, 2, dtype=torch.float64, device=DEVICE)
    y_past = torch.randn(2, 3, 3, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        state32 = m.estimate_state(u64[:, :3].float(), y_past.float())
        state64 = m.estimate_state(u64[:, :3], y_past)
        y32, _ = m(u64.float(), state32)
        y64, _ = m(u64, state64)
        y_t, _ = m.step(u64[:, 0], m.initial_state(2))
        y_t32, _ = m.step(u64[:, 0].float(), m.initial_state(2))
    assert y64.dtype == torch.float64 and y_t.dtype == torch.float64
    assert torch.equal(y64, y32.double()) and torch.equal(y_t, y_t32.double())
    with pytest.raises(ValueError, match="u must be real"):
        m(u64.to(torch.complex128))


def test_deep_wiener_is_exported_where_the_docs_name_it():
    import ssmkit.sysid

    assert ssmkit.sysid.DeepWiener is DeepWiener and "DeepWiener" in ssmkit.sysid.__all__  # ssmkit.sysid.DeepWiener


def test_constructor_and_fit_options_are_validated():
    # these were accepted (a bool dt or window, a zero-width encoder, a negative rate that ascends the loss, a washout
    # as long as the window: every weight 0/0) or failed with a TypeError from deep inside
    for bad, match in ((dict(timescale=5.0), "two numbers"), (dict(timescale=("a", "b")), "two numbers"),
                       (dict(timescale=(1.0, math.inf)), "0 < τ_min < τ_max"), (dict(dt=True), "dt must be"),
                       (dict(encoder_window=True), "encoder_window must be"),
                       (dict(encoder_window=3, encoder_hidden=0), "encoder_hidden must be"),
                       (dict(layer_options={"dstate": 4}), r"layer 's4d' has no option\(s\) \['dstate'\]"),
                       (dict(layer_options=4), r"layer_options must be a dict of the layer's options, or None; got 4"),
                       (dict(layer_options="d_state=4"), "layer_options must be a dict"),  # dict("...") raised
                       (dict(layer="lru", timescale=(1.0, 10.0)), r"'lru' has no Δ")):
        with pytest.raises(ValueError, match=match):
            model(**bad)
    m = model()
    u = torch.randn(200, 2, dtype=torch.float64)
    records = [IORecord(u, torch.randn(200, 3, dtype=torch.float64), 1.0, "r")]
    for bad, match in ((dict(lr=-1e-3), "lr must be a finite number >= 0"), (dict(steps=-1), "steps must be"),
                       (dict(window=0), "window must be"), (dict(batch_size=0), "batch_size must be"),
                       (dict(window=64, washout=64), r"washout must be an int in \[0, window\) = \[0, 64\)"),
                       (dict(patience=0), "patience must be"), (dict(decay=0.0), "decay must be"),
                       (dict(ssm_weight_decay=-1.0), "ssm_weight_decay must be"),
                       # a negative or NaN fraction skipped the held-out tail: no validation, no early stopping
                       (dict(val_fraction=-0.2), r"val_fraction must be a number in \[0, 1\); got -0.2"),
                       (dict(val_fraction=math.nan), "val_fraction must be a number in"),
                       (dict(val_fraction="0.2"), "val_fraction must be a number in")):
        with pytest.raises(ValueError, match=match):
            fit_simulation(m, records, None, SimulationFit(**{"window": 64, **bad}))


def test_block_activations_give_each_block_its_own_sigma():
    m = model(block_activations=("tanh", "elu"), encoder_window=4)
    same = model(activation="elu", encoder_window=4)  # the same seed: the same weights
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), same.state_dict().values()))
    u, state = input_and_encoded_state(m, 30, 4)
    with torch.no_grad():
        y, _ = m(u, state)
        # by hand: block 1 tanh, block 2 ELU, each plus its linear skip
        x = m.encoder((u - m.u_mean) / m.u_std)
        for layer, skip, sigma, s in zip(m.layers, m.skips, (torch.tanh, torch.nn.functional.elu), state):
            eta, _ = layer(x, s)
            x = sigma(eta) + skip(x)
        want = m.decoder(x) * m.y_std + m.y_mean
        y_steps, _ = run_steps(m, u, state)
        y_elu, _ = same(u, state)
    assert rel_err(y, want) < 1e-12 and rel_err(y_steps, y) < 1e-10
    assert rel_err(y_elu, y) > 1e-3  # the first block's σ matters
    back = DeepWiener.from_checkpoint(m.checkpoint()).to(DEVICE)  # built on the CPU
    assert back.arguments["block_activations"] == ("tanh", "elu")
    with torch.no_grad():
        assert rel_err(back(u, state)[0], y) < 1e-12
    assert "block_activations" not in same.arguments  # stored only when set: older checkpoints keep their arguments
    for bad in (("tanh",), ("tanh", "sigmoid"), "tanh", ("tanh", 3)):
        with pytest.raises(ValueError, match="block_activations must be None or 2"):
            model(block_activations=bad)


def test_recipe_first_activation_sets_the_first_block_only():
    from ssmkit.sysid.recipes import Recipe
    from ssmkit.sysid.workflow import build_model

    class Bench:  # what build_model reads of a benchmark
        n_inputs, n_outputs, dt, n_init = 1, 1, 4.0, 50
        name, inputs, outputs = "stub", ("u",), ("y",)  # the signals' names (stop 58)

    m = build_model(Bench(), "s4d", Recipe(d_model=2, n_layers=3, d_state=2, first_activation="tanh"))
    assert [type(s).__name__ for s in m.block_activations] == ["Tanh", "ELU", "ELU"]
    assert build_model(Bench(), "s4d", Recipe(d_model=2, n_layers=3, d_state=2)).block_activations is None
    with pytest.raises(ValueError, match="first_activation must be None or one of"):
        build_model(Bench(), "s4d", Recipe(d_model=2, n_layers=3, d_state=2, first_activation="sigmoid"))


def test_model_and_fit_arguments_raise_value_errors_that_name_them():
    # a coverage run found these checks untested
    from ssmkit.sysid.fit import Block

    with pytest.raises(ValueError, match="activation must be one of"):
        model(activation="swishy")
    with pytest.raises(ValueError, match="layer_options must not set d_model: the model sets it"):
        model(layer_options={"d_state": 4, "d_model": 8})
    with pytest.raises(ValueError, match="DeepWiener needs layers with a fixed-size state"):
        model(layer="attention", layer_options={}, time_varying=True)  # a key/value cache grows
    m = model()
    u = torch.randn(2, 10, 2, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="state must be a list of 2 block states; got 1"):
        m(u, m.initial_state(2)[:1])
    with pytest.raises(ValueError, match=r"state must be a list of 2 block states \(from initial_state\)"):
        m.step(u[:, 0], m.initial_state(2)[0])
    with pytest.raises(ValueError, match="this DeepWiener has no state encoder: build it with encoder_window > 0"):
        m.estimate_state(u, torch.zeros(2, 10, 3, dtype=torch.float64, device=DEVICE))
    r = IORecord(torch.randn(40, 2, dtype=torch.float64), torch.randn(40, 3, dtype=torch.float64), 1.0, "r")
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="val_fraction must be in \\[0, 1\\)"):
            split_tail([r], bad, min_train=8)
    cfg = SimulationFit(window=50, steps=1, val_fraction=0.0)
    with pytest.raises(ValueError, match="record 'r' has 40 samples, fewer than window \\+ encoder_window = 50"):
        fit_simulation(m, [r], config=cfg)
    cfg = SimulationFit(window=30, steps=1, val_fraction=0.0)
    with pytest.raises(ValueError, match="blocks must be Block\\(record, start, stop\\) with record an index into the 1"):
        fit_simulation(m, [r], config=cfg, blocks=[Block(1, 0, 10)])
    for empty in ([], ()):  # not "no validation": None holds out the tail
        with pytest.raises(ValueError, match="blocks must be a non-empty list of Block"):
            fit_simulation(m, [r], config=cfg, blocks=empty)
    for pair in ([Block(0, 0, 10), Block(0, 9, 12)], [Block(0, 20, 25), Block(0, 20, 25)]):
        with pytest.raises(ValueError, match="blocks must not overlap; Block.* and Block.* share samples"):
            fit_simulation(m, [r], config=cfg, blocks=pair)
    with pytest.raises(ValueError, match="no training window of 30 \\+ 0 samples avoids the held-out blocks"):
        fit_simulation(m, [r], config=cfg, blocks=[Block(0, 0, 40)])
