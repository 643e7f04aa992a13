"""Every bad input of issue 17 is one line on stderr, exit code 2, checked before any work, nothing changed.

One test per case: the message names the problem and the fix, and every file under the test's
folder is byte for byte what it was (a refusal writes nothing, not even an empty output folder).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_checks import assert_refused, run_cli, snapshot, unwritable_place

from statex_hf.training.demo import build_source, build_tokenizer, corpus_texts, expand, source_config

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def unwritable_folder(tmp_path):
    yield from unwritable_place(tmp_path)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Read-only inputs: a StateX model with its tokenizer, an unconverted fla GLA checkpoint, data files."""
    from source_checkpoints import write_fla_gla

    root = tmp_path_factory.mktemp("saved")
    tokenizer = build_tokenizer(corpus_texts(), vocab_size=300)
    config = source_config("mamba2", len(tokenizer), tokenizer.eos_token_id)
    model = expand("mamba2", config, build_source("mamba2", config))
    model.save_pretrained(root / "statex")
    tokenizer.save_pretrained(root / "statex")
    write_fla_gla(root / "fla-gla")
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts()[:4]))
    return {"statex": root / "statex", "fla-gla": root / "fla-gla", "docs": root / "docs.jsonl"}


@pytest.fixture
def work(tmp_path, saved, capsys) -> Path:
    """A user's folder holding copies of the inputs (so 'nothing changed' covers them too)."""
    shutil.copytree(saved["statex"], tmp_path / "model")
    shutil.copy(saved["docs"], tmp_path / "docs.jsonl")
    (tmp_path / "notes.txt").write_text("mine\n")
    capsys.readouterr()
    return tmp_path


def refused(capsys, work: Path, argv: list, *phrases: str) -> None:
    """Run ``statex-hf ARGV``: exit 2, one line holding every phrase, and nothing under ``work`` changed."""
    before = snapshot(work)
    code, err = run_cli(capsys, *argv)
    assert_refused(code, err, *phrases)
    assert snapshot(work) == before


def posttrain(work: Path, *extra) -> list:
    return ["posttrain", work / "model", work / "docs.jsonl", work / "out", "--seq-len", "32", "--no-bf16", *extra]


# ---- convert ------------------------------------------------------------------------------------


@pytest.fixture
def fla_source(work, saved) -> Path:
    shutil.copytree(saved["fla-gla"], work / "fla-gla")
    return work / "fla-gla"


def test_convert_layers_with_an_empty_entry(work, fla_source, capsys):
    argv = ["convert", "gla", fla_source, work / "o", "--layers", "0,,2"]
    refused(capsys, work, argv, "'0,,2' has an empty entry", "give indices like 0,6,12")


def test_convert_layers_listed_twice(work, fla_source, capsys):
    refused(capsys, work, ["convert", "gla", fla_source, work / "o", "--layers", "2,2"], "layer 2 is listed twice")


def test_expansion_api_refuses_a_layer_listed_twice_like_the_cli():
    from statex_hf.expansion import StateXInputError, choose_layers

    with pytest.raises(StateXInputError, match="layer 2 is listed twice"):
        choose_layers(4, layers=[2, 2])


def test_convert_an_existing_statex_checkpoint(work, capsys):
    argv = ["convert", "mamba2", work / "model", work / "o"]
    refused(capsys, work, argv, "already a StateX checkpoint", "convert the original checkpoint")


def test_convert_bad_shard_size(work, fla_source, capsys):
    argv = ["convert", "gla", fla_source, work / "o", "--max-shard-size", "5XB"]
    refused(capsys, work, argv, "--max-shard-size: `size` 5XB is not in a valid format", "5.0GB")


def test_convert_push_to_an_invalid_repo_id_writes_nothing(work, fla_source, capsys):
    argv = ["convert", "gla", fla_source, work / "o", "--push-to-hub", "bad repo!!", "--quiet"]
    refused(capsys, work, argv, "--push-to-hub 'bad repo!!' is not a valid Hub repo id", "org/name")


def test_gla_config_refuses_an_expanded_layer_with_a_smaller_state():
    from statex_hf import StateXGLAConfig

    with pytest.raises(ValueError, match="statex_num_heads=8 is not fewer than num_heads=4"):
        StateXGLAConfig(hidden_size=64, num_heads=4, statex_layers=[0], statex_num_heads=8)
    with pytest.raises(ValueError, match="would not grow"):
        StateXGLAConfig(hidden_size=64, num_heads=4, statex_layers=[0], statex_num_heads=4)
    StateXGLAConfig(hidden_size=64, num_heads=4, statex_layers=[], statex_num_heads=8)  # no expanded layer: unused


