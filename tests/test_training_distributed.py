"""``statex-hf posttrain`` in 2 processes on CPU (gloo) follows the 1-process loss curve: DDP, FSDP, and
FSDP launched from the shipped 2-GPU accelerate config, from whose checkpoint a resumed run goes on.

The same global batch (4 sequences: 4 in one process, 2 + 2 in two), the same data order and
``num_items_in_batch`` summed over processes: the logged losses are equal. accelerate applies FSDP
only on GPUs (on CPU it silently wraps DDP instead); the FSDP runs here go through
``tests/fsdp_on_cpu.py``, which lifts that one rule and reports the FSDP units and checkpointed blocks
it made, which the tests check. The 2-GPU version is ``tests/gpu/test_multi_gpu.py``.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from free_port import free_port

from statex_hf.training import posttrain
from statex_hf.training.accelerate_config import accelerate_config_path
from statex_hf.training.demo import build_source, build_tokenizer, corpus_path, corpus_texts, expand, source_config

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 4
LAYERS = 4  # the demo model's blocks
FSDP_ON_CPU = os.path.join(os.path.dirname(__file__), "fsdp_on_cpu.py")


def expanded_demo_model(family, path):
    tokenizer = build_tokenizer(corpus_texts())
    torch.manual_seed(0)
    config = source_config(family, len(tokenizer), tokenizer.eos_token_id)
    model = expand(family, config, build_source(family, config))
    assert model.config.num_hidden_layers == LAYERS and model.config.statex_layers
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def one_process(model_dir, out):
    """The reference: the whole global batch (4 sequences) in this process."""
    trainer = posttrain(
        model_dir, corpus_path(), out, seq_len=64, per_device_train_batch_size=4, gradient_accumulation_steps=1,
        max_steps=STEPS, learning_rate=1e-3, warmup_steps=0, logging_steps=1, bf16=False, seed=0,
        use_cpu=True, save=False, save_strategy="no", show_recipe=False,
    )  # fmt: skip
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


def launched(launcher, model_dir, out, *extra):
    """``posttrain`` under ``launcher`` in 2 processes of 2 sequences; its stdout and logged losses."""
    command = [*launcher, "posttrain", model_dir, corpus_path(), out, "--seq-len", "64"]
    command += ["--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "1"]
    command += ["--max-steps", str(STEPS), "--learning-rate", "1e-3", "--warmup-steps", "0", "--logging-steps", "1"]
    command += ["--no-bf16", "--seed", "0", "--training-arg", "use_cpu=true", "--training-arg", "ddp_backend=gloo"]
    command += [*extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("post-trained") == 1, "only the main process reports"
    with open(os.path.join(out, "trainer_state.json")) as f:
        return result.stdout, [log["loss"] for log in json.load(f)["log_history"] if "loss" in log]


def torchrun(fsdp_on_cpu=False):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", free_port()]
    return [*command, *([FSDP_ON_CPU] if fsdp_on_cpu else []), "-m", "statex_hf.cli"]


def accelerate_launch(config_file):
    """The README's ``accelerate launch --config_file``, turned to CPU: fp32, gloo (``posttrain``'s flags)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file]
    command += ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", free_port()]
    return [*command, FSDP_ON_CPU, "-m", "statex_hf.cli"]


def assert_fsdp_ran(stdout):
    """Both processes sharded the model, with one checkpointed FSDP unit per block."""
    reports = re.findall(r"fsdp_on_cpu: rank \d: FSDP, (\d+) FSDP units, (\d+) checkpointed blocks", stdout)
    assert len(reports) == 2 and all(int(units) > LAYERS and int(blocks) == LAYERS for units, blocks in reports), stdout


NO_SAVES = ("--training-arg", "save_strategy=no")
FSDP = ["--training-arg", "fsdp=true", "--training-arg", 'fsdp_config={"transformer_layer_cls_to_wrap": ["BLOCK"]}']


@pytest.mark.parametrize("family,block", [("mamba2", "StateXMamba2Block")])
def test_two_processes_with_ddp_and_fsdp_follow_the_one_process_loss_curve(tmp_path, family, block):
    model_dir = expanded_demo_model(family, str(tmp_path / "model"))
    one = one_process(model_dir, str(tmp_path / "one"))
    assert len(one) == STEPS
    _, ddp = launched(torchrun(), model_dir, str(tmp_path / "ddp"), *NO_SAVES)
    torch.testing.assert_close(torch.tensor(ddp), torch.tensor(one), atol=1e-5, rtol=1e-5)
    # FSDP from TrainingArguments (full sharding, one unit per block, FSDP's own activation checkpointing).
    fsdp_args = [a.replace("BLOCK", block) for a in FSDP]
    stdout, fsdp = launched(torchrun(fsdp_on_cpu=True), model_dir, str(tmp_path / "fsdp"), *NO_SAVES, *fsdp_args)
    assert_fsdp_ran(stdout)
    torch.testing.assert_close(torch.tensor(fsdp), torch.tensor(one), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gla"])
def test_the_shipped_config_launches_fsdp_like_one_process_and_resumes_from_its_checkpoint(tmp_path, family):
    """The 2-GPU file names no layer class: the blocks come from the model's ``_no_split_modules``."""
    model_dir = expanded_demo_model(family, str(tmp_path / "model"))
    one = one_process(model_dir, str(tmp_path / "one"))
    launch = accelerate_launch(accelerate_config_path(2))
    saves = ("--training-arg", "save_steps=2")
    stdout, fsdp = launched(launch, model_dir, str(tmp_path / "fsdp"), *saves)
    assert_fsdp_ran(stdout)
    torch.testing.assert_close(torch.tensor(fsdp), torch.tensor(one), atol=1e-5, rtol=1e-5)
    # A fresh run resumed from the checkpoint FSDP saved at step 2 logs the same steps 3 and 4.
    checkpoint = str(tmp_path / "fsdp" / "checkpoint-2")
    assert os.path.isfile(os.path.join(checkpoint, "model.safetensors"))  # a full state dict: an ordinary folder
    stdout, resumed = launched(launch, model_dir, str(tmp_path / "resumed"), *saves, "--resume", checkpoint)
    assert_fsdp_ran(stdout)
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(one), atol=1e-5, rtol=1e-5)
