"""A DeepWiener's equilibria along each input (``ssmkit.analysis.operating_sweeps``) and their place in the report:
the local DC gain against central differences of the static characteristic, the local spectral radius against the
blocks' exported poles (the linearisation of a cascade is block triangular with the blocks' Ā on its diagonal), the
swept range against the stored normalisation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from ssmkit.analysis import NonlinearSystem, operating_sweeps, write_report
from ssmkit.analysis.operating import OperatingSweep, spectral_radius
from ssmkit.analysis.report import summary_markdown
from ssmkit.sysid import DeepWiener

F64 = torch.float64


def _model(seed=0):
    torch.manual_seed(seed)
    model = DeepWiener(2, 2, d_model=4, n_layers=2, layer="s4d", layer_options={"d_state": 8}, activation="tanh",
                       timescale=(1.0, 4.0), dt=0.5)
    with torch.no_grad():
        model.u_mean.copy_(torch.tensor([1.0, -2.0]))
        model.u_std.copy_(torch.tensor([0.5, 3.0]))
        model.y_mean.copy_(torch.tensor([0.2, 5.0]))
        model.y_std.copy_(torch.tensor([2.0, 0.1]))
        for skip in model.skips:
            skip.weight.normal_(0, 0.3)
    return model


def test_the_sweeps_cover_the_training_range_and_their_gains_are_the_slopes():
    model = _model()
    sweeps = operating_sweeps(model, points=5)
    assert [sw.input for sw in sweeps] == [0, 1]
    np.testing.assert_allclose(sweeps[0].u[:, 0], np.linspace(0.0, 2.0, 5), rtol=0, atol=1e-7)
    np.testing.assert_allclose(sweeps[0].u[:, 1], -2.0)
    np.testing.assert_allclose(sweeps[1].u[:, 1], np.linspace(-8.0, 4.0, 5), rtol=0, atol=1e-6)
    system = NonlinearSystem(model)
    for sw in sweeps:
        assert sw.y.shape == (5, 2) and sw.dc_gain.shape == (5, 2, 2) and sw.stable
        np.testing.assert_allclose(sw.y, system.static_characteristic(sw.u), rtol=0, atol=1e-12)
        i = sw.input

        def slope(eps):  # ∂y*/∂u_i by central differences of the static characteristic (Newton's equilibria)
            du = np.zeros(2)
            du[i] = eps
            return (system.static_characteristic(sw.u + du) - system.static_characteristic(sw.u - du)) / (2 * eps)

        want = (4 * slope(5e-5) - slope(1e-4)) / 3
        np.testing.assert_allclose(sw.dc_gain[:, :, i], want, rtol=0, atol=1e-7 * np.abs(want).max())


def test_the_local_spectral_radius_of_a_cascade_is_its_blocks():
    """A deep Wiener cascade's Jacobian ∂f/∂x is block lower triangular with each block's Ā on the diagonal (σ' only
    scales the coupling between blocks), so at every equilibrium its spectral radius is the blocks' largest."""
    model = _model(1).double()  # the blocks' poles from the same float64 parameters
    for sw in operating_sweeps(model, points=3):
        np.testing.assert_allclose(sw.spectral_radius, model.spectral_radius(), rtol=1e-12)


def test_an_ensemble_settles_where_its_members_do_on_average():
    from ssmkit.sysid import WienerEnsemble

    members = [_model(0), _model(1)]
    with torch.no_grad():
        members[1].u_mean.copy_(torch.tensor([3.0, 0.0]))
        members[1].u_std.copy_(torch.tensor([1.5, 1.0]))
    sweeps = operating_sweeps(WienerEnsemble(members), points=3)
    np.testing.assert_allclose(sweeps[0].u[:, 0], [0.0, 2.0, 4.0], atol=1e-7)  # mean 2 ± 2·1 over the members
    np.testing.assert_allclose(sweeps[0].u[:, 1], -1.0)
    want = np.mean([NonlinearSystem(m).static_characteristic(sweeps[0].u) for m in members], axis=0)
    np.testing.assert_allclose(sweeps[0].y, want, rtol=0, atol=1e-12)


