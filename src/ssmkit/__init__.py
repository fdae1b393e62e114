"""ssmkit: deep structured state-space models for PyTorch.

Every layer has exactly equal convolution / scan / recurrent-step views and, when it is linear
time-invariant, exports its state-space realisation for control-theoretic analysis.

Shape letters used in every docstring:
    B  batch size
    L  sequence length (time)
    H  channels (d_model)
    N  state size (``d_state``; the real-equivalent size, conjugate pairs hold N/2 complex modes)
    P  head dimension
    G  number of systems or groups in a bank
    C  output channels of a kernel (e.g. 2 for a bidirectional kernel)
    r  rank of a low-rank correction
Complex tensors are marked "complex"; everything else is real floating point.
"""

__version__ = "0.1.0"
