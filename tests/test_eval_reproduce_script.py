"""benchmarks/reproduce_statex.py runs end to end (tiny models, two steps): pretrain, LPT, convert + StateX, evals."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_statex.py"


def load_script(monkeypatch):
    spec = importlib.util.spec_from_file_location("reproduce_statex", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "reproduce_statex", script)  # dataclasses look their module up there
    spec.loader.exec_module(script)
    return script


def test_tiny_reproduction_writes_table_plots_and_every_model_result(tmp_path, monkeypatch):
    script = load_script(monkeypatch)
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    try:
        assert script.main(["--tiny", "--pretrain-steps", "2", "--continue-steps", "1", "--output-dir", str(out)]) == 0
    finally:  # --tiny on CPU runs single-threaded; the rest of the session keeps its setting
        torch.set_num_threads(threads)
    results = json.loads((out / "results.json").read_text())
    for arch in ("gla", "mamba2"):
        run = results["runs"]["0"][arch]
        assert run["statex_layers"], "statex-hf convert expanded no layer"
        for model in ("original", "LPT", "StateX"):
            assert 0.0 <= run[model]["mqar_mean"] <= 1.0 and 0.0 <= run[model]["passkey_mean"] <= 1.0
            assert 0.0 <= run[model]["passkey_teacher_forced"] <= 1.0
        assert run["LPT"]["training"]["tokens"] == run["StateX"]["training"]["tokens"]  # equal budgets
        for task in ("mqar", "passkey"):
            assert (out / f"{arch}_{task}.png").stat().st_size > 5000
    table = (out / "results.md").read_text()
    assert "| StateX |" in table and "## Verdict" in table


class _ShiftedInputs(torch.nn.Module):
    """Test fixture: logits that put all mass on the *next input* token (an oracle that sees the answer)."""

    def __init__(self, vocab: int, constant: int | None = None) -> None:
        super().__init__()
        self.vocab, self.constant = vocab, constant

    def forward(self, input_ids, use_cache=False):
        nxt = torch.roll(input_ids, -1, dims=1) if self.constant is None else torch.full_like(input_ids, self.constant)
        return types.SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, self.vocab).float())


def test_teacher_forced_passkey_scores_answer_positions(monkeypatch):
    script = load_script(monkeypatch)
    tokenizer = script.build_tokenizer()
    settings = script.TINY
    oracle = script.passkey_teacher_forced(_ShiftedInputs(len(tokenizer)), tokenizer, settings, "cpu")
    constant = script.passkey_teacher_forced(_ShiftedInputs(len(tokenizer), 0), tokenizer, settings, "cpu")
    assert oracle == 1.0 and constant == 0.0


def test_merge_refuses_other_settings_and_repeated_units(tmp_path, monkeypatch, capsys):
    script = load_script(monkeypatch)
    run = {"seconds": 1.0}  # the guards refuse before any report is made

    def results(name, seed, **changes):
        folder = tmp_path / name
        folder.mkdir()
        settings = script.asdict(script.replace(script.TINY, **changes))
        payload = {"settings": settings, "device": "cpu", "runs": {seed: {"gla": run}}}
        (folder / "results.json").write_text(json.dumps(payload))
        return str(folder)

    default, again = results("a", "0"), results("b", "0")
    variant = results("c", "1", convert_args=["--layers=1"])
    out = ["--output-dir", str(tmp_path / "out")]
    assert script.main(["--merge", default, variant, *out]) == 2
    assert "other settings" in capsys.readouterr().err
    assert script.main(["--merge", default, again, *out]) == 2
    assert "seed 0 gla is in two folders" in capsys.readouterr().err