# ---- posttrain ----------------------------------------------------------------------------------


def test_posttrain_empty_data_file(work, capsys):
    (work / "empty.jsonl").write_text("")
    argv = ["posttrain", work / "model", work / "empty.jsonl", work / "out", "--max-steps", "1"]
    refused(capsys, work, argv, "empty.jsonl is empty", "give data files that hold documents")


def test_posttrain_seq_len_zero(work, capsys):
    refused(capsys, work, [*posttrain(work), "--seq-len", "0"], "--seq-len: 0 must be at least 2")


def test_posttrain_max_steps_zero(work, capsys):
    refused(capsys, work, posttrain(work, "--max-steps", "0"), "--max-steps 0: must be at least 1")


def test_posttrain_negative_learning_rate(work, capsys):
    refused(capsys, work, posttrain(work, "--learning-rate=-1e-3"), "--learning-rate -0.001: must be at least 0")


def test_posttrain_resume_without_a_checkpoint_leaves_no_folder(work, capsys):
    refused(capsys, work, posttrain(work, "--resume", "--max-steps", "1"), "holds no checkpoint-N folder", "--resume")
    assert not (work / "out").exists()


def test_posttrain_resume_from_a_folder_that_is_no_checkpoint(work, capsys):
    argv = posttrain(work, "--resume", str(work / "model"), "--max-steps", "1")
    refused(capsys, work, argv, "not a Trainer checkpoint (no trainer_state.json)", "checkpoint-N")


def test_posttrain_unwritable_output(work, capsys, unwritable_folder):
    argv = ["posttrain", work / "model", work / "docs.jsonl", unwritable_folder / "out", "--max-steps", "1"]
    refused(capsys, work, argv, "no write access", "choose a folder you can write to")


def test_posttrain_an_unconverted_fla_checkpoint(work, fla_source, capsys):
    argv = ["posttrain", fla_source, work / "docs.jsonl", work / "out", "--max-steps", "1"]
    refused(
        capsys, work, argv, "unconverted fla GLA checkpoint", f"convert it first: statex-hf convert gla {fla_source}"
    )


def test_posttrain_truncated_safetensors(work, capsys):
    weights = work / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    refused(capsys, work, posttrain(work, "--max-steps", "1"), "corrupt or truncated", "save the model again")


def test_posttrain_a_missing_local_model_is_answered_without_the_hub(work, capsys, monkeypatch):
    """`out/no-such-model` while out/ exists: a local path, answered at once (no Hub request, no retries)."""
    monkeypatch.chdir(work)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    (work / "runs").mkdir()
    refused(capsys, work, ["posttrain", "runs/no-such-model", "docs.jsonl", "pt"], "runs/no-such-model: no such local")


def test_posttrain_into_a_folder_of_user_files(work, capsys):
    refused(capsys, work, posttrain(work)[:3] + [work] + ["--overwrite"], "contains the model", "choose a new folder")
    (work / "out").mkdir()
    (work / "out" / "train.py").write_text("mine\n")
    refused(capsys, work, posttrain(work, "--overwrite"), "is not a saved StateX model", "train.py")


def test_posttrain_into_the_model_itself(work, capsys):
    argv = ["posttrain", work / "model", work / "docs.jsonl", work / "model", "--overwrite"]
    refused(capsys, work, argv, "is the model itself")


def test_posttrain_unknown_training_arg(work, capsys):
    refused(capsys, work, posttrain(work, "--training-arg", "bogus=1"), "bogus: not a transformers.TrainingArguments")


def test_posttrain_bf16_without_a_gpu(work, capsys):
    if torch.cuda.is_available():
        pytest.skip("bf16 is valid on this machine")
    argv = posttrain(work, "--bf16", "--max-steps", "1")
    refused(capsys, work, argv, "invalid training arguments", "bf16")


def test_posttrain_streaming_without_a_length(work, capsys):
    refused(capsys, work, posttrain(work, "--streaming"), "streaming data has no length", "--max-steps")


def test_posttrain_merge_lora_without_lora(work, capsys):
    refused(capsys, work, posttrain(work, "--merge-lora"), "--merge-lora merges LoRA adapters", "add --lora")


def test_posttrain_tokenizer_folder_without_a_tokenizer(work, capsys):
    (work / "empty").mkdir()
    argv = posttrain(work, "--tokenizer", work / "empty")
    refused(capsys, work, argv, f"--tokenizer {work / 'empty'} holds no tokenizer files")


