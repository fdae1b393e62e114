"""``select_state`` and ``cat_states``: streams dropped, reordered, repeated and joined between calls continue as
those sequences' uninterrupted one-pass forward (every registered layer, and a model's list of block states)."""

import pytest
import torch

import ssmkit.layers as layers
from ssmkit.layers import cat_states, select_state
from ssmkit.models import SequenceModel
from tests.conftest import DEVICE, H, make_layer, rel_err, state_err

F64 = torch.float64
TOL = 1e-10


@pytest.mark.parametrize("name", layers.available())
def test_selected_streams_continue_as_the_one_pass_forward(name):
    layer = make_layer(name)
    x = torch.randn(4, 30, H, device=DEVICE, dtype=F64)
    y, h = layer(x)
    _, h1 = layer(x[:, :12])
    for index, rows in (([2, 0], [2, 0]), (torch.tensor([3, 3, 1]), [3, 3, 1]),
                        (torch.tensor([True, False, True, True]), [0, 2, 3]), (slice(1, 3), [1, 2]), ([-1], [3])):
        y2, h2 = layer(x[rows, 12:], select_state(h1, index))
        assert rel_err(y2, y[rows, 12:]) < TOL, index
        assert state_err(h2, select_state(h, rows)) < TOL, index


@pytest.mark.parametrize("name", layers.available())
def test_joined_batches_continue_as_the_one_pass_forward(name):
    layer = make_layer(name)
    x = torch.randn(5, 30, H, device=DEVICE, dtype=F64)
    y, h = layer(x)
    _, ha = layer(x[:2, :12])
    _, hb = layer(x[2:, :12])
    y2, h2 = layer(x[:, 12:], cat_states([ha, hb]))
    assert rel_err(y2, y[:, 12:]) < TOL and state_err(h2, h) < TOL


def test_a_models_block_states_are_selected_and_joined():
    torch.manual_seed(0)
    model = SequenceModel(d_input=2, d_model=6, d_output=3, n_layers=3, layer=["mamba", "attention", "s4d"],
                          pool=None, dtype=F64)
    model.eval()
    x = torch.randn(4, 20, 2, dtype=F64)
    y, _ = model(x)
    _, s = model(x[:, :9])
    y2, _ = model(x[[3, 1], 9:], select_state(s, [3, 1]))
    assert rel_err(y2, y[[3, 1], 9:]) < TOL
    _, sa = model(x[:1, :9])
    _, sb = model(x[1:, :9])
    y3, _ = model(x[:, 9:], cat_states([sa, sb]))
    assert rel_err(y3, y[:, 9:]) < TOL
    y_t, _ = model.step(x[[0, 2], 9], select_state(s, torch.tensor([0, 2])))  # step takes the selected state too
    assert rel_err(y_t, y[[0, 2], 9]) < TOL


def test_selection_and_joins_refuse_what_does_not_fit():
    s4d, attention = make_layer("s4d"), make_layer("attention")
    x = torch.randn(3, 8, H, device=DEVICE, dtype=F64)
    h = s4d(x)[1]
    for bad in ([0, 3], torch.tensor([-4])):
        with pytest.raises(ValueError, match=r"index must lie in \[-3, 3\)"):
            select_state(h, bad)
    with pytest.raises(ValueError, match="one entry per stream"):
        select_state(h, torch.tensor([True, False]))
    for bad in (torch.tensor([0.0, 1.0]), torch.tensor([[0, 1]]), 1):
        with pytest.raises(ValueError, match="index must be 1-D integer indices"):
            select_state(h, bad)
    assert select_state(h, []).shape[0] == 0
    with pytest.raises(ValueError, match="share their batch size"):
        select_state((h, h[:2]), [0])
    with pytest.raises(ValueError, match="another structure"):
        cat_states([h, attention(x)[1]])
    short, long = attention(x[:, :3])[1], attention(x)[1]
    with pytest.raises(ValueError, match="same number of positions"):
        cat_states([short, long])
    with pytest.raises(ValueError, match="non-empty list"):
        cat_states([])
    with pytest.raises(ValueError, match="must be a state"):
        select_state(None, [0])
