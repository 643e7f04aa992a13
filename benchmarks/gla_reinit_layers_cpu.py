"""Which re-initialized GLA layers does a short continuation bring back, and does more time or a higher learning
rate help? A CPU experiment on the miniature's pipeline (``posttrain``, ``statex-hf convert`` with its
reference ``--init reinit``, ``statex-hf eval niah --task passkey``), about 10 minutes on two cores.

A 4-layer GLA (width 64, 2 heads, short convolutions) is pretrained on passkey prompts alone until it solves
them, then continued at a longer length as it is (LPT) and after ``statex-hf convert`` with several layer
choices and init modes; two arms repeat layer 0's re-initialization with three times the steps, and with a
four times higher learning rate. Printed: each continuation's final loss and its passkey exact match.

    python benchmarks/gla_reinit_layers_cpu.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from miniature.data import build_tokenizer  # noqa: E402
from miniature.settings import Settings  # noqa: E402
from miniature.units import load_source, new_source_model, run_cli, save_as_source_checkpoint, train  # noqa: E402

SETTINGS = replace(
    Settings(), hidden_size=64, num_layers=4, gla_heads=2, mix={"passkey": 1.0}, pairs=[2], loader_workers=0
)
PRETRAIN = {"length": 96, "steps": 600, "batch": 16, "lr": 3e-3}
CONTINUE = {"length": 128, "steps": 300, "batch": 8, "lr": 5e-4}
# name: (statex-hf convert arguments or None for LPT, changes to the continuation)
VARIANTS = {
    "LPT": (None, {}),
    "StateX, layer 0 re-initialized": (["--layers", "0"], {}),
    "StateX, layer 3 re-initialized": (["--layers", "3"], {}),
    "StateX, layer 0 re-initialized, 3x steps": (["--layers", "0"], {"steps": 900}),
    "StateX, layer 0 re-initialized, lr x4": (["--layers", "0"], {"lr": 2e-3}),
    "StateX, every layer, weights inherited": (["--every", "1", "--init", "inherit"], {}),
}


def passkey(model_dir: Path, out: Path) -> float:
    run_cli(["eval", "niah", str(model_dir), "--task", "passkey", "--lengths", "128", "--depths", "0,0.5,1"]
            + ["--samples", "4", "--no-plot", "--no-progress", "--output", str(out)])  # fmt: skip
    return json.loads(out.read_text())["mean_accuracy"]


def main() -> None:
    torch.set_num_threads(1)  # tiny matmuls: more threads only spin on a shared CPU
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    tokenizer = build_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = new_source_model("gla", SETTINGS, tokenizer, seed=0)
        train(model, tokenizer, SETTINGS, work / "pretrain", data_seed=0, **PRETRAIN)
        model.save_pretrained(work / "original")
        tokenizer.save_pretrained(work / "original")
        pretrained = passkey(work / "original", work / "original.json")
        save_as_source_checkpoint(work / "original", "gla", work / "source")
        rows = []
        for i, (name, (convert_args, changes)) in enumerate(VARIANTS.items()):
            if convert_args is None:
                model = load_source("gla", work / "source")
            else:
                run_cli(["convert", "gla", str(work / "source"), str(work / f"v{i}"), "--quiet", *convert_args])
                from transformers import AutoModelForCausalLM

                model = AutoModelForCausalLM.from_pretrained(work / f"v{i}", dtype=torch.float32)
            result = train(model, tokenizer, SETTINGS, work / f"t{i}", data_seed=1000, **{**CONTINUE, **changes})
            model.save_pretrained(work / f"m{i}")
            tokenizer.save_pretrained(work / f"m{i}")
            layers = list(getattr(model.config, "statex_layers", []))
            rows.append((name, layers, result["final_loss"], passkey(work / f"m{i}", work / f"m{i}.json")))
            print(f"{name}: loss {result['final_loss']:.3f}, passkey {rows[-1][-1]:.2f}", flush=True)
    print(f"\npretrained: passkey {pretrained:.2f} at {CONTINUE['length']} tokens")
    print(f"{'continuation':<44} {'expanded':<14} {'final loss':>10} {'passkey':>8}")
    for name, layers, loss, accuracy in rows:
        print(f"{name:<44} {str(layers):<14} {loss:>10.3f} {accuracy:>8.2f}")


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
