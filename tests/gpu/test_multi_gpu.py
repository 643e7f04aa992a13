"""``statex-hf posttrain`` under ``accelerate launch`` on GPUs, DDP and the shipped FSDP configs: like one GPU.

The same small expanded model (both families, expanded layers included), data and global batch (4
sequences: 4 on one GPU, 2 + 2 on two), a few steps, fp32 (``--mixed_precision no``, ``--no-bf16``)
so that the logged loss of every step must match the plain one-GPU run:

- 1 GPU: the shipped 1-GPU config (FSDP's code path in one process).
- 2 GPUs: DDP (``--multi_gpu``) and the shipped 2-GPU config (FSDP2, one unit per block, FSDP's
  activation checkpointing); a run resumed from the checkpoint FSDP saved at step 3 logs the same
  steps 4-6; and the shipped file as it is (bf16) trains close to the fp32 curve.

The FSDP runs go through ``tests/fsdp_on_cpu.py``, whose CPU rule changes nothing on GPUs and whose
report (``fsdp_on_cpu: rank R: FSDP, U FSDP units, B checkpointed blocks``) shows that FSDP ran. Needs
accelerate and ``datasets``; a machine without ``datasets`` takes it as wheels (datasets, dill,
multiprocess: ``benchmarks/README.md`` gives the device command). Then:

    pip install --no-deps --no-build-isolation -e .
    STATEX_GPU_TESTS=1 python -P -m pytest tests/gpu/test_multi_gpu.py -q

The same claims run on CPU in CI (``tests/test_training_distributed.py``, two processes over gloo).
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from statex_hf.training.accelerate_config import accelerate_config_path
from statex_hf.training.demo import build_source, build_tokenizer, corpus_path, corpus_texts, expand, source_config

STEPS = 6
FSDP_ON_CPU = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fsdp_on_cpu.py")
FP32 = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
PLAIN = ["--num_processes", "1", *FP32]
DDP = ["--multi_gpu", "--num_processes", "2", *FP32]


def needs_gpus(count):
    return pytest.mark.skipif(torch.cuda.device_count() < count, reason=f"needs {count} CUDA device(s)")


def fsdp(gpus, mixed_precision="no"):
    return ["--config_file", accelerate_config_path(gpus), "--mixed_precision", mixed_precision]


@pytest.fixture(scope="module", params=["gla", "mamba2"])
def model_and_one_gpu_losses(request, tmp_path_factory):
    """An expanded demo model of each family, and its loss curve on one GPU without FSDP."""
    path = str(tmp_path_factory.mktemp("models") / request.param)
    tokenizer = build_tokenizer(corpus_texts())
    torch.manual_seed(0)
    config = source_config(request.param, len(tokenizer), tokenizer.eos_token_id)
    model = expand(request.param, config, build_source(request.param, config))
    assert model.config.statex_layers, "expanded layers included"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    _, one = launch(PLAIN, path, str(tmp_path_factory.mktemp("one")), 4)
    assert len(one) == STEPS
    return path, one


def launch(launcher, model_dir, out, per_device, *extra, fp32=True):
    """``posttrain`` under ``accelerate launch LAUNCHER``: its stdout and logged losses (the checkpoint's too)."""
    # Multicast stays off on shared hosts (the machine's NCCL_NVLS_ENABLE=0 is inherited).
    env = dict(os.environ, NCCL_NVLS_ENABLE=os.environ.get("NCCL_NVLS_ENABLE", "0"))
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--main_process_port", "29533"]
    command += [FSDP_ON_CPU, "-m", "statex_hf.cli", "posttrain", model_dir, corpus_path(), out]
    command += ["--seq-len", "64", "--per-device-train-batch-size", str(per_device), "--gradient-accumulation-steps"]
    command += ["1", "--max-steps", str(STEPS), "--learning-rate", "1e-3", "--warmup-steps", "0"]
    command += ["--logging-steps", "1", "--seed", "0", *(["--no-bf16"] if fp32 else []), *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(os.path.join(out, "trainer_state.json")) as f:
        history = json.load(f)["log_history"]
    return result.stdout, [log["loss"] for log in history if "loss" in log]


def assert_fsdp_ran(stdout, processes, layers=4):
    reports = re.findall(r"fsdp_on_cpu: rank \d: FSDP, (\d+) FSDP units, (\d+) checkpointed blocks", stdout)
    assert len(reports) == processes and all(int(b) == layers for _, b in reports), stdout[-2000:]


def assert_same_curve(losses, reference, msg, tolerance=2e-3):
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference), rtol=tolerance, atol=tolerance, msg=msg)


NO_SAVES = ("--training-arg", "save_strategy=no")


@needs_gpus(1)
def test_the_one_gpu_fsdp_config_follows_the_plain_one_gpu_loss_curve(model_and_one_gpu_losses, tmp_path):
    model_dir, one = model_and_one_gpu_losses
    stdout, losses = launch(fsdp(1), model_dir, str(tmp_path / "fsdp1"), 4, *NO_SAVES)
    assert_fsdp_ran(stdout, 1)
    assert_same_curve(losses, one, "FSDP on one GPU")


@needs_gpus(2)
def test_two_gpus_with_ddp_and_fsdp_follow_the_one_gpu_loss_curve(model_and_one_gpu_losses, tmp_path):
    model_dir, one = model_and_one_gpu_losses
    _, ddp = launch(DDP, model_dir, str(tmp_path / "ddp"), 2, *NO_SAVES)
    assert_same_curve(ddp, one, "DDP")
    stdout, sharded = launch(fsdp(2), model_dir, str(tmp_path / "fsdp"), 2, "--training-arg", "save_steps=3")
    assert_fsdp_ran(stdout, 2)
    assert_same_curve(sharded, one, "FSDP")
    # A fresh run resumed from the checkpoint FSDP saved at step 3 logs the same steps 4-6.
    checkpoint = str(tmp_path / "fsdp" / "checkpoint-3")
    stdout, resumed = launch(fsdp(2), model_dir, str(tmp_path / "resumed"), 2, *NO_SAVES, "--resume", checkpoint)
    assert_fsdp_ran(stdout, 2)
    assert_same_curve(resumed, one, "FSDP resumed at step 3")
    # The shipped file as it is: bf16 weights in compute and in the gradient reduction.
    stdout, bf16 = launch(fsdp(2, "bf16"), model_dir, str(tmp_path / "bf16"), 2, *NO_SAVES, fp32=False)
    assert_fsdp_ran(stdout, 2)
    assert_same_curve(bf16, one, "FSDP in bf16", tolerance=2e-2)
