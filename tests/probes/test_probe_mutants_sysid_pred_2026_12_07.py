"""Mutation round (2026-12-07) over sysid/prediction, sysid/ensemble and models/beam: tests for the mutants that
survived the existing tests (test_init_prediction_sim_reference, test_missing_outputs, test_record_rates,
test_ensemble, test_beam_search, test_generate_beam_reference and the probes that import these modules). Each test
names the mutant it kills (ids of the round's table in the report).

- prediction: a missing output at the *last* warm-up sample of ``free_run`` is refused (the free run's first step
  reads it as y_{n_warm-1}); the predictor's period check holds to 1e-9 relative, as documented, also at a 0.1 µs
  sampling time (no absolute tolerance), and a record within it is simulated as the explicit float64 loop over
  ``step`` on [u_t, y_{t-1}] written here.
- ensemble: a list of member states of any other length than the members is refused by ``forward`` and ``step``;
  with the right length the output is the mean of the members run apart, summed here; a checkpoint is loaded
  strictly (a lost or a foreign weight is refused) and a whole one reproduces that mean.
- beam: a one-token vocabulary with one beam: every hypothesis is [eos] at its first step, the prompt stops with no
  live beam, and the score is the closed form log 1 / 1^α = 0.
"""

from __future__ import annotations

import math

import pytest
import torch

from ssmkit.models import SequenceModel, beam_search
from ssmkit.sysid.ensemble import WienerEnsemble
from ssmkit.sysid.prediction import free_run, predict_one_step
from ssmkit.sysid.records import IORecord
from ssmkit.sysid.wiener import DeepWiener
from tests.conftest import H, variants

TS = 0.25


def _record(L: int, m: int, p: int, seed: int, dt: float = TS) -> IORecord:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(L, m, generator=g, dtype=torch.float64) + 0.2
    y = torch.randn(L, p, generator=g, dtype=torch.float64) * 1.5 - 0.5
    return IORecord(u, y, dt, "rec")


def _predictor(m: int, p: int, seed: int) -> DeepWiener:
    """A float64 one-block predictor (m + p inputs, p outputs), its parameters moved off their init."""
    torch.manual_seed(seed)
    model = DeepWiener(m + p, p, d_model=3, n_layers=1, layer="s4d", layer_options={"d_state": 4}, dt=TS,
                       dtype=torch.float64)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    r = _record(40, m + p, p, seed=seed + 50)
    model.set_normalisation([r.u], [r.y])
    return model


def _loop(model: DeepWiener, record: IORecord, n_measured: int, n_returned: int | None = None) -> torch.Tensor:
    """ŷ by an explicit loop from rest: for t >= 1 a step on [u_t, y_{t-1}], the measured y_{t-1} while t <= n_measured
    and the loop's own ŷ_{t-1} after; the measured y_t returned for t < n_returned (default n_measured)."""
    n_returned = n_measured if n_returned is None else n_returned
    state = model.initial_state(1)
    out, previous = [record.y[0]], record.y[0]
    with torch.no_grad():
        for t in range(1, len(record)):
            fed = record.y[t - 1] if t <= n_measured else previous
            y_t, state = model.step(torch.cat([record.u[t], fed])[None], state)
            previous = y_t[0]
            out.append(record.y[t] if t < n_returned else previous)
    return torch.stack(out)


# --------------------------------------------------------------------------------------------------------------------
# sysid/prediction.py


@pytest.mark.parametrize("n_warm", [1, 5])
def test_a_missing_output_at_the_last_warm_up_sample_is_refused_and_one_after_it_is_not_read(n_warm):
    # mutant P8: the warm-up NaN check looked at y[:n_warm - 1], so a NaN at y[n_warm - 1] (read by the first free step)
    # ran through and every free sample came back NaN
    record = _record(14, 1, 2, seed=1)
    model = _predictor(1, 2, seed=2)
    y = record.y.clone()
    y[n_warm - 1, 1] = math.nan
    with pytest.raises(ValueError, match=r"free_run's warm-up reads the measured output"):
        free_run(model, IORecord(record.u, y, TS, "rec"), n_warm)
    y = record.y.clone()
    y[n_warm, 0] = math.nan  # the first sample after the warm-up: never read
    gappy = IORecord(record.u, y, TS, "rec")
    got = free_run(model, gappy, n_warm)
    want = _loop(model, record, n_warm)
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * float(want.abs().max()))


