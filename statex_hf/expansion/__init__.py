"""StateX surgery as pure functions: source config + state dict + choices -> StateX config + state dict.

Shared by the CLI, the conversion scripts and the Python API. Each family's :class:`Expansion`
transforms one tensor at a time, so sharded checkpoints stream through it. The names are imported on
first use, so the light modules here (``errors``, ``layers``) load without torch.
"""

from statex_hf.lazy import lazy_exports

lazy_exports(
    __name__,
    {
        "Expansion": "statex_hf.expansion.base",
        "StateXInputError": "statex_hf.expansion.errors",
        "GLA_INIT_MODES": "statex_hf.expansion.gla",
        "GLAExpansion": "statex_hf.expansion.gla",
        "expand_gla": "statex_hf.expansion.gla",
        "choose_layers": "statex_hf.expansion.layers",
        "MAMBA2_INIT_MODES": "statex_hf.expansion.mamba2",
        "Mamba2Expansion": "statex_hf.expansion.mamba2",
        "expand_mamba2": "statex_hf.expansion.mamba2",
    },
)

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
