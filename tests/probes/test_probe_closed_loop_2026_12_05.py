"""Probe of 2026-12-05: a control engineer's flow on an identified plant. A small DeepWiener identified on Cascaded
Tanks (200 steps, one block of width 4: test RMSE 1.59 V against the records' std 2.10 V) is exported with
``ssmkit.sysid.to_control`` (``control.nlsys``) and linearised at operating points (``control.ss``); a PI designed on
the linearisation closes the loop by signal names (``control.interconnect``), and python-control's simulation of the
nonlinear loop is checked against the same loop written as a float64 Python loop over ``NonlinearSystem.update`` /
``output``. References: that loop; the closed form of a PI loop with feedthrough; the first DFT harmonic of the
model's response to small sinusoids (central differences ±ε); ssmkit's ``StateSpace`` poles and frequency response;
``evaluate()``'s simulation of the raw test record (units).

Findings:

1. *A model and a benchmark at different Ts exported silently* (fixed): ``to_control(model, bench)`` named the
   signals after ``bench`` but ran at the model's dt, e.g. ``DeepWiener(1, 1)`` (dt 1.0 by default) exported for
   the tanks (Ts 4 s) gave ``dt = 1.0`` under the tanks' names. Now a ValueError names both.
2. *The exported nonlinear system ran the model 9 times a sample in a loop* (fixed): ``interconnect``'s signal
   passes ask for each subsystem's output several times a sample, and update and output each ran a model step; a
   three-system PI loop made 451 model steps for 50 samples (README's cut ensemble: 8.7 s for 150 samples). The
   exported functions now share one step per (x, u) over the last few points: 99 steps (2 a sample), 2.0 s, the
   same numbers bit for bit.
3. *A signal name with '.'* (a CSV column ``flow.in``) failed inside python-control ("invalid signal name"); it now
   fails first with a ValueError that says how to rename it in the benchmark.
4. Documented (no code to change in these files): the model has direct feedthrough (y[k] reads u[k]; D = 0.17 at
   4 V here), so a P/PI/PID with feedthrough closing the *nonlinear* loop makes python-control raise "algebraic loop
   detected"; a strictly proper controller (computing during the sample) closes it, and ``control.feedback`` of the
   linearisation solves the loop. The exported systems are in the records' units (the model normalises inside);
   the linearisations' signals are deviations from (u0, y*); the nlsys' zero state is no equilibrium.

Since fixed by the lead: Cascaded Tanks names its output (``"lower tank level"``; it was exported as ``"output 1"``).
Not fixed: with ``output_range`` the linearisation beyond the limit is the clipped sensor's (C = D = 0), not
the process's (DeepWiener.step clips unconditionally).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np
import pytest
import torch

control = pytest.importorskip("control")

from ssmkit.analysis.nonlinear import NonlinearSystem  # noqa: E402
from ssmkit.sysid.benchmarks import cascaded_tanks  # noqa: E402
from ssmkit.sysid.recipes import recipe_for  # noqa: E402
from ssmkit.sysid.wiener import DeepWiener  # noqa: E402
from ssmkit.sysid.workflow import evaluate, identify, signal_names, to_control  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "cascaded_tanks"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not present")
F64 = torch.float64
U0 = np.array([[3.0], [4.0], [5.0]])  # pump voltages inside the estimation record's 0.4-6.5 V

def readme_block() -> str:
    """README's "Closing the loop" python block (the one that calls ``to_control(model, bench)``)."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
              if "to_control(model, bench)" in b]
    assert len(blocks) == 1, f"expected one README block calling to_control(model, bench); found {len(blocks)}"
    return blocks[0]


@pytest.fixture(scope="module")
def tanks():
    torch.set_num_threads(1)
    bench = cascaded_tanks(DATA)
    recipe = dataclasses.replace(recipe_for(bench.name), d_model=4, n_layers=1, d_state=4, steps=200, restarts=1,
                                 validation="tail", folds=None, combine="best", first_layer_init="layer",
                                 val_every=10, patience=None, batch_size=4, window=128)
    model, _ = identify(bench, "s4d", recipe, dtype=F64)
    plant = NonlinearSystem(model)
    x_eq, y_eq, bank = plant.operating_point(U0)
    return bench, model, plant, x_eq, y_eq, bank


