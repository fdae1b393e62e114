"""The zoo: every registered layer declares its own ZooEntry and appears in the table with its capabilities; the
stability claims hold under adversarial parameters; the measured pole statistics of a model."""

import csv
import io

import numpy as np
import pytest
import torch

import ssmkit.layers as layers
from ssmkit.analysis.zoo import ZOO_COLUMNS, pole_statistics, state_size, to_csv, to_markdown, zoo_entry, zoo_table
from ssmkit.layers import Capabilities, SequenceLayer, ZooEntry
from ssmkit.models import SequenceModel
from tests.conftest import H, make_layer, variants

NAMES = layers.available()


@pytest.fixture(scope="module")
def table():
    return zoo_table(d_model=64)  # built on the meta device: nothing is allocated


@pytest.mark.parametrize("name", NAMES)
def test_every_layer_declares_its_own_zoo_entry(name):
    cls = layers.layer_class(name)
    assert isinstance(cls.__dict__.get("zoo"), ZooEntry), (
        f"layer {name!r} must declare its own zoo = ZooEntry(...) (ssmkit.layers.ZooEntry): the zoo table is built "
        "from it; an inherited or missing entry is refused"
    )


@pytest.mark.parametrize("name", NAMES)
def test_every_layer_appears_with_its_declared_capabilities(name, table):
    cls = layers.layer_class(name)
    (row,) = [r for r in table if r["layer"] == name]
    entry = cls.zoo
    assert set(row) == set(ZOO_COLUMNS)
    assert (row["kernel"], row["state_space"], row["step"]) == (
        cls.capabilities.kernel, cls.capabilities.state_space, cls.capabilities.step)
    assert row["backends"] == ", ".join(("auto",) + tuple(cls.backends))
    assert row["lti"] is (not entry.time_varying) and row["structure"] == entry.structure
    assert row["stable_by_construction"] is entry.stable_by_construction and row["paper"] == entry.paper
    # an LTI layer is one with a state-space realisation or a kernel; a time-varying one has neither
    if entry.time_varying:
        assert not cls.capabilities.state_space and not cls.capabilities.kernel
    # the state size is the layer's own state, counted in real numbers
    if cls.capabilities.step:
        layer = layers.build(name, d_model=64, device="meta")
        assert row["state_size"] == state_size(layer)  # None: a state that grows with L (a key/value cache)
        assert row["state_size"] is None or row["state_size"] > 0


def test_state_size_counts_complex_twice():
    assert state_size(make_layer("s4d", {"d_state": 8})) == H * 8  # H channels × N/2 complex modes × 2
    assert state_size(make_layer("dss", {"d_state": 6})) == H * 6


def test_missing_or_inherited_entry_fails_loudly():
    class Plain(SequenceLayer):
        capabilities = Capabilities(step=True)

    with pytest.raises(TypeError, match="declares no zoo entry of its own"):
        zoo_entry(Plain)

    class Child(layers.S4D):  # inherits S4D's entry: refused, a new layer must describe itself
        pass

    with pytest.raises(TypeError, match=r"\(Child\) declares no zoo entry of its own"):
        zoo_entry(Child)


def test_zoo_entry_validation():
    good = dict(paper="arXiv 0000.00000", structure="diagonal", parametrisation="λ", discretisation="ZOH",
                time_varying=False, stable_by_construction=True, stability="Re λ < 0", step_cost="O(H N)",
                sequence_cost="O(H N L)")
    ZooEntry(**good)
    with pytest.raises(ValueError, match="structure must be one of"):
        ZooEntry(**{**good, "structure": "banded"})
    with pytest.raises(ValueError, match="time_varying must be a bool"):
        ZooEntry(**{**good, "time_varying": 0})
    with pytest.raises(ValueError, match="stability must be a non-empty string"):
        ZooEntry(**{**good, "stability": " "})


STABLE_LTI = [n for n in NAMES
              if layers.layer_class(n).capabilities.state_space and layers.layer_class(n).zoo.stable_by_construction]


@pytest.mark.parametrize("name", STABLE_LTI)
def test_stable_by_construction_under_adversarial_parameters(name):
    # every parameter redrawn from N(0, 3²) (log-step, log-decay and all), several times: the exported realisation
    # must stay Schur stable, as the declaration promises for every parameter value
    for seed in range(4):
        layer = make_layer(name, variants(name)[0])
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(3.0 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        rho = np.abs(layer.state_space().to_real().poles()).max()
        assert rho < 1.0, f"{name}: spectral radius {rho} with adversarial parameters (seed {seed})"


def test_markdown_and_csv(table):
    text = to_markdown(table)
    assert text.startswith("# The ssmkit zoo")
    assert all(f"| {name} |" in text for name in NAMES)
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert [r["layer"] for r in rows] == NAMES and list(rows[0]) == list(ZOO_COLUMNS)


def test_pole_statistics_of_a_model():
    torch.manual_seed(0)
    model = SequenceModel(d_input=1, d_model=3, n_layers=2, layer=["s4d", "rglru"],
                          layer_options={"s4d": {"d_state": 4}}, d_output=1, head="regress", pool=None)
    stats = pole_statistics(model)
    assert [(s["name"], s["layer"]) for s in stats] == [("blocks.0.layer", "s4d"), ("blocks.1.layer", "rglru")]
    s4d = model.blocks[0].layer
    A_bar = s4d.discrete()[0].detach().numpy()  # (H, M) complex
    assert stats[0]["spectral_radius"] == pytest.approx(np.abs(A_bar).max(), rel=1e-6)
    assert stats[0]["slowest_tau"] == pytest.approx(-1 / np.log(np.abs(A_bar).max()), rel=1e-5)
    assert stats[1]["spectral_radius"] is None and "time-varying" in stats[1]["note"]
    text = to_markdown(zoo_table(d_model=4, names=["s4d"]), stats)
    assert "## Measured poles of the checkpoint" in text and "| blocks.1.layer | rglru | — |" in text
    measured = list(csv.DictReader(io.StringIO(to_csv([], stats))))
    assert measured[0]["name"] == "blocks.0.layer"
    assert stats[0]["time_unit"] == "samples" and "τ = −dt / log|z| in samples." in text


def test_pole_statistics_say_seconds_for_a_model_with_a_sampling_time():
    # the measured table printed τ without a unit; a DeepWiener's are in seconds (probe 4)
    from ssmkit.sysid.wiener import DeepWiener

    torch.manual_seed(0)
    model = DeepWiener(1, 1, d_model=2, n_layers=1, layer_options={"d_state": 4}, dt=4.0)
    (row,) = pole_statistics(model)
    z = np.abs(model.state_space()[0].poles()).max()
    assert row["slowest_tau"] == pytest.approx(-4.0 / np.log(z), rel=1e-12)
    assert row["time_unit"] == "s" and row["dt"] == 4.0
    assert "τ = −dt / log|z| in s (dt = 4 s)." in to_markdown([], [row])
