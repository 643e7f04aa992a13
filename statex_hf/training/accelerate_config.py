"""The ``accelerate`` config files shipped for the paper's recipe, and ``statex-hf accelerate-config N``.

``statex_hf/training/accelerate_configs/fsdp_{1,2,8}gpu.yaml``: FSDP2 with one unit per block (the
model's ``_no_split_modules``, so one file serves both families), FSDP's own activation checkpointing,
bf16, a full state dict. They hold nothing of the recipe's batch: ``posttrain`` sets one sequence per
GPU and the gradient accumulation for 524,288 tokens a step from the number of processes, and turns
the Trainer's own checkpointing off where the launcher's FSDP checkpoints (``recipe.training_arguments``).

    accelerate launch --config_file "$(statex-hf accelerate-config 8)" -m statex_hf.cli posttrain MODEL DATA OUT

Another GPU count takes any of the files with ``--num_processes N`` on the ``accelerate launch`` line.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from statex_hf.errors import StateXUserError

CONFIG_DIR = Path(__file__).with_name("accelerate_configs")
SHIPPED_GPU_COUNTS = (1, 2, 8)


def accelerate_config_path(num_gpus: int) -> str:
    """The shipped FSDP config file for ``num_gpus`` GPUs of one machine."""
    if num_gpus not in SHIPPED_GPU_COUNTS:
        shipped = ", ".join(map(str, SHIPPED_GPU_COUNTS))
        raise StateXUserError(
            f"no accelerate config is shipped for {num_gpus} GPUs (shipped: {shipped}); "
            f"take the 8-GPU one and set the count on the launch line: accelerate launch --config_file "
            f'"$(statex-hf accelerate-config 8)" --num_processes {num_gpus} ...'
        )
    return str(CONFIG_DIR / f"fsdp_{num_gpus}gpu.yaml")


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str, argv: Sequence[str] = ()) -> None:
    """``statex-hf accelerate-config N``."""
    from statex_hf.cli import at_least, set_command

    p = subparsers.add_parser(
        name,
        help=help_text,
        description="Print the path of the accelerate config file shipped for the paper's post-training recipe "
        'on N GPUs of one machine, for `accelerate launch --config_file "$(statex-hf accelerate-config N)" '
        "-m statex_hf.cli posttrain ...`.",
    )
    p.add_argument("gpus", type=at_least(1), help=f"number of GPUs: {', '.join(map(str, SHIPPED_GPU_COUNTS))}")
    set_command(p, run)


def run(args: argparse.Namespace) -> int:
    print(accelerate_config_path(args.gpus))
    return 0


__all__ = ["CONFIG_DIR", "SHIPPED_GPU_COUNTS", "accelerate_config_path", "add_parser", "run"]
