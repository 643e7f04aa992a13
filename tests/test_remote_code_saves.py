"""Every save of a StateX model is a self-contained Hub repo: the model's code is written beside the weights.

``save_pretrained`` of a built or loaded model, ``Trainer.save_model`` and each ``checkpoint-N``,
``statex-hf posttrain``'s output and its ``--merge-lora`` output all load with
``trust_remote_code=True`` in a process where ``import statex_hf`` fails, and give the package's
logits exactly. (Pushes to the Hub: tests/test_hub.py.)
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import build
from transformers import AutoConfig, AutoModelForCausalLM
from without_statex_hf import assert_self_contained, package_logits, remote_code_logits

from statex_hf.cli import main
from statex_hf.training import posttrain

EXPANDED = [("gla", [0]), ("mamba2", [1])]


# Tiny tensors: one thread is faster than two fighting over a shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def documents(n: int = 24) -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(6, 20, (n,), generator=generator).tolist()
    return [[1, *torch.randint(3, 60, (length,), generator=generator).tolist()] for length in lengths]


def code_files(folder) -> set[str]:
    return {p.name for p in folder.iterdir() if p.suffix == ".py"}


@pytest.mark.parametrize("family,statex_layers", EXPANDED)
def test_save_pretrained_of_a_built_and_of_a_loaded_model_stands_alone(tmp_path, family, statex_layers):
    build(family, statex_layers=statex_layers).save_pretrained(tmp_path / "built")
    AutoModelForCausalLM.from_pretrained(tmp_path / "built").save_pretrained(tmp_path / "loaded")
    for folder in ("built", "loaded"):
        config = json.loads((tmp_path / folder / "config.json").read_text())
        modules = {ref.split(".")[0] for ref in config["auto_map"].values()}
        assert {f"{m}.py" for m in modules} <= code_files(tmp_path / folder)
    assert_self_contained([tmp_path / "built", tmp_path / "loaded"], tmp_path)


def test_saving_a_config_alone_writes_the_code_it_names(tmp_path):
    config = build("gla", statex_layers=[0]).config
    config.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert {f"{ref.split('.')[0]}.py" for ref in auto_map.values()} <= code_files(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).statex_layers == [0]


def test_trainer_checkpoints_and_the_final_model_stand_alone(tmp_path):
    from datasets import Dataset

    out = tmp_path / "pt"
    posttrain(
        build("mamba2", statex_layers=[1]).train(),
        Dataset.from_dict({"input_ids": documents()}),
        str(out),
        seq_len=16,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=2,
        warmup_steps=0,
        save_strategy="steps",
        save_steps=1,
        bf16=False,
    )
    folders = [out / "checkpoint-1", out / "checkpoint-2", out]
    assert_self_contained(folders, tmp_path)
    # Trained weights: the checkpoints differ from each other.
    assert not torch.equal(package_logits(folders[0]), package_logits(folders[1]))


def test_posttrain_command_output_and_its_merged_lora_model_stand_alone(tmp_path, capsys):
    build("gla", statex_layers=[0]).save_pretrained(tmp_path / "model")
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"input_ids": doc}) + "\n" for doc in documents()))
    common = ["--seq-len", "16", "--max-steps", "2", "--per-device-train-batch-size", "2"]
    common += ["--gradient-accumulation-steps", "1", "--warmup-steps", "0", "--no-bf16"]
    common += ["--training-arg", "save_strategy=no", "--learning-rate", "1e-2"]
    model, out, lora_out = str(tmp_path / "model"), tmp_path / "full", tmp_path / "lora"
    assert main(["posttrain", model, str(data), str(out), *common]) == 0
    assert main(["posttrain", model, str(data), str(lora_out), *common, "--lora", "--merge-lora"]) == 0
    capsys.readouterr()
    assert (lora_out / "adapter_config.json").is_file()  # the adapter beside the merged model
    assert_self_contained([out, lora_out / "merged"], tmp_path)


def test_a_model_loaded_from_its_saved_code_saves_a_folder_that_loads_again(tmp_path):
    build("gla", statex_layers=[0]).save_pretrained(tmp_path / "built")
    (logits,) = remote_code_logits([tmp_path / "built"], tmp_path / "remote", resave=True)
    assert torch.equal(logits, package_logits(tmp_path / "built"))
    assert code_files(tmp_path / "built") <= code_files(tmp_path / "remote" / "resaved-0")
