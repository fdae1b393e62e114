"""Load the official state-spaces/s4 standalone file (``models/s4/s4.py``) from a user-supplied checkout.

The file is not part of ssmkit and is never copied into it. Its one Lightning import (``rank_zero_only``, a
logging decorator) is replaced by a no-op module when Lightning is absent; it needs einops.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import types


@functools.lru_cache(maxsize=None)
def load_official(path: str) -> types.ModuleType:
    """The official S4 module at ``path`` (loaded once per path).

    Args:
        path: the checkout's ``models/s4/s4.py``.

    Returns:
        the module (``FFTConv``, ``SSMKernelDiag``, ...).
    """
    if importlib.util.find_spec("pytorch_lightning") is None:
        lightning = types.ModuleType("pytorch_lightning")
        utilities = types.ModuleType("pytorch_lightning.utilities")
        utilities.rank_zero_only = lambda f: f
        lightning.utilities = utilities
        sys.modules.setdefault("pytorch_lightning", lightning)
        sys.modules.setdefault("pytorch_lightning.utilities", utilities)
    spec = importlib.util.spec_from_file_location("s4_official", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load the official S4 file {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
