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


def test_time_last_signals_are_refused_not_scored_per_sample():
    # python-control's forced_response returns (p, L): a (1, L) record read time first is one sample of L channels,
    # and rmse returned |e_t| per "channel" (probe 4)
    y = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y_hat = torch.tensor([1.0, 2.0, 3.5, 3.5, 5.0, 7.0])
    with pytest.raises(ValueError, match=r"time first.*\(1, 6\).*transpose"):
        rmse(y_hat[None], y[None])
    with pytest.raises(ValueError, match=r"time first.*\(2, 6\)"):
        sysid_metrics(torch.stack([y_hat, y_hat]), torch.stack([y, y]))
    # the transpose is the one-channel answer: sqrt((0.25 + 0.25 + 1) / 6)
    assert float(rmse(y_hat[:, None], y[:, None])[0]) == pytest.approx(math.sqrt(1.5 / 6), rel=1e-15)


def test_nan_shows_in_its_channel_only():
    y = torch.tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 7.0]])
    y_hat = y.clone()
    y_hat[1, 1] = float("nan")
    out = rmse(y_hat, y)
    assert float(out[0]) == 0.0 and math.isnan(float(out[1]))


def test_one_output_as_a_column_keeps_its_channel_axis():
    # (L, 1) signals give (1,) scores, as (L, p) gives (p,) (a MIMO loop over channels indexes them); (L,) gives 0-d
    y = torch.tensor([1.0, 2.0, 3.0, 5.0])
    y_hat = torch.tensor([1.0, 2.5, 3.0, 4.0])
    for fn in (rmse, mae, nrmse, fit_percent, r_squared):
        assert fn(y_hat[:, None], y[:, None]).shape == (1,) and fn(y_hat, y).shape == ()
        assert float(fn(y_hat[:, None], y[:, None])[0]) == float(fn(y_hat, y))
    with pytest.raises(ValueError, match="the same outputs p"):
        rmse([y_hat[:, None], torch.zeros(4, 2)], [y[:, None], torch.zeros(4, 2)])
