"""The generated zoo (analysis/zoo.py, arXiv 2403.16899's axes) against the layers' own attributes, the states they
allocate, the published defaults (REFERENCE.md: Mamba's d_state 16, d_conv 4, expand 2; Mamba-2's d_state 128,
headdim 64; the S4 family's N = 64) and the rendering rules written out here (probe 38)."""

from __future__ import annotations

import csv
import io
import math
import re

import numpy as np
import pytest
import torch

import ssmkit.layers as layers
from ssmkit.analysis import zoo
from ssmkit.analysis.zoo import ZOO_COLUMNS, pole_statistics, state_size, to_csv, to_markdown, zoo_table
from ssmkit.models import SequenceModel
from tests.conftest import leaves

H = 32  # the smallest width at which every layer builds with its defaults (Mamba-2: headdim 64 divides 2·32)


@pytest.fixture(scope="module")
def table():
    return zoo_table(d_model=H)


def real_count(state) -> int:
    """Real numbers held by the tensors of a one-sequence state (complex entries count twice)."""
    return sum(t.numel() * (2 if t.is_complex() else 1) for t in leaves(state))


def test_rows_are_the_layers_own_declarations(table):
    assert [r["layer"] for r in table] == layers.available()
    for row in table:
        cls = layers.layer_class(row["layer"])
        entry, caps = cls.zoo, cls.capabilities
        assert list(row) == list(ZOO_COLUMNS)
        want = {"layer": row["layer"], "paper": entry.paper, "structure": entry.structure,
                "parametrisation": entry.parametrisation, "discretisation": entry.discretisation,
                "lti": not entry.time_varying, "stable_by_construction": entry.stable_by_construction,
                "stability": entry.stability, "step_cost": entry.step_cost, "sequence_cost": entry.sequence_cost,
                "kernel": caps.kernel, "state_space": caps.state_space, "step": caps.step,
                "backends": ", ".join(["auto", *cls.backends])}
        assert {k: v for k, v in row.items() if k != "state_size"} == want


def test_state_sizes_are_the_states_the_layers_allocate(table):
    """A fixed state: its real count in initial_state(1) of a float64 layer built on the CPU; a growing one (None): the
    state after three steps holds more numbers than after one."""
    torch.manual_seed(0)
    for row in table:
        if not row["step"]:
            assert row["state_size"] is None
            continue
        layer = layers.build(row["layer"], d_model=H, dtype=torch.float64)
        state = layer.initial_state(1)
        if row["state_size"] is not None:
            assert row["state_size"] == real_count(state), row["layer"]
            continue
        sizes = []
        with torch.no_grad():
            for _ in range(3):
                _, state = layer.step(torch.randn(1, H, dtype=torch.float64), state)
                sizes.append(real_count(state))
        assert sizes[2] > sizes[0], row["layer"]


