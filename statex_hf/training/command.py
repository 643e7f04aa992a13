"""``statex-hf posttrain MODEL DATA OUT``: the command-line face of ``posttrain``.

The recipe's knobs have their own flags; any other ``TrainingArguments`` field is set with
``--training-arg NAME=VALUE`` (repeatable; the value is read as JSON when it parses, else as text).
Under ``accelerate launch`` the same command trains on several GPUs (DDP or FSDP).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from statex_hf.training.errors import PosttrainInputError
from statex_hf.training.freezing import FREEZE_MODES
from statex_hf.training.recipe import PAPER_SEQ_LEN, default_help

# Flag -> TrainingArguments field, for the recipe's values (None: leave the recipe's default).
_RECIPE_FLAGS = {
    "learning_rate": float,
    "lr_scheduler_type": str,
    "warmup_steps": int,
    "weight_decay": float,
    "adam_beta1": float,
    "adam_beta2": float,
    "max_grad_norm": float,
    "per_device_train_batch_size": int,
    "gradient_accumulation_steps": int,
    "max_steps": int,
    "num_train_epochs": float,
    "logging_steps": int,
    "save_steps": int,
    "seed": int,
}


def _parse_training_arg(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--training-arg {text!r}: expected NAME=VALUE (e.g. save_total_limit=3)")
    name, value = text.split("=", 1)
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "posttrain",
        help="post-train a StateX model on long documents (the paper's recipe, via transformers.Trainer)",
        description="Post-train MODEL on DATA with the paper's recipe and save to OUT. "
        "DATA: .txt/.md/.json/.jsonl/.parquet/.csv files, a directory or glob of them, or a Hub dataset id.",
    )
    p.add_argument("model", help="StateX model directory or Hub id")
    p.add_argument("data", help="training data: local files / directory / glob, or a Hub dataset id")
    p.add_argument("output_dir", metavar="out", help="output directory (checkpoints, final model or adapter)")
    p.add_argument("--tokenizer", help="tokenizer name or path (default: the model's)")
    p.add_argument(
        "--seq-len", type=int, default=PAPER_SEQ_LEN, help=f"tokens per sequence (default: {default_help('seq_len')})"
    )
    p.add_argument(
        "--no-reset",
        dest="reset_state",
        action="store_false",
        help="plain concatenation: do not reset the state at document starts",
    )
    p.add_argument("--text-column", default="text", help="the column holding the documents (default: %(default)s)")
    p.add_argument("--split", default="train", help="the dataset split (default: %(default)s)")
    p.add_argument("--dataset-config", help="the Hub dataset's configuration name (default: none)")
    p.add_argument("--streaming", action="store_true", help="read the data lazily (needs --max-steps/--max-tokens)")
    p.add_argument(
        "--text-sample-by",
        choices=("document", "paragraph", "line"),
        default="document",
        help="what one document of a text file is (default: %(default)s)",
    )
    p.add_argument(
        "--freeze", choices=FREEZE_MODES, default="none", help="which parameters stay fixed (default: %(default)s)"
    )
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (peft) instead of the full model")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default: %(default)s)")
    p.add_argument("--lora-alpha", type=int, default=32, help="LoRA scaling numerator (default: %(default)s)")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (default: %(default)s)")
    p.add_argument("--lora-target-modules", help="comma-separated nn.Linear names (default: per family)")
    p.add_argument(
        "--lora-all-layers",
        dest="lora_train_expanded",
        action="store_false",
        help="LoRA in the expanded layers' mixers too (default: those train in full)",
    )
    p.add_argument("--merge-lora", action="store_true", help="also save the merged model to OUT/merged")
    p.add_argument(
        "--chunked-loss-size",
        type=int,
        help="tokens per loss chunk (default: 4096 from 8K tokens per micro-batch on; 0 = off)",
    )
    p.add_argument(
        "--batch-tokens", type=int, help=f"tokens per optimizer step (default: {default_help('batch_tokens')})"
    )
    p.add_argument("--max-tokens", type=int, help="total training tokens (sets max_steps; default: none)")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        help="resume from OUT's last checkpoint, or PATH (default: start afresh)",
    )
    bf16 = p.add_mutually_exclusive_group()
    bf16.add_argument(
        "--bf16",
        dest="bf16",
        action="store_true",
        default=None,
        help=f"bf16 mixed precision (default: {default_help('bf16')})",
    )
    bf16.add_argument("--no-bf16", dest="bf16", action="store_false", help="fp32 training")
    p.add_argument(
        "--no-gradient-checkpointing",
        dest="gradient_checkpointing",
        action="store_false",
        help="keep every layer's activations (faster, more memory)",
    )
    for name, kind in _RECIPE_FLAGS.items():
        help_text = f"{name} (default: {default_help(name)})"
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, help=help_text)
    p.add_argument(
        "--training-arg",
        dest="training_args",
        action="append",
        type=_parse_training_arg,
        default=[],
        metavar="NAME=VALUE",
        help="any other transformers.TrainingArguments field (repeatable; default: transformers' value)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {name: getattr(args, name) for name in _RECIPE_FLAGS if getattr(args, name) is not None}
    if args.bf16 is not None:
        overrides["bf16"] = args.bf16
    if not args.gradient_checkpointing:
        overrides["gradient_checkpointing"] = False
    overrides.update(dict(args.training_args))
    lora: bool | dict = False
    if args.lora:
        lora = {
            "r": args.lora_r,
            "alpha": args.lora_alpha,
            "dropout": args.lora_dropout,
            "train_expanded": args.lora_train_expanded,
        }
        if args.lora_target_modules:
            lora["target_modules"] = [m.strip() for m in args.lora_target_modules.split(",") if m.strip()]
    chunk: int | str | None = "auto"
    if args.chunked_loss_size is not None:
        chunk = args.chunked_loss_size or None
    try:
        trainer = _posttrain(args, overrides, lora, chunk)
    except PosttrainInputError as err:
        print(f"statex-hf posttrain: error: {err}", file=sys.stderr)
        return 2
    if trainer.is_world_process_zero():
        state = trainer.state
        losses = [log["loss"] for log in state.log_history if "loss" in log]
        last = f", last logged loss {losses[-1]:.4f}" if losses else ""
        print(f"post-trained {state.global_step} steps{last}; saved to {args.output_dir}")
    return 0


def _posttrain(args: argparse.Namespace, overrides: dict[str, Any], lora: bool | dict, chunk: int | str | None):
    from statex_hf.training.posttrain import posttrain

    return posttrain(
        args.model,
        args.data,
        args.output_dir,
        tokenizer=args.tokenizer,
        seq_len=args.seq_len,
        reset_state=args.reset_state,
        text_column=args.text_column,
        split=args.split,
        dataset_config=args.dataset_config,
        streaming=args.streaming,
        text_sample_by=args.text_sample_by,
        freeze=args.freeze,
        lora=lora,
        merge_lora=args.merge_lora,
        chunked_loss_size=chunk,
        batch_tokens=args.batch_tokens,
        max_tokens=args.max_tokens,
        resume_from_checkpoint=args.resume,
        **overrides,
    )


__all__ = ["register", "run"]
