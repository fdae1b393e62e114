"""One rule for a sampling time Ts wherever ssmkit takes one (``ssmkit.utils.check_sampling_time``).

StateSpace, IORecord, DeepWiener, analyze_model, the zoo's pole statistics and write_report each had their own check:
a NumPy float32 Ts was refused by DeepWiener and accepted elsewhere, analyze_model took dt = inf (every pole at s = 0),
a model carrying dt = 0 was silently analysed in samples, and write_report put a NumPy dt into its JSON (TypeError after
the figures were written).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ssmkit.analysis import StateSpace, analyze_model, write_report
from ssmkit.analysis.layerwise import sampling_time
from ssmkit.analysis.zoo import pole_statistics
from ssmkit.models import SequenceModel
from ssmkit.sysid.records import IORecord
from ssmkit.sysid.wiener import DeepWiener
from ssmkit.utils import check_sampling_time

BAD = [0.0, -0.5, math.nan, math.inf, -math.inf, True, np.bool_(True), "0.1", 1 + 0j, torch.tensor(0.1), None]
MESSAGE = r"dt must be the sampling time in seconds, a finite number > 0; got "


def _consumers():
    z = np.zeros((1, 1, 1))
    model = SequenceModel(d_input=1, d_model=2, n_layers=1, layer="s4d", d_output=1, head="regress", pool=None)
    return {
        "StateSpace": lambda dt: StateSpace(z, z, z, z, dt=dt).dt,
        "IORecord": lambda dt: IORecord(torch.zeros(3, 1), torch.zeros(3, 1), dt).dt,
        "DeepWiener": lambda dt: DeepWiener(1, 1, d_model=2, n_layers=1, layer_options={"d_state": 2}, dt=dt).dt,
        "analyze_model": lambda dt: analyze_model(model, dt=dt)[0].system.dt,
        "pole_statistics": lambda dt: pole_statistics(model, dt=dt)[0]["dt"],
    }


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_every_consumer_refuses_the_same_values(bad):
    for name, take in _consumers().items():
        if bad is None and name in ("analyze_model", "pole_statistics"):
            continue  # None means "the model's own dt" there
        with pytest.raises(ValueError, match=MESSAGE):
            take(bad)
            pytest.fail(f"{name} accepted dt = {bad!r}")


@pytest.mark.parametrize("good", [np.float32(0.25), np.float64(0.25), np.int64(2), 2, 0.25, 1e-9], ids=repr)
def test_every_consumer_accepts_real_numbers_as_a_float(good):
    for name, take in _consumers().items():
        got = take(good)
        assert type(got) is float and got == float(good), name
    assert check_sampling_time(good) == float(good)


def test_a_model_carrying_an_invalid_ts_raises_rather_than_falling_back_to_samples():
    model = DeepWiener(1, 1, d_model=2, n_layers=1, layer_options={"d_state": 2}, dt=0.5)
    assert sampling_time(model) == (0.5, True)
    model.dt = 0.0  # a broken model (edited, or loaded from a bad file) is not "in samples"
    with pytest.raises(ValueError, match=r"the model's dt must be the sampling time in seconds, a finite number > 0; got 0.0"):
        analyze_model(model)
    assert sampling_time(model, dt=0.25) == (0.25, True)  # an explicit dt is used as given


def test_a_model_without_a_numeric_ts_is_in_samples():
    model = SequenceModel(d_input=1, d_model=2, n_layers=1, layer="s4d", d_output=1, head="regress", pool=None)
    assert sampling_time(model) == (1.0, False)
    model.dt = torch.nn.Parameter(torch.tensor(0.3))  # a user's learned step is not a sampling time
    assert sampling_time(model) == (1.0, False)
    assert pole_statistics(model)[0]["time_unit"] == "samples"


def test_write_report_checks_dt_before_writing_and_stores_a_float(tmp_path):
    model = SequenceModel(d_input=1, d_model=2, n_layers=1, layer="s4d", d_output=1, head="regress", pool=None)
    with pytest.raises(ValueError, match=MESSAGE):
        write_report(model, str(tmp_path / "bad"), dt=-1.0, plots=False)
    assert not (tmp_path / "bad").exists()
    paths = write_report(model, str(tmp_path / "ok"), dt=np.float32(0.5), plots=False)
    record = json.load(open(paths["json"]))
    assert record["dt"] == 0.5 and record["layers"][0]["dt"] == 0.5
    assert "s" in open(paths["summary"]).read()
