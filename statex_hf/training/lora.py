"""LoRA through peft, with default target modules per family.

The default adapts every large projection (the registry's ``Family.layout.lora_targets``). In the
expanded layers of a StateX model the token mixer (and its pre-norm) is trained in full instead (peft
``modules_to_save``): StateX re-initializes those weights, and a low-rank update of random weights
cannot learn a mixer. ``train_expanded=False`` gives plain LoRA everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import nn

from statex_hf.training.errors import PosttrainInputError
from statex_hf.training.families import expanded_layers, layout_of

if TYPE_CHECKING:  # peft is imported when LoRA is used, so the rest of training works without it
    from peft import LoraConfig, PeftModel


def default_lora_config(
    model: nn.Module,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
    train_expanded: bool = True,
) -> LoraConfig:
    """A ``LoraConfig`` for a StateX causal LM.

    Args:
        model: the (unwrapped) StateX model.
        r, alpha, dropout: LoRA rank, scaling numerator and dropout.
        target_modules: ``nn.Linear`` names to adapt; the family's default when ``None``.
        train_expanded: train the expanded layers' token mixers in full rather than through LoRA.
    """
    from peft import LoraConfig

    layout = layout_of(model)
    if target_modules is not None:
        _check_targets(model, target_modules)
    targets = tuple(target_modules) if target_modules else layout.lora_targets
    modules_to_save: list[str] = []
    expanded = expanded_layers(model) if train_expanded else []
    if expanded:
        for i in expanded:
            modules_to_save.extend(layout.mixer_modules(i))
        # A regex target (peft full-matches it against module names) so that LoRA skips the
        # modules that are trained in full: one module cannot be both.
        skipped = "|".join(re.escape(m) + r"\." for m in modules_to_save)
        names = "|".join(re.escape(t) for t in targets)
        target: str | list[str] = rf"(?!(?:{skipped})).*\b(?:{names})"
    else:
        target = list(targets)
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target,
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def _check_targets(model: nn.Module, target_modules: Sequence[str]) -> None:
    """Every target names an ``nn.Linear`` of ``model`` as peft matches it (the whole name or its last parts)."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    unknown = [t for t in target_modules if not any(n == t or n.endswith(f".{t}") for n in linears)]
    if unknown:
        choices = sorted({name.rsplit(".", 1)[-1] for name in linears})
        raise PosttrainInputError(
            f"--lora-target-modules {unknown[0]!r}: no nn.Linear of this model has that name; "
            f"choose from {', '.join(choices)}"
        )


def apply_lora(model: nn.Module, config: LoraConfig | None = None, **kwargs) -> PeftModel:
    """Wrap ``model`` in a peft ``PeftModel`` (``config`` or ``default_lora_config(model, **kwargs)``)."""
    from peft import get_peft_model

    return get_peft_model(model, config if config is not None else default_lora_config(model, **kwargs))


__all__ = ["apply_lora", "default_lora_config"]
