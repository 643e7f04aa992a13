"""One post-training optimizer step of the 1.3B-shaped models on one GPU: StateX vs unexpanded (LPT).

The real configurations (random weights): GLA-1.3B (fla-hub/gla-1.3B-100B: hidden 2048, 24
layers, 4 heads) with StateX head merging in layers 0, 6, 12, 18; Mamba2-1.3B
(state-spaces/mamba2-1.3b: hidden 2048, 48 layers, 64 heads of 64, N 128, vocab 50288, tied
embeddings) with N 128 -> 512 in layers 0, 12, 24, 36. Each is measured beside the same model
unexpanded, the paper's LPT baseline.

One step = forward + backward + AdamW step at batch 1, T tokens, the way ``posttrain`` trains:
fp32 master weights with bf16 autocast (Trainer's ``bf16=True``), activation checkpointing per
block, the chunked loss (4096 tokens per chunk). A first step compiles and autotunes the Triton
kernels and allocates the optimizer state; the next ``--steps`` steps are timed. Peak memory is
``torch.cuda.max_memory_allocated`` over the timed steps (weights, gradients and AdamW state
included). Prints one table.

    python benchmarks/bench_train.py                          # both families, T = 16K and 64K
    python benchmarks/bench_train.py --families gla --lengths 16384

The same models under FSDP on N GPUs, through the Trainer and the shipped accelerate configs:
``bench_train_fsdp.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch

FAMILIES = ("gla", "mamba2")
LOSS_CHUNK = 4096


# The 1.3B models (StateXGLAConfig's defaults are GLA-1.3B's config.json) and their expanded layers.
SHAPES = {
    "gla": {},
    "mamba2": {
        "hidden_size": 2048,
        "num_hidden_layers": 48,
        "num_heads": 64,
        "head_dim": 64,
        "state_size": 128,
        "n_groups": 1,
        "expand": 2,
        "conv_kernel": 4,
        "chunk_size": 256,
        "vocab_size": 50288,
        "tie_word_embeddings": True,
        "statex_state_size": 512,
    },
}
EXPANDED_LAYERS = {"gla": [0, 6, 12, 18], "mamba2": [0, 12, 24, 36]}
# Four layers of width 64 (layers 0 and 2 expanded), for checking a benchmark on CPU.
TINY_SHAPES = {
    "gla": {"hidden_size": 64, "num_heads": 4, "num_hidden_layers": 4, "vocab_size": 256},
    "mamba2": {"hidden_size": 64, "num_hidden_layers": 4, "num_heads": 8, "head_dim": 16, "state_size": 16}
    | {"chunk_size": 32, "vocab_size": 256, "statex_state_size": 64},
}


def model_config(family: str, expanded: bool, tiny: bool = False):
    """The config (1.3B, or ``tiny``) and the model class of ``family``."""
    import statex_hf  # noqa: F401
    from statex_hf import StateXGLAConfig, StateXGLAForCausalLM, StateXMamba2Config, StateXMamba2ForCausalLM

    config_class, model_class = {
        "gla": (StateXGLAConfig, StateXGLAForCausalLM),
        "mamba2": (StateXMamba2Config, StateXMamba2ForCausalLM),
    }[family]
    shape = SHAPES[family] | (TINY_SHAPES[family] if tiny else {})
    layers = ([0, 2] if tiny else EXPANDED_LAYERS[family]) if expanded else []
    return config_class(**shape, statex_layers=layers, chunked_loss_size=LOSS_CHUNK), model_class


def build(family: str, expanded: bool) -> torch.nn.Module:
    """The 1.3B-shaped model, random weights, fp32, on the GPU."""
    config, model_class = model_config(family, expanded)
    with torch.device("cuda"):
        model = model_class(config)
    model.train()
    # transformers 5.2x renamed gradient checkpointing to activation checkpointing; take either.
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> float:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)


def measure(family: str, expanded: bool, seq_len: int, steps: int) -> dict:
    row = {"family": family, "model": "StateX" if expanded else "unexpanded (LPT)", "T": seq_len}
    model = optimizer = None
    try:
        model = build(family, expanded)
        row["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        ids = torch.randint(0, model.config.vocab_size, (1, seq_len), device="cuda")
        start = time.perf_counter()
        step(model, optimizer, ids)
        torch.cuda.synchronize()
        row["first_step_s"] = time.perf_counter() - start
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            row["loss"] = step(model, optimizer, ids)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
        row.update(step_s=seconds, tokens_per_s=seq_len / seconds, peak_GiB=torch.cuda.max_memory_allocated() / 2**30)
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as err:  # one failing configuration must not hide the others' numbers
        row["error"] = f"{type(err).__name__}: {err}"[:160]
    finally:
        del model, optimizer
        gc.collect()
        torch.cuda.empty_cache()
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| model | T | params (M) | peak memory (GiB) | tokens/s | step (s) | vs unexpanded | first step (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = {(r["family"], r["T"]): r for r in rows if r["model"].startswith("unexpanded") and "error" not in r}
    for r in rows:
        name = f"{'StateX-' if r['model'] == 'StateX' else ''}{'GLA' if r['family'] == 'gla' else 'Mamba2'}-1.3B"
        if "error" in r:
            lines.append(f"| {name} | {r['T']:,} | {r.get('params_M', 0):,.0f} | {r['error']} | | | | |")
            continue
        ref = base.get((r["family"], r["T"]))
        ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref and r["model"] == "StateX" else ""
        lines.append(
            f"| {name} | {r['T']:,} | {r['params_M']:,.0f} | {r['peak_GiB']:.1f} | {r['tokens_per_s']:,.0f} | "
            f"{r['step_s']:.2f} | {ratio} | {r['first_step_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--lengths", nargs="+", type=int, default=[16_384, 65_536])
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the first (default 2)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_train.py needs a CUDA GPU")
    rows = []
    for seq_len in args.lengths:
        for family in args.families:
            for expanded in (False, True):
                row = measure(family, expanded, seq_len, args.steps)
                print(json.dumps(row), flush=True)
                rows.append(row)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(rows, f, indent=1)
    print(f"\nOne optimizer step, batch 1, bf16 autocast, activation checkpointing, {torch.cuda.get_device_name()}:")
    print(table(rows))


if __name__ == "__main__":
    main()
