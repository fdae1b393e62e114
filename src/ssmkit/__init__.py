"""ssmkit: deep structured state-space models for PyTorch.

Every layer has exactly equal convolution / scan / recurrent-step views and, when it is linear
time-invariant, exports its state-space realisation for control-theoretic analysis.

Shape letters used in every docstring (each means one thing; tests/test_docs.py enforces the legend):
    B  batch size
    L  sequence length (time)
    H  channels (d_model)
    E  inner channels of a mixer (expand·d_model, Mamba-2)
    N  state size (``d_state``; the real-equivalent size, conjugate pairs hold N/2 complex modes)
    M  complex modes per channel (N/2 for conjugate-pair layers), or of the one MIMO system of S5 and LRU
    P  head dimension
    G  number of systems or groups in a bank
    C  output channels of a kernel (e.g. 2 for a bidirectional kernel)
    S  input vectors of a kernel (e.g. the input matrix plus initial states)
    r  rank of a low-rank correction
    R  rank of Mamba's step-size projection W_Δ (``dt_rank``)
    W  frequencies (or points on the unit circle) at which a transfer function is evaluated
    T  steps per chunk of a chunked algorithm
    n  states of one system of a StateSpace bank (control convention)
    m  inputs of one system of a StateSpace bank
    p  outputs of one system of a StateSpace bank
    Y  classes or vocabulary entries of a model's output
    D  inner channels of a mixer layer (RG-LRU's ``lru_width``)
    F  taps of a long convolution kernel (SGConv) or implicit filter (Hyena)
    O  stages of Hyena's recurrence (order - 1)
    A  attention heads
    K  key positions an attention query may see (a cache of earlier steps, then the new ones)
    Z  query/key dimension of Mega's shared representation
    V  value dimension of Mega's attention
Complex tensors are marked "complex"; everything else is real floating point.
"""

import importlib
from types import ModuleType

from ssmkit import layers, models, ops, train

__version__ = "0.1.0"

__all__ = ["analysis", "layers", "models", "ops", "train", "__version__"]

# Subpackages imported on first attribute access (PEP 562), so that `import ssmkit` stays light; the model path
# never needs them. `ssmkit.analysis` is first loaded by `layer.state_space()` or by the user.
_LAZY = ("analysis",)


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY:
        return importlib.import_module(f"ssmkit.{name}")  # the import also sets the attribute on this module
    raise AttributeError(f"module 'ssmkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
