"""Long-context post-training of StateX models with ``transformers.Trainer`` (the paper's recipe).

``posttrain`` is the Python entry point behind ``statex-hf posttrain``; the pieces (data loading,
packing with document boundaries, the collator, freezing, LoRA defaults, the recipe) are usable
on their own with a plain ``Trainer``.
"""

from statex_hf.training.collator import PackedCollator
from statex_hf.training.data import load_text_dataset
from statex_hf.training.errors import PosttrainDataNotFound, PosttrainInputError
from statex_hf.training.freezing import FREEZE_MODES, apply_freeze
from statex_hf.training.lora import apply_lora, default_lora_config
from statex_hf.training.packing import pack_dataset, pack_documents
from statex_hf.training.posttrain import posttrain, prepare_dataset
from statex_hf.training.recipe import PAPER_TRAINING_ARGS, RecipePlan, plan_recipe, recipe_training_arguments

__all__ = [
    "FREEZE_MODES",
    "PAPER_TRAINING_ARGS",
    "PackedCollator",
    "PosttrainDataNotFound",
    "PosttrainInputError",
    "RecipePlan",
    "apply_freeze",
    "apply_lora",
    "default_lora_config",
    "load_text_dataset",
    "pack_dataset",
    "pack_documents",
    "plan_recipe",
    "posttrain",
    "prepare_dataset",
    "recipe_training_arguments",
]