def test_what_is_not_swept_says_why():
    from ssmkit.models import SequenceModel

    reason = operating_sweeps(SequenceModel(1, 4, 1, "s4d", d_output=1))
    assert "no input normalisation" in reason
    reason = operating_sweeps(_model(), max_states=3)
    assert "more than max_states = 3" in reason
    assert "Not computed: its state vector" in summary_markdown([], [], "t", [], sweeps=reason)
    for bad in (1, 2.0, True):
        with pytest.raises(ValueError, match="points must be an int >= 2"):
            operating_sweeps(_model(), points=bad)
    with pytest.raises(ValueError, match="max_states must be an int >= 1"):
        operating_sweeps(_model(), max_states=0)


def test_the_report_of_a_deep_wiener_model_has_its_equilibria(tmp_path):
    pytest.importorskip("matplotlib")
    model = _model()
    paths = write_report(model, str(tmp_path), title="dw", channels=2)
    assert os.path.getsize(paths["equilibria"]) > 0
    record = json.load(open(paths["json"]))
    sweeps = operating_sweeps(model)
    assert len(record["equilibria"]) == 2
    np.testing.assert_allclose(record["equilibria"][1]["y"], sweeps[1].y, rtol=1e-12)
    np.testing.assert_allclose(record["equilibria"][0]["dc_gain"], sweeps[0].dc_gain, rtol=1e-12)
    text = open(paths["summary"]).read()
    assert "## The whole model around its equilibria" in text and "![equilibria](equilibria.png)" in text
    y = sweeps[1].y[:, 1]
    assert f"| u[1] | [-8, 4] | y[1] | [{y.min():.4g}, {y.max():.4g}] |" in text


def test_the_spectral_radius_through_strongly_connected_components():
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((k, k)) for k in (1, 3, 2, 4)]
    n = sum(b.shape[0] for b in blocks)
    A = np.tril(rng.standard_normal((n, n)), -1)  # coupling below the blocks only
    start = 0
    for b in blocks:
        A[start:start + len(b), start:start + len(b)] = b
        start += len(b)
    perm = rng.permutation(n)
    A = A[np.ix_(perm, perm)]  # hide the structure
    assert spectral_radius(A) == pytest.approx(np.abs(np.linalg.eigvals(A)).max(), rel=1e-12)
    dense = rng.standard_normal((6, 6))
    assert spectral_radius(dense) == pytest.approx(np.abs(np.linalg.eigvals(dense)).max(), rel=1e-12)
    assert spectral_radius(np.zeros((3, 3))) == 0.0


def test_a_sweep_that_finds_no_equilibrium_is_reported_not_raised(tmp_path, monkeypatch):
    import ssmkit.analysis.operating as operating

    def fail(*args, **kwargs):
        raise ValueError("equilibrium: no convergence in 50 Newton iterations at point 3")

    monkeypatch.setattr(operating.NonlinearSystem, "operating_point", fail)
    paths = write_report(_model(), str(tmp_path), plots=False)
    text = open(paths["summary"]).read()
    assert "Not computed: no equilibrium found everywhere along the inputs (equilibrium: no convergence" in text
    assert json.load(open(paths["json"]))["equilibria"].startswith("no equilibrium found")


def test_the_spectral_radius_of_random_block_triangular_matrices_against_numpy():
    """Probe 25: block triangular matrices (blocks of 1-4, complex pairs, nilpotent and zero blocks, a negative 1 × 1
    block that is the largest, the largest block last or first), hidden by a permutation, against numpy's eigvals of
    the whole matrix; a diagonal matrix (every state its own component) is max |a_ii|."""
    rng = np.random.default_rng(25)
    for trial in range(40):
        sizes = rng.integers(1, 5, size=rng.integers(1, 6))
        n = int(sizes.sum())
        A = np.triu(rng.standard_normal((n, n)) * (rng.random((n, n)) < 0.5), 1)  # coupling above the blocks
        start = 0
        for k in sizes:
            kind = rng.integers(4)
            block = rng.standard_normal((k, k)) * rng.uniform(0.1, 3.0)
            if kind == 1:
                block = np.triu(block, 1)  # nilpotent: every eigenvalue 0
            elif kind == 2:
                block[:] = 0.0
            A[start:start + k, start:start + k] = block
            start += k
        perm = rng.permutation(n)
        A = A[np.ix_(perm, perm)]
        assert spectral_radius(A) == pytest.approx(np.abs(np.linalg.eigvals(A)).max(), rel=1e-12, abs=1e-15), trial
    A = np.array([[0.5, 1.0, 0.0], [0.0, -2.0, 0.0], [3.0, 4.0, 0.25]])  # three components; -2 in the middle
    assert spectral_radius(A) == 2.0
    assert spectral_radius(np.diag([0.1, -0.7, 0.3])) == 0.7
    rotation = np.array([[0.0, -0.9], [0.9, 0.0]])  # one component: ±0.9i, not its diagonal's 0
    assert spectral_radius(rotation) == pytest.approx(0.9, rel=1e-15)


