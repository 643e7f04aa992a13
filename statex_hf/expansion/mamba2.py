"""StateX for Mamba2: grow the SSM state dimension N of the chosen layers (Shen et al. 2025, arXiv:2509.22630).

Only the B and C parts grow: the B/C rows of ``in_proj`` (and its bias) and the B/C channels of
``conv1d``. Init modes:

- ``reinit`` (the paper's default): the whole B and C blocks of ``in_proj``/``conv1d`` (old rows
  included) are drawn as the paper's released code draws them, and ``dt_bias``, ``A_log`` and the
  gated norm are reset to its values (:mod:`statex_hf.expansion.reference_init`); z, x, dt rows,
  the x conv channels, ``D`` and ``out_proj`` are kept.
- ``reinit-init-weights``: the same parts re-drawn by the StateX model class's own ``_init_weights``
  (transformers' Mamba2 init: random ``dt_bias``, zero conv bias), for comparison with the paper's init.
- ``copy``: the old B/C rows and channels are tiled over the new state size.
- ``zero``: the old rows first, zeros after (the expanded model computes what the source did).

``copy`` and ``zero`` touch nothing but B and C.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from statex_hf.expansion.base import Expansion
from statex_hf.expansion.reference_init import mamba2_reference_reset, tensor_generator, torch_default_uniform
from statex_hf.families import MAMBA2
from statex_hf.modeling.mamba2.configuration_statex_mamba2 import StateXMamba2Config

MAMBA2_INIT_MODES = MAMBA2.init_modes
_MIXER = rf"^{re.escape(MAMBA2.layout.layers)}\.(\d+)\.{MAMBA2.layout.mixer}\."
_MIXER_KEY = re.compile(_MIXER + r"((?:in_proj|conv1d)\.(?:weight|bias))$")
_RESET_KEY = re.compile(_MIXER + r"(dt_bias|A_log|norm\.weight)$")


def mamba2_state_size(intermediate_size: int, state_size: int) -> int:
    """Recurrent state per layer: H heads of P x N = d_inner * N (the conv window not counted)."""
    return intermediate_size * state_size


def mamba2_parameter_delta_per_layer(config: StateXMamba2Config, old_state_size: int, new_state_size: int) -> int:
    """2 * G * (N' - N) * (d_model + conv_kernel + conv bias + in_proj bias): the B and C rows and channels added."""
    per_row = config.hidden_size + config.conv_kernel + int(config.use_conv_bias) + int(config.use_bias)
    return 2 * config.n_groups * (new_state_size - old_state_size) * per_row


class Mamba2Expansion(Expansion):
    """State-dimension growth: the chosen layers' N becomes ``--state-size`` (``statex_state_size``)."""

    family = MAMBA2
    config: StateXMamba2Config

    def __init__(self, source_config: Mapping[str, Any], **choices: Any) -> None:
        super().__init__(source_config, **choices)
        config = self.config
        self.d_inner = int(config.expand * config.hidden_size)
        self.groups = config.n_groups
        self.old_n = config.state_size
        self.new_n = config.statex_state_size

    def state_size(self, layer_idx: int, expanded: bool) -> int:
        return mamba2_state_size(self.d_inner, self.new_n if expanded else self.old_n)

    def growth(self) -> str:
        return f"state size N {self.old_n} -> {self.new_n}"

    def parameter_delta(self) -> int:
        return len(self.layers) * mamba2_parameter_delta_per_layer(self.config, self.old_n, self.new_n)

    def transform(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        match = _MIXER_KEY.match(name)
        if match is not None and int(match.group(1)) in self.layers:
            layer_idx, param = int(match.group(1)), match.group(2)
            # in_proj rows: [z | x | B | C | dt]; conv1d channels: [x | B | C].
            head = 2 * self.d_inner if param.startswith("in_proj") else self.d_inner
            tail = self.config.num_heads if param.startswith("in_proj") else 0
            return self._grow_bc(name, tensor, head, tail, layer_idx)
        match = _RESET_KEY.match(name)
        if match is not None and int(match.group(1)) in self.layers and self.init.startswith("reinit"):
            if self.init == "reinit":
                new = mamba2_reference_reset(match.group(2), tuple(tensor.shape))
            else:
                new = self.fresh_layer(int(match.group(1)))[name]
            self.check_shape(name, tensor, new.shape)
            return new.to(tensor.dtype)
        return tensor

    def _grow_bc(self, name: str, tensor: torch.Tensor, head: int, tail: int, layer_idx: int) -> torch.Tensor:
        g, n, n_new = self.groups, self.old_n, self.new_n
        self.check_shape(name, tensor, (head + 2 * g * n + tail, *tensor.shape[1:]))
        keep_head, b, c, keep_tail = torch.split(tensor, [head, g * n, g * n, tail])
        if self.init == "reinit":
            b, c = self._reference_bc(name, tensor, layer_idx).to(tensor.dtype).split(g * n_new)
        elif self.init == "reinit-init-weights":
            fresh = self.fresh_layer(layer_idx)[name].to(tensor.dtype)
            _, b, c, _ = torch.split(fresh, [head, g * n_new, g * n_new, tail])
        else:
            b, c = self._grow_block(b), self._grow_block(c)
        return torch.cat([keep_head, b, c, keep_tail])

    def _reference_bc(self, name: str, tensor: torch.Tensor, layer_idx: int) -> torch.Tensor:
        """All B and C rows (old and new) as PyTorch's default init of the new in_proj / depthwise conv1d draws them."""
        param = name.split(".mixer.")[1]
        # in_proj: fan_in = d_model (weight and bias); depthwise conv1d: fan_in = 1 * kernel (weight and bias).
        fan_in = self.config.hidden_size if param.startswith("in_proj") else self.config.conv_kernel
        shape = (2 * self.groups * self.new_n, *tensor.shape[1:])
        return torch_default_uniform(shape, fan_in, tensor_generator(self.seed, layer_idx, f"mixer.{param}"))

    def _grow_block(self, block: torch.Tensor) -> torch.Tensor:
        # B and C are laid out group-major ([G, N, ...] flattened): grow N inside each group.
        g, n, n_new = self.groups, self.old_n, self.new_n
        per_group = block.reshape(g, n, *block.shape[1:])
        if self.init == "copy":
            reps = -(-n_new // n)
            grown = per_group.repeat(1, reps, *([1] * (block.dim() - 1)))[:, :n_new]
        else:
            zeros = per_group.new_zeros(g, n_new - n, *block.shape[1:])
            grown = torch.cat([per_group, zeros], dim=1)
        return grown.reshape(g * n_new, *block.shape[1:])


# Source Mamba2 config (transformers fields) + state dict -> (StateXMamba2Config, StateX state dict); choices:
# layers, every, init, state_size, seed. E.g. expand_mamba2(config, state_dict, layers=[0, 12], state_size=512).
expand_mamba2 = Mamba2Expansion.on_state_dict