def strictly_proper_pi(kp, ki, Ts, u_name):
    """u[k] = ki s[k] + kp e[k-1], s[k+1] = s[k] + Ts e[k]: a PI that computes during the sample (states s, e[k-1])."""
    return control.ss([[1.0, 0.0], [0.0, 0.0]], [[Ts], [1.0]], [[ki, kp]], [[0.0]], Ts, inputs="e", outputs=u_name,
                      states=["integral", "e_prev"], name="pi")


def design(local, Ts):
    """kp = 1 / K, ki = kp / τ from the local DC gain K and the slowest pole's time constant τ = -Ts / ln ρ."""
    gain, rho = float(control.dcgain(local)), float(np.abs(local.poles()).max())
    kp = 1.0 / gain
    return kp, kp * -np.log(rho) / Ts


def test_exported_systems_are_named_in_physical_units_at_ts(tanks):
    bench, model, plant, x_eq, y_eq, bank = tanks
    nl = to_control(model, bench, name="tanks")
    u_name, y_name = signal_names(model, bench)
    assert (nl.input_labels, nl.output_labels, nl.name, nl.dt, nl.nstates) == (
        list(u_name), list(y_name), "tanks", bench.dt, plant.n_states)
    assert bench.dt == 4.0 and u_name == ("pump voltage",) and y_name == ("lower tank level",)
    locals_ = to_control(model, bench, u0=U0)
    assert [(s.dt, s.input_labels, s.output_labels) for s in locals_] == [(4.0, ["pump voltage"], list(y_name))] * 3
    # units: python-control's simulation of the exported system on the raw test record, from the state the encoder
    # reads from the first n_init samples, is evaluate()'s simulation, scored against the raw volts
    rec, n = bench.test[0], model.encoder_window
    state = model.estimate_state(rec.u[None, :n].to(F64), rec.y[None, :n].to(F64))
    x0 = plant.state_vector(state)[0]
    t = np.arange(len(rec) - n) * bench.dt
    sim = control.input_output_response(nl, t, rec.u[n:, 0].numpy(), X0=x0).outputs  # (L - n,)
    scores = evaluate(model, bench)
    np.testing.assert_allclose(sim, scores["simulations"][0][n:, 0].numpy(), rtol=0, atol=1e-10)
    rmse = np.sqrt(np.mean((sim - rec.y[n:, 0].numpy()) ** 2))
    np.testing.assert_allclose(rmse, scores["records"][0]["rmse"][0], rtol=1e-10)
    assert rmse < float(rec.y.std())  # on the data's scale: better than the mean level
    # the equilibria sit in the measured levels' range (2.9-10 V) and rise with the pump voltage
    y_train = bench.train[0].y
    assert float(y_train.min()) < y_eq.min() and y_eq.max() < float(y_train.max()) and np.all(np.diff(y_eq[:, 0]) > 0)


def test_model_and_benchmark_at_different_ts_refused(tanks):
    bench = tanks[0]
    torch.manual_seed(0)
    model = DeepWiener(1, 1, d_model=3, n_layers=1, dtype=F64)  # dt 1.0, the default: not built for the tanks
    with pytest.raises(ValueError, match=r"dt = 1\.0 s but 'cascaded_tanks' every Ts = 4\.0 s"):
        to_control(model, bench)
    with pytest.raises(ValueError, match="set model.dt = bench.dt"):
        to_control(model, bench, u0=[3.0])
    model.dt = bench.dt  # trained on these records: the fix the message names
    assert to_control(model, bench).dt == 4.0


def test_dotted_signal_name_refused_with_the_fix(tanks):
    bench = dataclasses.replace(tanks[0], output_names=("level.V",))
    with pytest.raises(ValueError, match=r"cannot hold '\.'.*\['level\.V'\].*output_names"):
        to_control(tanks[1], bench)


