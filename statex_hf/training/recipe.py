"""The paper's post-training recipe as ``TrainingArguments`` defaults, every one overridable, fitted to the run.

StateX post-trains on 64K-token sequences, 512K tokens per optimizer step, AdamW (0.9, 0.95),
weight decay 0.1, lr 3e-4 with a cosine schedule and 1000 warm-up steps, gradient clipping 1.0,
bf16 (Shen et al. 2025, arXiv:2509.22630). On top: activation checkpointing per layer, and the chunked
loss once a micro-batch is long enough for full-vocabulary logits to matter.

The paper's step size and warm-up belong to its scale (10B tokens, about 19K steps). On a small
corpus or a short run the same numbers make one step a pass over all of the data and keep the
learning rate in warm-up for the whole run, so where the user did not choose them (``RecipePlan``):

- tokens per step stay the paper's where the data holds them; otherwise they shrink, in whole
  micro-batches, until a step is at most the data, or, with ``max_steps`` given, until the run's
  steps together pass over the data once (instead of each step passing over all of it);
- warm-up stays 1000 steps, but at most a tenth of the run (the paper's is 5% of its run).

Values the user chose are kept; where they make no sense (a step more than the data, a warm-up as
long as the run) the plan carries a warning naming the flag to change.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import str_to_bool
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
PAPER_WARMUP_STEPS = int(PAPER_TRAINING_ARGS["warmup_steps"])
# The default warm-up is at most this fraction of the run's optimizer steps.
MAX_WARMUP_FRACTION = 0.1
# The recipe's other fixed values (not the paper's): one sequence per micro-batch, the rest bookkeeping.
RECIPE_TRAINING_ARGS: dict[str, Any] = {
    "per_device_train_batch_size": 1,
    "logging_steps": 10,
    "save_steps": 500,
    "save_total_limit": 2,
    "report_to": "none",
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


def launcher_fsdp_checkpoints() -> bool:
    """Whether ``accelerate launch`` runs this process under FSDP with FSDP's own activation checkpointing.

    An accelerate config (``fsdp_activation_checkpointing: true``, as the shipped ones have) reaches the
    process as environment variables, which the Trainer's ``Accelerator`` reads.
    """
    return all(
        str_to_bool(os.environ.get(name, "false")) for name in ("ACCELERATE_USE_FSDP", "FSDP_ACTIVATION_CHECKPOINTING")
    )


def bf16_available() -> bool:
    """bf16 mixed precision where the hardware has it (CUDA with bf16); CPU runs stay fp32."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def gradient_accumulation_for(batch_tokens: int, seq_len: int, per_device_batch: int, processes: int) -> int:
    """Micro-batches per optimizer step so that one step sees at least ``batch_tokens`` tokens."""
    return max(1, math.ceil(batch_tokens / (seq_len * per_device_batch * processes)))


def chunked_loss_size_for(tokens_per_micro_batch: int) -> int | None:
    """The loss chunk for a micro-batch of this many tokens, or ``None`` where plain logits are cheap."""
    return CHUNKED_LOSS_SIZE if tokens_per_micro_batch >= CHUNKED_LOSS_FROM_TOKENS else None


@dataclass(frozen=True)
class RecipePlan:
    """Batch, schedule and length of a post-training run, with what was fitted and what looks wrong."""

    seq_len: int  # tokens per packed sequence
    micro_batch: int  # sequences per process per forward pass
    processes: int
    accumulation: int  # micro-batches per optimizer step
    learning_rate: float
    lr_scheduler: str
    warmup_steps: int
    steps: int | None  # optimizer steps of the run; None where streamed data is given no limit
    data_rows: int | None  # packed sequences in the data; None for streamed data
    fitted: tuple[str, ...] = ()  # the paper's values changed to fit this run, and why
    warnings: tuple[str, ...] = ()

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.micro_batch * self.processes * self.accumulation

    @property
    def data_tokens(self) -> int | None:
        return None if self.data_rows is None else self.data_rows * self.seq_len

    @property
    def total_tokens(self) -> int | None:
        return None if self.steps is None else self.steps * self.tokens_per_step

    def lines(self) -> list[str]:
        """The recipe as ``posttrain`` prints it at the start."""
        lines = [
            f"recipe: {self.tokens_per_step:,} tokens per step = {self.seq_len:,}-token sequences x "
            f"{self.micro_batch} per micro-batch x {_count(self.processes, 'process', 'es')} x "
            f"{_count(self.accumulation, 'micro-batch', 'es')} accumulated",
            f"  lr {self.learning_rate:g}, {self.lr_scheduler} schedule, {_count(self.warmup_steps, 'warm-up step')}",
        ]
        if self.steps is None:
            lines.append("  steps: until the data ends")
        else:
            run = f"  {self.steps:,} steps = {self.total_tokens:,} tokens"
            if self.data_tokens:
                run += f" ({self.total_tokens / self.data_tokens:.2f} passes over {self.data_tokens:,} tokens of data)"
            lines.append(run)
        lines.extend(f"  fitted: {note}" for note in self.fitted)
        return lines


