"""State specs: initial states built from a layer's spec, and every given state checked against it (tuple, named
and growing states included)."""

from typing import NamedTuple

import pytest
import torch

from ssmkit.layers import SequenceLayer, TensorSpec


class DelayState(NamedTuple):
    last: torch.Tensor
    total: torch.Tensor


class TwoStateDelay(SequenceLayer):
    """Unregistered toy layer y_t = u_{t-1} + s_t with a named two-part state (last input, running sum s)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model

    def state_spec(self):
        spec = TensorSpec((self.d_model,), torch.float64)
        return DelayState(spec, spec)

    def _step(self, x_t, state):
        last, total = state
        total = total + x_t
        return last + total, DelayState(x_t, total)

    def _forward(self, x, state, return_state):
        state = self.initial_state(x.shape[0]) if state is None else state
        ys = []
        for x_t in x.unbind(1):
            y_t, state = self._step(x_t, state)
            ys.append(y_t)
        return torch.stack(ys, 1), (state if return_state else None)


class Cache(SequenceLayer):
    """Unregistered toy layer with a growing state (all past inputs, like an attention KV cache): y_t = Σ_{s≤t} u_s."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model

    def state_spec(self):
        return TensorSpec((0, self.d_model), torch.float64, growing=0)

    def _step(self, x_t, state):
        state = torch.cat([state, x_t[:, None]], dim=1)
        return state.sum(1), state

    def _forward(self, x, state, return_state):
        past = self.initial_state(x.shape[0]) if state is None else state
        full = torch.cat([past, x], dim=1)
        y = full.cumsum(1)[:, past.shape[1]:]
        return y, (full if return_state else None)


def test_named_tuple_state_roundtrip_and_errors():
    layer = TwoStateDelay(3)
    h0 = layer.initial_state(2)
    assert isinstance(h0, DelayState) and h0.last.shape == (2, 3) and not bool(h0.total.abs().sum())
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    y, h = layer(x)
    y2, _ = layer(x[:, 2:], layer(x[:, :2])[1])
    assert torch.allclose(y[:, 2:], y2)
    expected = torch.cat([torch.zeros(2, 1, 3, dtype=torch.float64), x[:, :-1]], 1) + x.cumsum(1)
    assert torch.allclose(y, expected)
    with pytest.raises(ValueError, match=r"state must be a tuple of 2 states \(as initial_state\(2\)\); got Tensor"):
        layer(x, h[0])
    with pytest.raises(ValueError, match=r"state\[1\] must be \(2, 3\) torch.float64"):
        layer(x, (h[0], h[1][:, :2]))
    with pytest.raises(ValueError, match=r"got a tuple of 1"):
        layer.step(x[:, 0], (h[0],))
    assert layer(x, tuple(h))[0].shape == x.shape  # a plain tuple with the right parts is accepted


def test_growing_state_accepts_any_length():
    layer = Cache(3)
    h0 = layer.initial_state(2)
    assert h0.shape == (2, 0, 3)
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    y, h = layer(x)
    assert h.shape == (2, 6, 3)
    y1, h1 = layer(x[:, :4])
    y2, h2 = layer(x[:, 4:], h1)  # a state of length 4 is accepted
    assert torch.allclose(torch.cat([y1, y2], 1), y) and torch.equal(h2, h)
    y_t, h_t = layer.step(x[:, 0], h1)
    assert h_t.shape == (2, 5, 3)
    with pytest.raises(ValueError, match=r"state must be \(2, any, 3\) torch.float64"):
        layer(x, h[:, :, :2])


def test_missing_capabilities_say_why():
    layer = TwoStateDelay(3)  # declares no kernel and no state space
    with pytest.raises(NotImplementedError, match="TwoStateDelay has no kernel: the layer does not define it"):
        layer.kernel(4)
    with pytest.raises(NotImplementedError, match="has no state space"):
        layer.state_space()


class _Pair(NamedTuple):
    modes: torch.Tensor
    conv: torch.Tensor


def test_a_state_as_one_real_vector_in_order_with_complex_entries_as_pairs_and_back():
    from ssmkit.layers.state import state_from_vector, state_to_vector

    modes = torch.tensor([[[1 + 2j, 3 + 4j]], [[-1 - 2j, 0.5j]]], dtype=torch.complex64)  # (B 2, 1, 2)
    conv = torch.tensor([[5.0], [6.0]])  # (B 2, 1)
    state = [_Pair(modes, conv), torch.tensor([[7.0, 8.0], [9.0, 10.0]], dtype=torch.float64)]
    v = state_to_vector(state, torch.float64)
    assert v.dtype == torch.float64
    assert v.tolist() == [[1, 2, 3, 4, 5, 7, 8], [-1, -2, 0, 0.5, 6, 9, 10]]
    back = state_from_vector(v, state)
    assert isinstance(back, list) and isinstance(back[0], _Pair)
    assert back[0].modes.dtype == torch.complex64 and back[1].dtype == torch.float64
    assert torch.equal(back[0].modes, modes) and torch.equal(back[0].conv, conv) and torch.equal(back[1], state[1])
    like = [_Pair(modes[:1], conv[:1]), state[1][:1]]  # the batch size of `like` does not matter
    assert torch.equal(state_from_vector(v[1:], like)[0].modes, modes[1:])
    with pytest.raises(ValueError, match=r"v must be real \(B, 7\) for this state; got \(2, 6\)"):
        state_from_vector(v[:, :6], state)
    with pytest.raises(ValueError, match="v must be real"):
        state_from_vector(v.to(torch.complex128), state)


