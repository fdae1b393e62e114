"""The initial-state encoder that reads its window's sample times (``DeepWiener(encoder_times=True)``).

The reference is the encoder written out from its weights: x = W₂ tanh(W₁ f + b₁) + b₂ with f the flattened window of
[(u − μ_u)/σ_u, (y − μ_y)/σ_y, log τ] per sample; the training and simulation paths are checked to hand it the gaps of
the very samples it reads (those of the record at the window's positions).
"""

from __future__ import annotations

import math

import pytest
import torch

from ssmkit.sysid.ensemble import WienerEnsemble
from ssmkit.sysid.fit import SimulationFit, fit_simulation, simulate_record
from ssmkit.sysid.recipes import Recipe
from ssmkit.sysid.records import IORecord, SysidBenchmark
from ssmkit.sysid.wiener import DeepWiener
from ssmkit.sysid.workflow import build_model

N = 5  # encoder window


def _model(seed: int = 0, encoder_times: bool = True) -> DeepWiener:
    torch.manual_seed(seed)
    model = DeepWiener(2, 1, d_model=4, n_layers=2, dt=0.5, encoder_window=N, encoder_hidden=8,
                       encoder_times=encoder_times, dtype=torch.float64)
    model.set_normalisation([torch.randn(40, 2, dtype=torch.float64) * 3 + 1],
                            [torch.randn(40, 1, dtype=torch.float64) * 2 - 1])
    return model


def _irregular(length: int = 60, seed: int = 1) -> IORecord:
    g = torch.Generator().manual_seed(seed)
    t = torch.cumsum(torch.rand(length, generator=g, dtype=torch.float64) * 1.5 + 0.25, 0)
    u = torch.randn(length, 2, generator=g, dtype=torch.float64)
    return IORecord(u, torch.randn(length, 1, generator=g, dtype=torch.float64), 0.5, "irregular", t=t)


