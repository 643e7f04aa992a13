from statex_hf.modeling.gla.configuration_statex_gla import StateXGLAConfig
from statex_hf.modeling.gla.modeling_statex_gla import (
    StateXGLAForCausalLM,
    StateXGLAModel,
    StateXGLAPreTrainedModel,
)

__all__ = ["StateXGLAConfig", "StateXGLAForCausalLM", "StateXGLAModel", "StateXGLAPreTrainedModel"]
