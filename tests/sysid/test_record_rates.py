"""Records sampled at another rate than the model's ``dt``, and arrays of dtypes NumPy lacks.

A regularly sampled record at Ts ≠ dt is simulated at its real times by a model whose layers take intervals (constant
intervals Ts / dt: the continuous-time blocks read at another rate); the reference is the same model with every
block's Δ scaled by Ts / dt, run in samples (ZOH: exp(Δ τ Λ) = exp((Δ τ) Λ), a different code path). Training and the
predictors' sample-by-sample runs refuse a rate that is not the model's (as python-control's forced_response refuses
a time grid off a discrete system's dt).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from ssmkit.sysid import from_arrays
from ssmkit.sysid.fit import SimulationFit, fit_simulation, simulate_record, validation_rmse
from ssmkit.sysid.prediction import free_run, predict_one_step
from ssmkit.sysid.records import IORecord
from ssmkit.sysid.wiener import DeepWiener


def _model(layer: str = "s4d", dt: float = 1.0, n_inputs: int = 1) -> DeepWiener:
    torch.manual_seed(0)
    model = DeepWiener(n_inputs, 1, d_model=4, n_layers=2, layer=layer, dt=dt, dtype=torch.float64)
    model.set_normalisation([torch.randn(64, n_inputs, dtype=torch.float64)], [torch.randn(64, 1, dtype=torch.float64)])
    return model


def _record(dt: float, length: int = 80, n_inputs: int = 1) -> IORecord:
    g = torch.Generator().manual_seed(1)
    u = torch.randn(length, n_inputs, generator=g, dtype=torch.float64)
    return IORecord(u, torch.randn(length, 1, generator=g, dtype=torch.float64), dt, f"at {dt} s")


@pytest.mark.parametrize("ratio", [0.5, 3.0])
def test_a_record_at_another_rate_runs_at_its_real_times(ratio: float) -> None:
    model = _model(dt=0.2)
    record = _record(0.2 * ratio)
    y, start = simulate_record(model, record)
    rescaled = copy.deepcopy(model)
    rescaled.dt = record.dt
    with torch.no_grad():
        for layer in rescaled.layers:
            layer.log_dt.add_(math.log(ratio))  # Δ' = Δ Ts / dt: the same continuous system, one record period a step
    want, _ = simulate_record(rescaled, record)
    assert start == 0
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-12)
    same, _ = simulate_record(model, IORecord(record.u, record.y, 0.2, "at the model's rate"))
    assert (y - same).abs().max() > 1e-3  # the rate matters: not the sample-by-sample run


def test_the_validation_score_reads_the_record_at_its_rate() -> None:
    model = _model(dt=0.2)
    record = _record(0.1)
    y, _ = simulate_record(model, record)
    want = torch.sqrt(((y - record.y) ** 2).mean()).item()
    assert validation_rmse(model, [record]) == pytest.approx([want], rel=1e-12)


def test_a_model_whose_layers_cannot_change_rate_refuses_the_record(monkeypatch) -> None:
    model = _model(dt=0.2)
    monkeypatch.setattr(type(model.layers[0]), "takes_intervals", False)  # a layer without an irregular form
    with pytest.raises(ValueError, match=r"every Ts = 0.1 s but the model every dt = 0.2 s.*S4D does not take"):
        simulate_record(model, _record(0.1))
    y, _ = simulate_record(model, _record(0.2))  # at its own rate it runs
    assert y.shape == (80, 1)


def test_training_refuses_records_at_another_rate() -> None:
    model = _model(dt=1.0)
    with pytest.raises(ValueError, match=r"dt = 1.0 s but record 'at 0.01 s' every Ts = 0.01 s.*dt=0.01"):
        fit_simulation(model, [_record(0.01)], config=SimulationFit(steps=1, window=16, batch_size=2))
    with pytest.raises(ValueError, match=r"record 'at 0.5 s' every Ts = 0.5 s"):
        fit_simulation(model, [_record(1.0)], [_record(0.5)], config=SimulationFit(steps=1, window=16, batch_size=2))


def test_predictors_refuse_records_at_another_rate() -> None:
    predictor = _model(dt=0.5, n_inputs=2)  # m + p inputs
    record = _record(0.25)
    for run in (lambda: predict_one_step(predictor, record), lambda: free_run(predictor, record, 4)):
        with pytest.raises(ValueError, match=r"dt = 0.5 s but record 'at 0.25 s' every Ts = 0.25 s"):
            run()
    assert free_run(predictor, _record(0.5), 4).shape == (80, 1)


def test_bfloat16_arrays_are_read_exactly() -> None:
    g = torch.Generator().manual_seed(2)
    u = torch.randn(60, generator=g).to(torch.bfloat16)
    y = torch.randn(60, generator=g).to(torch.bfloat16)
    bench = from_arrays(u, y, 0.1, test=0.25)
    got = torch.cat([bench.train[0].u, bench.test[0].u])[:, 0]
    assert got.dtype == torch.float64
    assert torch.equal(got, torch.tensor([float(v) for v in u.tolist()], dtype=torch.float64))
    t = torch.arange(60, dtype=torch.float64) * 0.25 + torch.linspace(0, 0.1, 60, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"t is torch.bfloat16: its stamps .* resolved to about"):
        from_arrays(u, y, None, t=t.to(torch.bfloat16))  # stamps of 8 bits: the gaps are lost, said so


def test_complex_arrays_are_refused() -> None:
    u = torch.randn(40)
    with pytest.raises(ValueError, match=r"u must be real; got complex values"):
        from_arrays(u.numpy() + 1j, u, 1.0)
    with pytest.raises(ValueError, match=r"y must be real; got a torch.complex64 tensor"):
        from_arrays(u, u.to(torch.complex64), 1.0)