def _by_hand(model: DeepWiener, u: torch.Tensor, y: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """The encoder's output vector from its weights (B, Σ sizes)."""
    f = torch.cat([(u - model.u_mean) / model.u_std, (y - model.y_mean) / model.y_std, tau.log()[..., None]], -1)
    first, last = model.state_encoder[0], model.state_encoder[2]
    return torch.tanh(f.flatten(1) @ first.weight.T + first.bias) @ last.weight.T + last.bias


def _flat(states: list) -> torch.Tensor:
    return torch.cat([torch.view_as_real(s).flatten(1) if s.is_complex() else s.flatten(1) for s in states], 1)


def test_the_encoder_reads_log_intervals_beside_the_values() -> None:
    model = _model()
    g = torch.Generator().manual_seed(3)
    u = torch.randn(3, N, 2, generator=g, dtype=torch.float64)
    y = torch.randn(3, N, 1, generator=g, dtype=torch.float64)
    tau = torch.rand(3, N, generator=g, dtype=torch.float64) * 2 + 0.1
    got = _flat(model.estimate_state(u, y, tau))
    want = _by_hand(model, u, y, tau)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    ones = _flat(model.estimate_state(u, y))  # None: sampled every dt, log 1 = 0
    torch.testing.assert_close(ones, _by_hand(model, u, y, torch.ones(3, N, dtype=torch.float64)), rtol=1e-12,
                               atol=1e-14)
    assert (got - ones).abs().max() > 1e-4  # the times change the estimate


def test_refusals() -> None:
    with pytest.raises(ValueError, match="encoder_times reads the encoder window's sample times: give encoder_window"):
        DeepWiener(1, 1, encoder_times=True)
    with pytest.raises(ValueError, match="encoder_times must be a bool"):
        DeepWiener(1, 1, encoder_window=3, encoder_times=1)
    blind = _model(encoder_times=False)
    u, y = torch.zeros(1, N, 2, dtype=torch.float64), torch.zeros(1, N, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="reads no sample times: build it with encoder_times=True"):
        blind.estimate_state(u, y, torch.ones(1, N, dtype=torch.float64))
    model = _model()
    with pytest.raises(ValueError, match=r"intervals must be a real floating tensor of shape \(1, 5\)"):
        model.estimate_state(u, y, torch.ones(1, N + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="intervals must be finite and > 0"):
        model.estimate_state(u, y, -torch.ones(1, N, dtype=torch.float64))


def test_simulation_hands_the_encoder_its_samples_gaps() -> None:
    model = _model()
    record = _irregular()
    y_sim, start = simulate_record(model, record)
    tau = record.intervals[None]  # model.dt = record.dt: the record's own intervals
    with torch.no_grad():
        state = model.estimate_state(record.u[None, :N], record.y[None, :N], tau[:, :N])
        want, _ = model(record.u[None, N:], state, return_state=False, intervals=tau[:, N:])
    assert start == N
    torch.testing.assert_close(y_sim[N:], want[0], rtol=1e-12, atol=1e-13)


def test_training_hands_the_encoder_the_gaps_of_its_window(monkeypatch) -> None:
    model = _model()
    record = _irregular(length=80)
    seen = []
    original = DeepWiener.estimate_state

    def spy(self, u_past, y_past, intervals=None):
        seen.append((u_past.detach().clone(), intervals.detach().clone()))
        return original(self, u_past, y_past, intervals)

    monkeypatch.setattr(DeepWiener, "estimate_state", spy)
    fit_simulation(model, [record], config=SimulationFit(steps=3, window=12, batch_size=4, val_every=1000))
    training = [(u, tau) for u, tau in seen if u.shape[0] == 4]
    assert len(training) == 3
    u_all, tau_all = record.u, record.intervals
    for u, tau in training:
        for row in range(4):  # each row is the window at some offset o: its values and the gaps at o..o+N-1
            matches = [o for o in range(len(record) - N + 1) if torch.equal(u[row], u_all[o: o + N])]
            assert len(matches) == 1
            assert torch.equal(tau[row], tau_all[matches[0]: matches[0] + N])


def test_checkpoint_and_ensemble_keep_the_times() -> None:
    model = _model()
    rebuilt = DeepWiener.from_checkpoint(model.checkpoint())
    assert rebuilt.encoder_times and rebuilt.arguments["encoder_times"] is True
    g = torch.Generator().manual_seed(5)
    u = torch.randn(2, N, 2, generator=g, dtype=torch.float64)
    y = torch.randn(2, N, 1, generator=g, dtype=torch.float64)
    tau = torch.rand(2, N, generator=g, dtype=torch.float64) + 0.5
    torch.testing.assert_close(_flat(rebuilt.estimate_state(u, y, tau)), _flat(model.estimate_state(u, y, tau)),
                               rtol=0, atol=0)
    ensemble = WienerEnsemble([model, _model(seed=1)])
    for member, states in zip(ensemble.members, ensemble.estimate_state(u, y, tau)):
        torch.testing.assert_close(_flat(states), _by_hand(member, u, y, tau), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="members must share encoder_times"):
        WienerEnsemble([model, _model(encoder_times=False)])
    model.drop_encoder()
    assert not model.encoder_times and "encoder_times" not in model.arguments
    assert not DeepWiener.from_checkpoint(model.checkpoint()).encoder_times


def test_a_recipe_builds_it_only_with_an_encoder() -> None:
    record = _irregular()
    bench = SysidBenchmark(name="toy", title="toy", train=[record], test=[record], n_init=N, unit="V")
    model = build_model(bench, "s4d", Recipe(d_model=4, n_layers=1, d_state=4, encoder_window=N, encoder_times=True))
    assert model.encoder_times and model.state_encoder[0].in_features == N * (1 + 2 + 1)
    with pytest.raises(ValueError, match="encoder_times gives the initial-state encoder its window's sample times"):
        build_model(bench, "s4d", Recipe(d_model=4, n_layers=1, d_state=4, encoder_times=True))
    assert math.isclose(model.dt, 0.5)
