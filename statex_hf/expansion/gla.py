"""StateX for GLA: merge the heads of the chosen layers (Shen et al. 2025, arXiv:2509.22630).

Projection shapes do not change; only the per-head output norm grows to the merged head (its
weight: dv -> H * dv / statex_num_heads, a few thousand parameters). Init modes:

- ``reinit`` (the paper's default): the chosen layers' token mixer and pre-mixer RMSNorm get the
  weights the paper's released code gives them (:mod:`statex_hf.expansion.reference_init`).
- ``reinit-init-weights``: the same tensors re-drawn by the StateX model class's own ``_init_weights``
  (fla's normal(0, initializer_range)), for comparison with the paper's init.
- ``inherit``: the pretrained mixer is kept and the output-norm weight tiled over the merged head.

The MLP and everything else is kept bit for bit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from statex_hf.expansion.base import Expansion
from statex_hf.expansion.errors import StateXInputError
from statex_hf.expansion.reference_init import gla_reference_tensor, tensor_generator
from statex_hf.families import GLA
from statex_hf.modeling.gla.configuration_statex_gla import StateXGLAConfig
from statex_hf.modeling.gla.modeling_statex_gla import StateXGLAForCausalLM

GLA_INIT_MODES = GLA.init_modes
_LAYOUT = GLA.layout
# Keys the StateX surgery touches: the token mixer and the RMSNorm in front of it.
_MIXER_KEY = re.compile(rf"^{re.escape(_LAYOUT.layers)}\.(\d+)\.({_LAYOUT.mixer}|{_LAYOUT.mixer_norm})\.(.+)$")
_OUTPUT_NORM = ("g_norm_swish_gate.weight", "g_norm.weight")


def gla_state_size(key_dim: int, value_dim: int, num_heads: int) -> int:
    """Recurrent state per layer: H heads of dk x dv = key_dim * value_dim / H."""
    return key_dim * value_dim // num_heads


class GLAExpansion(Expansion):
    """Head merging: the chosen layers run with ``--num-heads`` heads (``statex_num_heads``)."""

    family = GLA
    config: StateXGLAConfig

    def __init__(self, source_config: Mapping[str, Any], **choices: Any) -> None:
        super().__init__(source_config, **choices)
        self.source_num_heads = self.config.num_heads
        self._meta_model: StateXGLAForCausalLM | None = None

    def state_size(self, layer_idx: int, expanded: bool) -> int:
        heads = self.config.statex_num_heads if expanded else self.source_num_heads
        return gla_state_size(self.config.key_dim, self.config.value_dim, heads)

    def growth(self) -> str:
        return f"heads merged {self.source_num_heads} -> {self.config.statex_num_heads}"

    def parameter_delta(self) -> int:
        """Projections keep their shapes; only the output-norm weight grows from dv to the merged head's dv."""
        if not self.config.elementwise_affine:
            return 0
        value_dim = self.config.value_dim
        per_layer = value_dim // self.config.statex_num_heads - value_dim // self.source_num_heads
        return len(self.layers) * per_layer

    def transform(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        match = _MIXER_KEY.match(name)
        if match is None or int(match.group(1)) not in self.layers:
            return tensor
        layer_idx, part, rest = int(match.group(1)), match.group(2), match.group(3)
        is_output_norm = part == _LAYOUT.mixer and rest in _OUTPUT_NORM
        if self.init in ("reinit", "reinit-init-weights"):
            new = self._reinitialized(name, layer_idx)
            # The output norm spans the merged head, so only its shape may differ from the source.
            self.check_shape(name, tensor, self._source_norm_shape() if is_output_norm else new.shape)
            return new.to(tensor.dtype)
        if is_output_norm:
            self.check_shape(name, tensor, self._source_norm_shape())
            # One head now spans all merged heads' channels; each old head had its own copy of the
            # shared per-channel weight, so the merged weight is that vector repeated.
            return tensor.repeat(self.source_num_heads // self.config.statex_num_heads)
        return tensor

    def _source_norm_shape(self) -> tuple[int]:
        return (self.config.value_dim // self.source_num_heads,)

    def _reinitialized(self, name: str, layer_idx: int) -> torch.Tensor:
        prefix = _LAYOUT.block(layer_idx)
        if self.init == "reinit-init-weights":
            fresh = self.fresh_layer(layer_idx)
            if name not in fresh:
                raise StateXInputError(f"checkpoint tensor {name} has no counterpart in a StateX GLA layer")
            return fresh[name]
        if self._meta_model is None:
            # Only for each parameter's module and shape: the meta device holds no memory.
            with torch.device("meta"):
                self._meta_model = StateXGLAForCausalLM(self.config)
        layer = self._meta_model.get_submodule(prefix)
        name_in_layer = name[len(prefix) + 1 :]
        try:
            layer.get_parameter(name_in_layer)
        except AttributeError:
            raise StateXInputError(f"checkpoint tensor {name} has no counterpart in a StateX GLA layer") from None
        return gla_reference_tensor(layer, name_in_layer, tensor_generator(self.seed, layer_idx, name_in_layer))


# Source fla GLA config + state dict -> (StateXGLAConfig, StateX state dict); choices: layers, every, init,
# num_heads, seed. E.g. expand_gla(config, state_dict, every=6).
expand_gla = GLAExpansion.on_state_dict
