"""The post-training recipe at every scale: the paper's numbers at the paper's scale, sane ones on small data.

A run prints its recipe before training; a step larger than the data or a warm-up as long as the run
is a warning that names the flag to change; ``--help`` shows every default.
"""

from __future__ import annotations

import argparse
import json
import logging

import pytest
import torch
from datasets import Dataset
from tiny_models import VOCAB, build

from statex_hf.cli import build_parser, main
from statex_hf.training import posttrain
from statex_hf.training.recipe import PAPER_BATCH_TOKENS, plan_recipe, recipe_training_arguments

PAPER_TOKENS = 10_000_000_000  # 10B tokens of 64K-token sequences, 8 GPUs (the paper, arXiv:2509.22630)
PAPER_ROWS = PAPER_TOKENS // 65_536 + 1


# Tiny tensors: one thread is faster than two fighting over a shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def documents(n: int, length: int = 16) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    return Dataset.from_dict({"input_ids": torch.randint(3, VOCAB, (n, length), generator=generator).tolist()})


@pytest.mark.parametrize("processes,accumulation", [(8, 1), (1, 8)])
def test_at_the_papers_scale_the_plan_is_the_papers_recipe(processes, accumulation):
    plan = plan_recipe(seq_len=65_536, processes=processes, max_tokens=PAPER_TOKENS, data_rows=PAPER_ROWS)
    assert (plan.tokens_per_step, plan.accumulation, plan.micro_batch) == (524_288, accumulation, 1)
    assert (plan.steps, plan.warmup_steps, plan.learning_rate, plan.lr_scheduler) == (19_073, 1000, 3e-4, "cosine")
    assert plan.fitted == () and plan.warnings == ()
    assert "524,288 tokens per step" in plan.lines()[0] and "1,000 warm-up steps" in plan.lines()[1]


def test_training_arguments_at_the_papers_scale(tmp_path):
    args = recipe_training_arguments(str(tmp_path), max_tokens=PAPER_TOKENS, data_rows=PAPER_ROWS)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (1, 8)  # one process
    assert (args.max_steps, args.warmup_steps, args.learning_rate) == (19_073, 1000, 3e-4)
    assert (args.adam_beta1, args.adam_beta2, args.weight_decay, args.max_grad_norm) == (0.9, 0.95, 0.1, 1.0)


def test_a_short_run_on_small_data_gets_a_step_its_data_holds_and_a_warmup_it_ends():
    """The issue's run: 128-token sequences, 5 steps; the paper's step was 4,096 sequences, warm-up 1000 steps."""
    plan = plan_recipe(seq_len=128, max_steps=5, data_rows=41)
    assert plan.accumulation == 8 and plan.tokens_per_step == 1024  # 5 steps x 8 sequences: one pass over 41
    assert plan.warmup_steps == 0 and plan.steps == 5
    assert len(plan.fitted) == 2 and plan.warnings == ()
    assert "instead of the paper's 524,288" in plan.fitted[0] and "instead of the paper's 1,000" in plan.fitted[1]
    # Without a step count, a step is at most the data; warm-up at most a tenth of the epochs' steps.
    plan = plan_recipe(seq_len=128, data_rows=41, micro_batch=2)
    assert (plan.accumulation, plan.steps, plan.warmup_steps) == (20, 6, 0)  # 21 micro-batches: 2 steps an epoch
    # Data that holds the paper's step keeps it.
    assert plan_recipe(seq_len=128, max_steps=5, data_rows=5 * 4096).tokens_per_step == PAPER_BATCH_TOKENS


def test_choices_that_make_no_sense_are_kept_and_warned_about():
    plan = plan_recipe(seq_len=128, batch_tokens=PAPER_BATCH_TOKENS, warmup_steps=1000, max_steps=5, data_rows=41)
    assert (plan.accumulation, plan.warmup_steps) == (4096, 1000) and plan.fitted == ()
    step, run = plan.warnings
    assert step.startswith("one optimizer step (524,288 tokens) is more than the data (5,248 tokens)")
    assert "--batch-tokens" in step
    assert run.startswith("warm-up (1,000 steps) is as long as the run (5 steps)") and "--warmup-steps" in run
    # The same from the gradient accumulation, and from a warm-up given as a fraction.
    assert plan_recipe(seq_len=128, accumulation=50, data_rows=41).warnings[0].startswith("one optimizer step")
    assert plan_recipe(seq_len=128, warmup_steps=0.1, max_steps=20, data_rows=800).warmup_steps == 2


def test_posttrain_prints_the_recipe_it_runs_and_learns_at_the_papers_lr(tmp_path, capsys):
    net = build("gla", statex_layers=[0]).train()
    trainer = posttrain(net, documents(40), str(tmp_path), seq_len=16, max_steps=4, logging_steps=1, bf16=False)
    out = capsys.readouterr().out
    recipe = [line for line in out.splitlines() if line.startswith("recipe:")]
    assert recipe == ["recipe: 160 tokens per step = 16-token sequences x 1 per micro-batch x 1 process x 10 "
                      "micro-batches accumulated"]  # fmt: skip
    assert "4 steps = 640 tokens (1.00 passes over 640 tokens of data)" in out
    assert trainer.args.gradient_accumulation_steps == 10 and trainer.state.max_steps == 4
    # No warm-up left in a 4-step run: the first step trains at the paper's peak learning rate.
    rates = [log["learning_rate"] for log in trainer.state.log_history if "learning_rate" in log]
    assert rates[0] == pytest.approx(3e-4)


def test_posttrain_over_epochs_runs_the_steps_it_printed(tmp_path, capsys):
    trainer = posttrain(
        build("mamba2", statex_layers=[1]).train(),
        documents(12),
        str(tmp_path),
        seq_len=16,
        per_device_train_batch_size=2,
        num_train_epochs=2,
        save_strategy="no",
        bf16=False,
    )
    assert "  2 steps = 384 tokens (2.00 passes over 192 tokens of data)" in capsys.readouterr().out
    assert trainer.state.global_step == trainer.state.max_steps == 2


def test_the_command_prints_the_recipe_and_warns_when_a_step_is_more_than_the_data(tmp_path, capsys, caplog):
    build("gla", statex_layers=[0]).save_pretrained(tmp_path / "model")
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"input_ids": row}) + "\n" for row in documents(6)["input_ids"]))
    argv = ["posttrain", str(tmp_path / "model"), str(data), str(tmp_path / "out"), "--seq-len", "16"]
    argv += ["--batch-tokens", "1024", "--max-steps", "2", "--warmup-steps", "2", "--no-bf16"]
    argv += ["--training-arg", "save_strategy=no"]
    with caplog.at_level(logging.WARNING, logger="statex_hf"):
        assert main(argv) == 0
    assert "recipe: 1,024 tokens per step" in capsys.readouterr().out
    assert [r.getMessage() for r in caplog.records if r.name.startswith("statex_hf")] == [
        "one optimizer step (1,024 tokens) is more than the data (96 tokens): every step passes over all of it; "
        "lower --batch-tokens or --gradient-accumulation-steps, or add data",
        "warm-up (2 steps) is as long as the run (2 steps): the learning rate never reaches 0.0003; "
        "lower --warmup-steps",
    ]


def test_help_shows_every_default():
    parser = build_parser("posttrain", ["--help"])  # posttrain's parser in full, as --help builds it
    posttrain_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
        "posttrain"
    ]
    options = [a for a in posttrain_parser._actions if a.option_strings and a.nargs != 0 and a.dest != "help"]
    assert len(options) > 20
    missing = [a.option_strings[0] for a in options if "default" not in (a.help or "")]
    assert missing == []
