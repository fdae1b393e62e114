"""Four leftovers of earlier sessions, each against an independent reference (closed forms, hand-computed averages,
hand-made archives).

1. *A ``dt`` that contradicts a model's own sampling time was used silently* by ``analyze_model`` and
   ``NonlinearSystem`` (and ``write_report`` / ``pole_statistics``, which share ``sampling_time``): a DeepWiener
   identified at Ts = 0.5 s analysed with ``dt=0.25`` reported continuous poles log(z) / 0.25, twice too fast,
   labelled seconds. Now a ValueError names both values (``ssmkit analyze --dt`` already refused); a ``dt`` that
   agrees (to 1e-6 relative, a Ts read from float32) or one given for a model without a ``dt`` of its own is used.
2. *``reduced_order`` may say 0, which ``StateSpace.balred`` refuses*: not a wrong number. 0 is the smallest r of
   the bound 2 Σ_{i>r} σ_i <= rel ‖G‖_∞ and means "the feed-through D alone is within rel" (‖G − D‖_∞ <= 2 Σ σ_i);
   balred has no system to give for it (a StateSpace has >= 1 state, and balred(1) refuses a system with σ = 0, so
   "at least 1" would name an order balred refuses too). Documented in ``layerwise``; checked here on one-pole
   channels in closed form.
3. *``WeightAverage`` folded shared memory twice*: two buffers viewing one storage with an overlap gave the shared
   elements β_t² θ̄ + (1 − β_t²) θ (the second view read the first's write). Now the new values of tensors that
   share a storage are all computed from the old average, then written.
4. *A zip member with a bad CRC left the members before it extracted* (and their folders): now every member is
   extracted into a temporary folder inside the target and renamed into place only when all were read whole; the
   ValueError names the archive and the member.
"""

from __future__ import annotations

import io
import math
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from ssmkit.analysis import NonlinearSystem, analyze_model
from ssmkit.analysis.layerwise import reduced_order, sampling_time
from ssmkit.analysis.statespace import StateSpace
from ssmkit.analysis.zoo import pole_statistics
from ssmkit.data.extract import safe_extract
from ssmkit.layers import build
from ssmkit.sysid import DeepWiener
from ssmkit.sysid.averaging import WeightAverage

F64 = torch.float64
POLES = (0.8, 0.5, 0.95)  # a per channel of the one-pole EMA layer
B = (0.3, -0.7, 0.2)
C = (1.5, 0.4, -2.0)
D = (0.25, 1.0, 0.0)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _one_pole_ema(c=C) -> nn.Module:
    """Three channels h_t = a h_{t-1} + b u_t, y_t = c h_t + d u_t (float64, exact a, b, c, d)."""
    layer = build("ema", d_model=3, d_state=1, dtype=F64)
    with torch.no_grad():
        for h, (a, b, c_h, d) in enumerate(zip(POLES, B, c, D)):
            alpha = 0.9
            layer.logit_alpha[0, h, 0] = _logit(alpha)
            layer.logit_delta[0, h, 0] = _logit((1 - a) / alpha)
            layer.beta[0, h, 0] = b / alpha
            layer.gamma[0, h, 0] = c_h
            layer.D[h] = d
    return layer


class _WithTs(nn.Module):
    """A model that carries its sampling time as ``dt`` (as a DeepWiener does)."""

    def __init__(self, layer: nn.Module, dt) -> None:
        super().__init__()
        self.inner = layer
        self.dt = dt


# -- 1. a dt that contradicts the model's own ------------------------------------------------------------------------


def test_a_dt_that_contradicts_the_models_own_is_refused_naming_both():
    model = _WithTs(_one_pole_ema(), 0.5)
    for call in (lambda: analyze_model(model, dt=0.25), lambda: pole_statistics(model, dt=0.25),
                 lambda: sampling_time(model, 0.25)):
        with pytest.raises(ValueError, match=r"dt = 0\.25 s disagrees with the model's own sampling time Ts = 0\.5 s"):
            call()
    with pytest.raises(ValueError, match=r"dt = 0\.5000006 s disagrees .* Ts = 0\.5 s"):
        analyze_model(model, dt=0.5000006)  # 1.2e-6 relative: another step
    # agreeing: z = a, s = ln(a) / Ts in closed form
    for dt in (0.5, 0.5000004, None):
        (r,) = analyze_model(model, dt=dt)
        step = 0.5 if dt is None else dt
        assert r.system.dt == step
        np.testing.assert_allclose(r.poles_continuous[:, 0], np.log(POLES) / step, rtol=1e-12)


def test_a_ts_read_from_float32_agrees_and_a_model_without_its_own_takes_the_given_dt():
    model = _WithTs(_one_pole_ema(), 0.1)
    (r,) = analyze_model(model, dt=np.float32(0.1))  # 0.10000000149…: 1.5e-8 relative
    assert r.system.dt == float(np.float32(0.1))
    bare = nn.Sequential(_one_pole_ema())
    (r,) = analyze_model(bare, dt=0.25)
    assert r.system.dt == 0.25
    np.testing.assert_allclose(r.slowest_time_constant, -0.25 / math.log(0.95), rtol=1e-12)
    broken = _WithTs(_one_pole_ema(), 0.0)  # a broken carried Ts: an explicit dt is the only step there is
    assert sampling_time(broken, 0.25) == (0.25, True)
    with pytest.raises(ValueError, match=r"the model's dt must be the sampling time in seconds"):
        sampling_time(broken)


