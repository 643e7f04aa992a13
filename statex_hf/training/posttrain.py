"""``posttrain``: long-context post-training of a (StateX) model with ``transformers.Trainer``.

The Python entry point behind ``statex-hf posttrain``; it also runs unchanged under
``accelerate launch`` (DDP or FSDP), since everything distributed is the ``Trainer``'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils import logging

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset
    from peft import LoraConfig, PeftModel

import statex_hf  # noqa: F401  (registers the StateX Auto classes)
from statex_hf.training.collator import PackedCollator
from statex_hf.training.data import load_text_dataset
from statex_hf.training.errors import PosttrainInputError
from statex_hf.training.freezing import apply_freeze
from statex_hf.training.packing import pack_dataset
from statex_hf.training.progress import LossProgressBar
from statex_hf.training.recipe import PAPER_SEQ_LEN, chunked_loss_size_for, fit_to_run, training_arguments

logger = logging.get_logger(__name__)


def load_model(model: str | PreTrainedModel, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A model object as given, or loaded from a directory / Hub id (fp32 master weights for mixed precision)."""
    if isinstance(model, PreTrainedModel):
        return model
    try:
        return AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
    except OSError as err:
        raise PosttrainInputError(f"{model}: cannot load the model: {err}".splitlines()[0]) from err


def load_tokenizer(
    tokenizer: str | PreTrainedTokenizerBase | None, model: str | PreTrainedModel
) -> PreTrainedTokenizerBase | None:
    """The tokenizer given, or the one saved with the model; ``None`` if there is none (pre-tokenized data)."""
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    source = tokenizer if tokenizer is not None else (model if isinstance(model, str) else model.name_or_path)
    if not source:
        return None
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        if tokenizer is not None:  # e.g. tokenizer files transformers cannot read: one line, not its traceback
            why = " ".join(str(err).split()) or type(err).__name__
            raise PosttrainInputError(f"--tokenizer {tokenizer}: cannot load a tokenizer: {why}") from err
        logger.info(f"no tokenizer with the model ({err}); the data must be pre-tokenized")
        return None


def prepare_dataset(
    data: str | Dataset | IterableDataset,
    tokenizer: PreTrainedTokenizerBase | None,
    seq_len: int,
    *,
    reset_state: bool = True,
    text_column: str = "text",
    split: str = "train",
    dataset_config: str | None = None,
    streaming: bool = False,
    text_sample_by: str = "document",
) -> Dataset | IterableDataset:
    """Load (a path or Hub id) and pack ``data`` into ``seq_len`` rows; rows with ``position_ids`` are packed."""
    if isinstance(data, str):
        data = load_text_dataset(
            data, split=split, dataset_config=dataset_config, streaming=streaming, text_sample_by=text_sample_by
        )
    if "position_ids" in (data.column_names or []):
        return data
    return pack_dataset(data, tokenizer, seq_len, reset_state=reset_state, text_column=text_column)


def _lora_model(model: PreTrainedModel, lora: bool | dict | LoraConfig) -> PeftModel:
    from peft import LoraConfig

    from statex_hf.training.lora import apply_lora

    if isinstance(lora, LoraConfig):
        return apply_lora(model, lora)
    return apply_lora(model, **(lora if isinstance(lora, dict) else {}))