def test_closed_loop_by_names_matches_a_plain_loop(tanks):
    bench, model, plant, x_eq, y_eq, bank = tanks
    Ts, g = bench.dt, 1  # at 4 V
    (u_name,), (y_name,) = signal_names(model, bench)
    local = to_control(model, bench, u0=U0[g])[0]
    kp, ki = design(local, Ts)
    pi = strictly_proper_pi(kp, ki, Ts, u_name)
    error = control.summing_junction(["r", "-" + y_name], "e", dt=Ts)
    linear = control.interconnect([local, pi, error], inputs="r", outputs=[y_name, u_name])
    assert np.abs(linear.poles()).max() < 1
    loop = control.interconnect([to_control(model, bench), pi, error], inputs="r", outputs=[y_name, u_name])
    L, r = 120, y_eq[g, 0] + 0.5
    X0 = np.r_[x_eq[g], U0[g, 0] / ki, 0.0]  # plant at equilibrium, integrator holding u0, no past error
    resp = control.input_output_response(loop, np.arange(L) * Ts, np.full(L, r), X0=X0)
    # the reference: the same loop, sample by sample, over NonlinearSystem.update / output
    x, s, e_prev, ys, us = x_eq[g].copy(), U0[g, 0] / ki, 0.0, [], []
    for _ in range(L):
        u = ki * s + kp * e_prev
        y = plant.output(x, [u])[0, 0]
        x, s, e_prev = plant.update(x, [u])[0], s + Ts * (r - y), r - y
        ys.append(y)
        us.append(u)
    np.testing.assert_allclose(resp.outputs[0], ys, rtol=0, atol=1e-10)
    np.testing.assert_allclose(resp.outputs[1], us, rtol=0, atol=1e-10)
    assert abs(ys[0] - y_eq[g, 0]) < 1e-9  # started at rest at the operating point
    # a small reference step: the nonlinear loop follows the linear one to first order
    d = 1e-4
    small = control.input_output_response(loop, np.arange(L) * Ts, np.full(L, y_eq[g, 0] + d), X0=X0).outputs[0]
    lin = control.input_output_response(linear, np.arange(L) * Ts, np.full(L, d)).outputs[0]
    np.testing.assert_allclose((small - y_eq[g, 0]) / d, lin / d, rtol=0, atol=2e-3)


def test_exported_system_runs_the_model_once_or_twice_a_sample(tanks):
    bench, model, plant = tanks[:3]
    Ts = bench.dt
    (u_name,), (y_name,) = signal_names(model, bench)
    nl_plant = NonlinearSystem(model)
    nl = nl_plant.to_control(inputs=[u_name], outputs=[y_name])
    step, calls = nl_plant._model.step, [0]

    def counted(u_t, state):
        calls[0] += 1
        return step(u_t, state)

    nl_plant._model.step = counted
    loop = control.interconnect([nl, strictly_proper_pi(0.5, 0.01, Ts, u_name),
                                 control.summing_junction(["r", "-" + y_name], "e", dt=Ts)],
                                inputs="r", outputs=[y_name])
    L = 50
    out = control.input_output_response(loop, np.arange(L) * Ts, np.full(L, 6.0), X0=np.zeros(loop.nstates)).outputs
    assert calls[0] <= 2 * L + 2  # 451 before (9 a sample)
    del nl_plant._model.step
    # the same numbers as the plain loop
    x, s, e_prev = np.zeros(plant.n_states), 0.0, 0.0
    for k in range(L):
        u = 0.01 * s + 0.5 * e_prev
        y = plant.output(x, [u])[0, 0]
        assert abs(out[k] - y) <= 1e-10
        x, s, e_prev = plant.update(x, [u])[0], s + Ts * (6.0 - y), 6.0 - y


