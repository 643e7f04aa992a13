"""``statex-hf posttrain`` under ``accelerate launch`` on 2 GPUs (DDP and FSDP) trains like one GPU.

The same small expanded model, data and global batch (4 sequences: 4 on one GPU, 2 + 2 on two)
for a few steps; the logged loss of every step must match the one-GPU run. Needs 2 CUDA devices,
accelerate, and ``datasets`` (peft is not needed). A machine without ``datasets`` takes it as
wheels (``pip download --no-deps`` of datasets, pyarrow, dill, multiprocess, xxhash and whatever
``pip check`` names there), then:

    pip install --no-deps --no-build-isolation -e .
    STATEX_GPU_TESTS=1 python -P -m pytest tests/gpu/test_multi_gpu.py -q

The same DDP claim runs on CPU in CI (``tests/test_training_distributed.py``, two processes over gloo).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from statex_hf.training.demo import build_source, build_tokenizer, corpus_path, corpus_texts, expand, source_config

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
STEPS = 6
BLOCK = {"gla": "StateXGLABlock", "mamba2": "StateXMamba2Block"}


def small_expanded_model(family, path):
    tokenizer = build_tokenizer(corpus_texts())
    torch.manual_seed(0)
    config = source_config(family, len(tokenizer), tokenizer.eos_token_id)
    model = expand(family, config, build_source(family, config))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def launch(model_dir, out, processes, per_device, distributed):
    # Multicast stays off on shared hosts (the machine's NCCL_NVLS_ENABLE=0 is inherited).
    env = dict(os.environ, NCCL_NVLS_ENABLE=os.environ.get("NCCL_NVLS_ENABLE", "0"))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if distributed == "ddp":
        command += ["--multi_gpu"]
    elif distributed == "fsdp":
        command += [
            "--use_fsdp",
            "--fsdp_sharding_strategy",
            "FULL_SHARD",
            "--fsdp_auto_wrap_policy",
            "TRANSFORMER_BASED_WRAP",
            "--fsdp_transformer_layer_cls_to_wrap",
            BLOCK[os.path.basename(model_dir)],
            "--fsdp_state_dict_type",
            "FULL_STATE_DICT",
            "--fsdp_use_orig_params",
            "true",
        ]
    command += ["-m", "statex_hf.cli", "posttrain", model_dir, corpus_path(), out]
    command += ["--seq-len", "64", "--per-device-train-batch-size", str(per_device), "--gradient-accumulation-steps"]
    command += ["1", "--max-steps", str(STEPS), "--learning-rate", "1e-3", "--warmup-steps", "0"]
    command += ["--logging-steps", "1", "--no-bf16", "--seed", "0", "--training-arg", "save_strategy=no"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(os.path.join(out, "trainer_state.json")) as f:
        history = json.load(f)["log_history"]
    return [log["loss"] for log in history if "loss" in log]


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_two_gpus_with_ddp_and_fsdp_follow_the_one_gpu_loss_curve(tmp_path, family):
    model_dir = str(tmp_path / family)
    small_expanded_model(family, model_dir)
    one = launch(model_dir, str(tmp_path / "one"), 1, 4, "none")
    assert len(one) == STEPS
    for distributed in ("ddp", "fsdp"):
        two = launch(model_dir, str(tmp_path / distributed), 2, 2, distributed)
        torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=2e-3, atol=2e-3, msg=distributed)
