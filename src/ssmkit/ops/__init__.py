"""Pure tensor math: HiPPO matrices, discretisation, SSM kernels, FFT convolution, scans.

Nothing here is an ``nn.Module``; every op has a ``<op>_reference`` oracle beside its fast path.
"""

from ssmkit.ops.backend import BACKENDS, get_backend, set_backend, use_backend

__all__ = ["BACKENDS", "get_backend", "set_backend", "use_backend"]
