"""Metric conventions on hand-computed examples."""

import math

import pytest
import torch

from ssmkit.sysid import fit_percent, mae, nrmse, r_squared, rmse, sysid_metrics


def test_hand_computed_siso_example_with_an_init_window():
    y = torch.tensor([100.0, -50.0, 1.0, 2.0, 3.0, 4.0])  # the first two samples are skipped (n_init = 2)
    y_hat = torch.tensor([0.0, 0.0, 1.0, 2.0, 4.0, 6.0])
    # after the window: e = (0, 0, 1, 2); y = (1, 2, 3, 4): mean 2.5, population std sqrt(1.25), range 3
    assert float(rmse(y_hat, y, n_init=2)) == pytest.approx(math.sqrt(5 / 4))
    assert float(mae(y_hat, y, n_init=2)) == pytest.approx(0.75)
    assert float(nrmse(y_hat, y, n_init=2)) == pytest.approx(1.0)
    assert float(nrmse(y_hat, y, n_init=2, normalise="range")) == pytest.approx(math.sqrt(1.25) / 3)
    assert float(fit_percent(y_hat, y, n_init=2)) == pytest.approx(0.0)
    assert float(r_squared(y_hat, y, n_init=2)) == pytest.approx(0.0)
    perfect = fit_percent(y, y, n_init=2)
    assert float(perfect) == 100.0


def test_mimo_channels_and_pooled_experiments():
    y1 = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    y2 = torch.tensor([[5.0, 50.0], [7.0, 70.0]])
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    out = rmse([y1 + e, y2 - e], [y1, y2])
    assert out.tolist() == [1.0, 0.0]  # per channel, pooled over both experiments
    # pooled std of channel 0 over (1, 3, 5, 7) = sqrt(5)
    assert float(nrmse([y1 + e, y2 - e], [y1, y2])[0]) == pytest.approx(1 / math.sqrt(5))
    report = sysid_metrics([y1 + e, y2 - e], [y1, y2], names=("rmse", "fit"))
    assert report["rmse"] == [1.0, 0.0] and report["fit"][1] == 100.0 and report["n_init"] == [0.0]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="one shape"):
        rmse(torch.zeros(5), torch.zeros(6))
    with pytest.raises(ValueError, match="leaves nothing after the init window"):
        rmse(torch.zeros(5), torch.zeros(5), n_init=5)
    with pytest.raises(ValueError, match="normalise must be one of"):
        nrmse(torch.zeros(5), torch.ones(5), normalise="max")
    with pytest.raises(ValueError, match="equally long lists"):
        rmse([torch.zeros(3)], [torch.zeros(3), torch.zeros(3)])
    with pytest.raises(ValueError, match="unknown metric names"):
        sysid_metrics(torch.zeros(3), torch.ones(3), names=("bic",))