def posttrain(
    model: str | PreTrainedModel,
    data: str | Dataset | IterableDataset,
    output_dir: str,
    *,
    tokenizer: str | PreTrainedTokenizerBase | None = None,
    seq_len: int = PAPER_SEQ_LEN,
    reset_state: bool = True,
    text_column: str = "text",
    split: str = "train",
    dataset_config: str | None = None,
    streaming: bool = False,
    text_sample_by: str = "document",
    freeze: str = "none",
    lora: bool | dict | LoraConfig = False,
    merge_lora: bool = False,
    chunked_loss_size: int | str | None = "auto",
    batch_tokens: int | None = None,
    max_tokens: int | None = None,
    resume_from_checkpoint: str | bool | None = None,
    callbacks: Sequence[TrainerCallback] | None = None,
    save: bool = True,
    show_recipe: bool = True,
    **training_args: Any,
) -> Trainer:
    """Post-train ``model`` on long documents with the paper's recipe; returns the ``Trainer`` after training.

    Args:
        model: a StateX model, or its directory / Hub id.
        data: text files / a directory / a glob / a Hub dataset id (see ``load_text_dataset``), or a
            ``datasets`` dataset of documents (``text_column`` or ``input_ids``) or of packed rows
            (``input_ids`` + ``position_ids``).
        output_dir: checkpoints and the final model (with LoRA: the adapter).
        tokenizer: a tokenizer or its name; the model's own when ``None``.
        seq_len: tokens per packed training sequence (paper: 65,536).
        reset_state: reset the recurrent state at document starts inside a sequence; ``False`` is the
            paper's plain concatenation.
        text_column, split, dataset_config, streaming, text_sample_by: how ``data`` is read.
        freeze: ``"none"``, ``"expanded"`` (only the expanded blocks train) or ``"mixers"`` (only token mixers).
        lora: ``True`` for LoRA with the family's defaults, a dict of ``default_lora_config`` arguments
            (``r``, ``alpha``, ``dropout``, ``target_modules``, ``train_expanded``), or a peft ``LoraConfig``.
        merge_lora: also save the merged model to ``output_dir/merged``.
        chunked_loss_size: tokens per loss chunk; ``"auto"`` chunks from 8K tokens per micro-batch on,
            ``None`` never. Set on the config for training only; the saved config keeps its own value.
        batch_tokens: tokens per optimizer step over all processes; sets the gradient accumulation
            unless ``gradient_accumulation_steps`` is given. Default: the paper's 524,288 where the data
            holds it, else fewer (see ``statex_hf.training.recipe``).
        max_tokens: total training tokens (sets ``max_steps`` unless given); needed, or
            ``max_steps``, with ``streaming``.
        resume_from_checkpoint: a checkpoint directory, or ``True`` for the latest in ``output_dir``.
        callbacks: extra ``TrainerCallback`` objects; a ``LossProgressBar`` among them replaces the
            Trainer's own progress output (bar plus a printed dict per log).
        save: save the final model (and tokenizer) to ``output_dir``.
        show_recipe: print the recipe as it will run (tokens per step, micro-batch and accumulation,
            lr and warm-up, steps, total tokens) before training; its warnings are logged either way.
        training_args: any ``TrainingArguments`` field, overriding the recipe
            (``learning_rate=1e-4``, ``warmup_steps=100``, ``max_steps=2000``, ``bf16=False``, ...); the
            batch and warm-up the user did not set are fitted to the data and the run's length.
    """
    if lora and freeze != "none":
        raise PosttrainInputError(
            f"lora and freeze={freeze!r} together: LoRA already freezes the base weights; "
            "use one of them (LoRA trains the expanded layers' mixers in full by default)"
        )
    base = load_model(model)
    tok = load_tokenizer(tokenizer, model)
    args = training_arguments(output_dir, **training_args)
    with args.main_process_first(desc="packing the training data"):
        train_dataset = prepare_dataset(
            data,
            tok,
            seq_len,
            reset_state=reset_state,
            text_column=text_column,
            split=split,
            dataset_config=dataset_config,
            streaming=streaming,
            text_sample_by=text_sample_by,
        )
    from datasets import IterableDataset  # imported with training, not with the package

    streamed = isinstance(train_dataset, IterableDataset)
    rows = None if streamed else len(train_dataset)
    plan = fit_to_run(
        args,
        training_args,
        seq_len=len(train_dataset[0]["input_ids"]) if rows else seq_len,  # pre-packed rows keep their length
        batch_tokens=batch_tokens,
        max_tokens=max_tokens,
        data_rows=rows,
    )
    if streamed and args.max_steps <= 0:
        raise PosttrainInputError(
            "streaming data has no length: give max_steps (--max-steps) or max_tokens (--max-tokens)"
        )
    if args.process_index == 0:
        if show_recipe:
            print("\n".join(plan.lines()), flush=True)
        for warning in plan.warnings:
            logger.warning(warning)

    saved_chunk = getattr(base.config, "chunked_loss_size", None)
    if chunked_loss_size == "auto":
        chunk = saved_chunk or chunked_loss_size_for(seq_len * args.per_device_train_batch_size)
    else:
        chunk = chunked_loss_size
    base.config.chunked_loss_size = chunk

    if lora:
        trained = _lora_model(base, lora)
    else:
        apply_freeze(base, freeze)
        trained = base
    total = sum(p.numel() for p in trained.parameters())
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    logger.info(
        f"post-training {trainable:,} of {total:,} parameters; seq_len={seq_len}, "
        f"reset_state={reset_state}, chunked loss={chunk}, "
        f"gradient_accumulation_steps={args.gradient_accumulation_steps}"
    )

    trainer = Trainer(
        model=trained,
        args=args,
        data_collator=PackedCollator(),
        train_dataset=train_dataset,
        processing_class=tok,
        callbacks=list(callbacks or []),
    )
    if any(isinstance(c, LossProgressBar) for c in callbacks or []):
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)

    # The chunk size is a training setting: the saved config keeps what the model came with, so
    # inference with labels still returns logits.
    base.config.chunked_loss_size = saved_chunk
    if save:
        trainer.save_model(output_dir)
        trainer.save_state()  # trainer_state.json: the loss curve beside the model
        if merge_lora and lora and trainer.is_world_process_zero():
            merged = trained.merge_and_unload()
            merged.save_pretrained(os.path.join(output_dir, "merged"))
            if tok is not None:
                tok.save_pretrained(os.path.join(output_dir, "merged"))
    return trainer


__all__ = ["load_model", "load_tokenizer", "posttrain", "prepare_dataset"]
