"""``statex-hf eval niah|mqar``: bad arguments end with one clear line and exit 2; good ones write JSON + PNG."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import tiny_llama, word_tokenizer

from statex_hf.cli import main


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random Llama and its tokenizer saved like any Hub checkpoint."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = word_tokenizer()
    tiny_llama(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["niah", "M", "--lengths", "4x"], "--lengths: '4x' is not a token count"),
        (["niah", "M", "--lengths", "0"], "--lengths: '0' is not a whole positive number"),
        (["niah", "M", "--lengths", ""], "--lengths is empty"),
        (["niah", "M", "--depths", "0,1.5"], "depth 1.5 is outside [0, 1]"),
        (["niah", "M", "--depths", "half"], "depth 'half' is not a number"),
        (["niah", "M", "--samples", "0"], "--samples: 0 must be at least 1"),
        (["niah", "M", "--task", "haystack"], "--task: invalid choice"),
        (["niah", "M", "--plot", "a.png", "--no-plot"], "not allowed with argument"),
        (["mqar", "M", "--num-pairs", "4,-2"], "--num-pairs: -2 must be at least 1"),
        (["mqar", "M", "--batch-size", "two"], "--batch-size: 'two' is not an integer"),
        (["mqar", "M", "--dtype", "int8"], "--dtype: invalid choice"),
        (["niah"], "the following arguments are required: MODEL"),
        (["mqar", "./no/such/model"], "MODEL ./no/such/model: no such local folder"),
    ],
)
def test_bad_arguments_end_with_one_clear_line_and_exit_2(argv, message, capsys):
    code, out, err = _run(["eval", *argv], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"statex-hf eval {argv[0]}: error: ")
    assert message in err


def test_length_too_short_for_the_tokenizer_is_an_argument_error(checkpoint, tmp_path, capsys):
    argv = ["eval", "niah", str(checkpoint), "--lengths", "16", "--output", str(tmp_path / "n.json"), "--no-progress"]
    code, out, err = _run(argv, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--lengths: length 16 is too short for the niah prompt" in err
    assert not (tmp_path / "n.json").exists()


def test_niah_writes_results_and_heatmap(checkpoint, tmp_path, capsys):
    argv = ["eval", "niah", str(checkpoint), "--task", "passkey", "--lengths", "200,0.25k", "--depths", "0,1"]
    argv += ["--samples", "2", "--output", str(tmp_path / "out" / "passkey.json"), "--no-progress"]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "out" / "passkey.json").read_text())
    assert results["task"] == "passkey" and results["lengths"] == [200, 256] and results["depths"] == [0.0, 1.0]
    assert len(results["records"]) == 2 * 2 * 2
    assert (tmp_path / "out" / "passkey.png").stat().st_size > 5000
    assert "passkey exact match by length" in out


def test_mqar_writes_results_and_line_plot(checkpoint, tmp_path, capsys):
    argv = ["eval", "mqar", str(checkpoint), "--num-pairs", "2,4", "--lengths", "32,64", "--samples", "2"]
    argv += ["--output", str(tmp_path / "mqar.json"), "--plot", str(tmp_path / "fig.png"), "--no-progress"]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "mqar.json").read_text())
    assert results["num_pairs"] == [2, 4] and len(results["accuracy"]) == 2
    assert (tmp_path / "fig.png").stat().st_size > 5000


def test_default_output_is_named_after_the_task(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["eval", "niah", str(checkpoint), "--task", "passkey", "--lengths", "200", "--depths", "0.5"]
    code, out, err = _run([*argv, "--samples", "1", "--no-progress"], capsys)
    assert code == 0, err
    assert (tmp_path / "passkey.json").is_file() and (tmp_path / "passkey.png").is_file()
