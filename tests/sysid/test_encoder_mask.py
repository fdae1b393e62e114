"""The initial-state encoder that also reads which window outputs were measured (``DeepWiener(encoder_mask=True)``).

The reference is the encoder's input built here sample by sample in numpy (float64), independently of
``estimate_state``: per window sample k the features [(u_k − μ_u)/σ_u, (y_k − μ_y)/σ_y with a missing output read as 0,
M_k (1 where measured, 0 where NaN), log τ_k (with ``encoder_times``)], flattened sample after sample and handed to the
model's own ``state_encoder`` (an ``nn.Sequential``); the states are that vector split per block. Training is checked
to hand the encoder the very gaps of the windows it reads (none filled before it), and a trained masked encoder to
tell a missing sample from a measured one at the mean, which an encoder without the mask cannot.
"""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch

from ssmkit.sysid.commands import _parser, recipe_from_args
from ssmkit.sysid.ensemble import WienerEnsemble
from ssmkit.sysid.fit import SimulationFit, fit_simulation, simulate_record
from ssmkit.sysid.recipes import Recipe, recipe_for
from ssmkit.sysid.records import IORecord, SysidBenchmark
from ssmkit.sysid.userdata import from_arrays
from ssmkit.sysid.wiener import DeepWiener
from ssmkit.sysid.workflow import build_model, evaluate, identify
from tests.conftest import DEVICE

F64 = torch.float64
N = 5  # encoder window
M, P = 2, 2  # inputs, outputs: the mask has one channel per output, in the outputs' order


def _model(seed: int = 0, encoder_mask: bool = True, encoder_times: bool = False) -> DeepWiener:
    torch.manual_seed(seed)
    model = DeepWiener(M, P, d_model=4, n_layers=2, dt=0.5, encoder_window=N, encoder_hidden=8,
                       encoder_times=encoder_times, encoder_mask=encoder_mask, device=DEVICE, dtype=F64)
    g = torch.Generator().manual_seed(100 + seed)
    model.set_normalisation([torch.randn(40, M, generator=g, dtype=F64) * 3 + 1],
                            [torch.randn(40, P, generator=g, dtype=F64) * torch.tensor([2.0, 0.5], dtype=F64) - 1])
    return model


