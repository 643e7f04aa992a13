"""Where a StateX model keeps its blocks, token mixers and projections (for freezing and LoRA).

The layouts are the family registry's (:attr:`statex_hf.families.Family.layout`); their names are the
source models' (fla GLA, transformers Mamba2), so they serve an unexpanded source checkpoint loaded
through the StateX classes too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from statex_hf.families import TrainingLayout, UnknownFamilyError, family_of_model_type
from statex_hf.training.errors import PosttrainInputError

if TYPE_CHECKING:  # torch only for the annotations: the command line lists FREEZE_MODES before it loads
    from torch import nn


def layout_of(model: nn.Module) -> TrainingLayout:
    """The layout of a StateX causal LM, by its ``config.model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        return family_of_model_type(model_type).layout
    except UnknownFamilyError as err:
        raise PosttrainInputError(
            f"{err}; load the model with statex_hf's classes or convert it first (statex-hf convert)"
        ) from None


def num_layers(model: nn.Module) -> int:
    return int(model.config.num_hidden_layers)


def expanded_layers(model: nn.Module) -> list[int]:
    return sorted(int(i) for i in (model.config.statex_layers or []))


__all__ = ["expanded_layers", "layout_of", "num_layers"]
