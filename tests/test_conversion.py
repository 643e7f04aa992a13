"""``statex-hf convert``: real source formats in, a loadable StateX folder out, and bad input refused cleanly."""

from __future__ import annotations

import ast
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from source_checkpoints import (
    VOCAB,
    write_fla_gla,
    write_mamba_ssm,
    write_mistral_mamba2,
    write_tokenizer,
    write_transformers_mamba2,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

import statex_hf  # noqa: F401 - registers the Auto classes
from statex_hf.cli import main
from statex_hf.conversion.writer import atomic_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return {
        "gla": (root / "gla", write_fla_gla(root / "gla")),
        "gla-sharded": (root / "gla-sharded", write_fla_gla(root / "gla-sharded", max_shard_size="100KB")),
        "gla-bin": (root / "gla-bin", write_fla_gla(root / "gla-bin", bin_format=True)),
        "mamba2": (root / "mamba2", write_transformers_mamba2(root / "mamba2")),
        "mamba-ssm": (root / "mamba-ssm", write_mamba_ssm(root / "mamba-ssm")),
        "mistral": (root / "mistral", write_mistral_mamba2(root / "mistral", num_layers=2)),
        "mistral-unprefixed": (
            root / "mistral-unprefixed",
            write_mistral_mamba2(root / "mistral-unprefixed", prefixed=False, num_layers=2),
        ),
    }


# Formats that ship no transformers tokenizer: the conversion needs --tokenizer.
NEEDS_TOKENIZER = ("mamba-ssm", "mistral", "mistral-unprefixed")


def convert(*argv: str) -> int:
    return main(["convert", *map(str, argv), "--quiet"])


def logits(model, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids).logits


# ---- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source", ["gla", "gla-sharded", "gla-bin", "mamba2", "mamba-ssm", "mistral", "mistral-unprefixed"]
)
def test_unexpanded_conversion_reproduces_the_source_logits(sources, tmp_path, source):
    folder, reference = sources[source]
    family = "gla" if source.startswith("gla") else "mamba2"
    extra = ["--tokenizer", sources["gla"][0]] if source in NEEDS_TOKENIZER else []
    assert convert(family, folder, tmp_path / "out", "--layers", "", *extra) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(model).__name__ == ("StateXGLAForCausalLM" if family == "gla" else "StateXMamba2ForCausalLM")
    assert (logits(model) - logits(reference)).abs().max() <= TOL


def test_gla_conversion_keeps_every_other_tensor_bit_identical(sources, tmp_path):
    folder, reference = sources["gla"]
    assert convert("gla", folder, tmp_path / "out", "--every", "2") == 0
    out = load_file(tmp_path / "out" / "model.safetensors")
    source = reference.state_dict()
    changed = {
        name for name in out if not (out[name].shape == source[name].shape and torch.equal(out[name], source[name]))
    }
    expected = {n for n in source if n.split(".")[2:3] in (["0"], ["2"]) and n.split(".")[3].startswith("attn")}
    assert changed == expected
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "statex_gla" and config["statex_layers"] == [0, 2]


def test_expanded_mamba_ssm_checkpoint_loads_and_generates(sources, tmp_path):
    folder, _ = sources["mamba-ssm"]
    args = ["--state-size", "16", "--every", "1", "--tokenizer", sources["gla"][0], "--dtype", "bfloat16"]
    assert convert("mamba2", folder, tmp_path / "out", *args) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.statex_layers == [0, 1, 2, 3] and model.config.statex_state_size == 16
    assert model.config.vocab_size == VOCAB and model.config.tie_word_embeddings
    assert model.dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert model.config.eos_token_id == tokenizer.eos_token_id == 2  # special tokens taken from the tokenizer
    out = model.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)