def test_posttrain_lora_target_that_names_no_module(work, capsys):
    # Known only once the model is loaded: its progress bars come first, then one line and nothing written.
    before = snapshot(work)
    code, err = run_cli(capsys, *posttrain(work, "--lora", "--lora-target-modules", "in_proj,nosuch"))
    assert code == 2 and not any("Traceback" in line for line in err), err
    assert_refused(code, err[-1:], "--lora-target-modules 'nosuch'", "choose from in_proj")
    assert snapshot(work) == before


def test_posttrain_lora_target_modules_with_no_name(work, capsys):
    argv = posttrain(work, "--lora", "--lora-target-modules", ",")
    refused(capsys, work, argv, "--lora-target-modules ',' names no module")


def test_posttrain_own_run_needs_resume_or_overwrite_then_both_work(work, capsys):
    steps = ["--max-steps", "2", "--per-device-train-batch-size", "1", "--gradient-accumulation-steps", "1"]
    steps += ["--save-steps", "1", "--save-total-limit", "1", "--logging-steps", "1", "--warmup-steps", "0"]
    assert run_cli(capsys, *posttrain(work, *steps))[0] == 0
    refused(capsys, work, posttrain(work, *steps), "already holds a training run", "--resume", "--overwrite")
    code, _ = run_cli(capsys, *posttrain(work, "--resume", *steps[:-4], "--max-steps", "3", "--save-steps", "1"))
    assert code == 0
    assert json.loads((work / "out" / "trainer_state.json").read_text())["global_step"] == 3
    assert run_cli(capsys, *posttrain(work, "--overwrite", *steps))[0] == 0
    assert json.loads((work / "out" / "trainer_state.json").read_text())["global_step"] == 2


# ---- eval ---------------------------------------------------------------------------------------


def evaluate(work: Path, *extra) -> list:
    return ["eval", "mqar", work / "model", "--num-pairs", "2", "--lengths", "32", "--samples", "1", *extra]


def test_eval_unwritable_output_fails_before_the_evaluation(work, capsys, unwritable_folder):
    refused(capsys, work, evaluate(work, "--output", unwritable_folder / "r.json"), "no write access")


def test_eval_output_that_is_a_user_file(work, capsys):
    argv = evaluate(work, "--output", work / "notes.txt")
    refused(capsys, work, argv, "--output", "is not an eval results file", "choose another file name")


def test_eval_plot_that_is_a_user_image(work, capsys):
    (work / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(256))
    argv = evaluate(work, "--output", work / "r.json", "--plot", work / "photo.png")
    refused(capsys, work, argv, "--plot", "is not a figure an eval drew")


def test_eval_output_that_is_a_folder(work, capsys):
    refused(capsys, work, evaluate(work, "--output", work / "model"), "is a folder; give a file path")


def test_eval_plot_format_matplotlib_cannot_write(work, capsys):
    argv = evaluate(work, "--output", work / "r.json", "--plot", work / "fig.docx")
    refused(capsys, work, argv, "matplotlib cannot write .docx files", "use .png")


def test_eval_cuda_device_without_a_gpu(work, capsys):
    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    refused(capsys, work, evaluate(work, "--output", work / "r.json", "--device", device), "CUDA GPU", "--device")


@pytest.mark.parametrize("device", ["meta", "xpu"])
def test_eval_device_that_cannot_run_the_model(work, capsys, device):
    if device == "xpu" and torch.xpu.is_available():
        pytest.skip("this machine has an XPU")
    argv = evaluate(work, "--output", work / "r.json", "--device", device)
    refused(capsys, work, argv, f"--device {device}", "use --device cpu")


def test_eval_device_that_is_not_a_device(work, capsys):
    argv = evaluate(work, "--output", work / "r.json", "--device", "gpu")
    refused(capsys, work, argv, "--device 'gpu' is not a torch device", "cuda")


def test_eval_truncated_safetensors(work, capsys):
    weights = work / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    argv = evaluate(work, "--output", work / "r.json")
    refused(capsys, work, argv, "corrupt or truncated", "download or save the model again")


def test_eval_model_without_a_tokenizer(work, capsys):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (work / "model" / name).unlink(missing_ok=True)
    refused(capsys, work, evaluate(work, "--output", work / "r.json"), "has no tokenizer files", "pass --tokenizer")


