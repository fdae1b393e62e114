"""SequenceModel inside PyTorch's machinery (probe 10, docs/design.md): torch.func, torch.compile, ONNX export, state
dicts and meta-device construction, each against the eager model or a fresh model holding the same weights."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, vmap

from ssmkit.models import SequenceModel
from tests.conftest import DEVICE, rel_err


def _model(check_finite: bool, seed: int = 0, **kw) -> SequenceModel:
    torch.manual_seed(seed)
    return SequenceModel(2, 4, 2, "s4d", {"d_state": 4}, 3, head="regress", pool="mean", check_finite=check_finite,
                         device=DEVICE, dtype=torch.float64, **kw)


def test_per_sample_gradients_with_the_finite_check_give_a_clear_error():
    # vmap cannot branch on a batched tensor's values: the check raised PyTorch's generic "vmap: It looks like you're
    # either (1) calling .item() ..." from inside ssmkit.utils. Without the check, vmap(grad) = one sample at a time.
    x = torch.randn(3, 9, 2, device=DEVICE, dtype=torch.float64)
    t = torch.randn(3, 3, device=DEVICE, dtype=torch.float64)
    for check in (True, False):
        model = _model(check)
        params = {k: v.detach() for k, v in model.named_parameters()}

        def loss(p, x_i, t_i):
            y, _ = functional_call(model, p, (x_i[None],), {"return_state": False})
            return (y[0] - t_i).square().sum()

        if check:
            with pytest.raises(ValueError, match="torch.func.vmap.*check_finite=False"):
                vmap(grad(loss), in_dims=(None, 0, 0))(params, x, t)
            continue
        per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, t)
        for i in range(3):
            y, _ = model(x[i:i + 1], return_state=False)
            ref = torch.autograd.grad((y[0] - t[i]).square().sum(), list(model.parameters()))
            for name, r in zip(params, ref):
                assert rel_err(per_sample[name][i], r) < 1e-12, name


def test_the_finite_check_still_raises_under_grad_and_compile():
    model = _model(True)
    x = torch.randn(2, 9, 2, device=DEVICE, dtype=torch.float64)
    x[1, 4, 0] = float("nan")
    params = dict(model.named_parameters())
    with pytest.raises(ValueError, match="batch item 1, time step 4"):
        grad(lambda p: functional_call(model, p, (x,))[0].sum())(params)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")  # the check is a graph break, not skipped
    with pytest.raises(ValueError, match="batch item 1, time step 4"):
        compiled(x)
    clean = torch.randn(2, 9, 2, device=DEVICE, dtype=torch.float64)
    assert rel_err(compiled(clean)[0], model(clean)[0]) < 1e-12


def test_onnx_export_of_a_model_with_the_finite_check(tmp_path):
    # export_onnx failed with torch.export's "Could not guard on data-dependent expression" wrapped in a
    # NotImplementedError; an ONNX graph cannot raise, so the exported copy leaves the check out.
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ssmkit.analysis import export_onnx

    torch.manual_seed(0)
    model = SequenceModel(2, 4, 2, "s4d", {"d_state": 4}, 3, head="regress", pool=None, check_finite=True)
    info = export_onnx(model, str(tmp_path / "m.onnx"))
    assert model.check_finite  # the model itself keeps its check
    session = ort.InferenceSession(info.path)
    x = torch.randn(2, 6, 2)
    with torch.no_grad():
        y_ref, _ = model(x)
    state = info.initial_state(2)
    ys = []
    for t in range(6):
        out = session.run(None, {"u": x[:, t].numpy(), **dict(zip(info.state_names, state))})
        ys.append(torch.from_numpy(out[0]))
        state = out[1:]
    assert rel_err(torch.stack(ys, 1), y_ref) < 1e-5
