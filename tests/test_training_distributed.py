"""``statex-hf posttrain`` in 2 processes (DDP and FSDP over gloo, on CPU) follows the 1-process loss curve.

The same global batch (4 sequences: 4 in one process, 2 + 2 in two), the same data order and
``num_items_in_batch`` summed over processes: the logged losses are equal. The 2-GPU version
(DDP and FSDP under ``accelerate launch``) is ``tests/gpu/test_multi_gpu.py``.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from statex_hf.training.demo import build_source, build_tokenizer, corpus_path, corpus_texts, expand, source_config

STEPS = 4


def run(model_dir, out, processes, per_device, *extra):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    command += ["--master_port", str(29_500 + os.getpid() % 1000), "-m", "statex_hf.cli"]
    command += ["posttrain", model_dir, corpus_path(), out, "--seq-len", "64", "--per-device-train-batch-size"]
    command += [str(per_device), "--gradient-accumulation-steps", "1", "--max-steps", str(STEPS), "--learning-rate"]
    command += ["1e-3", "--warmup-steps", "0", "--logging-steps", "1", "--no-bf16", "--seed", "0"]
    command += ["--training-arg", "save_strategy=no", "--training-arg", "use_cpu=true"]
    command += ["--training-arg", "ddp_backend=gloo", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("post-trained") == 1, "only the main process reports"
    with open(os.path.join(out, "trainer_state.json")) as f:
        return [log["loss"] for log in json.load(f)["log_history"] if "loss" in log]


FSDP = ["--training-arg", "fsdp=true", "--training-arg", 'fsdp_config={"transformer_layer_cls_to_wrap": ["BLOCK"]}']


@pytest.mark.parametrize("family,block", [("mamba2", "StateXMamba2Block")])
def test_two_processes_with_ddp_and_fsdp_follow_the_one_process_loss_curve(tmp_path, family, block):
    tokenizer = build_tokenizer(corpus_texts())
    torch.manual_seed(0)
    config = source_config(family, len(tokenizer), tokenizer.eos_token_id)
    model_dir = str(tmp_path / "model")
    expand(family, config, build_source(family, config)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    one = run(model_dir, str(tmp_path / "one"), 1, 4)
    assert len(one) == STEPS
    ddp = run(model_dir, str(tmp_path / "ddp"), 2, 2)
    torch.testing.assert_close(torch.tensor(ddp), torch.tensor(one), atol=1e-5, rtol=1e-5)
    # FSDP (full sharding, one unit per block, FSDP's own activation checkpointing).
    fsdp = run(model_dir, str(tmp_path / "fsdp"), 2, 2, *[a.replace("BLOCK", block) for a in FSDP])
    torch.testing.assert_close(torch.tensor(fsdp), torch.tensor(one), atol=1e-5, rtol=1e-5)
