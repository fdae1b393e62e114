"""Control-theoretic analysis of LTI layers: state-space banks, poles, stability, frequency response, norms.

    statespace.py   StateSpace, the bank of discrete-time systems that LTI layers export (or continuous ones, dt = 0)
    sampling.py     exact conversions between a sampled system and its continuous one (ZOH logarithm, Tustin)
    frequency.py    transfer functions through a complex Schur form (modal sum, back substitution, real part)
    norms.py        σ_max and the H-infinity norm by grid search; hinf.py: the certified one (Cayley + Hamiltonian)
    nonlinear.py    a whole model as x[k+1] = f(x[k], u[k]): equilibria, linearisation, python-control nlsys;
                    ContinuousWiener: a deep Wiener model's blocks as one ODE (continuous-time nlsys)
    operating.py    a DeepWiener's equilibria along each input: static characteristic, local gain and stability
    reduction.py    Gramians, Hankel singular values, the H2 norm, balanced truncation (model order reduction)
    layerwise.py    every LTI layer of a model: poles (discrete, continuous), margin, time constants, DC gain, H∞
    plots.py        PNG figures (poles, Bode, impulse/step responses, kernels); report.py: summary.md + JSON + PNGs
    onnx_export.py  a model's one-step function as an ONNX graph in real arithmetic (embedded controllers)
    onnx_sequence.py  a model's whole-sequence forward as an ONNX graph for any length (real chunked scans)
    onnx_pair.py    a pair model's (dual encoder's) whole-pair graph: u (B, 2, L, ...), lengths (B, 2)
    onnx_liquid.py  Liquid-S4 in real arithmetic for both exports (S4's core driven by the liquid input)
    onnx_irregular.py  the LTI layers at irregular sampling times, for both exports' ``intervals=True``
    zoo.py          the control-theoretic table of the registered layers (``ssmkit zoo``)
    commands.py     ``ssmkit analyze`` and ``ssmkit zoo``

scipy is imported inside the functions that need it, so importing this package does not load scipy.
"""

from ssmkit.analysis.frequency import (
    SchurForm,
    modal_transfer,
    physical_transfer,
    schur_form,
    schur_transfer,
    triangular_transfer,
)
from ssmkit.analysis.layerwise import LayerAnalysis, analyze_model, lti_layers
from ssmkit.analysis.nonlinear import ContinuousWiener, NonlinearSystem
from ssmkit.analysis.norms import hinf_norm, sigma_max
from ssmkit.analysis.operating import OperatingSweep, operating_sweeps
from ssmkit.analysis.onnx_export import OnnxExport, RealLTIStep, export_onnx, onnx_state, real_step_model
from ssmkit.analysis.onnx_pair import PairOnnxExport
from ssmkit.analysis.onnx_irregular import RealIrregularDPLR, RealIrregularModes, irregular_model
from ssmkit.analysis.onnx_sequence import RealLTISequence, export_onnx_sequence, real_sequence_model
from ssmkit.analysis.reduction import balanced_truncation, gramians, h2_norm, hankel_singular_values
from ssmkit.analysis.report import write_report
from ssmkit.analysis.statespace import StateSpace
from ssmkit.analysis.zoo import pole_statistics, zoo_table

__all__ = [
    "LayerAnalysis",
    "ContinuousWiener",
    "NonlinearSystem",
    "OnnxExport",
    "OperatingSweep",
    "PairOnnxExport",
    "RealIrregularDPLR",
    "RealIrregularModes",
    "RealLTISequence",
    "RealLTIStep",
    "SchurForm",
    "StateSpace",
    "analyze_model",
    "balanced_truncation",
    "export_onnx",
    "export_onnx_sequence",
    "gramians",
    "h2_norm",
    "hankel_singular_values",
    "hinf_norm",
    "irregular_model",
    "lti_layers",
    "modal_transfer",
    "onnx_state",
    "operating_sweeps",
    "physical_transfer",
    "pole_statistics",
    "real_sequence_model",
    "real_step_model",
    "schur_form",
    "schur_transfer",
    "sigma_max",
    "triangular_transfer",
    "write_report",
    "zoo_table",
]