class _Exported(NamedTuple):
    h: torch.Tensor
    conv: torch.Tensor


class _NotExported(NamedTuple):
    h: torch.Tensor


def test_an_exportable_state_serialises_as_a_tree_and_loads_with_weights_only():
    import io

    import torch.utils._pytree as pytree

    from ssmkit.layers.state import exportable_state

    assert exportable_state(_Exported) is _Exported
    state = _Exported(torch.arange(3.0), torch.ones(2, 2))
    spec = pytree.tree_flatten(state)[1]
    assert f"{__name__}._Exported" in pytree.treespec_dumps(spec)  # the stable name torch.export.save writes
    assert pytree.treespec_loads(pytree.treespec_dumps(spec)) == spec
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)  # a safe global now
    assert type(back) is _Exported and torch.equal(back.h, state.h) and torch.equal(back.conv, state.conv)
    # the control: an undecorated NamedTuple fails both ways, so the two checks above test the decorator
    with pytest.raises(NotImplementedError):
        pytree.treespec_dumps(pytree.tree_flatten(_NotExported(torch.zeros(1)))[1])
    buf = io.BytesIO()
    torch.save(_NotExported(torch.zeros(1)), buf)
    buf.seek(0)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(buf, weights_only=True)


def test_detach_state_keeps_every_structure_and_cuts_the_graph():
    from ssmkit.layers.state import detach_state

    w = torch.tensor(2.0, requires_grad=True)
    a, b, c, d, e = (w * k for k in range(1, 6))
    state = [None, DelayState(a, b), (c, (d,)), e]
    out = detach_state(state)
    assert isinstance(out, list) and len(out) == 4 and out[0] is None
    assert type(out[1]) is DelayState and type(out[2]) is tuple and type(out[2][1]) is tuple
    leaves = [out[1].last, out[1].total, out[2][0], out[2][1][0], out[3]]
    for k, (old, new) in enumerate(zip([a, b, c, d, e], leaves), 1):
        assert new.item() == 2.0 * k and not new.requires_grad and new.grad_fn is None
        assert new.data_ptr() == old.data_ptr()  # detached, not copied
    assert detach_state(None) is None
    assert not detach_state(a).requires_grad and detach_state(a).item() == 2.0
    with pytest.raises(ValueError, match="state must be a tensor, a tuple or list of states, or None; got int"):
        detach_state([a, (b, 3)])


def test_map_state_applies_to_every_tensor_in_order_and_keeps_named_tuples():
    from ssmkit.layers.state import map_state

    seen = []

    def double(t):
        seen.append(t.item())
        return 2 * t

    state = DelayState(torch.tensor(1.0), (torch.tensor(2.0), torch.tensor(3.0)))
    out = map_state(double, state)
    assert type(out) is DelayState and type(out.total) is tuple
    assert [out.last.item(), out.total[0].item(), out.total[1].item()] == [2.0, 4.0, 6.0] and seen == [1.0, 2.0, 3.0]
    assert map_state(double, torch.tensor(5.0)).item() == 10.0


def test_the_zero_state_of_a_spec_and_the_checks_of_type_and_device():
    from ssmkit.layers.state import check_state, zeros_from_spec

    cpu = torch.device("cpu")
    spec = TensorSpec((4, 7, 3), torch.float32, growing=1)  # a declared length of 7 on the growing axis: starts empty
    z = zeros_from_spec(DelayState(spec, TensorSpec((2,), torch.complex64)), 5, cpu)
    assert type(z) is DelayState and z.last.shape == (5, 4, 0, 3) and z.last.dtype == torch.float32
    assert z.total.shape == (5, 2) and z.total.dtype == torch.complex64 and not bool(z.total.abs().sum())
    check_state(torch.zeros(5, 4, 9, 3), spec, 5, cpu)  # any length on the growing axis
    with pytest.raises(ValueError, match=r"state must be a tensor like initial_state\(5\); got list"):
        check_state([torch.zeros(5, 4, 0, 3)], spec, 5, cpu)
    with pytest.raises(ValueError, match=r"h must be on the layer's device cpu; got meta"):
        check_state(torch.zeros(5, 4, 0, 3, device="meta"), spec, 5, cpu, name="h")
    assert hash(spec) == hash(TensorSpec((4, 7, 3), torch.float32, growing=1))  # a value: hashable, equal by value
    with pytest.raises(AttributeError):
        spec.growing = None  # frozen: one spec is shared by every call of a layer


def test_a_state_vector_takes_the_dtype_asked_for():
    from ssmkit.layers.state import state_to_vector

    state = (torch.tensor([[1.5, 2.0]]), torch.tensor([[1 + 2j]], dtype=torch.complex64))  # float32 parts only
    v = state_to_vector(state, torch.float64)
    assert v.dtype == torch.float64 and v.tolist() == [[1.5, 2.0, 1.0, 2.0]]
    assert state_to_vector((torch.tensor([[0.1]], dtype=torch.float64),), torch.float32).dtype == torch.float32
