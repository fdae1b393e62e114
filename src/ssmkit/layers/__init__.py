"""Sequence-mixing layers behind one protocol; each registers itself by name.

    ssmkit.layers.available()                  # ["attention", "dlr", "dss", ..., "s5", "sgconv"]: sorted names
    layer = ssmkit.layers.build("s4d", d_model=64, d_state=64, init="inv")

Files: ``protocol.py`` (the :class:`SequenceLayer` protocol, capabilities, block defaults), ``state.py`` (state
specs), ``registry.py`` (``register``, ``unregister``, ``build``, ``available``), ``marks.py`` (optimizer marks of
SSM parameters), ``checks.py`` (constructor validators), ``cache.py`` (the value-keyed cache of the step),
``diagonal.py`` (the shared diagonal LTI implementation), ``mimo.py`` (the shared MIMO diagonal implementation of
S5 and LRU), ``conformance.py`` (``check_layer``: the protocol's checks for any layer, yours included), then one file
per published layer.
"""

from ssmkit.layers.attention import Attention, KVCache
from ssmkit.layers.cache import frozen_parameters
from ssmkit.layers.conformance import ConformanceError, check_layer
from ssmkit.layers.diagonal import DiagonalLTILayer
from ssmkit.layers.dlr import DLR
from ssmkit.layers.dss import DSS
from ssmkit.layers.mamba import Mamba, MambaState
from ssmkit.layers.mamba2 import Mamba2
from ssmkit.layers.lru import LRU
from ssmkit.layers.gss import GSS, GSSDiagonal
from ssmkit.layers.hyena import Hyena, HyenaFilter, HyenaState
from ssmkit.layers.ema import EMA
from ssmkit.layers.mega import Mega, MegaState
from ssmkit.layers.h3 import H3
from ssmkit.layers.liquid import LiquidS4
from ssmkit.layers.marks import marked_parameters, optim_marks, register_ssm_parameter
from ssmkit.layers.mimo import MIMODiagonalLTILayer
from ssmkit.layers.protocol import BlockDefaults, Capabilities, SequenceLayer
from ssmkit.layers.registry import available, build, layer_class, register, unregister
from ssmkit.layers.rglru import RGLRU, RGLRUState
from ssmkit.layers.s4 import S4
from ssmkit.layers.s4d import S4D
from ssmkit.layers.s5 import S5
from ssmkit.layers.sgconv import SGConv
from ssmkit.layers.state import State, StateSpec, TensorSpec, cat_states, detach_state, select_state
from ssmkit.layers.zoo import ZooEntry

__all__ = [
    "Attention",
    "BlockDefaults",
    "Capabilities",
    "ConformanceError",
    "DLR",
    "DSS",
    "DiagonalLTILayer",
    "Mamba",
    "MambaState",
    "RGLRU",
    "RGLRUState",
    "Mamba2",
    "LRU",
    "MIMODiagonalLTILayer",
    "GSS",
    "GSSDiagonal",
    "Hyena",
    "HyenaFilter",
    "HyenaState",
    "EMA",
    "KVCache",
    "Mega",
    "MegaState",
    "H3",
    "LiquidS4",
    "S4",
    "S4D",
    "S5",
    "SequenceLayer",
    "SGConv",
    "State",
    "StateSpec",
    "TensorSpec",
    "ZooEntry",
    "available",
    "build",
    "cat_states",
    "check_layer",
    "detach_state",
    "frozen_parameters",
    "layer_class",
    "marked_parameters",
    "optim_marks",
    "register",
    "register_ssm_parameter",
    "select_state",
    "unregister",
]
