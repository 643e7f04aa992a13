"""benchmarks/reproduce_statex.py (the miniature) runs end to end and reports what its units measured."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "reproduce_statex.py"


@pytest.fixture
def script(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("reproduce_statex", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "reproduce_statex", module)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)  # --tiny on CPU runs single-threaded; the rest of the session keeps its setting


def test_tiny_run_as_the_readme_gives_it_writes_every_arm_into_a_new_folder(script, tmp_path, monkeypatch):
    # `python benchmarks/reproduce_statex.py --tiny`: no --output-dir, so a new temporary folder, never the
    # committed results.
    made = tmp_path / "tiny"
    monkeypatch.setattr(script, "new_tiny_folder", lambda: made)
    monkeypatch.chdir(tmp_path)
    assert script.main(["--tiny", "--pretrain-steps", "2", "--continue-steps", "2"]) == 0
    assert not (tmp_path / "benchmarks").exists()

    results = json.loads((made / "results.json").read_text())["results"]
    arms = ("LPT", "StateX", "StateX-no-layer0", "StateX-inherit")
    for family in ("gla", "mamba2"):
        runs = {arm: results[family][arm]["0"] for arm in ("original", *arms)}
        for run in runs.values():
            assert 0.0 <= run["mqar_mean"] <= 1.0 and 0.0 <= run["passkey_mean"] <= 1.0
        assert runs["StateX"]["statex_layers"] == [0, 2]  # range(0, 4, 2), the paper's rule
        assert runs["StateX-no-layer0"]["statex_layers"] == [2]
        assert runs["StateX-inherit"]["convert_args"][-1] == ("inherit" if family == "gla" else "copy")
        assert runs["LPT"]["statex_layers"] == []
        units = made / "units" / f"{family}-seed0"
        budgets = {json.loads((units / arm / "result.json").read_text())["training"]["tokens"] for arm in arms}
        assert len(budgets) == 1  # every arm continues on the same token budget
        for name in (f"{family}_mqar_96.png", f"{family}_passkey.png", f"{family}_loss_continuation.png"):
            assert (made / name).stat().st_size > 5000
        assert (units / "source" / "config.json").exists()  # the pretrained source, in its public format
    table = (made / "results.md").read_text()
    assert "| StateX-inherit | 1 |" in table and "## Verdict" in table
    assert "Trained on: cpu." in table  # the device behind every figure is named

    # Run again: everything is done, nothing trains; other settings in the same folder are refused.
    assert script.main(["--tiny", "--pretrain-steps", "2", "--continue-steps", "2", "--output-dir", str(made)]) == 0
    assert script.main(["--tiny", "--pretrain-steps", "3", "--output-dir", str(made)]) == 2


def write_unit(out: Path, family: str, seed: int, arm: str, grid: list[list[float]], passkey: float) -> None:
    folder = out / "units" / f"{family}-seed{seed}" / arm
    folder.mkdir(parents=True)
    result = {
        "training": {"loss_curve": [[1, 2.0], [2, 1.0]], "final_loss": 1.0, "steps": 2, "tokens": 10, "seconds": 1},
        "statex_layers": [0] if arm != "original" and arm != "LPT" else [],
        "mqar_pairs": [2, 4],
        "mqar_lengths": [96],
        "mqar_grid": grid,
        "mqar_mean": sum(row[0] for row in grid) / len(grid),
        "passkey_lengths": [96],
        "passkey_by_length": [passkey],
        "passkey_mean": passkey,
    }
    (folder / "result.json").write_text(json.dumps(result))


def test_report_gives_mean_and_std_over_seeds_and_the_verdict(script, tmp_path):
    from miniature.report import write_report
    from miniature.settings import TINY

    (tmp_path / "settings.json").write_text(TINY.to_json())
    for seed, (lpt, statex) in enumerate([(0.2, 0.6), (0.4, 0.4)]):
        write_unit(tmp_path, "gla", seed, "original", [[1.0], [0.1]], 0.5)
        write_unit(tmp_path, "gla", seed, "LPT", [[1.0], [lpt]], 0.5)
        write_unit(tmp_path, "gla", seed, "StateX", [[1.0], [statex]], 1.0)
    text = write_report(tmp_path)
    assert "| LPT | 2 | 1.000 ± 0.000 | 0.300 ± 0.141 |" in text
    assert "| StateX | 2 | 1.000 ± 0.000 | 0.500 ± 0.141 |" in text
    # Per seed, StateX - LPT averaged over the pair counts: (0 + 0.4) / 2 and (0 + 0) / 2.
    assert "gla StateX − LPT, MQAR at 96 (mean over pair counts): 0.100 ± 0.141 (ahead in 1 of 2 seeds" in text
    assert "| 1 | yes | 0.550 (1.00, 0.10) | 0.700 (1.00, 0.40) | 0.700 (1.00, 0.40) |" in text  # per seed
    assert (tmp_path / "gla_mqar_96.png").exists() and (tmp_path / "gla_passkey.png").exists()


def test_training_rows_label_exactly_the_recalled_values_and_the_passkey(script):
    from miniature.data import IGNORE, RecallRows, build_tokenizer, recall_stream

    tokenizer = build_tokenizer()
    rows = RecallRows(tokenizer, 96, [2, 4, 8])
    row = rows.mqar(random.Random(0), num_pairs=8)
    assert len(row["input_ids"]) == len(row["labels"]) == 96 and row["position_ids"] == list(range(96))
    labelled = [i for i, label in enumerate(row["labels"]) if label != IGNORE]
    assert len(labelled) == 8  # one label per query: the value after its key
    assert all(row["input_ids"][i] == row["labels"][i] for i in labelled)
    assert all(row["input_ids"][i - 1] in rows.vocab.keys for i in labelled)

    passkey = rows.passkey(random.Random(1))
    answer = [label for label in passkey["labels"] if label != IGNORE]
    assert tokenizer.decode(answer[:-1]).replace(" ", "").isdigit() and answer[-1] == tokenizer.eos_token_id
    assert passkey["input_ids"][-len(answer) :] == answer

    first = [
        r["input_ids"] for _, r in zip(range(3), recall_stream(tokenizer, 96, [2, 4], {"mqar": 1, "passkey": 1}, 5))
    ]
    again = [
        r["input_ids"] for _, r in zip(range(3), recall_stream(tokenizer, 96, [2, 4], {"mqar": 1, "passkey": 1}, 5))
    ]
    assert first == again  # every arm continues on the same rows
    with pytest.raises(ValueError, match="too short for the passkey prompt"):
        recall_stream(tokenizer, 64, [2], {"passkey": 1.0}, 0)


def test_arms_expand_the_papers_layers_with_each_init(script):
    from miniature.settings import Settings

    settings = Settings(num_layers=6, every=3)
    assert settings.convert_args("gla", "LPT") is None
    assert settings.convert_args("gla", "StateX") == ["--every", "3", "--init", "reinit"]
    assert settings.convert_args("mamba2", "StateX-no-layer0") == ["--layers", "3", "--init", "reinit"]
    assert settings.convert_args("gla", "StateX-inherit")[-1] == "inherit"
    assert settings.convert_args("mamba2", "StateX-inherit")[-1] == "copy"
    with pytest.raises(ValueError, match="only layer 0"):
        Settings(num_layers=2, every=2).convert_args("gla", "StateX-no-layer0")


def test_mamba2_copy_and_zero_cannot_use_the_grown_state():
    """Why the miniature's Mamba2 'inherit' arm (copy) is LPT in effect: the grown rows never diverge.

    ``zero``: new B/C rows and channels get exactly zero gradient (B and C multiply each other in the state).
    ``copy``: every tile of the old rows gets the same gradient as the others, so the tiles stay copies.
    """
    import statex_hf
    from statex_hf.expansion import expand_mamba2

    config = statex_hf.StateXMamba2Config(
        hidden_size=32, num_heads=4, head_dim=16, expand=2, state_size=8, n_groups=1, num_hidden_layers=2,
        vocab_size=50, chunk_size=16, statex_layers=[],
    )  # fmt: skip
    source = statex_hf.StateXMamba2ForCausalLM(config)
    fields = {k: v for k, v in config.to_dict().items() if not k.startswith(("statex_", "chunked_", "architectures"))}
    ids = torch.randint(0, 50, (2, 24))
    for init in ("zero", "copy"):
        new_config, state_dict = expand_mamba2(
            {**fields, "model_type": "mamba2"}, source.state_dict(), layers=[0], init=init
        )
        model = statex_hf.StateXMamba2ForCausalLM(new_config)
        model.load_state_dict(state_dict)
        model(input_ids=ids, labels=ids).loss.backward()
        mixer, inner, n, grown = model.backbone.layers[0].mixer, 64, 8, new_config.statex_state_size
        grads = mixer.in_proj.weight.grad[2 * inner : 2 * inner + 2 * grown].view(2, grown // n, n, -1)  # B, C
        conv = mixer.conv1d.weight.grad[inner : inner + 2 * grown].reshape(2, grown // n, n, -1)
        if init == "zero":
            assert grads[:, 1:].abs().max() == 0 and conv[:, 1:].abs().max() == 0
        else:
            assert torch.equal(grads, grads[:, :1].expand_as(grads)) and grads.abs().max() > 0


def test_schedule_pretrains_first_and_starts_only_units_that_fit(script):
    from miniature.run import Clock, plan

    units = plan(["gla", "mamba2"], [0, 1], ["LPT", "StateX"], "all")
    assert units[:4] == ["gla:0:original", "mamba2:0:original", "gla:1:original", "mamba2:1:original"]
    assert len(units) == 4 + 8 and plan(["gla"], [0], ["LPT"], "continue") == ["gla:0:LPT"]
    clock = Clock(max_seconds=100.0)
    assert clock.fits("gla:0:LPT")  # nothing measured yet: start it
    clock.record("gla:0:LPT", 150.0)
    assert not clock.fits("gla:1:LPT") and clock.fits("gla:1:original")  # a pretraining has its own estimate
