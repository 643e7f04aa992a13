"""The names of the files a saved model folder holds, and nothing else.

``save_pretrained`` (weights, configs), the tokenizer, ``statex_hf.hub``'s remote code, the model
card, peft's adapter and ``Trainer``'s run state. The output rule (:mod:`statex_hf.outputs`) lets
``--overwrite`` replace only a folder made of these; conversion copies the tokenizer files by name.
"""

from __future__ import annotations

from fnmatch import fnmatch

CONFIG_FILE = "config.json"
TRAINER_STATE_FILE = "trainer_state.json"
# Everything a tokenizer may consist of; only the files present are copied.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
SAVED_FILE_PATTERNS = (
    # save_pretrained: config, generation config, weights in one file or shards plus an index
    CONFIG_FILE,
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
    # the remote-code bundle (statex_hf.hub flattens module paths into these names)
    "configuration_*.py",
    "modeling_*.py",
    "kernels_*.py",
    # the model card and a Hub clone's attributes
    "README.md",
    ".gitattributes",
    *TOKENIZER_FILES,
    # peft's LoRA adapter
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    # Trainer: run state in the output folder and in each checkpoint-N
    TRAINER_STATE_FILE,
    "training_args.bin",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state.pth",
    "rng_state_*.pth",
    "all_results.json",
    "train_results.json",
    "eval_results.json",
)
# Subfolders a save writes: Trainer's checkpoints and posttrain's merged LoRA model.
SAVED_FOLDER_PATTERNS = ("checkpoint-*", "merged")


def is_saved_file(name: str) -> bool:
    return any(fnmatch(name, pattern) for pattern in SAVED_FILE_PATTERNS)


def is_saved_folder(name: str) -> bool:
    return any(fnmatch(name, pattern) for pattern in SAVED_FOLDER_PATTERNS)


__all__ = [
    "CONFIG_FILE",
    "SAVED_FILE_PATTERNS",
    "SAVED_FOLDER_PATTERNS",
    "TOKENIZER_FILES",
    "TRAINER_STATE_FILE",
    "is_saved_file",
    "is_saved_folder",
]
