"""The init modes of a family's expanded parts: names only, so the command line lists them without importing torch.

What each mode does is :mod:`statex_hf.expansion.gla` / :mod:`statex_hf.expansion.mamba2`, which
check the same names.
"""

GLA_INIT_MODES = ("reinit", "reinit-init-weights", "inherit")
MAMBA2_INIT_MODES = ("reinit", "reinit-init-weights", "copy", "zero")
INIT_MODES = {"gla": GLA_INIT_MODES, "mamba2": MAMBA2_INIT_MODES}

__all__ = ["GLA_INIT_MODES", "INIT_MODES", "MAMBA2_INIT_MODES"]
