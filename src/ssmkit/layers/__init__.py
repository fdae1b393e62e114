"""Sequence-mixing layers behind one protocol; each registers itself by name.

    ssmkit.layers.available()                  # ["dss", "s4", "s4d"]
    layer = ssmkit.layers.build("s4d", d_model=64, d_state=64, init="inv")

Files: ``protocol.py`` (the :class:`SequenceLayer` protocol, capabilities, block defaults), ``state.py`` (state
specs), ``registry.py`` (``register``, ``build``, ``available``), ``marks.py`` (optimizer marks of SSM parameters),
``checks.py`` (constructor validators), ``cache.py`` (the value-keyed cache of the step), ``diagonal.py`` (the
shared diagonal LTI implementation), then one file per published layer.
"""

from ssmkit.layers.cache import frozen_parameters
from ssmkit.layers.diagonal import DiagonalLTILayer
from ssmkit.layers.dlr import DLR
from ssmkit.layers.dss import DSS
from ssmkit.layers.mamba2 import Mamba2
from ssmkit.layers.marks import marked_parameters, optim_marks, register_ssm_parameter
from ssmkit.layers.protocol import BlockDefaults, Capabilities, SequenceLayer
from ssmkit.layers.registry import available, build, layer_class, register
from ssmkit.layers.rglru import RGLRU, RGLRUState
from ssmkit.layers.s4 import S4
from ssmkit.layers.s4d import S4D
from ssmkit.layers.state import State, StateSpec, TensorSpec
from ssmkit.layers.zoo import ZooEntry

__all__ = [
    "BlockDefaults",
    "Capabilities",
    "DLR",
    "DSS",
    "DiagonalLTILayer",
    "RGLRU",
    "RGLRUState",
    "Mamba2",
    "S4",
    "S4D",
    "SequenceLayer",
    "State",
    "StateSpec",
    "TensorSpec",
    "ZooEntry",
    "available",
    "build",
    "frozen_parameters",
    "layer_class",
    "marked_parameters",
    "optim_marks",
    "register",
    "register_ssm_parameter",
]