def test_pi_with_feedthrough_closes_only_on_the_linearisation(tanks):
    bench, model, plant, x_eq, y_eq, bank = tanks
    Ts, g = bench.dt, 1
    (u_name,), (y_name,) = signal_names(model, bench)
    local = to_control(model, bench, u0=U0[g])[0]
    assert abs(local.D[0, 0]) > 0.01  # the model's output reads the same sample's input
    kp, ki = design(local, Ts)
    pi = control.ss([[1.0]], [[Ts]], [[ki]], [[kp]], Ts, inputs="e", outputs=u_name)  # u = ki s + kp e
    error = control.summing_junction(["r", "-" + y_name], "e", dt=Ts)
    loop = control.interconnect([to_control(model, bench), pi, error], inputs="r", outputs=y_name)
    X0 = np.r_[x_eq[g], U0[g, 0] / ki]
    with pytest.raises(RuntimeError, match="algebraic loop"):  # python-control on the nonlinear loop (documented)
        control.input_output_response(loop, np.arange(3) * Ts, np.full(3, y_eq[g, 0]), X0=X0)
    closed = control.feedback(control.series(pi, local), 1)  # the linear loop, solved by python-control
    L, d = 80, 1e-2
    y_pc = control.forced_response(closed, np.arange(L) * Ts, np.full(L, d)).outputs
    A, B, C, D = (np.asarray(M) for M in (local.A, local.B, local.C, local.D))
    x, s, ys = np.zeros(A.shape[0]), 0.0, []
    for _ in range(L):  # y = C x + D (ki s + kp (r - y)), solved for y
        y = (C @ x + D[:, 0] * (ki * s + kp * d))[0] / (1 + D[0, 0] * kp)
        u = ki * s + kp * (d - y)
        x, s = A @ x + B[:, 0] * u, s + Ts * (d - y)
        ys.append(y)
    np.testing.assert_allclose(y_pc, ys, rtol=0, atol=1e-12)


def test_linearisation_frequency_response_and_poles(tanks):
    bench, model, plant, x_eq, y_eq, bank = tanks
    Ts = bench.dt
    locals_ = to_control(model, bench, u0=U0)
    for g, local in enumerate(locals_):
        np.testing.assert_allclose(np.sort_complex(local.poles()), np.sort_complex(bank.poles()[g]), atol=1e-12)
        assert bool(np.all(np.abs(local.poles()) < 1)) == bool(bank.stable_mask()[g]) is True
    assert bank.is_stable()
    # frequencies on the DFT grid of N samples, up to Nyquist π / Ts
    N, warm, eps, g = 64, 400, 1e-3, 1
    w = 2 * np.pi * np.array([1, 3, 8, 20, 31]) / (N * Ts)
    H = bank.frequency_response(w)[g, 0, 0]
    fr = control.frequency_response(locals_[g], w)
    np.testing.assert_allclose(fr.complex.ravel(), H, rtol=1e-12)
    np.testing.assert_allclose(fr.magnitude.ravel(), np.abs(H), rtol=1e-12)
    np.testing.assert_allclose(np.exp(1j * fr.phase.ravel()), H / np.abs(H), atol=1e-12)
    # the model's response to u0 ± ε sin(ω t) from the equilibrium, all frequencies and signs as one batch of points
    t = np.arange(warm + N) * Ts  # 0.895^400: the start's transient has decayed
    U = U0[g, 0] + np.concatenate([np.full(len(w), eps), np.full(len(w), -eps)])[:, None] * np.sin(
        np.outer(np.r_[w, w], t))  # (2W, L)
    x, Y = np.repeat(x_eq[g][None], 2 * len(w), 0), np.zeros_like(U)
    for k in range(len(t)):
        Y[:, k] = plant.output(x, U[:, k:k + 1])[:, 0]
        x = plant.update(x, U[:, k:k + 1])
    phasor = np.exp(-1j * np.outer(np.r_[w, w], t[warm:]))
    Yh, Uh = (Y[:, warm:] * phasor).sum(1), (U[:, warm:] * phasor).sum(1)
    W = len(w)
    H_fd = (Yh[:W] - Yh[W:]) / (Uh[:W] - Uh[W:])  # central: the even-order terms cancel
    np.testing.assert_allclose(H_fd, H, rtol=1e-5)


def test_readme_closing_the_loop_block(tanks, capsys):
    bench, model = tanks[:2]
    namespace = {"model": model, "bench": bench}
    exec(compile(readme_block(), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-2] == "True"
    rise = float(printed[-1])
    assert abs(rise - (namespace["step"].outputs[0, -1] - namespace["y0"][0, 0])) == 0 and 0.25 < rise < 0.75
    assert namespace["plant"].dt == namespace["local"].dt == 4.0
    assert "NonlinearSystem(model)" not in readme_block()  # tests/test_readme.py finds the NonlinearSystem block by it
