"""Long-context post-training of StateX models with ``transformers.Trainer`` (the paper's recipe).

``posttrain`` is the Python entry point behind ``statex-hf posttrain``; the pieces (data loading,
packing with document boundaries, the collator, freezing, LoRA defaults, the recipe) are usable
on their own with a plain ``Trainer``.

The names below are imported on first use: ``datasets`` (needed by the data pieces) then loads
only when training does, so ``statex-hf eval`` and ``convert`` run where it is not installed.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS = {
    "FREEZE_MODES": "freezing",
    "PAPER_TRAINING_ARGS": "recipe",
    "PackedCollator": "collator",
    "PosttrainDataNotFound": "errors",
    "PosttrainInputError": "errors",
    "apply_freeze": "freezing",
    "apply_lora": "lora",
    "default_lora_config": "lora",
    "load_text_dataset": "data",
    "pack_dataset": "packing",
    "pack_documents": "packing",
    "posttrain": "posttrain",
    "prepare_dataset": "posttrain",
    "recipe_training_arguments": "recipe",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
