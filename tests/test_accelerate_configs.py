"""The shipped accelerate configs and the recipe agree: FSDP, bf16, FSDP's checkpointing, 512K tokens a step.

That they really launch (two processes, the loss of one) is ``tests/test_training_distributed.py``.
"""

from __future__ import annotations

import os

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from cli_checks import assert_refused, run_cli

from statex_hf.cli import main
from statex_hf.training.accelerate_config import SHIPPED_GPU_COUNTS, accelerate_config_path
from statex_hf.training.errors import PosttrainInputError
from statex_hf.training.recipe import (
    CHECKPOINTING,
    PAPER_BATCH_TOKENS,
    PAPER_SEQ_LEN,
    plan_recipe,
    recipe_training_arguments,
)


def launcher_environment(monkeypatch, path):
    """What ``accelerate launch --config_file path`` puts in each process's environment about FSDP."""
    fsdp = load_config_from_file(path).fsdp_config
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", str(fsdp["fsdp_activation_checkpointing"]).lower())


@pytest.mark.parametrize("gpus", SHIPPED_GPU_COUNTS)
def test_each_config_is_the_papers_setup_for_its_gpu_count(gpus):
    config = load_config_from_file(accelerate_config_path(gpus))
    assert (config.distributed_type, config.num_processes, config.num_machines) == ("FSDP", gpus, 1)
    assert config.mixed_precision == "bf16" and not config.use_cpu
    fsdp = config.fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True
    assert fsdp["fsdp_activation_checkpointing"] is True and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    # Family-agnostic: no layer class named, so accelerate wraps the model's _no_split_modules.
    assert (
        fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP" and "fsdp_transformer_layer_cls_to_wrap" not in fsdp
    )
    # One 64K sequence per GPU, 512K tokens per step: the recipe fills in the accumulation for N processes.
    plan = plan_recipe(seq_len=PAPER_SEQ_LEN, processes=config.num_processes, data_rows=None, max_steps=1)
    assert (plan.micro_batch, plan.accumulation, plan.tokens_per_step) == (1, 8 // gpus, PAPER_BATCH_TOKENS)


def test_under_a_shipped_config_the_trainer_leaves_checkpointing_to_fsdp(tmp_path, monkeypatch):
    """transformers refuses the Trainer's activation checkpointing beside FSDP's own."""
    args = recipe_training_arguments(str(tmp_path))
    assert getattr(args, CHECKPOINTING)  # without the launcher: the Trainer checkpoints each block
    launcher_environment(monkeypatch, accelerate_config_path(2))
    args = recipe_training_arguments(str(tmp_path))
    assert not getattr(args, CHECKPOINTING) and args.per_device_train_batch_size == 1
    with pytest.raises(PosttrainInputError, match="drop the training argument"):
        recipe_training_arguments(str(tmp_path), **{CHECKPOINTING: True})
    # An FSDP config without FSDP's checkpointing keeps the Trainer's.
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "false")
    assert getattr(recipe_training_arguments(str(tmp_path)), CHECKPOINTING)


def test_the_command_prints_a_shipped_config_and_names_the_fix_for_another_count(capsys):
    assert main(["accelerate-config", "8"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == accelerate_config_path(8) and os.path.isfile(printed)
    assert_refused(*run_cli(capsys, "accelerate-config", "4"), "accelerate-config: error:", "--num_processes 4")
    assert_refused(*run_cli(capsys, "accelerate-config", "0"), "must be at least 1")
