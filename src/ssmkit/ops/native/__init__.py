"""The ``"native"`` backend: C kernels for the CPU, compiled on first use with the system's C compiler.

``build`` compiles and caches a kernel library and loads it with :mod:`ctypes`; ``gate`` decides, per op and dtype,
whether a kernel runs here (a build and a smoke call against the op's reference); ``parallel`` splits a call over
``torch.get_num_threads()`` threads. The kernels: Mamba's selective scan (:func:`selective_scan_native`), the
diagonal LTI scan of the S4D family (:func:`ssm_scan_native`), the short causal convolution with an optional SiLU
(:func:`causal_conv1d_native`), the first-order linear recurrence (:func:`linear_recurrence_native`: the modes of
S5 and LRU), the RG-LRU's gates and scan (:mod:`ssmkit.ops.native.rglru`), Mamba-2's SSD scan (:func:`ssd_native`) and its skip, gate and grouped RMSNorm
(:mod:`ssmkit.ops.native.gated_norm`), the Mamba, Mamba-2 and RG-LRU blocks' steps between their projections
(``mamba_step``, ``mamba2_step``, ``rglru_step``), the Cauchy sums of S4's kernel (:func:`cauchy_native`; over each conjugate pair at once:
:mod:`ssmkit.ops.native.cauchy_pairs`), the
zero-order hold, dropout's masked scale (:mod:`ssmkit.ops.native.dropout`) and the FFT convolution's passes
around its transforms (:mod:`ssmkit.ops.native.spectral`). Without a compiler (or
with ``SSMKIT_NATIVE=0``) the backend reports why and ``"auto"`` keeps the PyTorch paths. The kernels compute no
forward-mode tangent: under forward-mode AD ``"auto"`` never calls them and a forced ``"native"`` raises
(:func:`ssmkit.ops.backend.check_forward_ad`).
"""

from ssmkit.ops.native.cauchy import cauchy_native
from ssmkit.ops.native.conv import causal_conv1d_native
from ssmkit.ops.native.diagonal import ssm_scan_native
from ssmkit.ops.native.gate import native_available, native_status
from ssmkit.ops.native.recurrence import linear_recurrence_native
from ssmkit.ops.native.selective import selective_scan_native
from ssmkit.ops.native.ssd import ssd_native

__all__ = [
    "cauchy_native",
    "causal_conv1d_native",
    "linear_recurrence_native",
    "native_available",
    "native_status",
    "selective_scan_native",
    "ssd_native",
    "ssm_scan_native",
]