def test_state_sizes_from_the_published_defaults(table):
    """Closed forms at width H from REFERENCE.md's defaults."""
    size = {r["layer"]: r["state_size"] for r in table}
    N = 64
    for name in ("s4d", "s4", "dss", "dlr"):  # N/2 complex modes per channel, or N (DSS, DLR) shared: H·N reals
        assert size[name] == H * N, name
    E = 2 * H  # Mamba: expand 2, d_state 16, d_conv 4: the SSM state E·16 and the last 3 inputs of the conv
    assert size["mamba"] == E * 16 + 3 * E
    # Mamba-2: d_state 128, headdim 64, one group: heads·headdim·N, and the conv's last 3 of [x, B, C]
    assert size["mamba2"] == (E // 64) * 64 * 128 + 3 * (E + 2 * 128)
    assert size["attention"] is None  # a key/value cache grows with L


def test_zoo_table_names_in_the_given_order_and_width():
    rows = zoo_table(d_model=64, names=["s4d", "attention", "mamba"])
    assert [r["layer"] for r in rows] == ["s4d", "attention", "mamba"]
    assert rows[0]["state_size"] == 64 * 64
    assert zoo_table(names=["s4d"])[0]["state_size"] == 64 * 64  # the default width is 64
    assert zoo_table(d_model=4, names=[]) == []
    want = ("layer 'mamba2' cannot be built with its defaults at d_model=16: headdim must divide")
    with pytest.raises(ValueError, match=re.escape(want)):
        zoo_table(d_model=16, names=["s4d", "mamba2"])


class _Spec:
    """A state-spec leaf: shape, dtype and whether it grows."""

    def __init__(self, shape, dtype, growing=None):
        self.shape, self.dtype, self.growing = shape, dtype, growing


class _Spy:
    """A stand-in layer whose state_spec is given (nested tuples of leaves, as the layers return)."""

    def __init__(self, spec):
        self.spec = spec

    def state_spec(self):
        return self.spec


def test_state_size_counts_nested_leaves_and_stops_at_a_growing_one():
    spec = (_Spec((3, 4), torch.complex128), (_Spec((5,), torch.float64), _Spec((2, 3, 1), torch.float32)))
    assert state_size(_Spy(spec)) == 3 * 4 * 2 + 5 + 6
    assert state_size(_Spy(_Spec((7, 2), torch.complex64))) == 28
    assert state_size(_Spy(_Spec((), torch.float64))) == 1
    assert state_size(_Spy((_Spec((3,), torch.float64), _Spec((0, 2), torch.float64, growing=0)))) is None
    assert state_size(_Spy((_Spec((3,), torch.float64), _Spec((4, 2), torch.float64, growing=None)))) == 11


def test_cells_are_rendered_by_the_documented_rules():
    assert zoo._cell(None) == "—"
    assert zoo._cell(True) == "yes" and zoo._cell(False) == "no"
    assert zoo._cell(0.1234567891) == "0.123457" and zoo._cell(1234567.0) == "1.23457e+06"
    assert zoo._cell(math.inf) == "inf" and zoo._cell(2.5) == "2.5"
    # non-finite values by name: NaN and -inf were both printed as "inf" (probe 38's note)
    assert zoo._cell(-math.inf) == "-inf" and zoo._cell(math.nan) == "nan"
    assert zoo._cell(7) == "7" and zoo._cell("|z| < 1") == "\\|z\\| < 1"
    assert zoo._markdown_table([{"a": 1, "b": None}, {"a": True}], ["a", "b"]) == [
        "| a | b |", "|---|---|", "| 1 | — |", "| yes | — |"]


def test_markdown_of_the_table(table):
    text = to_markdown(table)
    lines = text.split("\n")
    assert lines[0] == "# The ssmkit zoo (generated from the registered layers; arXiv 2403.16899's axes)"
    assert lines[1] == "" and lines[2] == "| " + " | ".join(ZOO_COLUMNS) + " |"
    assert lines[3] == "|" + "---|" * len(ZOO_COLUMNS)
    s4d = next(r for r in table if r["layer"] == "s4d")
    cells = ["yes" if v is True else "no" if v is False else str(v).replace("|", "\\|") for v in s4d.values()]
    assert "| " + " | ".join(cells) + " |" in lines
    assert lines[4 + len(table)] == "" and lines[5 + len(table)].startswith("state_size: real numbers per sequence")
    assert text.endswith("channels, T chunk).\n") and "Measured poles" not in text


def test_csv_of_the_table_and_of_measured_rows(table):
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert len(rows) == len(table) and list(rows[0]) == list(ZOO_COLUMNS)
    for got, row in zip(rows, table):
        assert got == {k: "" if v is None else str(v) for k, v in row.items()}
    measured = [{"name": "blocks.0.layer", "layer": "s4d", "spectral_radius": 0.5},
                {"name": "blocks.1.layer", "layer": "lru", "spectral_radius": 0.25}]
    assert to_csv(table, measured) == "name,layer,spectral_radius\nblocks.0.layer,s4d,0.5\nblocks.1.layer,lru,0.25\n"
    assert to_csv(table, []) == "name\n"
    assert to_csv(table, measured[1:]) == "name,layer,spectral_radius\nblocks.1.layer,lru,0.25\n"
    assert to_csv([]) == ",".join(ZOO_COLUMNS) + "\n"


def test_pole_statistics_against_numpy_eigenvalues():
    """ρ = max |z|, the margin 1 − ρ and τ = −dt / log|z| (slowest, median, fastest) of every LTI layer, from the
    eigenvalues of its dense realisation by numpy; dt given in seconds."""
    torch.manual_seed(2)
    model = SequenceModel(d_input=1, d_model=3, n_layers=3, layer=["s4d", "mamba", "lru"],
                          layer_options={"s4d": {"d_state": 6}, "lru": {"d_state": 10}}, d_output=1, head="regress",
                          pool=None, dtype=torch.float64)
    stats = pole_statistics(model, dt=0.5)
    assert [(s["name"], s["layer"]) for s in stats] == [("blocks.0.layer", "s4d"), ("blocks.1.layer", "mamba"),
                                                        ("blocks.2.layer", "lru")]
    for row, block in ((stats[0], 0), (stats[2], 2)):
        realisation = model.blocks[block].layer.state_space().to_real()
        A = np.asarray(realisation.A)
        z = np.concatenate([np.linalg.eigvals(a) for a in A.reshape(-1, *A.shape[-2:])])
        tau = -0.5 / np.log(np.abs(z))
        assert row["spectral_radius"] == pytest.approx(np.abs(z).max(), rel=1e-10)
        assert row["stability_margin"] == pytest.approx(1 - np.abs(z).max(), rel=1e-10)
        assert row["slowest_tau"] == pytest.approx(tau.max(), rel=1e-8)
        assert row["median_tau"] == pytest.approx(np.median(tau), rel=1e-8)
        assert row["fastest_tau"] == pytest.approx(tau.min(), rel=1e-8)
        assert row["fastest_tau"] < row["median_tau"] < row["slowest_tau"]
        assert (row["time_unit"], row["dt"], row["note"]) == ("s", 0.5, "")
    mamba = stats[1]
    assert all(mamba[k] is None for k in ("spectral_radius", "stability_margin", "slowest_tau", "median_tau",
                                           "fastest_tau"))
    assert (mamba["time_unit"], mamba["dt"]) == ("s", 0.5)
    assert mamba["note"] == model.blocks[1].layer.unsupported("state_space") and mamba["note"]
    text = to_markdown([], stats)
    assert "\n## Measured poles of the checkpoint\n\n| name | layer | spectral_radius | stability_margin | slowest_tau | " \
           "median_tau | fastest_tau | note |\n" in text
    assert text.endswith("\n\nTime constants τ = −dt / log|z| in s (dt = 0.5 s).\n")
    in_samples = pole_statistics(model)
    assert in_samples[0]["time_unit"] == "samples" and in_samples[0]["dt"] == 1.0
    assert in_samples[0]["slowest_tau"] == pytest.approx(2 * stats[0]["slowest_tau"], rel=1e-12)
    assert to_markdown([], in_samples).endswith("in samples.\n")
    assert to_markdown([], []).endswith("## Measured poles of the checkpoint\n\n| name | layer | spectral_radius | "
                                        "stability_margin | slowest_tau | median_tau | fastest_tau | note |\n|" +
                                        "---|" * 8 + "\n")


def test_pole_statistics_of_a_diverged_model_name_the_layer_and_parameter():
    # a NaN parameter stopped in numpy's LinAlgError "Array must not contain infs or NaNs" (probe 38's note)
    torch.manual_seed(0)
    model = SequenceModel(d_input=1, d_model=3, n_layers=2, layer="s4d", layer_options={"d_state": 4}, d_output=1,
                          head="regress", pool=None)
    name, parameter = next(iter(model.blocks[1].layer.named_parameters()))
    with torch.no_grad():
        parameter.view(-1)[1] = math.nan
    with pytest.raises(ValueError, match=rf"^layer 'blocks.1.layer' has non-finite parameters \['{name}'\]"):
        pole_statistics(model)


def test_zoo_module_exports_its_documented_names():
    namespace: dict = {}
    exec("from ssmkit.analysis.zoo import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == [
        "ZOO_COLUMNS", "pole_statistics", "state_size", "to_csv", "to_markdown", "zoo_entry", "zoo_table"]
