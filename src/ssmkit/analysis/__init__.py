"""Control-theoretic analysis of LTI layers: state-space banks, poles, stability, frequency response, norms.

    statespace.py   StateSpace, the bank of discrete-time systems that LTI layers export
    frequency.py    transfer functions through a complex Schur form (modal sum, back substitution, real part)
    norms.py        σ_max and the H-infinity norm

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
from ssmkit.analysis.norms import hinf_norm, sigma_max
from ssmkit.analysis.statespace import StateSpace

__all__ = [
    "SchurForm",
    "StateSpace",
    "hinf_norm",
    "modal_transfer",
    "physical_transfer",
    "schur_form",
    "schur_transfer",
    "sigma_max",
    "triangular_transfer",
]