class _Scalar(nn.Module):
    """x[k+1] = 0.5 x[k] + u[k], y[k] = 2 x[k] + 3 u[k], with an optional ``dt``."""

    n_inputs = 1

    def __init__(self, dt=None):
        super().__init__()
        if dt is not None:
            self.dt = dt

    def initial_state(self, batch_size):
        return torch.zeros(batch_size, 1, dtype=F64)

    def step(self, u_t, state):
        return 2 * state + 3 * u_t, 0.5 * state + u_t


def test_nonlinear_system_refuses_a_contradicting_dt_and_keeps_an_agreeing_one():
    wiener = DeepWiener(1, 1, d_model=2, n_layers=1, layer_options={"d_state": 2}, dt=0.5, dtype=F64)
    with pytest.raises(ValueError, match=r"dt = 0\.25 s disagrees with the model's own sampling time Ts = 0\.5 s"):
        NonlinearSystem(wiener, dt=0.25)
    assert NonlinearSystem(wiener, dt=0.5).dt == 0.5 and NonlinearSystem(wiener).dt == 0.5
    with pytest.raises(ValueError, match=r"dt = 2\.0 s disagrees .* Ts = 0\.25 s"):
        NonlinearSystem(_Scalar(dt=0.25), 2.0)
    system = NonlinearSystem(_Scalar(), dt=2.0)  # no dt of its own: the given one
    lin = system.linearize(0.0, 0.0)
    assert system.dt == 2.0 and lin.dt == 2.0
    np.testing.assert_allclose([lin.A[0, 0, 0], lin.B[0, 0, 0], lin.C[0, 0, 0], lin.D[0, 0, 0]], [0.5, 1, 2, 3],
                               rtol=1e-14)


# -- 2. reduced order 0 is the feed-through D ------------------------------------------------------------------------


def _channel(system: StateSpace, g: int) -> StateSpace:
    return StateSpace(system.A[g:g + 1], system.B[g:g + 1], system.C[g:g + 1], system.D[g:g + 1], dt=system.dt)


def test_order_0_means_the_feed_through_alone_is_within_the_bound_and_r_1_feeds_balred():
    (r,) = analyze_model(_one_pole_ema(), dt=1.0)
    a, b, c, d = (np.array(v) for v in (POLES, B, C, D))
    # the exported realisation reads u[k] before the output: D = d + c b, G − D = c a b / (z − a), whose H∞ is
    # |c a b| / (1 − a) (at z = 1, a > 0); the one Hankel singular value is |c b| a / (1 − a²)
    np.testing.assert_allclose(r.system.D[:, 0, 0], d + c * b, rtol=1e-14)
    rest = np.abs(c * a * b) / (1 - a)
    hinf = np.maximum(np.abs(d + c * b / (1 - a)), np.abs(d + c * b / (1 + a)))
    for rel in (0.01, 0.5, 0.9):
        orders = r.reduced_order(rel)
        assert orders.tolist() == np.where(2 * np.abs(c * b) * a / (1 - a ** 2) <= rel * hinf, 0, 1).tolist()
        for g, order in enumerate(orders):
            if order == 0:  # D alone is within rel of the norm: the documented reduced system
                assert rest[g] <= rel * hinf[g]
            else:  # an order balred takes, within the bound
                reduced = _channel(r.system, g).balred(int(order))
                assert reduced.nstates == order
    assert r.reduced_order(0.9).tolist() == [0, 0, 1]


def test_a_layer_whose_states_never_reach_the_output_has_order_0_and_no_balred_order():
    (r,) = analyze_model(_one_pole_ema(c=(0.0, 0.4, -2.0)), dt=1.0)  # channel 0: c = 0, σ = 0
    assert r.hankel[0, 0] == 0.0 and r.reduced_order(1e-12).tolist()[0] == 0
    np.testing.assert_allclose(r.system.D[0, 0, 0], D[0], rtol=1e-14)  # d + 0 · b: the whole system
    np.testing.assert_allclose(r.hinf[0], abs(D[0]), rtol=1e-9)
    with pytest.raises(ValueError, match=r"system 0 has no reachable and observable state .*no order >= 1"):
        _channel(r.system, 0).balred(1)  # "at least 1" would not be an order balred takes either
    assert reduced_order(np.array([[0.0, 0.0]]), np.array([0.0]), 0.01).tolist() == [0]  # 0 <= 0: D = G exactly


# -- 3. WeightAverage and shared memory ------------------------------------------------------------------------------


