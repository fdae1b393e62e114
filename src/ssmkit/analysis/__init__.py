"""Control-theoretic analysis of LTI layers: state-space banks, poles, stability, frequency response."""

from ssmkit.analysis.statespace import StateSpace

__all__ = ["StateSpace"]
