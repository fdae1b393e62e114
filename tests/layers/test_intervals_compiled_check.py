"""Under torch.compile the sampling intervals are still checked on the CPU: an assertion inside the graph raises a
RuntimeError naming them when the compiled code runs with a gap that is not finite and > 0 (eagerly: ValueError), without
a graph break and without recompiling for new interval values."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing

import ssmkit.layers as layers

B, L, H = 2, 7, 4


@pytest.mark.parametrize(("name", "backend"), [("s4d", "inductor"), ("s5", "aot_eager")])
def test_a_compiled_layer_refuses_a_gap_that_is_not_positive(name: str, backend: str) -> None:
    torch.manual_seed(0)
    layer = layers.build(name, d_model=H, d_state=16)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    run = torch.compile(lambda x, t: layer(x, intervals=t)[0], backend=counter, fullgraph=True)
    x = torch.randn(B, L, H)
    tau = torch.rand(B, L) + 0.5
    torch.testing.assert_close(run(x, tau), layer(x, intervals=tau)[0], rtol=1e-5, atol=1e-6)
    for bad in (-0.5, 0.0, float("nan"), float("inf")):
        tau_bad = tau.clone()
        tau_bad[1, 3] = bad
        with pytest.raises(RuntimeError, match=r"intervals must be finite and > 0"):
            run(x, tau_bad)
        with pytest.raises(ValueError, match=r"intervals must be finite and > 0"):
            layer(x, intervals=tau_bad)
    assert counter.frame_count == 1  # one graph: the values are data, not guards
