"""The paper's post-training recipe as ``TrainingArguments`` defaults, every one overridable.

StateX post-trains on 64K-token sequences, 512K tokens per optimizer step, AdamW (0.9, 0.95),
weight decay 0.1, lr 3e-4 with a cosine schedule and 1000 warm-up steps, gradient clipping 1.0,
bf16 (STATEX.md, "Post-training"). On top: activation checkpointing per layer, and the chunked
loss once a micro-batch is long enough for full-vocabulary logits to matter.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from transformers import TrainingArguments

from statex_hf.training.errors import PosttrainInputError

PAPER_SEQ_LEN = 65_536
PAPER_BATCH_TOKENS = 524_288
PAPER_TRAINING_ARGS: dict[str, Any] = {
    "learning_rate": 3e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 1000,
    "weight_decay": 0.1,
    "adam_beta1": 0.9,
    "adam_beta2": 0.95,
    "max_grad_norm": 1.0,
}
# From this many tokens per micro-batch on, the loss is computed chunk by chunk: at 8K tokens and a
# 50K vocabulary the fp32 logits alone are 1.6 GB, and they grow linearly with the sequence.
CHUNKED_LOSS_FROM_TOKENS = 8192
CHUNKED_LOSS_SIZE = 4096


# transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name warns);
# use the name this version has, and accept either from callers.
CHECKPOINTING = (
    "activation_checkpointing"
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)


def _checkpointing_name(name: str) -> str:
    for old in ("gradient_checkpointing", "activation_checkpointing"):
        if name.startswith(old):
            return CHECKPOINTING + name[len(old) :]
    return name


def bf16_available() -> bool:
    """bf16 mixed precision where the hardware has it (CUDA with bf16); CPU runs stay fp32."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def world_size() -> int:
    """Processes in this run (``accelerate launch``/``torchrun`` set ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def gradient_accumulation_for(batch_tokens: int, seq_len: int, per_device_batch: int, processes: int) -> int:
    """Micro-batches per optimizer step so that one step sees at least ``batch_tokens`` tokens."""
    return max(1, math.ceil(batch_tokens / (seq_len * per_device_batch * processes)))


def chunked_loss_size_for(tokens_per_micro_batch: int) -> int | None:
    """The loss chunk for a micro-batch of this many tokens, or ``None`` where plain logits are cheap."""
    return CHUNKED_LOSS_SIZE if tokens_per_micro_batch >= CHUNKED_LOSS_FROM_TOKENS else None


def recipe_training_arguments(
    output_dir: str,
    seq_len: int = PAPER_SEQ_LEN,
    batch_tokens: int = PAPER_BATCH_TOKENS,
    max_tokens: int | None = None,
    **overrides: Any,
) -> TrainingArguments:
    """``TrainingArguments`` with the paper's recipe; any ``TrainingArguments`` field in ``overrides`` wins.

    Args:
        output_dir: where checkpoints go.
        seq_len: tokens per packed sequence.
        batch_tokens: tokens per optimizer step across all processes; sets
            ``gradient_accumulation_steps`` unless that is overridden.
        max_tokens: total training tokens; sets ``max_steps`` unless that is overridden.
        overrides: ``TrainingArguments`` fields (``learning_rate=1e-4``, ``bf16=False``, ...).
    """
    fields = dict(PAPER_TRAINING_ARGS)
    fields.update(
        per_device_train_batch_size=1,
        bf16=bf16_available(),
        # Non-reentrant checkpointing needs no input that requires grad, so it also works with a
        # frozen embedding (LoRA, --freeze) without enable_input_require_grads().
        **{CHECKPOINTING: True, f"{CHECKPOINTING}_kwargs": {"use_reentrant": False}},
        logging_steps=10,
        save_steps=500,
        save_total_limit=2,
        report_to="none",
    )
    overrides = {_checkpointing_name(name): value for name, value in overrides.items()}
    fields.update(overrides)
    fsdp_config = fields.get("fsdp_config")
    if (
        fields.get("fsdp")
        and fields[CHECKPOINTING]
        and CHECKPOINTING not in overrides
        and not isinstance(fsdp_config, str)
    ):
        # Under FSDP, checkpoint inside FSDP's own wrappers: the Trainer's checkpointing would
        # gather every layer's weights once more in the backward pass.
        fields[CHECKPOINTING] = False
        fields["fsdp_config"] = {"activation_checkpointing": True, **(fsdp_config or {})}
    per_device = int(fields["per_device_train_batch_size"])
    if "gradient_accumulation_steps" not in overrides:
        fields["gradient_accumulation_steps"] = gradient_accumulation_for(
            batch_tokens, seq_len, per_device, world_size()
        )
    if max_tokens is not None and "max_steps" not in overrides:
        step_tokens = seq_len * per_device * world_size() * int(fields["gradient_accumulation_steps"])
        fields["max_steps"] = max(1, max_tokens // step_tokens)
    unknown = sorted(set(fields) - set(TrainingArguments.__dataclass_fields__))
    if unknown:
        raise PosttrainInputError(f"unknown TrainingArguments field(s) {unknown}; see transformers.TrainingArguments")
    return TrainingArguments(output_dir=output_dir, **fields)


__all__ = [
    "CHUNKED_LOSS_FROM_TOKENS",
    "CHUNKED_LOSS_SIZE",
    "PAPER_BATCH_TOKENS",
    "PAPER_SEQ_LEN",
    "PAPER_TRAINING_ARGS",
    "bf16_available",
    "chunked_loss_size_for",
    "gradient_accumulation_for",
    "recipe_training_arguments",
    "world_size",
]