def test_codestral_layout_with_eight_groups_expands_and_zero_init_keeps_the_logits(sources, tmp_path):
    """Mamba-Codestral's layout, 8 groups of B/C: every layer grows N 128 -> 256 inside each group.

    With ``--init zero`` the new B/C rows are zero, so the expanded model computes exactly what
    transformers' Mamba2 computes on the source weights: any row put in the wrong group would show.
    """
    folder, reference = sources["mistral"]
    args = ["--every", "1", "--state-size", "256", "--init", "zero", "--tokenizer", sources["gla"][0]]
    assert convert("mamba2", folder, tmp_path / "out", *args) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert model.config.n_groups == 8 and model.config.statex_layers == [0, 1]
    assert model.config.statex_state_size == 256 and not model.config.tie_word_embeddings
    assert model.backbone.layers[0].mixer.in_proj.weight.shape[0] == 2 * 1024 + 2 * 8 * 256 + 16
    assert (logits(model) - logits(reference)).abs().max() <= TOL
    card = (tmp_path / "out" / "README.md").read_text()
    assert "(mistral-mamba2)" in card


def test_codestral_layout_parameter_growth_counts_every_group(sources, tmp_path):
    from statex_hf.conversion import convert as convert_api

    tokenizer = str(sources["gla"][0])
    report = convert_api("mamba2", str(sources["mistral"][0]), tmp_path / "o", tokenizer=tokenizer, progress=False)
    g, n, n_new, d_model, kernel = 8, 128, 512, 512, 4  # default 4x state, conv bias, no in_proj bias
    assert report.source_format == "mistral-mamba2" and report.layers == [0, 1]
    assert report.params_after - report.params_before == report.params_formula_delta
    assert report.params_formula_delta == 2 * 2 * g * (n_new - n) * (d_model + kernel + 1)
    assert report.state_before[0] == 1024 * 128 and report.state_after[0] == 1024 * 512
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "o")
    out = model.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)


def test_reported_parameter_growth_is_the_count_and_the_formula(sources, tmp_path):
    from statex_hf.conversion import convert as convert_api

    tokenizer = str(sources["gla"][0])
    report = convert_api("mamba2", str(sources["mamba-ssm"][0]), tmp_path / "o", tokenizer=tokenizer, progress=False)
    g, n, n_new, d_model, kernel = 2, 8, 32, 16, 4  # the tiny mamba_ssm source, default 4x state
    formula = len(report.layers) * 2 * g * (n_new - n) * (d_model + kernel + 1)  # + conv bias, no in_proj bias
    assert report.layers == [0, 1, 2, 3]
    assert report.params_after - report.params_before == report.params_formula_delta == formula
    assert report.state_after[0] == 4 * report.state_before[0]


def test_sharded_output_has_an_index_and_loads(sources, tmp_path):
    folder, _ = sources["gla-sharded"]
    assert convert("gla", folder, tmp_path / "out", "--max-shard-size", "100KB") == 0
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((tmp_path / "out" / s).is_file() for s in shards)
    assert not list((tmp_path / "out").glob(".part-*"))
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_output_folder_carries_card_tokenizer_generation_config_and_remote_code(sources, tmp_path, capsys):
    folder, _ = sources["gla"]
    assert convert("gla", folder, tmp_path / "out", "--layers", "0,2", "--seed", "5") == 0
    printed = capsys.readouterr().out
    assert "layer 0: state 128 -> 512" in printed and "parameters:" in printed
    out = tmp_path / "out"
    for name in ("README.md", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert "statex" in card.data.tags and card.data.library_name == "transformers"
    assert "Expanded layers: 0, 2 (of 4)" in card.text and "Seed: 5" in card.text and "arXiv:2509.22630" in card.text
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_statex_gla.StateXGLAForCausalLM"
    for path in out.glob("*.py"):  # the bundle imports nothing from statex_hf
        tree = ast.parse(path.read_text(), str(path))
        imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m and m.startswith("statex_hf")], path.name


