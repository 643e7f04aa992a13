"""Where each model family keeps its blocks, token mixers and projections (for freezing and LoRA).

The names are the source models' (fla GLA, transformers Mamba2), so the same table serves an
unexpanded source checkpoint loaded through the StateX classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from statex_hf.training.errors import PosttrainInputError

if TYPE_CHECKING:  # torch only for the annotations: the command line lists FREEZE_MODES before it loads
    from torch import nn


@dataclass(frozen=True)
class FamilyLayout:
    """Module names of one family, relative to the ``...ForCausalLM``."""

    name: str
    layers: str  # the ModuleList of blocks
    mixer: str  # the token mixer inside a block
    mixer_norm: str  # the RMSNorm in front of the token mixer
    lora_targets: tuple[str, ...]  # nn.Linear names LoRA adapts by default

    def block(self, layer_idx: int) -> str:
        return f"{self.layers}.{layer_idx}"

    def mixer_modules(self, layer_idx: int) -> tuple[str, str]:
        """The token mixer and its pre-norm: what StateX re-initializes in an expanded GLA layer."""
        return f"{self.block(layer_idx)}.{self.mixer}", f"{self.block(layer_idx)}.{self.mixer_norm}"


LAYOUTS = {
    "statex_gla": FamilyLayout(
        name="gla",
        layers="model.layers",
        mixer="attn",
        mixer_norm="attn_norm",
        # Every projection of the mixer and the MLP; the tiny low-rank forget-gate projection
        # (gk_proj, rank 16) is left alone.
        lora_targets=("q_proj", "k_proj", "v_proj", "g_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ),
    "statex_mamba2": FamilyLayout(
        name="mamba2",
        layers="backbone.layers",
        mixer="mixer",
        mixer_norm="norm",
        # Mamba2's two projections carry nearly all of a layer's weights (peft's choice for Mamba too).
        lora_targets=("in_proj", "out_proj"),
    ),
}


def layout_of(model: nn.Module) -> FamilyLayout:
    """The layout of a StateX causal LM (``config.model_type`` ``statex_gla`` or ``statex_mamba2``)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in LAYOUTS:
        raise PosttrainInputError(
            f"model_type={model_type!r} is not a StateX model; load the model with statex_hf's classes "
            f"({', '.join(LAYOUTS)}) or convert it first (statex-hf convert)"
        )
    return LAYOUTS[model_type]


def num_layers(model: nn.Module) -> int:
    return int(model.config.num_hidden_layers)


def expanded_layers(model: nn.Module) -> list[int]:
    return sorted(int(i) for i in (model.config.statex_layers or []))


__all__ = ["LAYOUTS", "FamilyLayout", "expanded_layers", "layout_of", "num_layers"]
