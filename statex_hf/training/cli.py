"""``statex-hf posttrain MODEL DATA OUT``: the command line of :func:`statex_hf.training.posttrain`.

Every field of ``transformers.TrainingArguments`` is a typed flag (``--learning-rate 1e-4``,
``--save-strategy no``), derived from the dataclass by transformers' ``HfArgumentParser``; a flag
overrides the recipe only where given. ``--training-arg NAME=VALUE`` sets the same fields (kept for
scripts written before the typed flags). Model, data, tokenizer, output folder and every number are
checked before any work starts. Under ``accelerate launch`` the same command trains on several GPUs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from statex_hf.cli import at_least, set_command
from statex_hf.errors import StateXUserError
from statex_hf.training.freezing import FREEZE_MODES

# TrainingArguments fields the command sets itself: the output folder is OUT, resuming is --resume.
_OWN_FIELDS = ("output_dir", "resume_from_checkpoint")
# Given TrainingArguments values that are a mistake rather than a mode (--max-steps 0 would train a whole epoch).
_AT_LEAST_ONE = ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "save_total_limit")
_POSITIVE = ("num_train_epochs", "logging_steps", "save_steps")
_NOT_NEGATIVE = ("learning_rate", "warmup_steps", "weight_decay", "max_grad_norm")


def _check_ranges(overrides: dict[str, Any]) -> None:
    for names, ok, rule in (
        (_AT_LEAST_ONE, lambda v: v >= 1, "at least 1"),
        (_POSITIVE, lambda v: v > 0, "positive"),
        (_NOT_NEGATIVE, lambda v: v >= 0, "at least 0"),
    ):
        for name in names:
            value = overrides.get(name)
            if isinstance(value, int | float) and not ok(value):
                raise StateXUserError(f"--{name.replace('_', '-')} {value}: must be {rule}")


def _parse_training_arg(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE (e.g. save_total_limit=3)")
    name, value = text.split("=", 1)
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value


def _add_own_arguments(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """posttrain's own options (no torch needed); returns their actions by destination."""
    own = [
        p.add_argument("model", metavar="MODEL", help="StateX model folder or Hub id"),
        p.add_argument("data", metavar="DATA", help="training data: local files / folder / glob, or a Hub dataset id"),
        p.add_argument("out", metavar="OUT", help="output folder (checkpoints, final model or adapter)"),
        p.add_argument("--tokenizer", help="tokenizer folder or Hub id (default: the model's)"),
        p.add_argument("--seq-len", type=at_least(2), help="tokens per packed sequence"),
        p.add_argument(
            "--no-reset",
            dest="reset_state",
            action="store_false",
            help="plain concatenation: do not reset the state at document starts",
        ),
        p.add_argument("--text-column", default="text", help="the column holding the documents (default: text)"),
        p.add_argument("--split", default="train", help="the dataset split (default: train)"),
        p.add_argument("--dataset-config", help="the Hub dataset's configuration name (default: none)"),
        p.add_argument(
            "--streaming", action="store_true", help="read the data lazily (needs --max-steps/--max-tokens)"
        ),
        p.add_argument(
            "--text-sample-by",
            choices=("document", "paragraph", "line"),
            default="document",
            help="what one document of a text file is (default: document)",
        ),
        p.add_argument(
            "--freeze", choices=FREEZE_MODES, default="none", help="which parameters stay fixed (default: none)"
        ),
        p.add_argument("--lora", action="store_true", help="train LoRA adapters (peft) instead of the full model"),
        p.add_argument("--lora-r", type=at_least(1), default=16, help="LoRA rank (default: 16)"),
        p.add_argument("--lora-alpha", type=at_least(1), default=32, help="LoRA alpha (default: 32)"),
        p.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (default: 0)"),
        p.add_argument("--lora-target-modules", help="comma-separated nn.Linear names (default: per family)"),
        p.add_argument(
            "--lora-all-layers",
            dest="lora_train_expanded",
            action="store_false",
            help="LoRA in the expanded layers' mixers too (default: those train in full)",
        ),
        p.add_argument("--merge-lora", action="store_true", help="also save the merged model to OUT/merged"),
        p.add_argument(
            "--chunked-loss-size",
            type=at_least(0),
            help="tokens per loss chunk (default: 4096 from 8K tokens per micro-batch on; 0 = off)",
        ),
        p.add_argument("--batch-tokens", type=at_least(1), help="tokens per optimizer step"),
        p.add_argument("--max-tokens", type=at_least(1), help="total training tokens (sets max_steps; default: none)"),
        p.add_argument(
            "--resume",
            nargs="?",
            const=True,
            default=None,
            help="resume from OUT's last checkpoint, or from PATH (default: start afresh)",
        ),
        p.add_argument(
            "--overwrite", action="store_true", help="replace an OUT that an earlier posttrain or convert wrote"
        ),
        p.add_argument("--no-bf16", dest="bf16", action="store_false", default=argparse.SUPPRESS, help="fp32 training"),
        p.add_argument(
            "--no-gradient-checkpointing",
            dest="gradient_checkpointing",
            action="store_false",
            default=argparse.SUPPRESS,
            help="keep every layer's activations (faster, more memory)",
        ),
        p.add_argument(
            "--training-arg",
            dest="training_args",
            action="append",
            type=_parse_training_arg,
            default=[],
            metavar="NAME=VALUE",
            help="any transformers.TrainingArguments field, as the typed flags below (repeatable; default: none)",
        ),
    ]
    return {action.dest: action for action in own}


