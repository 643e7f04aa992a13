"""benchmarks/reproduce_statex.py runs end to end (tiny models, two steps): pretrain, LPT, convert + StateX, evals."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_statex.py"


def test_tiny_reproduction_writes_table_plots_and_every_model_result(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("reproduce_statex", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "reproduce_statex", script)  # dataclasses look their module up there
    spec.loader.exec_module(script)
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
        assert run["LPT"]["training"]["tokens"] == run["StateX"]["training"]["tokens"]  # equal budgets
        for task in ("mqar", "passkey"):
            assert (out / f"{arch}_{task}.png").stat().st_size > 5000
    table = (out / "results.md").read_text()
    assert "| StateX |" in table and "## Verdict" in table
