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
    for names in (None, "rmse", ("rmse", 3)):  # None raised TypeError; "rmse" was read as letters
        with pytest.raises(ValueError, match="names must be a list or tuple of metric names"):
            sysid_metrics(torch.zeros(3), torch.ones(3), names=names)
    with pytest.raises(ValueError, match=r"experiment 0: y_pred and y_true must be real signals; got torch.complex128"):
        rmse(torch.zeros(3, dtype=torch.complex128), torch.zeros(3))  # its imaginary part was dropped with a warning


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


def _loop_scores(y_hat, y):
    """float64 Python-loop reference of every metric on one channel (lists of floats)."""
    n = len(y)
    e = [a - b for a, b in zip(y_hat, y)]
    r = math.sqrt(sum(v * v for v in e) / n)
    mean = sum(y) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in y) / n)
    return {"rmse": r, "mae": sum(abs(v) for v in e) / n, "nrmse": r / std, "nrmse_range": r / (max(y) - min(y)),
            "fit": 100 * (1 - r / std), "r2": 1 - (r / std) ** 2}


def test_every_metric_against_a_float64_loop_at_a_generic_point():
    # probe 19: the hand-computed example above sits at NRMSE = 1, where R² = 1 - NRMSE² and 1 - NRMSE³ agree; here
    # nothing is 0 or 1, and y_pred / y_true are not interchangeable (std and range are of the measured y)
    y = [0.3, 1.7, -0.4, 2.2, 0.9, -1.1, 0.5]
    y_hat = [0.1, 1.5, 0.0, 2.6, 0.8, -0.2, 0.4]
    ref = _loop_scores(y_hat[2:], y[2:])
    t, t_hat = torch.tensor(y, dtype=torch.float64), torch.tensor(y_hat, dtype=torch.float64)
    got = {"rmse": rmse(t_hat, t, n_init=2), "mae": mae(t_hat, t, n_init=2), "nrmse": nrmse(t_hat, t, n_init=2),
           "nrmse_range": nrmse(t_hat, t, n_init=2, normalise="range"), "fit": fit_percent(t_hat, t, n_init=2),
           "r2": r_squared(t_hat, t, n_init=2)}
    for name, value in got.items():
        assert float(value) == pytest.approx(ref[name], rel=1e-12), name
    # sysid_metrics computes each name with the same arguments (every name, not only the two of the MIMO test)
    report = sysid_metrics(t_hat, t, n_init=2, names=tuple(ref))
    for name in ref:
        assert report[name] == [pytest.approx(ref[name], rel=1e-12)], name
    assert report["n_init"] == [2.0]


def test_the_default_window_is_zero_for_every_metric():
    # the first sample carries the only large error: a default n_init of 1 would drop it
    y = [1.0, 2.0, 4.0, 3.0]
    y_hat = [4.0, 2.0, 4.5, 3.0]
    ref = _loop_scores(y_hat, y)
    t, t_hat = torch.tensor(y, dtype=torch.float64), torch.tensor(y_hat, dtype=torch.float64)
    for name, fn in (("rmse", rmse), ("mae", mae), ("nrmse", nrmse), ("fit", fit_percent), ("r2", r_squared)):
        assert float(fn(t_hat, t)) == pytest.approx(ref[name], rel=1e-12), name
    report = sysid_metrics(t_hat, t)
    assert report["r2"] == [pytest.approx(ref["r2"], rel=1e-12)] and report["n_init"] == [0.0]


@pytest.mark.parametrize("n_init", [-1, 1.5, True])
def test_a_window_that_is_not_a_non_negative_int_is_refused(n_init):
    # n_init = -1 would silently score the last sample only (p[-1:])
    with pytest.raises(ValueError, match=rf"n_init must be an int >= 0.*got {n_init!r}"):
        rmse(torch.zeros(5), torch.ones(5), n_init=n_init)


def test_signals_of_more_than_two_axes_are_refused_not_flattened():
    with pytest.raises(ValueError, match=r"must be \(L,\) or \(L, p\) \(time first\); got \(6, 2, 2\)"):
        rmse(torch.zeros(6, 2, 2), torch.ones(6, 2, 2))
