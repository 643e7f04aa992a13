"""Which parameters post-training updates: all, only the expanded layers, or only the token mixers.

- ``none``: everything trains (the paper).
- ``expanded``: only the blocks StateX expanded (``config.statex_layers``), whole blocks: their
  token mixer and pre-norm are new, and the rest of the block adapts to them.
- ``mixers``: the token mixer and its pre-norm in every layer; MLPs, embeddings and the head stay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from statex_hf.training.errors import PosttrainInputError
from statex_hf.training.families import expanded_layers, layout_of, num_layers

if TYPE_CHECKING:  # torch only for the annotations: the command line lists FREEZE_MODES before it loads
    from torch import nn

FREEZE_MODES = ("none", "expanded", "mixers")


def trainable_prefixes(model: nn.Module, mode: str) -> list[str] | None:
    """Module-name prefixes that stay trainable under ``mode`` (``None``: all parameters)."""
    if mode not in FREEZE_MODES:
        raise PosttrainInputError(f"freeze={mode!r} is not a freeze mode; choose one of {', '.join(FREEZE_MODES)}")
    if mode == "none":
        return None
    layout = layout_of(model)
    if mode == "expanded":
        layers = expanded_layers(model)
        if not layers:
            raise PosttrainInputError(
                "freeze='expanded' trains only the expanded layers, but config.statex_layers is empty: "
                "this model is not expanded (convert it first, or use freeze='none' / 'mixers')"
            )
        return [layout.block(i) for i in layers]
    return [name for i in range(num_layers(model)) for name in layout.mixer_modules(i)]


def apply_freeze(model: nn.Module, mode: str) -> int:
    """Set ``requires_grad`` by ``mode``; returns the number of trainable parameters."""
    prefixes = trainable_prefixes(model, mode)
    for name, param in model.named_parameters():
        param.requires_grad_(prefixes is None or any(name.startswith(p + ".") for p in prefixes))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["FREEZE_MODES", "apply_freeze", "trainable_prefixes"]
