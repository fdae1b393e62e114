"""The ``"native"`` backend: C kernels for the CPU, compiled on first use with the system's C compiler.

``build`` compiles and caches a kernel library and loads it with :mod:`ctypes`; ``selective`` is Mamba's selective
scan on it (:func:`selective_scan_native`). A kernel is used only after :func:`native_status` built it and a smoke
call matched the op's reference; without a compiler (or with ``SSMKIT_NATIVE=0``) the backend reports why and
``"auto"`` keeps the PyTorch paths.
"""

from ssmkit.ops.native.selective import native_available, native_status, selective_scan_native

__all__ = ["native_available", "native_status", "selective_scan_native"]
