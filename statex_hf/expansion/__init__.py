"""StateX surgery as pure functions: source config + state dict + choices -> StateX config + state dict.

Shared by the CLI, the conversion scripts and the Python API. Each family's :class:`Expansion`
transforms one tensor at a time, so sharded checkpoints stream through it.
"""

from statex_hf.expansion.base import Expansion
from statex_hf.expansion.errors import StateXInputError
from statex_hf.expansion.gla import GLA_INIT_MODES, GLAExpansion, expand_gla
from statex_hf.expansion.layers import choose_layers
from statex_hf.expansion.mamba2 import MAMBA2_INIT_MODES, Mamba2Expansion, expand_mamba2

__all__ = [
    "GLA_INIT_MODES",
    "MAMBA2_INIT_MODES",
    "Expansion",
    "GLAExpansion",
    "Mamba2Expansion",
    "StateXInputError",
    "choose_layers",
    "expand_gla",
    "expand_mamba2",
]
