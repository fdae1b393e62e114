"""Pure tensor math: HiPPO matrices, discretisation, SSM kernels, FFT convolution, scans.

Nothing here is an ``nn.Module``; every op has a ``<op>_reference`` oracle beside its fast path, and
:func:`set_backend` forces one path for tests and debugging.
"""

from ssmkit.ops.backend import BACKENDS, get_backend, set_backend, use_backend
from ssmkit.ops.cauchy import dplr_kernel, dplr_kernel_reference  # cauchy() stays in its module (same name)
from ssmkit.ops.dense import dense_final_state, dense_final_state_reference
from ssmkit.ops.diagonal import diagonal_kernel, diagonal_ssm, diagonal_ssm_bidirectional, diagonal_ssm_step
from ssmkit.ops.discretize import bilinear, bilinear_dplr, zoh, zoh_reference
from ssmkit.ops.fftconv import (
    bidirectional_conv,
    bidirectional_conv_reference,
    causal_conv,
    causal_conv_reference,
    initial_state_output,
    initial_state_output_reference,
)
from ssmkit.ops.hippo import MEASURES, NPLR, dss_eigenvalues, nplr, rank_correction, s4d_eigenvalues, s4d_input_matrix, transition
from ssmkit.ops.kernels import vandermonde, vandermonde_reference
from ssmkit.ops.scan import (
    linear_recurrence,
    linear_recurrence_reference,
    ssm_final_state,
    ssm_final_state_reference,
    ssm_scan,
    ssm_scan_reference,
)

__all__ = [
    "BACKENDS",
    "MEASURES",
    "NPLR",
    "bidirectional_conv",
    "bidirectional_conv_reference",
    "bilinear",
    "bilinear_dplr",
    "causal_conv",
    "causal_conv_reference",
    "dense_final_state",
    "dense_final_state_reference",
    "diagonal_kernel",
    "diagonal_ssm",
    "diagonal_ssm_bidirectional",
    "diagonal_ssm_step",
    "dplr_kernel",
    "dplr_kernel_reference",
    "dss_eigenvalues",
    "get_backend",
    "initial_state_output",
    "initial_state_output_reference",
    "linear_recurrence",
    "linear_recurrence_reference",
    "nplr",
    "rank_correction",
    "s4d_eigenvalues",
    "s4d_input_matrix",
    "set_backend",
    "ssm_final_state",
    "ssm_final_state_reference",
    "ssm_scan",
    "ssm_scan_reference",
    "transition",
    "use_backend",
    "vandermonde",
    "vandermonde_reference",
    "zoh",
    "zoh_reference",
]
