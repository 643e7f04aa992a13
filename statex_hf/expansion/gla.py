"""StateX for GLA: merge the heads of the chosen layers (STATEX.md, "StateX for GLA = head merging").

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
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from statex_hf.expansion.errors import StateXInputError
from statex_hf.expansion.fresh import fresh_layer_parameters
from statex_hf.expansion.layers import choose_layers
from statex_hf.expansion.reference_init import gla_reference_tensor, tensor_generator
from statex_hf.init_modes import GLA_INIT_MODES  # names only, shared with the command line
from statex_hf.modeling.gla.configuration_statex_gla import StateXGLAConfig
from statex_hf.modeling.gla.modeling_statex_gla import StateXGLAForCausalLM

# Keys the StateX surgery touches: the token mixer and the RMSNorm in front of it.
_MIXER_KEY = re.compile(r"^model\.layers\.(\d+)\.(attn|attn_norm)\.(.+)$")
_OUTPUT_NORM = ("g_norm_swish_gate.weight", "g_norm.weight")
# Serialization bookkeeping that must not be copied into the new config.
_DROPPED_CONFIG_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path")


def gla_state_size(key_dim: int, value_dim: int, num_heads: int) -> int:
    """Recurrent state per layer: H heads of dk x dv = key_dim * value_dim / H."""
    return key_dim * value_dim // num_heads


def statex_gla_config(source: Mapping[str, Any], layers: Sequence[int], num_heads: int = 1) -> StateXGLAConfig:
    """The StateX config for an fla GLA config dict: every field kept, ``statex_layers`` added."""
    if source.get("model_type") != "gla":
        raise StateXInputError(
            f"config.json has model_type={source.get('model_type')!r}; `convert gla` needs an fla GLA checkpoint "
            "(model_type 'gla')"
        )
    fields = {k: v for k, v in source.items() if k not in _DROPPED_CONFIG_KEYS}
    if layers:
        _check_heads(fields, layers, num_heads)
    try:
        config = StateXGLAConfig(**fields, statex_layers=list(layers), statex_num_heads=num_heads)
    except (ValueError, TypeError) as err:
        raise StateXInputError(f"cannot build the StateX GLA config: {err}") from err
    config.architectures = ["StateXGLAForCausalLM"]
    return config


def _check_heads(fields: Mapping[str, Any], layers: Sequence[int], num_heads: int) -> None:
    heads = int(fields.get("num_heads", 4))
    if num_heads < 1 or heads % num_heads != 0:
        raise StateXInputError(
            f"--num-heads {num_heads} does not divide the checkpoint's num_heads={heads}; "
            f"merged heads must group whole heads (try 1)"
        )
    if num_heads >= heads:
        raise StateXInputError(
            f"--num-heads {num_heads} is not fewer than the checkpoint's num_heads={heads}: the state would not grow"
        )
    kv_heads = fields.get("num_kv_heads")
    if kv_heads is not None and kv_heads != heads:
        raise StateXInputError(
            f"num_kv_heads={kv_heads} (grouped keys/values) is not supported by head merging; "
            "only checkpoints with num_kv_heads = num_heads can be expanded"
        )
    attn = fields.get("attn") or {}
    softmax_layers = set(attn.get("layers", []))
    hit = sorted(softmax_layers.intersection(layers))
    if hit:
        raise StateXInputError(
            f"layer {hit[0]} is a softmax-attention layer of this hybrid model (attn.layers={sorted(softmax_layers)}); "
            "choose GLA layers with --layers"
        )


class GLAExpansion:
    """The surgery for one conversion, applied tensor by tensor so sharded checkpoints can stream through it."""

    def __init__(
        self,
        source_config: Mapping[str, Any],
        *,
        layers: Sequence[int] | None = None,
        every: int | None = None,
        init: str = "reinit",
        num_heads: int = 1,
        seed: int = 0,
    ) -> None:
        if init not in GLA_INIT_MODES:
            raise StateXInputError(f"--init {init!r} is not a GLA init mode; choose one of {', '.join(GLA_INIT_MODES)}")
        num_layers = int(source_config.get("num_hidden_layers", 24))
        self.layers = choose_layers(num_layers, every=every, layers=layers)
        self.config = statex_gla_config(source_config, self.layers, num_heads)
        self.init = init
        self.seed = seed
        self.source_num_heads = self.config.num_heads
        self._fresh: dict[int, dict[str, torch.Tensor]] = {}
        self._meta_model: StateXGLAForCausalLM | None = None

    def state_size(self, layer_idx: int, expanded: bool) -> int:
        heads = self.config.statex_num_heads if expanded else self.source_num_heads
        return gla_state_size(self.config.key_dim, self.config.value_dim, heads)

    def parameter_delta(self) -> int:
        """Projections keep their shapes; only the output-norm weight grows from dv to the merged head's dv."""
        if not self.config.elementwise_affine:
            return 0
        value_dim = self.config.value_dim
        per_layer = value_dim // self.config.statex_num_heads - value_dim // self.source_num_heads
        return len(self.layers) * per_layer

    def transform(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The converted tensor for source key ``name`` (the same object when it is kept)."""
        match = _MIXER_KEY.match(name)
        if match is None or int(match.group(1)) not in self.layers:
            return tensor
        layer_idx, part, rest = int(match.group(1)), match.group(2), match.group(3)
        if self.init in ("reinit", "reinit-init-weights"):
            new = self._reinitialized(name, layer_idx)
            # The output norm spans the merged head, so only its shape may differ from the source.
            old_shape = self._source_shape(part, rest, tuple(new.shape))
            if tuple(tensor.shape) != old_shape:
                raise StateXInputError(f"{name} has shape {tuple(tensor.shape)}, but the config implies {old_shape}")
            return new.to(tensor.dtype)
        if part == "attn" and rest in _OUTPUT_NORM:
            self._check_norm(name, tensor)
            # One head now spans all merged heads' channels; each old head had its own copy of the
            # shared per-channel weight, so the merged weight is that vector repeated.
            return tensor.repeat(self.source_num_heads // self.config.statex_num_heads)
        return tensor

    def _source_shape(self, part: str, rest: str, new_shape: tuple[int, ...]) -> tuple[int, ...]:
        if part == "attn" and rest in _OUTPUT_NORM:
            return (self.config.value_dim // self.source_num_heads,)
        return new_shape

    def _check_norm(self, name: str, tensor: torch.Tensor) -> None:
        expected = (self.config.value_dim // self.source_num_heads,)
        if tuple(tensor.shape) != expected:
            raise StateXInputError(f"{name} has shape {tuple(tensor.shape)}, but the config implies {expected}")

    def _reinitialized(self, name: str, layer_idx: int) -> torch.Tensor:
        prefix = f"model.layers.{layer_idx}"
        if self.init == "reinit-init-weights":
            fresh = self._fresh_layer(layer_idx)
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

    def _fresh_layer(self, layer_idx: int) -> dict[str, torch.Tensor]:
        if layer_idx not in self._fresh:
            self._fresh = {
                layer_idx: fresh_layer_parameters(
                    StateXGLAForCausalLM, self.config, f"model.layers.{layer_idx}", self.seed, layer_idx
                )
            }
        return self._fresh[layer_idx]


def expand_gla(
    source_config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    layers: Sequence[int] | None = None,
    every: int | None = None,
    init: str = "reinit",
    num_heads: int = 1,
    seed: int = 0,
) -> tuple[StateXGLAConfig, dict[str, torch.Tensor]]:
    """Source fla GLA config + state dict -> (``StateXGLAConfig``, StateX state dict). Kept tensors are not copied."""
    expansion = GLAExpansion(source_config, layers=layers, every=every, init=init, num_heads=num_heads, seed=seed)
    return expansion.config, {name: expansion.transform(name, tensor) for name, tensor in state_dict.items()}