def test_stable_means_every_radius_below_one():
    sweep = lambda radii: OperatingSweep(0, np.zeros((len(radii), 1)), np.zeros((len(radii), 1)),  # noqa: E731
                                         np.array(radii), np.zeros((len(radii), 1, 1)))
    assert sweep([0.5, 0.999999]).stable is True
    assert sweep([0.5, 1.0]).stable is False and sweep([1.5, 0.2]).stable is False


def _sized(seed, width, depth, u_mean, u_std):
    torch.manual_seed(seed)
    model = DeepWiener(2, 2, d_model=width, n_layers=depth, layer="s4d", layer_options={"d_state": 2},
                       activation="tanh", timescale=(1.0, 4.0), dt=0.5, dtype=F64)
    with torch.no_grad():
        model.u_mean.copy_(torch.tensor(u_mean))
        model.u_std.copy_(torch.tensor(u_std))
        for skip in model.skips:
            skip.weight.normal_(0, 0.5)
    return model


def test_an_ensemble_of_two_sizes_is_swept_member_by_member():
    """Members of 4 and 12 states: the sweep's u from the members' mean μ ± 2 σ, y* and the DC gain the members'
    means, the spectral radius the larger of the members' at each point, each member's from numpy (eigvals of its
    linearisation at its equilibrium, C (I - A)⁻¹ B + D by a solve)."""
    from ssmkit.sysid import WienerEnsemble

    members = [_sized(0, 2, 1, [1.0, -2.0], [0.5, 3.0]), _sized(3, 3, 2, [3.0, 0.0], [1.5, 1.0])]
    ensemble = WienerEnsemble(members)
    for i, sw in enumerate(operating_sweeps(ensemble, points=3)):
        assert sw.input == i and sw.u.shape == (3, 2) and sw.y.shape == (3, 2) and sw.dc_gain.shape == (3, 2, 2)
        want_u = np.tile([2.0, -1.0], (3, 1))
        want_u[:, i] = [[0.0, 2.0, 4.0], [-5.0, -1.0, 3.0]][i]  # (μ ± 2σ) with σ = (1, 2)
        np.testing.assert_allclose(sw.u, want_u, rtol=0, atol=1e-15)
        ys, gains, radii = [], [], []
        for member in members:
            system = NonlinearSystem(member)
            x, y = system.equilibrium(sw.u)
            lin = system.linearize(sw.u, x)
            ys.append(y)
            radii.append([np.abs(np.linalg.eigvals(A)).max() for A in lin.A])
            eye = np.eye(lin.A.shape[1])
            gains.append([C @ np.linalg.solve(eye - A, B) + D for A, B, C, D in zip(lin.A, lin.B, lin.C, lin.D)])
        np.testing.assert_allclose(sw.y, np.mean(ys, 0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(sw.dc_gain, np.mean(gains, 0), rtol=0, atol=1e-10)
        np.testing.assert_allclose(sw.spectral_radius, np.max(radii, 0), rtol=1e-12)
        assert not np.allclose(radii[0], radii[1])  # the members differ: the larger is taken
    assert isinstance(operating_sweeps(ensemble, points=2, max_states=12), list)  # the largest member's 12 states
    assert operating_sweeps(ensemble, points=2, max_states=11) == \
        "its state vector has 12 numbers, more than max_states = 11"


def test_input_statistics_need_both_a_mean_and_a_deviation():
    from ssmkit.analysis.operating import input_statistics
    from ssmkit.models import SequenceModel

    model = SequenceModel(1, 4, 1, "s4d", d_output=1)
    model.register_buffer("u_mean", torch.zeros(1))  # a mean without a deviation: no range
    assert input_statistics(model) is None
    model.u_std = 2.0  # not a tensor
    assert input_statistics(model) is None
    model.u_std = torch.tensor([2.0])
    mu, sigma = input_statistics(model)
    np.testing.assert_array_equal(mu, [0.0])
    np.testing.assert_array_equal(sigma, [2.0])
    assert mu.dtype == sigma.dtype == np.float64


def test_the_strongly_connected_components_are_what_is_solved(monkeypatch):
    """The eigenvalue problems solved are the components' (sizes 1, 3, 2 here, not one of 6), and an entry of 1
    connects like any other nonzero: [[0, 1], [-1, 0]] is one component with poles ±i."""
    assert spectral_radius(np.array([[0.0, 1.0], [-1.0, 0.0]])) == pytest.approx(1.0, rel=1e-15)
    A = np.zeros((6, 6))
    A[0, 0] = 0.3
    A[1:4, 1:4] = [[0.1, 0.5, 0.0], [0.0, 0.2, 0.5], [0.5, 0.0, 0.1]]  # a cycle 1 -> 2 -> 3 -> 1
    A[4:, 4:] = [[0.0, 0.8], [-0.8, 0.0]]
    A[4, 0] = A[1, 5] = 1.0  # couplings that close no cycle
    sizes, eigvals = [], np.linalg.eigvals
    monkeypatch.setattr(np.linalg, "eigvals", lambda M: sizes.append(len(M)) or eigvals(M))
    got = spectral_radius(A)
    monkeypatch.undo()
    assert sorted(sizes) == [1, 2, 3]
    assert got == pytest.approx(np.abs(np.linalg.eigvals(A)).max(), rel=1e-12)


def test_sweeps_are_frozen_and_the_defaults_are_as_documented():
    import dataclasses

    from torch import nn

    sweep = OperatingSweep(0, np.zeros((2, 1)), np.zeros((2, 1)), np.zeros(2), np.zeros((2, 1, 1)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        sweep.input = 1

    class Wide(nn.Module):  # x' = x / 2, y = x[:, :1] + u: n states, with a stored input normalisation
        def __init__(self, n):
            super().__init__()
            self.n, self.n_inputs = n, 1
            self.register_buffer("u_mean", torch.zeros(1, dtype=F64))
            self.register_buffer("u_std", torch.ones(1, dtype=F64))

        def initial_state(self, batch_size):
            return torch.zeros(batch_size, self.n, dtype=F64)

        def step(self, u_t, state):
            return state[:, :1] + u_t, state / 2

    assert operating_sweeps(Wide(2049)) == "its state vector has 2049 numbers, more than max_states = 2048"
    assert operating_sweeps(Wide(3), max_states=1) == "its state vector has 3 numbers, more than max_states = 1"
    (sw,) = operating_sweeps(Wide(3))  # 21 points over 0 ± 2, y* = u, ρ = 1/2, DC gain 1
    np.testing.assert_allclose(sw.u[:, 0], np.linspace(-2.0, 2.0, 21), rtol=0, atol=1e-15)
    np.testing.assert_allclose(sw.y, sw.u, rtol=0, atol=1e-15)
    np.testing.assert_allclose(sw.spectral_radius, 0.5, rtol=1e-15)
    np.testing.assert_allclose(sw.dc_gain, 1.0, rtol=1e-15)


def test_a_named_model_reports_its_equilibria_under_its_signal_names(tmp_path):
    # (found by the new-user probe of 2026-12-06: the table, the plot and the JSON said u[1] / y[0] although the
    # model's checkpoint carries the names)
    pytest.importorskip("matplotlib")
    model = _model().name_signals(["valve", "pump"], ["level", "flow"])
    sweeps = operating_sweeps(model)
    assert [s.input_label() for s in sweeps] == ["valve", "pump"] and sweeps[1].output_label(0) == "level"
    paths = write_report(model, str(tmp_path), title="dw", channels=2)
    record = json.load(open(paths["json"]))
    assert record["equilibria"][1]["input_name"] == "pump" and record["equilibria"][1]["output_names"] == ["level", "flow"]
    y = sweeps[1].y[:, 1]
    assert f"| pump | [-8, 4] | flow | [{y.min():.4g}, {y.max():.4g}] |" in open(paths["summary"]).read()
    unnamed = operating_sweeps(_model())[1]  # the same equilibria, the index labels
    np.testing.assert_allclose(unnamed.y, sweeps[1].y, rtol=1e-12)
    assert (unnamed.input_label(), unnamed.output_label(1)) == ("u[1]", "y[1]")
