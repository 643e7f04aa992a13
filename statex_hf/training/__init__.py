"""Long-context post-training of StateX models with ``transformers.Trainer`` (the paper's recipe).

``posttrain`` is the Python entry point behind ``statex-hf posttrain``; the pieces (data loading,
packing with document boundaries, the collator, freezing, LoRA defaults, the recipe) are usable
on their own with a plain ``Trainer``.
"""

from statex_hf.lazy import lazy_exports

lazy_exports(
    __name__,
    {
        "PackedCollator": "statex_hf.training.collator",
        "load_text_dataset": "statex_hf.training.data",
        "PosttrainDataNotFound": "statex_hf.training.errors",
        "PosttrainInputError": "statex_hf.training.errors",
        "FREEZE_MODES": "statex_hf.training.freezing",
        "apply_freeze": "statex_hf.training.freezing",
        "apply_lora": "statex_hf.training.lora",
        "default_lora_config": "statex_hf.training.lora",
        "pack_dataset": "statex_hf.training.packing",
        "pack_documents": "statex_hf.training.packing",
        "posttrain": "statex_hf.training.posttrain",
        "prepare_dataset": "statex_hf.training.posttrain",
        "PAPER_TRAINING_ARGS": "statex_hf.training.recipe",
        "RecipePlan": "statex_hf.training.recipe",
        "plan_recipe": "statex_hf.training.recipe",
        "recipe_training_arguments": "statex_hf.training.recipe",
    },
)

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
