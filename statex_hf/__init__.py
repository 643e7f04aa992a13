"""statex-hf: StateX (post-training state expansion) for Hugging Face transformers.

Importing the package registers the StateX configs and models with transformers' Auto classes. The
one exception is the ``statex-hf`` command line (the console script, ``python -m statex_hf.cli``):
it imports torch and transformers only for the command it runs, so ``--help`` and a bad argument
answer at once, and each command that loads a model calls :func:`register_auto_classes` first.
"""

import os
import sys

from statex_hf.families import FAMILIES
from statex_hf.lazy import lazy_exports

__version__ = "0.1.0"

# Every family's config, model and causal LM, e.g. StateXGLAConfig from statex_hf.modeling.gla.
_CLASSES = {
    name: family.modeling_package
    for family in FAMILIES.values()
    for name in (family.config_class_name, family.causal_lm_class_name, family.model_class_name)
}


def register_auto_classes() -> None:
    """Register every family's config and models with ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    for family in FAMILIES.values():
        config, model, lm = family.config_class, family.model_class, family.causal_lm_class
        AutoConfig.register(config.model_type, config, exist_ok=True)
        AutoModel.register(config, model, exist_ok=True)
        AutoModelForCausalLM.register(config, lm, exist_ok=True)
        # `register` does not reach transformers' table of causal-LM names, which tools read to tell a causal LM
        # by its model_type (lm-eval's HFLM, the text-generation pipeline's model check).
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault(config.model_type, lm.__name__)


def _starting_the_command_line() -> bool:
    """True while ``statex-hf`` (console script) or ``python -m statex_hf.cli`` imports this package."""
    argv = getattr(sys, "argv", None) or [""]
    if os.path.basename(argv[0]).removesuffix(".exe").removesuffix("-script.py") == "statex-hf":
        return True
    # Under ``python -m``, argv[0] is "-m" while the module is being found; orig_argv names it.
    return argv[0] == "-m" and "statex_hf.cli" in getattr(sys, "orig_argv", [])


lazy_exports(__name__, _CLASSES)
if not _starting_the_command_line():
    register_auto_classes()

__all__ = [*_CLASSES, "register_auto_classes"]
