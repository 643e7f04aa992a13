"""statex-hf: StateX (post-training state expansion) for Hugging Face transformers.

Importing the package registers the StateX configs and models with transformers' Auto classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from statex_hf.modeling.gla import StateXGLAConfig, StateXGLAForCausalLM, StateXGLAModel
from statex_hf.modeling.mamba2 import StateXMamba2Config, StateXMamba2ForCausalLM, StateXMamba2Model

__version__ = "0.1.0"

for _config, _model, _lm in (
    (StateXGLAConfig, StateXGLAModel, StateXGLAForCausalLM),
    (StateXMamba2Config, StateXMamba2Model, StateXMamba2ForCausalLM),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForCausalLM.register(_config, _lm, exist_ok=True)
    # `register` does not reach transformers' table of causal-LM names, which tools read to tell a causal LM
    # by its model_type (lm-eval's HFLM, the text-generation pipeline's model check).
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault(_config.model_type, _lm.__name__)

__all__ = [
    "StateXGLAConfig",
    "StateXGLAForCausalLM",
    "StateXGLAModel",
    "StateXMamba2Config",
    "StateXMamba2ForCausalLM",
    "StateXMamba2Model",
]