def test_eval_a_missing_local_model_is_answered_without_the_hub(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    (work / "runs").mkdir()
    argv = ["eval", "niah", "runs/no-such-model", "--output", "r.json"]
    refused(capsys, work, argv, "MODEL runs/no-such-model: no such local folder")


def test_eval_replaces_its_own_earlier_results(tmp_path, capsys):
    from eval_fixtures import tiny_llama, word_tokenizer

    tokenizer = word_tokenizer()
    tiny_llama(len(tokenizer)).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    argv = ["eval", "mqar", tmp_path / "llama", "--num-pairs", "2", "--lengths", "32", "--samples", "1"]
    argv += ["--output", tmp_path / "r.json", "--no-progress"]
    assert run_cli(capsys, *argv)[0] == 0
    first = (tmp_path / "r.png").read_bytes()
    assert run_cli(capsys, *argv, "--seed", "1")[0] == 0
    assert json.loads((tmp_path / "r.json").read_text())["seed"] == 1 and (tmp_path / "r.png").read_bytes()
    assert first[:8] == b"\x89PNG\r\n\x1a\n"


# ---- demo ---------------------------------------------------------------------------------------


def test_demo_into_a_file(work, capsys):
    refused(capsys, work, ["demo", work / "notes.txt"], "notes.txt is a file, not a folder")


def test_demo_seq_len_one(work, capsys):
    refused(capsys, work, ["demo", work / "d", "--seq-len", "1"], "--seq-len: 1 must be at least 2")


def test_demo_negative_steps(work, capsys):
    refused(capsys, work, ["demo", work / "d", "--steps", "-5"], "--steps: -5 must be at least 1")


def test_demo_output_holding_user_files_and_its_own_earlier_output(work, capsys):
    (work / "d" / "gla").mkdir(parents=True)
    (work / "d" / "gla" / "notes.md").write_text("mine\n")
    refused(capsys, work, ["demo", work / "d", "--family", "gla", "--overwrite"], "is not a saved StateX model")
    shutil.rmtree(work / "d" / "gla")
    shutil.copytree(work / "model", work / "d" / "gla")  # what an earlier demo wrote: a StateX save
    refused(capsys, work, ["demo", work / "d", "--family", "gla"], "already exists", "pass --overwrite")


# ---- the command line starts without torch ------------------------------------------------------

# The console script `statex-hf`, as pip writes it, reporting at exit which heavy packages were loaded.
CONSOLE_SCRIPT = """
import atexit, sys
heavy = ("torch", "transformers", "huggingface_hub", "datasets", "safetensors")
atexit.register(lambda: print("loaded:", sorted({m.split(".")[0] for m in sys.modules} & set(heavy)), file=sys.stderr))
sys.argv = [sys.argv[1], *sys.argv[2:]]
from statex_hf.cli import main
sys.exit(main())
"""
QUICK_ANSWERS = [
    ["--help"],
    ["convert", "--help"],
    ["convert", "gla", "--help"],
    ["convert", "gla", "src", "out", "--layers", "0,,2"],
    ["demo", "--steps", "-5"],
    ["eval", "niah", "M", "--lengths", "4x"],
    ["posttrain", "m", "d", "o", "--seq-len", "0"],
]


@pytest.mark.parametrize("argv", QUICK_ANSWERS)
def test_help_and_argument_errors_load_neither_torch_nor_transformers(argv):
    script = str(Path(sys.executable).with_name("statex-hf"))
    result = subprocess.run(
        [sys.executable, "-c", CONSOLE_SCRIPT, script, *argv], capture_output=True, text=True, timeout=120
    )
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "loaded: []", result.stderr[-2000:]
    assert result.returncode == (0 if "--help" in argv else 2)
    assert len(lines) == (1 if "--help" in argv else 2), lines  # the one-line error, then the report


def test_python_m_statex_hf_cli_starts_without_torch():
    """``python -m statex_hf.cli`` (what accelerate launch runs) is the command line too."""
    argv = ["-X", "importtime", "-m", "statex_hf.cli", "convert", "gla", "--help"]
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: statex-hf convert gla" in result.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time")}
    assert "statex_hf.families" in imported  # the report covers the command's own imports
    assert not {name for name in imported if name.split(".")[0] in ("torch", "transformers")}


def test_console_script_evaluates_a_statex_model(saved, tmp_path):
    """The console script registers the StateX classes itself before it loads a model (not at import)."""
    script = str(Path(sys.executable).with_name("statex-hf"))
    argv = ["eval", "mqar", str(saved["statex"]), "--num-pairs", "2", "--lengths", "32", "--samples", "1"]
    argv += ["--output", str(tmp_path / "r.json"), "--no-plot", "--no-progress"]
    result = subprocess.run(
        [sys.executable, "-c", CONSOLE_SCRIPT, script, *argv], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["task"] == "mqar"