class _Views(nn.Module):
    """A parameter, two buffers over one storage that overlap in one element, a buffer viewing the parameter, and a
    buffer tied under two names."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4, dtype=F64))
        base = torch.zeros(5, dtype=F64)
        self.register_buffer("a", base[0:3])  # base[0..2]
        self.register_buffer("b", base[2:5])  # base[2..4]: base[2] is a[2] and b[0]
        self.register_buffer("v", self.w.data[1:3])
        self.register_buffer("t", torch.zeros(2, dtype=F64))
        self.register_buffer("t_again", self.t)

    def set(self, k: float) -> None:
        with torch.no_grad():
            self.w.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]) * k)
            self.a.copy_(torch.tensor([1.0, 2.0, 3.0]) * k)
            self.b[1:].copy_(torch.tensor([5.0, 7.0]) * k)
            self.t.copy_(torch.tensor([-1.0, 1.0]) * k * k)


def test_shared_memory_is_averaged_once_per_element_against_a_hand_computed_mean():
    model = _Views()
    average = WeightAverage(model, beta=0.5)
    for k in (1.0, 2.0, 3.0):  # β_t = 0, 0.5, 0.5: θ̄ = 0.25 θ_1 + 0.25 θ_2 + 0.5 θ_3
        model.set(k)
        average.update(model)
    mean = 0.25 * 1 + 0.25 * 2 + 0.5 * 3  # 2.25 for the linear iterates
    mean_sq = 0.25 * 1 + 0.25 * 4 + 0.5 * 9  # 5.75 for t = ± k²
    got = average.module
    torch.testing.assert_close(got.w, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64) * mean, rtol=1e-15, atol=0)
    torch.testing.assert_close(got.a, torch.tensor([1.0, 2.0, 3.0], dtype=F64) * mean, rtol=1e-15, atol=0)
    torch.testing.assert_close(got.b, torch.tensor([3.0, 5.0, 7.0], dtype=F64) * mean, rtol=1e-15, atol=0)  # 6.75
    torch.testing.assert_close(got.v, torch.tensor([2.0, 3.0], dtype=F64) * mean, rtol=1e-15, atol=0)
    torch.testing.assert_close(got.t, torch.tensor([-1.0, 1.0], dtype=F64) * mean_sq, rtol=1e-15, atol=0)
    assert got.a.untyped_storage().data_ptr() == got.b.untyped_storage().data_ptr()  # still one storage
    assert got.t.data_ptr() == got.t_again.data_ptr()
    loaded = _Views()
    loaded.load_state_dict(average.state_dict())  # the averaged state loads back into the model, views and all
    torch.testing.assert_close(loaded.b, got.b, rtol=0, atol=0)


# -- 4. no half-extracted archive --------------------------------------------------------------------------------------


def _bad_crc_zip(path, payloads: dict[str, bytes], corrupt: str) -> None:
    """A stored (uncompressed) zip whose member ``corrupt`` has one data byte flipped after writing: its CRC fails."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("rel/", b"")
        for name, data in payloads.items():
            z.writestr(name, data)
    raw = bytearray(buf.getvalue())
    at = bytes(raw).index(payloads[corrupt])
    raw[at + len(payloads[corrupt]) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


PAYLOADS = {"rel/f0.bin": b"first member " * 40, "rel/sub/f1.bin": b"second member " * 40,
            "other/f2.bin": b"third member " * 40}


def test_a_zip_member_with_a_bad_crc_is_named_and_leaves_nothing_behind(tmp_path):
    _bad_crc_zip(tmp_path / "bad.zip", PAYLOADS, corrupt="rel/sub/f1.bin")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"bad\.zip: the archive is cut short or corrupt \(BadZipFile: Bad CRC-32.*"
                                         r"in member 'rel/sub/f1\.bin'; nothing was extracted"):
        safe_extract(tmp_path / "bad.zip", out)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["keep.txt"]  # no rel/f0.bin, no temp
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match=r"in member 'rel/sub/f1\.bin'"):
        safe_extract(tmp_path / "bad.zip", tmp_path / "new" / "folder")
    assert list((tmp_path / "new" / "folder").iterdir()) == []  # created, as for an archive refused whole


def test_a_good_zip_and_tar_extract_whole_with_no_temporary_left(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in PAYLOADS.items():
            z.writestr(name, data)
        with pytest.warns(UserWarning, match="Duplicate name"):
            z.writestr("rel/f0.bin", b"the second copy wins")  # a name given twice: the last one wins
    (tmp_path / "good.zip").write_bytes(buf.getvalue())
    written = safe_extract(tmp_path / "good.zip", tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == [*PAYLOADS, "rel/f0.bin"]
    assert (tmp_path / "out" / "rel" / "f0.bin").read_bytes() == b"the second copy wins"
    assert (tmp_path / "out" / "other" / "f2.bin").read_bytes() == PAYLOADS["other/f2.bin"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["other", "rel"]
    with tarfile.open(tmp_path / "t.tar", "w") as tar:
        for name, data in PAYLOADS.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    safe_extract(tmp_path / "t.tar", tmp_path / "tout")
    assert {p.relative_to(tmp_path / "tout").as_posix(): p.read_bytes()
            for p in (tmp_path / "tout").rglob("*") if p.is_file()} == PAYLOADS