def test_the_period_check_holds_to_one_part_in_a_billion():
    # mutant P9 (and P21): math.isclose(..., rel_tol=1e-3) let a record sampled 1e-6 (relative) off the model's dt through
    model = _predictor(1, 1, seed=3)
    for off in (1e-6, -1e-6, 1e-8):
        record = _record(12, 1, 1, seed=4, dt=TS * (1 + off))
        message = rf"the model samples every dt = {TS!r} s but record 'rec' every Ts = {record.dt!r} s"
        with pytest.raises(ValueError, match=message):
            predict_one_step(model, record)
        with pytest.raises(ValueError, match=message):
            free_run(model, record, 3)
    close = _record(12, 1, 1, seed=4, dt=TS * (1 + 1e-11))  # within 1e-9: the model's period
    torch.testing.assert_close(free_run(model, close, 3), _loop(model, close, 3), rtol=0, atol=1e-12)
    torch.testing.assert_close(predict_one_step(model, close), _loop(model, close, len(close), 1), rtol=0, atol=1e-12)


def test_the_period_check_is_relative_at_a_microsecond_sampling_time():
    # mutant P21: math.isclose(..., abs_tol=1e-6) took any two sampling times less than a microsecond apart as equal: a
    # 10 MHz predictor ran a 5 MHz record sample by sample
    torch.manual_seed(5)
    model = DeepWiener(2, 1, d_model=2, n_layers=1, layer="s4d", layer_options={"d_state": 2}, dt=1e-7,
                       dtype=torch.float64)
    record = _record(8, 1, 1, seed=6, dt=2e-7)
    with pytest.raises(ValueError, match=r"the model samples every dt = 1e-07 s but record 'rec' every Ts = 2e-07 s"):
        predict_one_step(model, record)
    with pytest.raises(ValueError, match=r"every Ts = 2e-07 s"):
        free_run(model, record, 2)
    same = _record(8, 1, 1, seed=6, dt=1e-7)
    torch.testing.assert_close(free_run(model, same, 2), _loop(model, same, 2), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# sysid/ensemble.py


def _members(k: int) -> list[DeepWiener]:
    out = []
    for seed in range(k):
        torch.manual_seed(10 + seed)
        m = DeepWiener(1, 2, d_model=3, n_layers=1, layer="s4d", layer_options={"d_state": 2}, dt=0.5,
                       dtype=torch.float64)
        with torch.no_grad():
            for param in m.parameters():
                param.add_(0.1 * torch.randn_like(param))
            m.y_mean.normal_()
        out.append(m)
    return out


def test_a_state_list_longer_than_the_members_is_refused_and_the_right_length_is_the_members_mean():
    # mutant E18: _check_state refused only a list shorter than the members; a longer one (say, the state of a 3-member
    # ensemble handed to a 2-member one) was cut silently by zip and the output was that of the first states
    ms = _members(2)
    ens = WienerEnsemble(ms)
    g = torch.Generator().manual_seed(8)
    u = torch.randn(2, 6, 1, dtype=torch.float64, generator=g)
    three = WienerEnsemble(_members(3)).initial_state(2)
    for call in (lambda: ens(u, three), lambda: ens.step(u[:, 0], three), lambda: ens(u, three[:1])):
        with pytest.raises(ValueError, match=r"state must be a list of 2 member states"):
            call()
    with torch.no_grad():  # the right length: each member run from its own state, then the mean taken here
        states = [m.initial_state(2) for m in ms]
        _, states = zip(*(m(u[:, :3], s) for m, s in zip(ms, states)))
        want = sum(m(u[:, 3:], s)[0] for m, s in zip(ms, states)) / 2
        y, _ = ens(u[:, 3:], list(states))
        step, _ = ens.step(u[:, 3], list(states))
    torch.testing.assert_close(y, want, rtol=0, atol=1e-13)
    torch.testing.assert_close(step, want[:, 0], rtol=0, atol=1e-13)



def test_a_checkpoint_missing_or_adding_a_weight_is_refused_and_a_whole_one_loads_exactly():
    # mutant E20: from_checkpoint loaded the state dict with strict=False: a checkpoint that lost a member's weight
    # loaded with that member's freshly initialised one (and a foreign entry was ignored), with no error
    ms = _members(2)
    ens = WienerEnsemble(ms).eval()
    saved = ens.checkpoint()
    u = torch.randn(1, 7, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = (ms[0](u)[0] + ms[1](u)[0]) / 2
        torch.testing.assert_close(WienerEnsemble.from_checkpoint(saved)(u)[0], want, rtol=0, atol=1e-13)
    weight = next(k for k in saved["state_dict"] if k.startswith("members.1.layers.0."))
    lost = {**saved, "state_dict": {k: v for k, v in saved["state_dict"].items() if k != weight}}
    # a ValueError naming the weight (it was torch's RuntimeError)
    with pytest.raises(ValueError, match=rf"(?s)WienerEnsemble checkpoint's weights do not fit .*Missing key\(s\) in "
                                         rf"state_dict: \"{weight}\""):
        WienerEnsemble.from_checkpoint(lost)
    foreign = {**saved, "state_dict": {**saved["state_dict"], "members.2.u_mean": torch.zeros(1, dtype=torch.float64)}}
    with pytest.raises(ValueError, match=r"Unexpected key\(s\) in state_dict: \"members.2.u_mean\""):
        WienerEnsemble.from_checkpoint(foreign)


# --------------------------------------------------------------------------------------------------------------------
# models/beam.py


@pytest.mark.parametrize("alpha", [1.0, 0.0, -0.5])
def test_one_beam_over_a_one_token_vocabulary_stops_at_its_first_eos(alpha):
    # mutant B33: the early stop tested the best live beam's bound without checking that a live beam was left; with K = 1
    # finished hypothesis and every extension ending at eos (V = 1) it indexed an empty list (IndexError)
    torch.manual_seed(0)
    model = SequenceModel(1, H, 1, ["s4d"], {"s4d": variants("s4d")[0]}, 1, head="lm", pool=None, vocab_size=1,
                          dtype=torch.float64).eval()
    prompts = torch.tensor([[0, 0, 0], [0, 0, 0]])
    result = beam_search(model, prompts, 4, 1, length_penalty=alpha, eos_id=0)
    assert [t.tolist() for t in result.tokens] == [[0, 0, 0, 0], [0, 0, 0, 0]]
    assert result.scores.dtype == torch.float64 and result.scores.tolist() == [0.0, 0.0]  # log 1 / 1^α


def test_a_deep_wiener_checkpoint_whose_weights_do_not_fit_is_a_value_error():
    """(lead) A weight of another shape, or a lost one, in a DeepWiener checkpoint: a ValueError naming it (torch's
    RuntimeError before); the whole checkpoint loads to the same outputs."""
    model = _members(1)[0].eval()
    saved = model.checkpoint()
    u = torch.randn(1, 5, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(DeepWiener.from_checkpoint(saved)(u)[0], model(u)[0], rtol=0, atol=0)
    name = next(k for k, v in saved["state_dict"].items() if k.startswith("layers.0.") and v.dim() >= 1)
    grown = {**saved, "state_dict": {**saved["state_dict"], name: torch.cat([saved["state_dict"][name]] * 2)}}
    with pytest.raises(ValueError, match=rf"(?s)DeepWiener checkpoint's weights do not fit .*size mismatch for {name}"):
        DeepWiener.from_checkpoint(grown)
    lost = {**saved, "state_dict": {k: v for k, v in saved["state_dict"].items() if k != name}}
    with pytest.raises(ValueError, match=rf"Missing key\(s\) in state_dict: \"{name}\""):
        DeepWiener.from_checkpoint(lost)
