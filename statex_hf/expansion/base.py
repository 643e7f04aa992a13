"""What every family's StateX surgery shares: choices -> StateX config, then tensors one at a time.

A family's expansion (:mod:`statex_hf.expansion.gla`, :mod:`statex_hf.expansion.mamba2`) subclasses
:class:`Expansion` and says how its state grows (``state_size``, ``parameter_delta``) and what each
source tensor becomes (``transform``). The architecture rules (head divisibility, "the state must
grow", layer ranges, ...) live in the StateX config classes alone; building the config here turns
their messages into the command line's words (``statex_num_heads=3`` -> ``--num-heads 3``).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from transformers import PretrainedConfig

from statex_hf.expansion.errors import StateXInputError, in_flag_words
from statex_hf.expansion.fresh import fresh_layer_parameters
from statex_hf.expansion.layers import LAYERS_FLAG, choose_layers
from statex_hf.families import Family

# Serialization bookkeeping that must not be copied into the new config.
_DROPPED_CONFIG_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path")


class Expansion(ABC):
    """The surgery for one conversion, applied tensor by tensor so sharded checkpoints can stream through it.

    Subclasses name their registry entry (``family``) and implement ``state_size``, ``parameter_delta`` and
    ``transform``; the family gives the config and model classes, init modes, state option and layer names.
    """

    family: ClassVar[Family]

    def __init__(
        self,
        source_config: Mapping[str, Any],
        *,
        layers: Sequence[int] | None = None,
        every: int | None = None,
        init: str | None = None,
        seed: int = 0,
        **state_choice: int | None,
    ) -> None:
        family = self.family
        init = family.init_modes[0] if init is None else init
        if init not in family.init_modes:
            raise StateXInputError(
                f"--init {init!r} is not a {family.title} init mode; choose one of {', '.join(family.init_modes)}"
            )
        unknown = set(state_choice) - {family.state_option.dest}
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword argument {sorted(unknown)[0]!r}")
        if source_config.get("model_type") != family.source_model_type:
            raise StateXInputError(
                f"config has model_type={source_config.get('model_type')!r}; {type(self).__name__} expands "
                f"model_type {family.source_model_type!r} checkpoints"
            )
        fields = {k: v for k, v in source_config.items() if k not in _DROPPED_CONFIG_KEYS}
        num_layers = self._build_config(fields).num_hidden_layers
        self.layers = choose_layers(num_layers, every=every, layers=layers)
        option = family.state_option
        value = state_choice.get(option.dest, option.default)
        extra = {} if value is None else {option.config_field: value}
        self.config = self._build_config({**fields, "statex_layers": list(self.layers), **extra})
        self.config.architectures = [family.causal_lm_class_name]
        self.init = init
        self.seed = seed
        self._fresh: dict[int, dict[str, torch.Tensor]] = {}

    def _build_config(self, fields: Mapping[str, Any]) -> PretrainedConfig:
        """The config class decides what is valid; its message comes back in the command line's words."""
        config_class = self.family.config_class
        try:
            return config_class(**fields)
        except (ValueError, TypeError) as err:
            option = self.family.state_option
            message = in_flag_words(str(err), {"statex_layers": LAYERS_FLAG, option.config_field: option.flag})
            if message == str(err):  # a rule about the checkpoint alone, not about a choice
                message = f"cannot build the {config_class.__name__}: {message}"
            raise StateXInputError(message) from err

    @abstractmethod
    def state_size(self, layer_idx: int, expanded: bool) -> int:
        """Recurrent state elements of layer ``layer_idx`` before (``expanded=False``) or after the expansion."""

    @abstractmethod
    def growth(self) -> str:
        """How the expanded layers' state grows, in a few words: ``heads merged 4 -> 1``."""

    @abstractmethod
    def parameter_delta(self) -> int:
        """Parameters the expansion adds, from the config alone (the conversion checks it against the count)."""

    @abstractmethod
    def transform(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The converted tensor for source key ``name`` (the same object when it is kept)."""

    def expand(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every tensor of ``state_dict`` through :meth:`transform`; kept tensors are not copied."""
        return {name: self.transform(name, tensor) for name, tensor in state_dict.items()}

    @classmethod
    def on_state_dict(
        cls, source_config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], **choices: Any
    ) -> tuple[PretrainedConfig, dict[str, torch.Tensor]]:
        """Source config + state dict -> (StateX config, StateX state dict), with the constructor's choices."""
        expansion = cls(source_config, **choices)
        return expansion.config, expansion.expand(state_dict)

    def layer_index(self, name: str) -> int | None:
        """``model.layers.3.attn.q_proj.weight`` -> 3; ``None`` outside the blocks."""
        match = re.match(rf"^{re.escape(self.family.layout.layers)}\.(\d+)\.", name)
        return int(match.group(1)) if match else None

    def fresh_layer(self, layer_idx: int) -> dict[str, torch.Tensor]:
        """Layer ``layer_idx`` as the StateX model class's ``_init_weights`` draws it (one layer cached)."""
        if layer_idx not in self._fresh:
            model_class, prefix = self.family.causal_lm_class, self.family.layout.block(layer_idx)
            self._fresh = {layer_idx: fresh_layer_parameters(model_class, self.config, prefix, self.seed, layer_idx)}
        return self._fresh[layer_idx]

    @staticmethod
    def check_shape(name: str, tensor: torch.Tensor, expected: Sequence[int]) -> None:
        if tuple(tensor.shape) != tuple(expected):
            raise StateXInputError(
                f"{name} has shape {tuple(tensor.shape)}, but the config implies {tuple(expected)}; "
                "config.json does not match the weights"
            )