def _training_arguments_flags() -> argparse.ArgumentParser:
    """Every TrainingArguments field as a typed flag (``HfArgumentParser``); none given means the recipe's value."""
    from transformers import HfArgumentParser, TrainingArguments

    from statex_hf.training.recipe import default_help

    hints = typing.get_type_hints(TrainingArguments)
    fields = []
    for f in dataclasses.fields(TrainingArguments):
        if not f.init or f.name in _OWN_FIELDS:
            continue
        metadata = {**f.metadata, "help": f"{f.metadata.get('help', '')} (default: {default_help(f.name)})".strip()}
        # A flag that is not given leaves nothing behind, so only what the user chose overrides the recipe.
        fields.append((f.name, hints[f.name], dataclasses.field(default=argparse.SUPPRESS, metadata=metadata)))
    options = dataclasses.make_dataclass("PosttrainTrainingArguments", fields)
    options._argument_group_name = "transformers.TrainingArguments (each overrides the recipe where given)"
    flags = HfArgumentParser(options, add_help=False)
    return flags


# posttrain's own flags: with only these (and no --help), the TrainingArguments flags, which need
# transformers and torch, are not built, so a mistake in them is answered at once.
_OWN_FLAGS = frozenset(
    option
    for action in _add_own_arguments(argparse.ArgumentParser(add_help=False)).values()
    for option in action.option_strings
)


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str, argv: Sequence[str] = ()) -> None:
    """``statex-hf posttrain``; the TrainingArguments flags only where ``argv`` may use them (or asks for --help)."""
    given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("-")}
    parents = [_training_arguments_flags()] if given - _OWN_FLAGS else []
    parser = subparsers.add_parser(
        name,
        help=help_text,
        parents=parents,
        usage="%(prog)s MODEL DATA OUT [options]  (every transformers.TrainingArguments field is an option)",
        description="Post-train MODEL on DATA with the paper's recipe and save to OUT. DATA: "
        ".txt/.md/.json/.jsonl/.parquet/.csv files, a folder or glob of them, or a Hub dataset id.",
    )
    own = _add_own_arguments(parser)
    if parents:  # --help lists the recipe's defaults beside the flags that override them
        from statex_hf.training.recipe import default_help

        for dest in ("seq_len", "batch_tokens"):
            own[dest].help = f"{own[dest].help} (default: {default_help(dest)})"
    set_command(parser, run)


def _training_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainingArguments fields the user gave, as typed flags or ``--training-arg``, checked."""
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    overrides = {
        name: value
        for name, value in vars(args).items()
        if name in fields and name not in _OWN_FIELDS and value is not None  # None: a list flag not given
    }
    for name, value in args.training_args:
        if name not in fields:
            raise StateXUserError(f"--training-arg {name}: not a transformers.TrainingArguments field")
        if name in _OWN_FIELDS:
            raise StateXUserError(f"--training-arg {name}: set by posttrain itself (OUT / --resume)")
        overrides[name] = value
    _check_ranges(overrides)
    return overrides


def _check_model(model: str) -> None:
    """A local MODEL is a checkpoint folder transformers can load; an unconverted source is sent to ``convert``."""
    from statex_hf.conversion.readers import detect_format
    from statex_hf.paths import check_checkpoint_folder, looks_like_local_path
    from statex_hf.saved_files import CONFIG_FILE

    if not looks_like_local_path(model):
        return
    config = check_checkpoint_folder(model, "MODEL")
    try:
        family, fmt = detect_format(CONFIG_FILE, config)
    except StateXUserError:  # a StateX checkpoint, or a model no family reads: transformers decides below
        family = None
    if family is not None:
        keep = " (--layers none keeps every layer as it is)"
        how = f" --tokenizer {fmt.tokenizer_hint}" if fmt.tokenizer_hint else keep
        raise StateXUserError(
            f"MODEL {model} is an unconverted {fmt.title} checkpoint, not a StateX one; convert it first: "
            f"statex-hf convert {family.name} {model} OUT{how}"
        )
    model_type = config.get("model_type")
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise StateXUserError(f"MODEL {model}: transformers knows no model_type {model_type!r}")


def _check_output(args: argparse.Namespace, inputs: dict[str, str]) -> Path:
    """OUT may be written: a new or empty folder, the run --resume continues, or (--overwrite) an earlier save."""
    from transformers.trainer_utils import get_last_checkpoint

    from statex_hf.outputs import check_output_folder, check_place, check_writable

    out = Path(args.out).expanduser().resolve()
    label = f"OUT {args.out}"
    if args.resume is not None and args.overwrite:
        raise StateXUserError("--resume continues OUT's run and --overwrite replaces it; give one of them")
    if isinstance(args.resume, str):
        checkpoint = Path(args.resume).expanduser()
        if not (checkpoint / "trainer_state.json").is_file():
            raise StateXUserError(
                f"--resume {args.resume}: not a Trainer checkpoint (no trainer_state.json); give a checkpoint-N folder"
            )
        if out not in checkpoint.resolve().parents:  # a new OUT for a run started elsewhere
            return check_output_folder(out, overwrite=False, inputs=inputs, label=label)
    if args.resume is not None:
        check_place(out, label, inputs)
        if args.resume is True and (not out.is_dir() or get_last_checkpoint(str(out)) is None):
            raise StateXUserError(f"--resume: {label} holds no checkpoint-N folder to resume from; drop --resume")
        check_writable(out / "checkpoint", label)
        return out
    if out.is_dir() and not args.overwrite and get_last_checkpoint(str(out)) is not None:
        raise StateXUserError(
            f"{label} already holds a training run; pass --resume to continue it, --overwrite to start over, "
            "or choose another folder"
        )
    if out.is_dir() and not any(out.iterdir()):  # an empty folder: Trainer writes into it, nothing is lost
        check_place(out, label, inputs)
        check_writable(out / "checkpoint", label)
        return out
    return check_output_folder(out, overwrite=args.overwrite, inputs=inputs, label=label)


def _lora_targets(text: str) -> list[str]:
    """``q_proj, v_proj`` -> the module names; an empty list would silently mean the family's default."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise StateXUserError(f"--lora-target-modules {text!r} names no module; give names like q_proj,v_proj")
    return names


