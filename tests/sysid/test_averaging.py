"""Weight averaging (WeightAverage) against hand-computed averages, and the fit options that use it (average,
min_steps)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssmkit.sysid.averaging import WeightAverage
from ssmkit.sysid.fit import SimulationFit, fit_simulation, simulate_record, split_tail
from ssmkit.sysid.metrics import rmse
from ssmkit.sysid.records import IORecord
from ssmkit.sysid.wiener import DeepWiener
from tests.conftest import DEVICE


def hand_average(iterates: list[torch.Tensor], beta: float) -> torch.Tensor:
    """θ̄_T written out: the plain mean of the first n = 1/(1 - β) iterates, then each later one weighted (1 - β) β^(T-k)."""
    n = round(1 / (1 - beta))
    T = len(iterates)
    if T <= n:
        return sum(iterates) / T
    out = beta ** (T - n) * sum(iterates[:n]) / n
    for k in range(n + 1, T + 1):
        out = out + (1 - beta) * beta ** (T - k) * iterates[k - 1]
    return out


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2, dtype=torch.float64, device=DEVICE)
        self.register_buffer("count", torch.zeros((), dtype=torch.long, device=DEVICE))


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.75, 0.9])
def test_weight_average_equals_the_hand_computed_average(beta):
    torch.manual_seed(0)
    m = Tiny()
    avg = WeightAverage(m, beta)
    weights, biases = [], []
    for t in range(1, 16):
        with torch.no_grad():
            m.lin.weight.copy_(torch.randn(2, 3, dtype=torch.float64))
            m.lin.bias.copy_(torch.randn(2, dtype=torch.float64))
            m.count.fill_(t)
        weights.append(m.lin.weight.detach().clone())
        biases.append(m.lin.bias.detach().clone())
        avg.update(m)
        assert torch.allclose(avg.module.lin.weight, hand_average(weights, beta), rtol=0, atol=1e-14)
        assert torch.allclose(avg.module.lin.bias, hand_average(biases, beta), rtol=0, atol=1e-14)
        assert int(avg.module.count) == t  # an integer buffer is copied, not averaged
    state = avg.state_dict()
    state["lin.weight"].zero_()  # a copy: the average is untouched
    assert torch.allclose(avg.module.lin.weight, hand_average(weights, beta), rtol=0, atol=1e-14)
    assert not avg.module.lin.weight.requires_grad


@pytest.mark.parametrize("beta", [1.0, -0.1, True, "0.9", None])
def test_weight_average_rejects_bad_beta(beta):
    with pytest.raises(ValueError, match="beta must be"):
        WeightAverage(Tiny(), beta)


def wiener(lr: float | None = 1e-3) -> DeepWiener:
    torch.manual_seed(0)
    return DeepWiener(2, 1, d_model=4, n_layers=2, layer="s4d", layer_options={"d_state": 4, "lr": lr},
                      dtype=torch.float64, device=DEVICE)


def record(n: int = 80) -> IORecord:
    g = torch.Generator().manual_seed(1)
    u = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return IORecord(u.to(DEVICE), torch.tanh(u.cumsum(0) * 0.1)[:, :1].to(DEVICE), 1.0, "r")


def test_fit_with_average_ends_with_the_average_of_its_iterates():
    """The iterate after step k is the weights of a run of k steps (same seed, same draws, constant rate)."""
    r, beta, steps = record(), 0.5, 5
    iterates = []
    for k in range(1, steps + 1):
        m = wiener()
        fit_simulation(m, [r], config=SimulationFit(window=20, batch_size=2, steps=k, lr=1e-2, val_fraction=0))
        iterates.append({name: v.clone() for name, v in m.state_dict().items()})
    m = wiener()
    fit_simulation(m, [r], config=SimulationFit(window=20, batch_size=2, steps=steps, lr=1e-2, val_fraction=0,
                                                average=beta))
    for name, value in m.state_dict().items():
        if value.is_floating_point():
            want = hand_average([it[name] for it in iterates], beta)
            assert torch.allclose(value, want, rtol=0, atol=1e-12), name
    assert not torch.allclose(m.encoder.weight, iterates[-1]["encoder.weight"])  # not the last iterate


def test_fit_validates_the_averaged_weights_and_keeps_them():
    r = record(120)
    m = wiener()
    history = fit_simulation(m, [r], config=SimulationFit(window=20, batch_size=2, steps=6, lr=1e-2, val_fraction=0.3,
                                                          val_every=3, patience=None, average=0.5))
    assert [s for s, _ in history["val_rmse"]] == [3, 6]
    best = min(history["val_rmse"], key=lambda sv: sv[1][0])
    assert history["best_step"] == best[0]
    _, (val,) = split_tail([r], 0.3, 20)
    with torch.no_grad():
        y_sim, _ = simulate_record(m, val)
    # the model ends with the averaged weights that scored best (the simulation comes back on the CPU)
    kept = float(rmse(y_sim, val.y.cpu()))
    assert kept == pytest.approx(history["best_val_rmse"], rel=1e-12)
    last = wiener()
    fit_simulation(last, [r], config=SimulationFit(window=20, batch_size=2, steps=6, lr=1e-2, val_fraction=0.3,
                                                   val_every=3, patience=None))
    with torch.no_grad():
        assert float(rmse(simulate_record(last, val)[0], val.y.cpu())) != pytest.approx(kept, rel=1e-6)


def test_min_steps_delays_early_stopping():
    r = record(120)
    frozen = dict(window=20, batch_size=2, lr=0.0, val_fraction=0.3, val_every=1, patience=1, steps=20)
    m = wiener(lr=0.0)  # nothing moves: every validation after the first fails to improve
    assert fit_simulation(m, [r], config=SimulationFit(**frozen))["steps"] == 2
    assert fit_simulation(m, [r], config=SimulationFit(**frozen, min_steps=7))["steps"] == 7
    assert fit_simulation(m, [r], config=SimulationFit(**frozen, min_steps=50))["steps"] == 20
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="min_steps must be"):
            fit_simulation(wiener(), [r], config=SimulationFit(window=20, steps=1, val_fraction=0, min_steps=bad))
    for bad in (1.0, -0.5, "0.9"):
        with pytest.raises(ValueError, match="average must be"):
            fit_simulation(wiener(), [r], config=SimulationFit(window=20, steps=1, val_fraction=0, average=bad))


class ComplexTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.z = nn.Parameter(torch.zeros(3, dtype=torch.complex128))
        self.register_buffer("flag", torch.zeros(3, dtype=torch.bool))


@pytest.mark.parametrize("beta", [0.0, 0.6])
def test_a_complex_parameter_is_averaged_and_the_rate_follows_its_formula(beta):
    # probe 27: complex weights (the S4D/S5 poles are complex in some layers) are averaged like real ones, a bool
    # buffer is copied; rate() is min(β, 1 − 1/t) before the t-th update.
    m = ComplexTiny()
    avg = WeightAverage(m, beta)
    values = []
    for t in range(1, 8):
        assert avg.rate() == pytest.approx(min(beta, 1.0 - 1.0 / t), abs=1e-15)
        with torch.no_grad():
            m.z.copy_(torch.tensor([t, -2.0 * t, 0.5], dtype=torch.float64) * (1 + 1j * t))
            m.flag.copy_(torch.tensor([t % 2 == 0, True, t > 3]))
        values.append(m.z.detach().clone())
        avg.update(m)
        assert torch.allclose(avg.module.z, hand_average(values, beta), rtol=0, atol=1e-13)
        assert torch.equal(avg.module.flag, m.flag)
    assert avg.updates == 7
