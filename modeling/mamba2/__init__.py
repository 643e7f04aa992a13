from statex_hf.modeling.mamba2.configuration_statex_mamba2 import StateXMamba2Config
from statex_hf.modeling.mamba2.modeling_statex_mamba2 import (
    StateXMamba2ForCausalLM,
    StateXMamba2Model,
    StateXMamba2PreTrainedModel,
)

__all__ = ["StateXMamba2Config", "StateXMamba2ForCausalLM", "StateXMamba2Model", "StateXMamba2PreTrainedModel"]