def _check_inputs(args: argparse.Namespace, overrides: dict[str, Any]) -> None:
    from statex_hf.paths import looks_like_local_path, require_tokenizer_folder
    from statex_hf.training.data import find_data_files

    _check_model(args.model)
    if args.tokenizer is not None and looks_like_local_path(args.tokenizer):
        require_tokenizer_folder(args.tokenizer, "--tokenizer")
    find_data_files(args.data)
    if args.merge_lora and not args.lora:
        raise StateXUserError("--merge-lora merges LoRA adapters: add --lora, or drop --merge-lora")
    if args.lora and args.freeze != "none":
        raise StateXUserError(f"--lora and --freeze {args.freeze}: LoRA already freezes the base weights; give one")
    if args.streaming and args.max_tokens is None and "max_steps" not in overrides:
        raise StateXUserError("streaming data has no length: give --max-steps or --max-tokens")
    if not 0 <= args.lora_dropout < 1:
        raise StateXUserError(f"--lora-dropout {args.lora_dropout}: must be in [0, 1)")


def run(args: argparse.Namespace) -> int:
    """Check everything, then post-train; every mistake is a StateXUserError (one line, exit code 2)."""
    import statex_hf
    from statex_hf.training.posttrain import posttrain
    from statex_hf.training.recipe import recipe_training_arguments

    statex_hf.register_auto_classes()  # the model check asks transformers which model types it knows
    overrides = _training_overrides(args)
    _check_inputs(args, overrides)
    inputs = {"model": args.model, "data": args.data, **({"tokenizer": args.tokenizer} if args.tokenizer else {})}
    # Under torchrun / accelerate launch every process runs this; one decides about OUT (and replaces it),
    # so the others never see it half removed or already started by the first.
    main_process = os.environ.get("RANK", "0") == "0"
    out = _check_output(args, inputs) if main_process else Path(args.out).expanduser().resolve()
    lengths = {
        key: value
        for key, value in (("seq_len", args.seq_len), ("batch_tokens", args.batch_tokens))
        if value is not None
    }
    try:  # TrainingArguments' own checks (bf16 without a GPU, bad strategies), before anything loads
        recipe_training_arguments(str(out), max_tokens=args.max_tokens, **lengths, **overrides)
    except ValueError as err:
        raise StateXUserError(f"invalid training arguments: {str(err).strip().splitlines()[0]}") from None
    lora: bool | dict = False
    if args.lora:
        lora = {
            "r": args.lora_r,
            "alpha": args.lora_alpha,
            "dropout": args.lora_dropout,
            "train_expanded": args.lora_train_expanded,
        }
        if args.lora_target_modules is not None:
            lora["target_modules"] = _lora_targets(args.lora_target_modules)
    chunk: int | str | None = "auto"
    if args.chunked_loss_size is not None:
        chunk = args.chunked_loss_size or None
    if args.overwrite and main_process and out.exists():
        shutil.rmtree(out)  # checked above: a folder an earlier StateX save wrote
    trainer = posttrain(
        args.model,
        args.data,
        str(out),
        tokenizer=args.tokenizer,
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
        max_tokens=args.max_tokens,
        resume_from_checkpoint=args.resume,
        **lengths,
        **overrides,
    )
    if trainer.is_world_process_zero():
        state = trainer.state
        losses = [log["loss"] for log in state.log_history if "loss" in log]
        last = f", last logged loss {losses[-1]:.4f}" if losses else ""
        print(f"post-trained {state.global_step} steps{last}; saved to {args.out}")
    return 0


__all__ = ["add_parser", "run"]
