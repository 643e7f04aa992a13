"""Which re-initialized GLA layers can a short continuation bring back? A CPU experiment, about 10 minutes.

The miniature reproduction (``reproduce_statex.py``) found StateX GLA losing passkey entirely after its
token mixers in layers 0, 2, 4, 6 of 8 were re-initialized. Here a 4-layer GLA (width 64, 2 heads) is
pretrained on passkey alone until it solves it, then continued for 300 steps at a longer length as is
(LPT) and after ``statex-hf convert`` with several layer choices. Printed: the continuation's final loss
and passkey accuracy with the answer given (teacher-forced, the model in memory).

    python benchmarks/gla_reinit_layers_cpu.py
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reproduce_statex as repro  # noqa: E402

SETTINGS = replace(
    repro.Settings(),
    hidden_size=64,
    num_layers=4,
    gla_heads=2,
    pretrain_length=96,
    pretrain_steps=600,
    pretrain_batch=16,
    continue_length=128,
    continue_steps=300,
    continue_batch=8,
    warmup_steps=30,
    mix={"passkey": 1.0},
    eval_depths=[0.0, 0.5, 1.0],
    loader_workers=0,
)
VARIANTS = {  # name: statex-hf convert arguments (None: LPT, no conversion)
    "LPT": None,
    "StateX, every layer re-initialized": [],
    **{f"StateX, layer {i} re-initialized": ["--layers", str(i)] for i in range(4)},
    "StateX, every layer, weights inherited": ["--init", "inherit"],
}


def main() -> None:
    torch.set_num_threads(2)
    tokenizer = repro.build_tokenizer()
    s = SETTINGS
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = repro.new_model("gla", s, tokenizer, seed=0)
        repro.train(model, tokenizer, s, length=s.pretrain_length, steps=s.pretrain_steps, batch=s.pretrain_batch,
                    lr=s.pretrain_lr, seed=0, device="cpu")  # fmt: skip
        pretrained = repro.passkey_teacher_forced(model, tokenizer, s, "cpu")
        model.save_pretrained(work / "original")
        tokenizer.save_pretrained(work / "original")
        repro.save_as_source_checkpoint(work / "original", "gla", work / "source")
        rows = []
        for i, (name, convert_args) in enumerate(VARIANTS.items()):
            path = work / "original"
            if convert_args is not None:
                path = work / f"variant{i}"
                repro.run_cli(["convert", "gla", str(work / "source"), str(path), "--quiet"] + convert_args)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            result = repro.train(model, tokenizer, s, length=s.continue_length, steps=s.continue_steps,
                                 batch=s.continue_batch, lr=s.continue_lr, seed=1000, device="cpu")  # fmt: skip
            layers = list(getattr(model.config, "statex_layers", []))
            rows.append((name, layers, result["final_loss"], repro.passkey_teacher_forced(model, tokenizer, s, "cpu")))
    print(f"\npretrained: passkey {pretrained:.2f} at {s.continue_length} tokens (answer given)")
    print(f"{'continuation':<40} {'expanded':<14} {'final loss':>10} {'passkey':>8}")
    for name, layers, loss, passkey in rows:
        print(f"{name:<40} {str(layers):<14} {loss:>10.3f} {passkey:>8.2f}")


if __name__ == "__main__":
    main()
