"""Sequence-mixing layers behind one protocol; each registers itself by name.

    ssmkit.layers.available()                  # ["dss", "s4", "s4d"]
    layer = ssmkit.layers.build("s4d", d_model=64, d_state=64, init="inv")
"""

from ssmkit.layers.base import DiagonalLTILayer, LTILayer, SequenceLayer, available, build, layer_class, register, register_ssm_parameter
from ssmkit.layers.dss import DSS
from ssmkit.layers.s4 import S4
from ssmkit.layers.s4d import S4D

__all__ = [
    "DSS",
    "DiagonalLTILayer",
    "LTILayer",
    "S4",
    "S4D",
    "SequenceLayer",
    "available",
    "build",
    "layer_class",
    "register",
    "register_ssm_parameter",
]
