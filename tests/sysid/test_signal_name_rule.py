"""One rule for the names of a system's inputs and outputs (:func:`ssmkit.utils.distinct_names`): ``count`` distinct
strings, none empty or whitespace only, in every place that takes them.

Before, four checks had drifted apart: ``SysidBenchmark.output_names`` and ``from_arrays``' names accepted duplicates
(two outputs named "y" reached the report and then failed late, in ``build_model``'s ``name_signals``),
``StateSpace.to_control`` and the benchmark accepted a name of blanks (python-control then labelled a signal " ") while
``DeepWiener.name_signals`` and ``from_arrays`` refused it, and ``from_arrays`` raised TypeError for a number."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmkit.analysis.statespace import StateSpace
from ssmkit.sysid.records import IORecord, SysidBenchmark
from ssmkit.sysid.userdata import from_arrays
from ssmkit.sysid.wiener import DeepWiener
from ssmkit.utils import distinct_names

F64 = torch.float64
BAD = (["a", "a"], ["a", " "], ["a", ""], ["a"], ["a", "b", "c"], ["a", 1], "ab", None, 2)


@pytest.mark.parametrize("names,ok", [(["a", "b"], True), (("a", "b"), True), (["a", "A"], True)]
                         + [(bad, False) for bad in BAD])
def test_the_rule(names, ok):
    assert distinct_names(names, 2) is ok


def bench(output_names=None, input_names=None):
    g = torch.Generator().manual_seed(0)

    def rec(n, name):
        return IORecord(torch.randn(n, 2, generator=g, dtype=F64), torch.randn(n, 2, generator=g, dtype=F64), 0.5,
                        name)

    return SysidBenchmark("toy", "Toy", [rec(20, "est")], [rec(12, "test")], 2, "V", output_names=output_names,
                          input_names=input_names)


@pytest.mark.parametrize("bad", BAD[:6])
def test_every_place_refuses_the_same_names(bad):
    with pytest.raises(ValueError, match=r"output_names must be None or p = 2 distinct non-empty strings"):
        bench(output_names=bad)
    with pytest.raises(ValueError, match=r"input_names must be None or m = 2 distinct non-empty strings"):
        bench(input_names=bad)
    u = np.random.default_rng(0).normal(size=(40, 2))
    for which in ("input_names", "output_names"):
        with pytest.raises(ValueError, match=rf"{which} must be None or 2 distinct non-empty strings"):
            from_arrays(u, u, 0.5, **{which: bad})
    model = DeepWiener(2, 2, d_model=4, n_layers=1, layer="s4d", layer_options={"d_state": 2}, dt=0.5)
    with pytest.raises(ValueError, match="inputs must be 2 distinct non-empty strings"):
        model.name_signals(bad, ["p", "q"])
    with pytest.raises(ValueError, match="outputs must be 2 distinct non-empty strings"):
        model.name_signals(["p", "q"], bad)
    ss = StateSpace(np.full((1, 1, 1), 0.5), np.ones((1, 1, 2)), np.ones((1, 2, 1)), np.zeros((1, 2, 2)), dt=0.5)
    pytest.importorskip("control")
    with pytest.raises(ValueError, match="inputs must be None or 2 distinct non-empty names"):
        ss.to_control(inputs=bad)


def test_good_names_pass_everywhere():
    b = bench(output_names=["x", "y"], input_names=("f", "v"))
    assert (b.output_names, b.input_names) == (("x", "y"), ("f", "v"))
    u = np.random.default_rng(0).normal(size=(40, 2))
    made = from_arrays(u, u, 0.5, input_names=np.array(["f", "v"]), output_names=("x", "y"))  # an array of names too
    assert (made.input_names, made.output_names) == (("f", "v"), ("x", "y"))
    with pytest.raises(ValueError, match="input_names must be None or 2 distinct non-empty strings.*got 7"):
        from_arrays(u, u, 0.5, input_names=7)  # TypeError before
    model = DeepWiener(2, 2, d_model=4, n_layers=1, layer="s4d", layer_options={"d_state": 2}, dt=0.5)
    assert model.name_signals(["f", "v"], ("x", "y")).signals == {"inputs": ("f", "v"), "outputs": ("x", "y")}