def _window(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(u (B, N, M), y (B, N, P)) with about a third of the outputs NaN, at least one of each output and one sample
    with both outputs missing."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, N, M, generator=g, dtype=F64)
    y = torch.randn(batch, N, P, generator=g, dtype=F64)
    gaps = torch.rand(batch, N, P, generator=g) < 0.33
    gaps[0, 1, 0] = gaps[0, 3, 1] = True
    gaps[-1, 2, :] = True
    return u.to(DEVICE), torch.where(gaps, float("nan"), y).to(DEVICE)


def _features(model: DeepWiener, u: torch.Tensor, y: torch.Tensor, tau: torch.Tensor | None = None,
              mask: bool = True) -> np.ndarray:
    """The encoder's input (B, N · per-sample features), sample after sample, in numpy float64."""
    u, y = u.cpu().numpy(), y.cpu().numpy()
    mu_u, sd_u = model.u_mean.cpu().numpy(), model.u_std.cpu().numpy()
    mu_y, sd_y = model.y_mean.cpu().numpy(), model.y_std.cpu().numpy()
    rows = []
    for b in range(u.shape[0]):
        row = []
        for k in range(u.shape[1]):
            row += [(u[b, k, i] - mu_u[i]) / sd_u[i] for i in range(M)]
            row += [0.0 if np.isnan(y[b, k, j]) else (y[b, k, j] - mu_y[j]) / sd_y[j] for j in range(P)]
            if mask:
                row += [0.0 if np.isnan(y[b, k, j]) else 1.0 for j in range(P)]
            if tau is not None:
                row.append(float(np.log(float(tau[b, k]))))
        rows.append(row)
    return np.array(rows)


def _reference(model: DeepWiener, features: np.ndarray) -> torch.Tensor:
    """The encoder's output vector (B, Σ state sizes): the model's nn.Sequential applied to the reference input."""
    with torch.no_grad():
        return model.state_encoder(torch.tensor(features, dtype=model.u_mean.dtype, device=DEVICE))


def _flat(states: list) -> torch.Tensor:
    return torch.cat([torch.view_as_real(s).flatten(1) if s.is_complex() else s.flatten(1) for s in states], 1)


def _estimate(model, u, y, tau=None) -> torch.Tensor:
    with torch.no_grad():
        return _flat(model.estimate_state(u, y) if tau is None else model.estimate_state(u, y, tau))


@pytest.mark.parametrize("times", [False, True])
def test_the_encoder_reads_the_mask_beside_the_filled_values(times: bool) -> None:
    model = _model(encoder_times=times)
    assert model.state_encoder[0].in_features == N * (M + 2 * P + int(times))
    u, y = _window(3, seed=3)
    tau = None
    if times:
        tau = (torch.rand(3, N, generator=torch.Generator().manual_seed(4), dtype=F64) * 2 + 0.1).to(DEVICE)
    want = _reference(model, _features(model, u, y, tau))
    got = _estimate(model, u, y, tau)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert bool(torch.isfinite(got).all())


def test_a_missing_sample_is_no_longer_a_measured_one_at_the_mean() -> None:
    u, y = _window(2, seed=5)
    at_mean = y.clone()
    at_mean[0, 1, 0] = float(_model().y_mean[0])  # _window leaves (0, 1, 0) missing: measured at the mean instead
    blind, masked = _model(encoder_mask=False), _model()
    # without the mask the two windows are one input (the known limitation); the reference has no mask channels
    torch.testing.assert_close(_estimate(blind, u, y), _estimate(blind, u, at_mean), rtol=0, atol=0)
    torch.testing.assert_close(_estimate(blind, u, y), _reference(blind, _features(blind, u, y, mask=False)),
                               rtol=1e-12, atol=1e-14)
    # with it they differ in one feature only, the mask channel of output 0 at sample 1
    a, b = _features(masked, u, y), _features(masked, u, at_mean)
    assert np.flatnonzero(a != b).tolist() == [1 * (M + 2 * P) + M + P + 0]
    got_a, got_b = _estimate(masked, u, y), _estimate(masked, u, at_mean)
    torch.testing.assert_close(got_b, _reference(masked, b), rtol=1e-12, atol=1e-14)
    assert float((got_a[0] - got_b[0]).abs().max()) > 1e-3
    torch.testing.assert_close(got_a[1], got_b[1], rtol=0, atol=0)  # the other window is unchanged


def test_refusals() -> None:
    with pytest.raises(ValueError, match="encoder_mask must be a bool; got 1"):
        DeepWiener(1, 1, encoder_window=3, encoder_mask=1)
    with pytest.raises(ValueError, match="encoder_mask tells the encoder which window outputs were measured: give "
                                         "encoder_window > 0"):
        DeepWiener(1, 1, encoder_mask=True)
    record = IORecord(torch.randn(40, M, dtype=F64), torch.randn(40, P, dtype=F64), 0.5, "r")
    bench = SysidBenchmark(name="toy", title="toy", train=[record], test=[record], n_init=N, unit="V")
    for mode in ("simulation", "prediction"):  # (a prediction model has no encoder: the type is named first)
        with pytest.raises(ValueError, match="encoder_mask must be a bool; got 'yes'"):
            build_model(bench, "s4d", Recipe(d_model=4, n_layers=1, d_state=4, encoder_window=N, encoder_mask="yes"),
                        mode=mode)
    with pytest.raises(ValueError, match="encoder_mask tells the initial-state encoder which window outputs were "
                                         r"measured, and this model has no encoder \(mode 'prediction'"):
        build_model(bench, "s4d", Recipe(d_model=4, n_layers=1, d_state=4, encoder_window=N, encoder_mask=True),
                    mode="prediction")


def test_a_saved_model_keeps_the_mask_and_simulates_alike() -> None:
    model = _model(encoder_times=True)
    buffer = io.BytesIO()
    torch.save(model.checkpoint(), buffer)
    buffer.seek(0)
    again = DeepWiener.from_checkpoint(torch.load(buffer, weights_only=True))
    assert again.encoder_mask and again.arguments["encoder_mask"] is True and "encoder_mask=True" in repr(again)
    u, y = _window(3, seed=7)
    tau = torch.rand(3, N, generator=torch.Generator().manual_seed(8), dtype=F64).to(DEVICE) + 0.5
    torch.testing.assert_close(_estimate(again, u, y, tau), _estimate(model, u, y, tau), rtol=0, atol=0)
    g = torch.Generator().manual_seed(9)
    y_rec = torch.randn(30, P, generator=g, dtype=F64)
    y_rec[torch.rand(30, P, generator=g) < 0.3] = float("nan")
    r = IORecord(torch.randn(30, M, generator=g, dtype=F64), y_rec, 0.5, "r")
    with torch.no_grad():
        a, n = simulate_record(model, r)
        b, _ = simulate_record(again, r)
    assert n == N and torch.equal(a[n:], b[n:]) and bool(torch.isfinite(a[n:]).all())
    assert "encoder_mask" not in _model(encoder_mask=False).arguments  # checkpoints without the mask unchanged
    model.drop_encoder()
    assert not model.encoder_mask and "encoder_mask" not in model.arguments
    assert not DeepWiener.from_checkpoint(model.checkpoint()).encoder_mask


def test_an_ensemble_hands_the_window_to_every_masked_encoder() -> None:
    members = [_model(seed=0), _model(seed=1)]
    ensemble = WienerEnsemble(members)
    assert ensemble.encoder_mask
    u, y = _window(2, seed=11)
    with torch.no_grad():
        states = ensemble.estimate_state(u, y)
    for member, s in zip(members, states):
        torch.testing.assert_close(_flat(s), _reference(member, _features(member, u, y)), rtol=1e-12, atol=1e-14)
    again = WienerEnsemble.from_checkpoint(ensemble.checkpoint())
    assert all(m.encoder_mask for m in again.members)
    with torch.no_grad():
        for s, t in zip(again.estimate_state(u, y), states):
            torch.testing.assert_close(_flat(s), _flat(t), rtol=0, atol=0)
    with pytest.raises(ValueError, match="members must share encoder_mask: members\\[0\\] has True, members\\[1\\] "
                                         "has False"):
        WienerEnsemble([_model(), _model(seed=1, encoder_mask=False)])


def test_the_recipe_and_the_command_line_build_it() -> None:
    record = IORecord(torch.randn(40, M, dtype=F64), torch.randn(40, P, dtype=F64), 0.5, "r")
    bench = SysidBenchmark(name="toy", title="toy", train=[record], test=[record], n_init=N, unit="V")
    small = Recipe(d_model=4, n_layers=1, d_state=4, encoder_window=N)
    for times, width in ((False, M + 2 * P), (True, M + 2 * P + 1)):
        model = build_model(bench, "s4d", replace(small, encoder_mask=True, encoder_times=times))
        assert model.encoder_mask and model.state_encoder[0].in_features == N * width
    assert build_model(bench, "s4d", small).state_encoder[0].in_features == N * (M + P)
    # a training-only encoder (no init window) reads the mask too, and drops it with the encoder after training
    rest = SysidBenchmark(name="toy", title="toy", train=[record], test=[record], n_init=0, unit="V")
    trainer = build_model(rest, "s4d", Recipe(d_model=4, n_layers=1, d_state=4, train_encoder=N, encoder_mask=True))
    assert trainer.encoder_mask and trainer.state_encoder[0].in_features == N * (M + 2 * P)
    cfg = _parser("ssmkit sysid").parse_args(["--benchmark", "cascaded_tanks", "--recipe.encoder_mask", "true"])
    got = recipe_from_args("cascaded_tanks", cfg)
    assert got.encoder_mask is True and got == replace(recipe_for("cascaded_tanks"), encoder_mask=True)


def _gappy_record(length: int, seed: int, name: str) -> IORecord:
    """A lightly damped first-order-plus-tanh response to held random levels, ~30 % of each output missing."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(length // 3 + 1, M, generator=g, dtype=F64).repeat_interleave(3, 0)[:length]
    x = torch.zeros(P, dtype=F64)
    ys = []
    for u_k in u:
        x = 0.8 * x + 0.3 * torch.stack([u_k[0] + 0.5 * u_k[1], u_k[1]])
        ys.append(torch.tanh(x) + 0.5)
    y = torch.stack(ys)
    y[torch.rand(length, P, generator=g) < 0.3] = float("nan")
    return IORecord(u, y, 0.5, name)


def test_training_hands_the_encoder_its_windows_gaps_and_the_trained_mask_matters(monkeypatch) -> None:
    record = _gappy_record(90, seed=13, name="train")
    seen = []
    trained = {}
    for mask in (True, False):
        model = _model(seed=2, encoder_mask=mask)
        start = model.state_encoder[0].weight.detach().clone()
        if mask:
            hook = model.state_encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
        history = fit_simulation(model, [record], config=SimulationFit(steps=6, window=12, batch_size=4, lr=1e-2,
                                                                       val_every=3, seed=1))
        if mask:
            hook.remove()
        assert np.isfinite(history["best_val_rmse"]) and all(np.isfinite(history["train_loss"]))
        trained[mask] = (model, start)
    # each training window's encoder input is the reference input of the window of the record it was drawn at
    u_all, y_all = record.u.to(DEVICE), record.y.to(DEVICE)
    model = trained[True][0]
    training = [f for f in seen if f.shape[0] == 4]
    assert len(training) == 6
    rows = 0
    for features in training:
        for row in features:
            u_cols = row.view(N, M + 2 * P)[:, :M]
            matches = [o for o in range(len(record) - N + 1)
                       if torch.equal(u_cols, ((u_all[o: o + N] - model.u_mean) / model.u_std))]
            assert len(matches) == 1
            o = matches[0]
            # (the normalisation is the one set at the start of training, before the weights changed)
            want = _features(model, u_all[None, o: o + N], y_all[None, o: o + N])[0]
            np.testing.assert_allclose(row.cpu().numpy(), want, rtol=1e-12, atol=1e-14)
            rows += int(torch.isnan(y_all[o: o + N]).any())
    assert rows > 0  # the drawn windows had gaps to mark
    # the mask channels' weights were trained (their gradient reached them)
    model, start = trained[True]
    mask_cols = [k * (M + 2 * P) + M + P + j for k in range(N) for j in range(P)]
    assert float((model.state_encoder[0].weight.detach()[:, mask_cols] - start[:, mask_cols]).abs().max()) > 1e-4
    # after training, a missing encoder sample and a measured one at the mean give another simulation with the mask,
    # the same one without it
    test = _gappy_record(40, seed=17, name="test")
    y_gap = test.y.clone()
    y_gap[2, 0] = float("nan")
    y_mean = y_gap.clone()
    for mask, (m, _) in trained.items():
        y_mean[2, 0] = float(m.y_mean[0])
        with torch.no_grad():
            a, n = simulate_record(m, IORecord(test.u, y_gap, 0.5, "gap"))
            b, _ = simulate_record(m, IORecord(test.u, y_mean, 0.5, "mean"))
        assert n == N and bool(torch.isfinite(a[n:]).all())
        if mask:
            assert float((a[n:] - b[n:]).abs().max()) > 1e-6
        else:
            assert torch.equal(a[n:], b[n:])


def test_identify_trains_an_ensemble_of_masked_encoders_on_missing_outputs() -> None:
    train, test = _gappy_record(120, seed=19, name="train"), _gappy_record(60, seed=23, name="test")
    bench = from_arrays(train.u.numpy(), train.y.numpy(), 0.5, n_init=N, test=(test.u.numpy(), test.y.numpy()),
                        missing_outputs=True)
    recipe = Recipe(d_model=4, n_layers=1, d_state=4, encoder_window=N, encoder_mask=True, window=16, batch_size=4,
                    steps=4, val_every=2, restarts=2, combine="average")
    model, history = identify(bench, "s4d", recipe)
    assert isinstance(model, WienerEnsemble) and model.encoder_mask and all(m.encoder_mask for m in model.members)
    assert model.u_mean.dtype == torch.float32  # the workflow's models: float32 (the reference's tolerance)
    assert np.isfinite(history["best_val_rmse"])
    scores = evaluate(model, bench)
    u, y = bench.test[0].u[None, :N].to(DEVICE), bench.test[0].y[None, :N].to(DEVICE)
    assert bool(torch.isnan(y).any())  # the test record's encoder window has gaps to mark
    with torch.no_grad():
        for member, s in zip(model.members, model.estimate_state(u, y)):
            torch.testing.assert_close(_flat(s), _reference(member, _features(member, u, y)), rtol=1e-5, atol=1e-6)
    assert len(scores["records"]) == 1 and all(np.isfinite(v) for v in scores["records"][0]["rmse"])