def test_conversion_script_is_the_same_conversion(sources, tmp_path, monkeypatch):
    folder, _ = sources["gla"]
    assert convert("gla", folder, tmp_path / "cli", "--layers", "1", "--seed", "3") == 0
    script = REPO_ROOT / "conversion_scripts" / "convert_gla_to_statex.py"
    monkeypatch.setattr(
        sys, "argv", [str(script), str(folder), str(tmp_path / "script"), "--layers", "1", "--seed", "3", "--quiet"]
    )
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 0
    a, b = load_file(tmp_path / "cli" / "model.safetensors"), load_file(tmp_path / "script" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_overwrite_replaces_an_earlier_conversion(sources, tmp_path):
    folder, _ = sources["gla"]
    assert convert("gla", folder, tmp_path / "out", "--layers", "0") == 0
    assert convert("gla", folder, tmp_path / "out", "--layers", "1", "--overwrite") == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["statex_layers"] == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failure_inside_the_atomic_folder_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_folder(tmp_path / "dest") as tmp:
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# ---- bad input ---------------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, **changes) -> Path:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _bad_inputs(sources, tmp: Path) -> dict[str, tuple[list, str]]:
    gla, mamba2, ssm = sources["gla"][0], sources["mamba2"][0], sources["mamba-ssm"][0]
    corrupt = _copy(gla, tmp / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    truncated = _copy(gla, tmp / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    missing_shard = _copy(sources["gla-sharded"][0], tmp / "missing-shard")
    next(missing_shard.glob("model-00002-of-*.safetensors")).unlink()
    ssm_typo = _edit_config(_copy(ssm, tmp / "ssm-typo"), d_model="sixteen")
    list_index = _copy(sources["gla-sharded"][0], tmp / "list-index")
    (list_index / "model.safetensors.index.json").write_text('{"weight_map": ["model-00001-of-00002.safetensors"]}')
    corrupt_bin = _copy(sources["gla-bin"][0], tmp / "corrupt-bin")
    (corrupt_bin / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip")
    exists = tmp / "exists"
    exists.mkdir()
    llama = _edit_config(_copy(gla, tmp / "llama"), model_type="llama")
    mismatch = _edit_config(_copy(gla, tmp / "mismatch"), hidden_size=64)
    hybrid = _edit_config(_copy(gla, tmp / "hybrid"), attn={"layers": [0], "num_heads": 4})
    gelu = _edit_config(_copy(gla, tmp / "gelu"), hidden_act="gelu")
    already = _edit_config(_copy(mamba2, tmp / "already"), model_type="statex_mamba2", statex_layers=[0])
    mistral = sources["mistral"][0]
    transformer_params = _copy(mistral, tmp / "mistral-transformer")
    params = json.loads((transformer_params / "params.json").read_text())
    (transformer_params / "params.json").write_text(json.dumps({**params, "model_type": "transformer"}))
    no_consolidated = _copy(mistral, tmp / "no-consolidated")
    (no_consolidated / "consolidated.safetensors").unlink()
    return {
        "missing folder": (["gla", tmp / "nope", tmp / "o"], "source folder"),
        "unknown model_type": (["gla", llama, tmp / "o"], "unknown checkpoint type"),
        "mamba2 given to gla": (["gla", mamba2, tmp / "o"], "use `statex-hf convert mamba2`"),
        "gla given to mamba2": (["mamba2", gla, tmp / "o"], "use `statex-hf convert gla`"),
        "layer out of range": (["gla", gla, tmp / "o", "--layers", "0,4"], "layer index 4 is out of range"),
        "every 0": (["gla", gla, tmp / "o", "--every", "0"], "--every must be a positive integer"),
        "state size not larger": (["mamba2", mamba2, tmp / "o", "--state-size", "8"], "is not larger than"),
        "heads do not divide": (["gla", gla, tmp / "o", "--num-heads", "3"], "does not divide"),
        "state would not grow": (["gla", gla, tmp / "o", "--num-heads", "4"], "--num-heads 4 is not fewer than"),
        "unsupported activation": (["gla", gelu, tmp / "o"], "hidden_act='gelu' is not supported"),
        "corrupt safetensors": (["gla", corrupt, tmp / "o"], "corrupt or truncated"),
        "truncated safetensors": (["gla", truncated, tmp / "o"], "corrupt or truncated"),
        "missing shard": (["gla", missing_shard, tmp / "o"], "missing shard model-00002"),
        "shard index of the wrong shape": (["gla", list_index, tmp / "o"], "is not a valid shard index"),
        "mamba_ssm field of the wrong type": (["mamba2", ssm_typo, tmp / "o"], "has a field of the wrong type"),
        "corrupt bin": (["gla", corrupt_bin, tmp / "o"], "corrupt or truncated"),
        "destination exists": (["gla", gla, exists], "already exists"),
        "no tokenizer for state-spaces": (["mamba2", ssm, tmp / "o"], "--tokenizer"),
        "no tokenizer for mistral": (["mamba2", mistral, tmp / "o"], "--tokenizer mistralai/Mamba-Codestral"),
        "mistral given to gla": (["gla", mistral, tmp / "o"], "use `statex-hf convert mamba2`"),
        "mistral transformer params": (["mamba2", transformer_params, tmp / "o"], "unknown checkpoint type"),
        "mistral without weights": (["mamba2", no_consolidated, tmp / "o"], "consolidated.safetensors"),
        "config does not match weights": (["gla", mismatch, tmp / "o"], "does not match the weights"),
        "softmax layer of a hybrid": (["gla", hybrid, tmp / "o", "--layers", "0"], "softmax-attention layer"),
        "already expanded": (["mamba2", already, tmp / "o"], "already a StateX checkpoint"),
        "bad layer list": (["gla", gla, tmp / "o", "--layers", "a,b"], "comma-separated layer indices"),
    }


BAD_INPUT_CASES = [
    "missing folder",
    "unknown model_type",
    "mamba2 given to gla",
    "gla given to mamba2",
    "layer out of range",
    "every 0",
    "state size not larger",
    "heads do not divide",
    "state would not grow",
    "unsupported activation",
    "corrupt safetensors",
    "truncated safetensors",
    "missing shard",
    "shard index of the wrong shape",
    "mamba_ssm field of the wrong type",
    "corrupt bin",
    "destination exists",
    "no tokenizer for state-spaces",
    "no tokenizer for mistral",
    "mistral given to gla",
    "mistral transformer params",
    "mistral without weights",
    "config does not match weights",
    "softmax layer of a hybrid",
    "already expanded",
    "bad layer list",
]


@pytest.mark.parametrize("case", BAD_INPUT_CASES)
def test_bad_input_is_one_line_exit_2_and_nothing_written(sources, tmp_path, capsys, case):
    argv, message = _bad_inputs(sources, tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        code = convert(*argv)
    except SystemExit as exit_:  # argparse-level errors exit from inside the parser
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary folder


def test_repo_id_without_network_is_one_line_exit_2(tmp_path):
    """A real ``statex-hf`` process, a Hub repo id, and an endpoint nobody listens on."""
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1")
    env.pop("HF_HUB_OFFLINE", None)
    cmd = [sys.executable, "-m", "statex_hf.cli", "convert", "gla", "someone/gla-tiny", str(tmp_path / "o"), "--quiet"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "cannot fetch someone/gla-tiny from the Hub" in result.stderr
    assert not (tmp_path / "o").exists()


def test_tokenizer_helper_round_trips(tmp_path):
    write_tokenizer(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).eos_token_id == 2


def test_converted_folder_has_the_mode_save_pretrained_gives(sources, tmp_path):
    # mkdtemp makes 0700 folders; the renamed output must be what save_pretrained's os.makedirs makes.
    assert convert("gla", sources["gla"][0], tmp_path / "out") == 0
    (tmp_path / "made").mkdir()
    assert (tmp_path / "out").stat().st_mode == (tmp_path / "made").stat().st_mode