def _count(n: int, noun: str, plural: str = "s") -> str:
    return f"{n:,} {noun}{'' if n == 1 else plural}"


def plan_recipe(
    *,
    seq_len: int,
    micro_batch: int = 1,
    processes: int = 1,
    batch_tokens: int | None = None,
    accumulation: int | None = None,
    max_steps: int | None = None,
    max_tokens: int | None = None,
    num_train_epochs: float = 3.0,
    warmup_steps: float | None = None,
    learning_rate: float = PAPER_TRAINING_ARGS["learning_rate"],
    lr_scheduler: str = PAPER_TRAINING_ARGS["lr_scheduler_type"],
    data_rows: int | None = None,
) -> RecipePlan:
    """The run's plan. ``None`` means "not chosen": the paper's value, fitted as the module docstring says.

    Args:
        seq_len, micro_batch, processes: the shape of one micro-step over all processes.
        batch_tokens: tokens per optimizer step; ``accumulation`` (micro-batches per step) wins over it.
        max_steps, max_tokens, num_train_epochs: the run's length, in this order of precedence.
        warmup_steps: steps, or below 1 a fraction of the run (transformers' rule).
        learning_rate, lr_scheduler: reported as given.
        data_rows: packed sequences in the data (``None`` when streamed).
    """
    sequences = micro_batch * processes
    data_tokens = None if data_rows is None else data_rows * seq_len
    fitted: list[str] = []
    if accumulation is None:
        accumulation = gradient_accumulation_for(batch_tokens or PAPER_BATCH_TOKENS, seq_len, micro_batch, processes)
        if batch_tokens is None and data_rows is not None:
            fit = max(1, data_rows // ((max_steps or 1) * sequences))
            if fit < accumulation:
                accumulation = fit
                reason = (
                    f"the {max_steps:,} steps pass once over the data ({data_tokens:,} tokens)"
                    if max_steps
                    else f"a step is at most the data ({data_tokens:,} tokens)"
                )
                fitted.append(
                    f"{seq_len * sequences * fit:,} tokens per step instead of the paper's {PAPER_BATCH_TOKENS:,}, "
                    f"so that {reason}; --batch-tokens sets it"
                )
    step_tokens = seq_len * sequences * accumulation

    if max_steps is not None:
        steps: int | None = max_steps
    elif max_tokens is not None:
        steps = max(1, max_tokens // step_tokens)
    elif data_rows is not None:  # epochs, counted as the Trainer counts them
        steps = math.ceil(num_train_epochs * math.ceil(math.ceil(data_rows / sequences) / accumulation))
    else:
        steps = None

    if warmup_steps is None:
        warmup = PAPER_WARMUP_STEPS
        if steps is not None and warmup > steps * MAX_WARMUP_FRACTION:
            warmup = int(steps * MAX_WARMUP_FRACTION)
            fitted.append(
                f"{warmup:,} warm-up steps instead of the paper's {PAPER_WARMUP_STEPS:,}: at most a tenth of the "
                f"{steps:,}-step run; --warmup-steps sets it"
            )
    elif warmup_steps < 1:
        warmup = math.ceil((steps or 0) * warmup_steps)
    else:
        warmup = int(warmup_steps)

    warnings = []
    if data_tokens is not None and step_tokens > data_tokens:
        warnings.append(
            f"one optimizer step ({step_tokens:,} tokens) is more than the data ({data_tokens:,} tokens): every "
            "step passes over all of it; lower --batch-tokens or --gradient-accumulation-steps, or add data"
        )
    if steps and warmup >= steps:
        warnings.append(
            f"warm-up ({warmup:,} steps) is as long as the run ({steps:,} steps): the learning rate never "
            f"reaches {learning_rate:g}; lower --warmup-steps"
        )
    return RecipePlan(
        seq_len=seq_len,
        micro_batch=micro_batch,
        processes=processes,
        accumulation=accumulation,
        learning_rate=learning_rate,
        lr_scheduler=lr_scheduler,
        warmup_steps=warmup,
        steps=steps,
        data_rows=data_rows,
        fitted=tuple(fitted),
        warnings=tuple(warnings),
    )


def training_arguments(output_dir: str, **overrides: Any) -> TrainingArguments:
    """``TrainingArguments`` with the recipe's fixed values; any field in ``overrides`` wins.

    The step size, the run's length and the warm-up are the paper's here; ``fit_to_run`` fits them.
    """
    fields = {**PAPER_TRAINING_ARGS, **RECIPE_TRAINING_ARGS}
    fields.update(
        bf16=bf16_available(),
        # Non-reentrant checkpointing needs no input that requires grad, so it also works with a
        # frozen embedding (LoRA, --freeze) without enable_input_require_grads().
        **{CHECKPOINTING: True, f"{CHECKPOINTING}_kwargs": {"use_reentrant": False}},
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
    if fields[CHECKPOINTING] and launcher_fsdp_checkpoints():
        # transformers refuses the Trainer's checkpointing beside FSDP's, which already checkpoints each block.
        if CHECKPOINTING in overrides:
            raise PosttrainInputError(
                f"{CHECKPOINTING}=True under an accelerate FSDP config with fsdp_activation_checkpointing: "
                "transformers refuses both; FSDP already checkpoints every block, so drop the training argument"
            )
        fields[CHECKPOINTING] = False
    unknown = sorted(set(fields) - set(TrainingArguments.__dataclass_fields__))
    if unknown:
        raise PosttrainInputError(f"unknown TrainingArguments field(s) {unknown}; see transformers.TrainingArguments")
    return TrainingArguments(output_dir=output_dir, **fields)


def fit_to_run(
    args: TrainingArguments,
    chosen: dict[str, Any],
    *,
    seq_len: int,
    batch_tokens: int | None = None,
    max_tokens: int | None = None,
    data_rows: int | None = None,
) -> RecipePlan:
    """Plan the run for ``args`` and write the plan's accumulation, warm-up and length into ``args``.

    ``chosen`` holds the ``TrainingArguments`` fields the user set: those are kept, not fitted.
    The process count is ``args.world_size`` (accelerate's ``PartialState`` under ``accelerate launch``).
    """
    max_steps = chosen.get("max_steps")
    plan = plan_recipe(
        seq_len=seq_len,
        micro_batch=int(args.per_device_train_batch_size),
        processes=int(args.world_size),
        batch_tokens=batch_tokens,
        accumulation=chosen.get("gradient_accumulation_steps"),
        max_steps=max_steps if max_steps is not None and max_steps > 0 else None,
        max_tokens=max_tokens,
        num_train_epochs=float(args.num_train_epochs),
        warmup_steps=chosen.get("warmup_steps"),
        learning_rate=float(args.learning_rate),
        lr_scheduler=str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        data_rows=data_rows,
    )
    args.gradient_accumulation_steps = plan.accumulation
    args.warmup_steps = plan.warmup_steps
    if max_tokens is not None and args.max_steps <= 0 and plan.steps is not None:
        args.max_steps = plan.steps
    return plan


def recipe_training_arguments(
    output_dir: str,
    seq_len: int = PAPER_SEQ_LEN,
    batch_tokens: int | None = None,
    max_tokens: int | None = None,
    data_rows: int | None = None,
    **overrides: Any,
) -> TrainingArguments:
    """``TrainingArguments`` with the paper's recipe fitted to the run; any field in ``overrides`` wins.

    Args:
        output_dir: where checkpoints go.
        seq_len: tokens per packed sequence.
        batch_tokens: tokens per optimizer step across all processes (default: the paper's 524,288,
            fewer where ``data_rows`` is too small); sets ``gradient_accumulation_steps`` unless that is overridden.
        max_tokens: total training tokens; sets ``max_steps`` unless that is overridden.
        data_rows: packed sequences in the training data, when known: the batch and warm-up fit it.
        overrides: ``TrainingArguments`` fields (``learning_rate=1e-4``, ``bf16=False``, ...).
    """
    args = training_arguments(output_dir, **overrides)
    fit_to_run(args, overrides, seq_len=seq_len, batch_tokens=batch_tokens, max_tokens=max_tokens, data_rows=data_rows)
    return args


# How a value is chosen when it is not given: `statex-hf posttrain --help` shows these.
_CHOSEN_BY_THE_RECIPE = {
    "seq_len": f"the paper's {PAPER_SEQ_LEN:,}",
    "batch_tokens": f"the paper's {PAPER_BATCH_TOKENS:,}, fewer where the data is smaller; printed at the start",
    "gradient_accumulation_steps": "enough micro-batches for --batch-tokens",
    "max_steps": "from --max-tokens, else --num-train-epochs passes over the data",
    "warmup_steps": f"the paper's {PAPER_WARMUP_STEPS}, at most a tenth of the run",
}


def default_help(name: str) -> str:
    """What ``name`` (a ``posttrain`` option or a ``TrainingArguments`` field) is when not given, for ``--help``."""
    if name in _CHOSEN_BY_THE_RECIPE:
        return _CHOSEN_BY_THE_RECIPE[name]
    if name in PAPER_TRAINING_ARGS:
        return f"the paper's {PAPER_TRAINING_ARGS[name]}"
    if name in RECIPE_TRAINING_ARGS:
        return str(RECIPE_TRAINING_ARGS[name])
    if name == "bf16":
        return "on where the GPU has bf16"
    field = TrainingArguments.__dataclass_fields__[name]
    return f"{field.default}, transformers'"


__all__ = [
    "CHUNKED_LOSS_FROM_TOKENS",
    "CHUNKED_LOSS_SIZE",
    "MAX_WARMUP_FRACTION",
    "PAPER_BATCH_TOKENS",
    "PAPER_SEQ_LEN",
    "PAPER_TRAINING_ARGS",
    "PAPER_WARMUP_STEPS",
    "RECIPE_TRAINING_ARGS",
    "RecipePlan",
    "bf16_available",
    "chunked_loss_size_for",
    "default_help",
    "fit_to_run",
    "gradient_accumulation_for",
    "launcher_fsdp_checkpoints",
    "plan_recipe",
    "recipe_training_arguments",
    "training_arguments",
]
