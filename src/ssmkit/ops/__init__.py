"""Pure tensor math: HiPPO matrices, discretisation, SSM kernels, FFT convolution, scans and recurrences.

Nothing here is an ``nn.Module``. Every op has a ``<op>_reference`` oracle beside its fast paths and one
dispatch table from backend name to implementation (:mod:`ssmkit.ops.backend`): :func:`set_backend` and
:func:`use_backend` choose the backend of the current thread or task, and every dispatching op takes a
keyword-only ``backend=`` that overrides it for one call.

Where each idea lives: ``scan`` (the diagonal LTI scan: reference, dispatch, FFT path, final state),
``chunked`` (its chunked matmul path), ``recurrence`` (h_t = a_t ⊙ h_{t-1} + b_t), ``kernels`` (Vandermonde
kernel and the output of an initial state), ``fftconv`` (FFT convolutions; ``fftblocks``: their CPU passes by
cache-sized blocks), ``cauchy`` (S4's DPLR kernel; ``woodbury``: its Woodbury step), ``dropout`` (dropout; ``philox``:
its counter-based mask, the C kernel's reference; ``dropout()`` stays in its module, of the same name),
``dplr`` (S4's DPLR matrix, discretisation and O(N) step), ``conv`` (the short causal depthwise convolution with state), ``dense`` (final state of a dense recurrence),
``ssd`` (Mamba-2's scan with a scalar decay per head), ``gated_norm`` (Mamba-2's skip, gate and grouped RMSNorm), ``selective`` (Mamba's selective scan), ``discretize`` (ZOH and bilinear for diagonal systems), ``hippo``
(HiPPO matrices), ``diagonal`` (the layers' views of a diagonal SSM), ``mimo`` (the MIMO diagonal SSM of S5 and LRU:
scan, kernel, step; ``irregular``: its scan and step at irregular sampling times; ``irregular_bank``: the same
for a bank of SISO systems, S4D's; ``irregular_discrete``: LRU's, EMA's, DLR's and RG-LRU's; ``irregular_dplr``:
S4's DPLR system), ``twice`` (a kernel's backward when it is itself differentiated: through the chunked path),
``function_call`` (every ``torch.autograd.Function`` is called through :func:`apply_function`: views of parameters,
not the parameters, so threads sharing a model cannot deadlock inside PyTorch).
"""

from ssmkit.ops.attention import causal_attention, causal_attention_reference, causal_mask, rotary
from ssmkit.ops.backend import BACKENDS, checkpoint_contexts, get_backend, set_backend, use_backend
from ssmkit.ops.cauchy import dplr_kernel, dplr_kernel_reference  # cauchy() stays in its module (same name)
from ssmkit.ops.conv import causal_conv1d, causal_conv1d_reference, causal_conv1d_step
from ssmkit.ops.dense import dense_final_state, dense_final_state_reference
from ssmkit.ops.diagonal import (
    DiagonalStepCoefficients,
    diagonal_kernel,
    diagonal_ssm_bidirectional,
    diagonal_ssm_step,
    diagonal_step_coefficients,
)
from ssmkit.ops.discretize import bilinear, zoh, zoh_reference
from ssmkit.ops.dplr import (
    DPLRStepCoefficients,
    bilinear_dplr,
    bilinear_dplr_real,
    dplr_matrix,
    dplr_step,
    dplr_step_coefficients,
    dplr_step_reference,
    small_inverse,
)
from ssmkit.ops.function_call import apply_function
from ssmkit.ops.irregular import irregular_discretize, irregular_scan, irregular_scan_reference, irregular_step
from ssmkit.ops.irregular_bank import bank_irregular_scan, bank_irregular_scan_reference, bank_irregular_step
from ssmkit.ops.fftconv import bidirectional_conv, bidirectional_conv_reference, causal_conv, causal_conv_reference
from ssmkit.ops.gated_norm import gated_rmsnorm, gated_rmsnorm_reference
from ssmkit.ops.hippo import MEASURES, NPLR, dss_eigenvalues, nplr, rank_correction, s4d_eigenvalues, s4d_input_matrix, transition
from ssmkit.ops.kernels import initial_state_output, initial_state_output_reference, vandermonde, vandermonde_reference
from ssmkit.ops.mimo import (
    MIMOStepCoefficients,
    mimo_kernel,
    mimo_kernel_reference,
    mimo_scan,
    mimo_scan_reference,
    mimo_ssm_step,
    mimo_step_coefficients,
)
from ssmkit.ops.recurrence import linear_recurrence, linear_recurrence_reference
from ssmkit.ops.selective import selective_scan, selective_scan_reference, selective_step
from ssmkit.ops.scan import ssm_final_state, ssm_final_state_reference, ssm_scan, ssm_scan_reference
from ssmkit.ops.ssd import ssd_chunked, ssd_reference, ssd_step  # ssd() stays in its module (same name)
from ssmkit.ops.triton_gate import triton_available, triton_status

__all__ = [
    "apply_function",
    "DiagonalStepCoefficients",
    "BACKENDS",
    "DPLRStepCoefficients",
    "gated_rmsnorm",
    "gated_rmsnorm_reference",
    "MEASURES",
    "MIMOStepCoefficients",
    "NPLR",
    "bank_irregular_scan",
    "bank_irregular_scan_reference",
    "bank_irregular_step",
    "bidirectional_conv",
    "bidirectional_conv_reference",
    "bilinear",
    "bilinear_dplr",
    "bilinear_dplr_real",
    "causal_attention",
    "causal_attention_reference",
    "causal_conv",
    "causal_conv1d",
    "causal_conv1d_reference",
    "causal_conv1d_step",
    "causal_conv_reference",
    "causal_mask",
    "checkpoint_contexts",
    "dense_final_state",
    "dense_final_state_reference",
    "diagonal_kernel",
    "diagonal_ssm_bidirectional",
    "diagonal_ssm_step",
    "diagonal_step_coefficients",
    "dplr_kernel",
    "dplr_kernel_reference",
    "dplr_matrix",
    "dplr_step",
    "dplr_step_coefficients",
    "dplr_step_reference",
    "dss_eigenvalues",
    "get_backend",
    "initial_state_output",
    "initial_state_output_reference",
    "irregular_discretize",
    "irregular_scan",
    "irregular_scan_reference",
    "irregular_step",
    "linear_recurrence",
    "linear_recurrence_reference",
    "mimo_kernel",
    "mimo_kernel_reference",
    "mimo_scan",
    "mimo_scan_reference",
    "mimo_ssm_step",
    "mimo_step_coefficients",
    "nplr",
    "rank_correction",
    "rotary",
    "s4d_eigenvalues",
    "s4d_input_matrix",
    "selective_scan",
    "selective_scan_reference",
    "selective_step",
    "set_backend",
    "small_inverse",
    "ssd_chunked",
    "ssd_reference",
    "ssd_step",
    "ssm_final_state",
    "ssm_final_state_reference",
    "ssm_scan",
    "ssm_scan_reference",
    "transition",
    "triton_available",
    "triton_status",
    "use_backend",
    "vandermonde",
    "vandermonde_reference",
    "zoh",
    "zoh_reference",
]
