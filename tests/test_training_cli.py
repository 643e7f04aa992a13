"""``statex-hf posttrain`` and ``statex-hf demo`` from the command line."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from statex_hf.cli import main
from statex_hf.training.demo import build_source, build_tokenizer, corpus_texts, expand, source_config


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is faster than two fighting over a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_posttrain_command_trains_a_saved_model_on_jsonl_and_saves_it(tmp_path, capsys):
    tokenizer = build_tokenizer(corpus_texts(), vocab_size=300)
    config = source_config("mamba2", len(tokenizer), tokenizer.eos_token_id)
    model = expand("mamba2", config, build_source("mamba2", config))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"body": text}) + "\n" for text in corpus_texts()[:6]))
    out = tmp_path / "out"
    argv = ["posttrain", str(tmp_path / "model"), str(data), str(out), "--seq-len", "32", "--text-column", "body"]
    argv += ["--max-steps", "2", "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "1"]
    argv += ["--learning-rate", "1e-3", "--warmup-steps", "0", "--no-bf16"]
    argv += ["--freeze", "expanded", "--training-arg", "save_strategy=no", "--training-arg", "logging_steps=1"]
    assert main(argv) == 0
    assert "post-trained 2 steps, last logged loss" in capsys.readouterr().out
    trained = AutoModelForCausalLM.from_pretrained(out)
    assert trained.config.statex_layers == model.config.statex_layers
    assert trained.config.chunked_loss_size is None
    assert AutoTokenizer.from_pretrained(out).eos_token == tokenizer.eos_token
    # --freeze expanded: layer 1 (not expanded) is unchanged, layer 0 (expanded) trained.
    before, after = model.state_dict(), trained.state_dict()
    in_proj = "backbone.layers.{}.mixer.in_proj.weight"
    assert torch.equal(before[in_proj.format(1)], after[in_proj.format(1)])
    assert not torch.equal(before[in_proj.format(0)], after[in_proj.format(0)])
    assert len(json.loads((out / "trainer_state.json").read_text())["log_history"]) >= 2


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    tokenizer = build_tokenizer(corpus_texts(), vocab_size=300)
    config = source_config("gla", len(tokenizer), tokenizer.eos_token_id)
    build_source("gla", config).save_pretrained(tmp_path / "model")  # not expanded
    tokenizer.save_pretrained(tmp_path / "model")
    data = tmp_path / "docs.txt"
    data.write_text(corpus_texts()[0])
    cases = [
        ([str(tmp_path / "model"), str(tmp_path / "missing.jsonl")], "no such file or directory"),
        ([str(tmp_path / "model"), str(data), "--freeze", "expanded"], "statex_layers is empty"),
        ([str(tmp_path / "nomodel"), str(data)], "no such local folder"),
        ([str(tmp_path / "model"), str(data), "--streaming"], "streaming data has no length"),
    ]
    capsys.readouterr()
    for argv, message in cases:
        assert main(["posttrain", *argv, str(tmp_path / "out"), "--seq-len", "16", "--no-bf16"]) == 2
        err = capsys.readouterr().err
        said = [line for line in err.splitlines() if line.startswith("statex-hf")]
        assert "Traceback" not in err and len(said) == 1 and message in said[0], err[-2000:]
        assert said[0].startswith("statex-hf posttrain: error: ")


def test_demo_runs_offline_and_says_what_it_did(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run(
        [sys.executable, "-m", "statex_hf.cli", "demo", str(out)],  # the README's command, defaults
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    for family in ("gla", "mamba2"):
        said = [line for line in lines if line.startswith(f"[{family}]")]
        assert len(said) == 4, lines
        assert "expanded layers [0, 2]" in said[0] and "recurrent state" in said[0]
        assert said[1].startswith(f"[{family}] post-trained 60 steps: loss ")
        first, last = (float(x) for x in said[1].split("loss ")[1].split(" (")[0].split(" -> "))
        assert last < first - 1.0, said[1]
        assert said[2].startswith(f'[{family}] sample: "The key to the garden shed is')
        assert said[3] == f"[{family}] saved to {out / family}"
        model = AutoModelForCausalLM.from_pretrained(out / family)
        assert model.config.statex_layers == [0, 2]
        assert (out / family / "tokenizer.json").exists()
    assert lines[-3].startswith("done in ")
    assert "post-train" in result.stderr  # the progress bars
