"""StateX's effect in miniature: at the same post-training token budget, does StateX beat plain LPT on recall?

For each seed and each architecture (GLA, Mamba2):

1. **Pretrain** a small model from scratch on a synthetic recall mix at short context: MQAR sequences
   (loss on the queried values), passkey and magic-number needle prompts (loss on the answer) and the
   package's haystack prose (plain language modeling). Tokenizer: word level, trained here on that text.
2. **LPT**: continue training the pretrained model on the same mix at a longer context.
3. **StateX**: expand the pretrained model with ``statex-hf convert`` (its defaults: four evenly spaced
   layers, re-initialized; GLA heads merged, Mamba2 state 4x), then continue exactly as LPT does: same
   steps, batch, length, learning-rate schedule and data seed.
4. **Evaluate** original, LPT and StateX with ``statex-hf eval mqar`` and ``statex-hf eval niah --task
   passkey`` over lengths up to several times the continuation length, plus the LM loss on the prose
   (a proxy for "general ability": the prose is also in the training mix).

Outputs in ``--output-dir``: ``results.md`` (the table, mean +- std over seeds, and the verdict),
``results.json`` (every number), ``{arch}_mqar.png`` / ``{arch}_passkey.png`` (accuracy against length,
the three models), and each seed-0 model's own eval JSON and plots under ``evals/``.

Full run (one H100; each (seed, architecture) unit is a few minutes; ``--max-minutes`` stops before a unit
that would not fit, and a second invocation with the same ``--output-dir`` resumes where the first stopped)::

    python benchmarks/reproduce_statex.py --seeds 0,1,2 --output-dir benchmarks/results/reproduce_statex

or one seed per job, then the report from all of them (no training)::

    python benchmarks/reproduce_statex.py --seeds 0 --output-dir runs/seed0     # likewise seeds 1, 2
    python benchmarks/reproduce_statex.py --merge runs/seed0 runs/seed1 runs/seed2 \\
        --output-dir benchmarks/results/reproduce_statex

End-to-end check on CPU (one seed, tiny models, a few steps: under a minute on two idle cores)::

    python benchmarks/reproduce_statex.py --tiny --output-dir /tmp/statex-tiny
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from torch.utils.data import DataLoader, IterableDataset
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

import statex_hf
from statex_hf.cli import main as statex_cli
from statex_hf.eval import MqarVocabulary, TokenizedHaystack, build_mqar_sample, build_needle_sample, haystack_text
from statex_hf.eval.mqar import min_length, prefix_ids
from statex_hf.eval.niah import _ADJECTIVES, _NOUNS, TEMPLATES
from statex_hf.eval.plots import format_length, plot_accuracy_by_length

# Data-loader workers fork after the tokenizer has run; its own thread pool must not be used across the fork.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARCHS = ("gla", "mamba2")
MODELS = ("original", "LPT", "StateX")


@dataclass
class Settings:
    """Everything that sizes a run; ``TINY`` is the CPU smoke configuration."""

    hidden_size: int = 256
    num_layers: int = 8
    gla_heads: int = 4  # StateX merges them: the expanded layers' state grows 4x
    mamba2_head_dim: int = 64
    mamba2_state_size: int = 16  # 8 heads x 64 x 16 = 8,192 per layer, as GLA's 4 x 32 x 64
    pretrain_length: int = 256
    pretrain_steps: int = 3000  # 98M tokens: ~3 min of a ~5 min unit at the H100's ~560K tokens/s
    pretrain_batch: int = 128
    pretrain_lr: float = 3e-3  # at 1e-3 a small Mamba2 stays near 1/pairs on MQAR; 3e-3 learns recall
    continue_length: int = 1024
    continue_steps: int = 800
    continue_batch: int = 32
    continue_lr: float = 5e-4
    warmup_steps: int = 100
    mix: dict[str, float] = field(default_factory=lambda: {"mqar": 0.5, "passkey": 0.125, "niah": 0.125, "text": 0.25})
    mqar_pairs: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64, 128])
    eval_mqar_pairs: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    eval_mqar_lengths: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048, 4096])
    eval_mqar_samples: int = 16
    eval_passkey_lengths: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048, 4096])
    eval_depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    eval_passkey_samples: int = 4
    eval_text_sequences: int = 32
    loader_workers: int = 4
    # Extra `statex-hf convert` arguments for a variant of the StateX arm (default: none, the CLI's defaults).
    convert_args: list[str] = field(default_factory=list)


TINY = Settings(
    hidden_size=32,
    num_layers=4,
    gla_heads=2,
    mamba2_head_dim=16,
    mamba2_state_size=8,
    pretrain_length=128,
    pretrain_steps=10,
    pretrain_batch=4,
    continue_length=160,
    continue_steps=4,
    continue_batch=2,
    warmup_steps=2,
    mqar_pairs=[2, 4, 8],
    eval_mqar_pairs=[2, 4],
    eval_mqar_lengths=[64, 128],
    eval_mqar_samples=2,
    eval_passkey_lengths=[128, 160],
    eval_depths=[0.0, 1.0],
    eval_passkey_samples=1,
    eval_text_sequences=2,
    loader_workers=0,
)


# --- tokenizer ------------------------------------------------------------------------------------


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word level over the haystack prose, the needle templates and the digits (each digit a token)."""
    texts = [haystack_text(), " ".join(_ADJECTIVES + _NOUNS), " ".join("0123456789")]
    texts += [f"{t.intro} {t.head} {t.tail} {t.question}" for t in TEMPLATES.values()]
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>", "<pad>"]))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


# --- data -----------------------------------------------------------------------------------------


class RecallMix(IterableDataset):
    """Endless fixed-length training sequences: MQAR, needle prompts with their answer, and prose.

    ``labels`` are -100 except where the sequence teaches something: the queried values (MQAR), the
    answer and EOS (needles), every token (prose). The loss averages per sequence first, so a needle
    prompt's few answer tokens weigh as much as a page of prose.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, settings: Settings, length: int, seed: int) -> None:
        self.tokenizer, self.length, self.seed = tokenizer, length, seed
        self.mix = settings.mix
        self.haystack = TokenizedHaystack.build(tokenizer)
        self.prefix = prefix_ids(tokenizer)
        self.pairs = [n for n in settings.mqar_pairs if min_length(n, len(self.prefix)) <= length]
        self.vocab = MqarVocabulary.build(tokenizer, min_pool=max(self.pairs))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        rng = random.Random(f"{self.seed}-{info.id if info else 0}")
        kinds, weights = zip(*self.mix.items())
        while True:
            kind = rng.choices(kinds, weights)[0]
            input_ids, labels = getattr(self, f"_{kind if kind in ('mqar', 'text') else 'needle'}")(kind, rng)
            yield {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels)}

    def _mqar(self, kind: str, rng: random.Random) -> tuple[list[int], list[int]]:
        sample = build_mqar_sample(self.vocab, self.prefix, rng.choice(self.pairs), self.length, rng)
        labels = [-100] * self.length
        for position, target in zip(sample.query_positions, sample.targets):
            labels[position + 1] = target
        return sample.input_ids, labels

    def _needle(self, kind: str, rng: random.Random) -> tuple[list[int], list[int]]:
        # The word-level tokenizer gives every answer of a task the same token count, so the prompt length
        # that leaves room for answer + EOS is fixed per task.
        answer_len = TEMPLATES[kind].value_digits + 1
        sample = build_needle_sample(self.tokenizer, self.haystack, kind, self.length - answer_len, rng.random(), rng)
        answer = sample.answer_ids + [self.tokenizer.eos_token_id]
        assert len(answer) == answer_len
        return sample.input_ids + answer, [-100] * len(sample.input_ids) + answer

    def _text(self, kind: str, rng: random.Random) -> tuple[list[int], list[int]]:
        ids = self.prefix + self.haystack.fill(self.length - len(self.prefix), rng)[0]
        return ids, ids


def sequence_mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over each sequence's labelled tokens, then over sequences."""
    targets = labels[:, 1:]
    losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="none")
    mask = (targets != -100).float()
    return ((losses * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


# --- models ---------------------------------------------------------------------------------------


def new_model(arch: str, settings: Settings, tokenizer: PreTrainedTokenizerFast, seed: int) -> torch.nn.Module:
    """A randomly initialized, unexpanded StateX model (``statex_layers=[]`` is the plain architecture)."""
    torch.manual_seed(seed)
    special = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "hidden_size": settings.hidden_size,
        "num_hidden_layers": settings.num_layers,
        "statex_layers": [],
        # Tied embeddings: a recalled value's input embedding is already its output direction, so copying it
        # from the state needs no separately learned 350-token input->output map. On CPU (2 layers, width 128),
        # MQAR with 2 pairs at 16 tokens: untied GLA stayed at chance for 400 steps, tied reached 53%; Mamba2
        # with 8 pairs at 64 tokens after 800 steps: 14% untied, 23% tied.
        "tie_word_embeddings": True,
    }
    if arch == "gla":
        # A short convolution on q/k/v (fla's use_short_conv), as small recurrent models need it to learn
        # associative recall in few steps (the Zoology finding); Mamba2 has its own conv1d. (The model class
        # initializes these convolutions as PyTorch does, not as fla does: fla's normal(0, 0.02) leaves the
        # token mixers of a model this narrow silent, and recall was never learned.)
        # initializer_range 0.1 (transformers' Mamba2 default) instead of fla's 0.02, which is sized for widths
        # of ~2k: at width 128-256, std-0.02 q/k/v projections and embeddings leave GLA on the MQAR plateau for
        # most of a short run. On CPU (2 layers, width 128, 2 heads, tied, lr 3e-3, MQAR 8 pairs at 64 tokens,
        # seed 0), accuracy after 700 / 1500 steps: 0.009 / 0.096 at 0.02, 0.815 / 0.971 at 0.1 (untied Mamba2:
        # 0.096 / 0.781). At width 256 with 4 heads, after 600 steps: 0.015 at 0.02, 0.062 at 0.1 (loss
        # 5.39 vs 5.03).
        config = statex_hf.StateXGLAConfig(
            num_heads=settings.gla_heads,
            expand_k=0.5,
            expand_v=1.0,
            use_short_conv=True,
            initializer_range=0.1,
            **special,
        )
        return statex_hf.StateXGLAForCausalLM(config)
    config = statex_hf.StateXMamba2Config(
        num_heads=2 * settings.hidden_size // settings.mamba2_head_dim,
        head_dim=settings.mamba2_head_dim,
        expand=2,
        state_size=settings.mamba2_state_size,
        n_groups=1,
        chunk_size=64,
        **special,
    )
    return statex_hf.StateXMamba2ForCausalLM(config)


def save_as_source_checkpoint(model_dir: Path, arch: str, out: Path) -> None:
    """The unexpanded checkpoint as the public format ``statex-hf convert`` reads (fla GLA / transformers Mamba2).

    Weight names already match (the models' invariant); only config.json's type and StateX fields change.
    """
    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    for key in ("statex_layers", "statex_num_heads", "statex_state_size", "chunked_loss_size", "auto_map"):
        config.pop(key, None)
    config["model_type"] = arch
    config["architectures"] = ["GLAForCausalLM" if arch == "gla" else "Mamba2ForCausalLM"]
    (out / "config.json").write_text(json.dumps(config, indent=2))


def run_cli(argv: list[str]) -> None:
    """``statex-hf ARGV`` in this process; its chatter is kept out of the report unless it fails."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = statex_cli(argv)
    if code:
        sys.stdout.write(buffer.getvalue())
        raise RuntimeError(f"statex-hf {' '.join(argv)} exited with {code}")


# --- training -------------------------------------------------------------------------------------


def train(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    settings: Settings,
    *,
    length: int,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    device: str,
) -> dict[str, float]:
    """AdamW (0.9, 0.95), weight decay 0.1, warm-up then cosine, grad clip 1.0, bf16 autocast on CUDA (the
    paper's post-training recipe, scaled down). Returns the final loss, tokens and seconds."""
    torch.manual_seed(seed)
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
        fused=device.startswith("cuda"),
    )
    warmup = min(settings.warmup_steps, steps // 4)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    loader = DataLoader(
        RecallMix(tokenizer, settings, length, seed),
        batch_size=batch,
        num_workers=settings.loader_workers,
        pin_memory=device.startswith("cuda"),
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()
    start, recent = time.time(), []
    for step, data in zip(range(steps), loader):
        # No host sync per step (non-blocking copies, the loss kept on the device): the step of these small
        # models is host-bound, and a sync each step stops the host from queueing the next one meanwhile.
        input_ids = data["input_ids"].to(device, non_blocking=True)
        labels = data["labels"].to(device, non_blocking=True)
        with autocast:
            logits = model(input_ids=input_ids, use_cache=False).logits
        loss = sequence_mean_loss(logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        recent = (recent + [loss.detach()])[-20:]
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            elapsed = time.time() - start
            print(f"    step {step:>5}/{steps}  loss {torch.stack(recent).mean():.3f}  {elapsed:.0f} s", flush=True)
    model.eval()
    if device.startswith("cuda"):
        torch.cuda.synchronize()  # the last steps may still be queued
    seconds = time.time() - start
    return {"final_loss": torch.stack(recent).mean().item(), "tokens": steps * batch * length, "seconds": seconds}


@torch.no_grad()
def prose_loss(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, settings: Settings, device: str) -> float:
    """Mean next-token loss on prose sequences of the pretraining length (fixed seed: the same for every model)."""
    data = RecallMix(tokenizer, settings, settings.pretrain_length, seed=12345)
    rng = random.Random(12345)
    losses = []
    for _ in range(settings.eval_text_sequences):
        ids, labels = data._text("text", rng)
        logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits
        losses.append(sequence_mean_loss(logits, torch.tensor([labels], device=device)).item())
    return statistics.mean(losses)


@torch.no_grad()
def passkey_teacher_forced(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, settings: Settings, device: str
) -> float:
    """Passkey prompts of the continuation length, answer given: the share whose every answer digit is
    the argmax (the EOS after it is not scored, as ``eval niah`` does not). The model in memory, fp32
    weights (TF32 matmuls on CUDA), one forward: set beside ``statex-hf eval niah`` (the saved
    checkpoint, bf16 on CUDA, greedy decoding with the cache), a gap between the two points at saving,
    loading, bf16 or decoding rather than at what the model learned."""
    data = RecallMix(tokenizer, settings, settings.continue_length, seed=12345)
    rng = random.Random(12345)
    correct = []
    for _ in range(settings.eval_passkey_samples * len(settings.eval_depths)):
        ids, labels = data._needle("passkey", rng)
        logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0, :-1]
        targets = torch.tensor(labels[1:], device=device)
        answer = (targets != -100) & (targets != tokenizer.eos_token_id)
        correct.append(bool((logits.argmax(-1)[answer] == targets[answer]).all()))
    return statistics.mean(correct)


# --- evaluation -----------------------------------------------------------------------------------


def evaluate(model_dir: Path, out: Path, settings: Settings, seed: int, device: str, plots: bool) -> dict[str, Any]:
    """MQAR and passkey through the ``statex-hf eval`` command line, on the saved checkpoint."""
    common = ["--seed", str(seed), "--device", device, "--no-progress"] + ([] if plots else ["--no-plot"])
    out.mkdir(parents=True, exist_ok=True)
    run_cli(
        ["eval", "mqar", str(model_dir), "--output", str(out / "mqar.json")]
        + ["--num-pairs", ",".join(map(str, settings.eval_mqar_pairs))]
        + ["--lengths", ",".join(map(str, settings.eval_mqar_lengths))]
        + ["--samples", str(settings.eval_mqar_samples)]
        + common
    )
    run_cli(
        ["eval", "niah", str(model_dir), "--task", "passkey", "--output", str(out / "passkey.json")]
        + ["--lengths", ",".join(map(str, settings.eval_passkey_lengths))]
        + ["--depths", ",".join(f"{d:g}" for d in settings.eval_depths)]
        + ["--samples", str(settings.eval_passkey_samples)]
        + common
    )
    mqar = json.loads((out / "mqar.json").read_text())
    passkey = json.loads((out / "passkey.json").read_text())
    # MQAR by length: mean over the pair counts that fit at that length.
    mqar_by_length = []
    for j in range(len(mqar["lengths"])):
        column = [row[j] for row in mqar["accuracy"] if row[j] is not None]
        mqar_by_length.append(statistics.mean(column) if column else None)
    return {
        "mqar_lengths": mqar["lengths"],
        "mqar_by_length": mqar_by_length,
        "mqar_grid": mqar["accuracy"],
        "mqar_mean": mqar["mean_accuracy"],
        "passkey_lengths": passkey["lengths"],
        "passkey_by_length": [statistics.mean(row) for row in passkey["accuracy"]],
        "passkey_mean": passkey["mean_accuracy"],
    }


# --- one seed -------------------------------------------------------------------------------------


def run_arch(
    arch: str, seed: int, settings: Settings, tokenizer: PreTrainedTokenizerFast, work: Path, out: Path, device: str
) -> dict[str, Any]:
    """Pretrain, LPT and StateX for one architecture and seed; every model evaluated."""
    results: dict[str, Any] = {}
    root = work / f"{arch}-seed{seed}"
    plots = seed == 0

    def finish(name: str, model: torch.nn.Module, path: Path, training: dict[str, float] | None) -> None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        eval_start = time.time()
        loss = prose_loss(model, tokenizer, settings, device)
        forced = passkey_teacher_forced(model, tokenizer, settings, device)
        model.cpu()
        evals = evaluate(path, out / "evals" / f"{arch}-seed{seed}-{name}", settings, seed, device, plots)
        results[name] = {
            "training": training,
            "prose_loss": loss,
            "passkey_teacher_forced": forced,
            "eval_seconds": time.time() - eval_start,
            **evals,
        }
        speed = f"train {training['tokens'] / training['seconds']:,.0f} tok/s, " if training else ""
        print(
            f"  {arch} {name:>8}: MQAR {evals['mqar_mean']:.3f}  passkey {evals['passkey_mean']:.3f} "
            f"(teacher-forced in memory {forced:.3f})  prose loss {loss:.3f}  "
            f"({speed}eval {time.time() - eval_start:.0f} s)",
            flush=True,
        )

    print(f"[seed {seed}] {arch}: pretrain {settings.pretrain_steps} steps at {settings.pretrain_length} tokens")
    model = new_model(arch, settings, tokenizer, seed)
    training = train(
        model, tokenizer, settings, length=settings.pretrain_length, steps=settings.pretrain_steps,
        batch=settings.pretrain_batch, lr=settings.pretrain_lr, seed=seed, device=device,
    )  # fmt: skip
    finish("original", model, root / "original", training)
    del model

    continuation = {
        "length": settings.continue_length,
        "steps": settings.continue_steps,
        "batch": settings.continue_batch,
        "lr": settings.continue_lr,
        "seed": 1000 + seed,  # the same data and order for LPT and StateX
        "device": device,
    }
    print(f"[seed {seed}] {arch}: LPT {settings.continue_steps} steps at {settings.continue_length} tokens")
    model = AutoModelForCausalLM.from_pretrained(root / "original", dtype=torch.float32)
    finish("LPT", model, root / "LPT", train(model, tokenizer, settings, **continuation))
    del model

    how = " ".join(settings.convert_args) or "(defaults)"
    print(f"[seed {seed}] {arch}: statex-hf convert {how}, then the same continuation")
    save_as_source_checkpoint(root / "original", arch, root / "source")
    run_cli(
        ["convert", arch, str(root / "source"), str(root / "expanded"), "--seed", str(seed), "--quiet"]
        + settings.convert_args
    )
    model = AutoModelForCausalLM.from_pretrained(root / "expanded", dtype=torch.float32)
    results["statex_layers"] = list(model.config.statex_layers)
    finish("StateX", model, root / "StateX", train(model, tokenizer, settings, **continuation))
    del model
    shutil.rmtree(root)  # checkpoints are small but many; the evals keep what the report needs
    return results


# --- report ---------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values: list[float]) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.3f} ± {std:.3f}" if len(values) > 1 else f"{mean:.3f}"


def report(runs: dict[str, dict[str, Any]], settings: Settings, out: Path, device: str) -> str:
    """The markdown table, the verdict lines and the comparison plots (``runs[seed][arch]``)."""
    minutes = sum(r["seconds"] for by_arch in runs.values() for r in by_arch.values()) / 60
    lines = [
        "# StateX vs LPT in miniature",
        "",
        f"Device: {device}; {minutes:.1f} min of training and evaluation in all. "
        f"Pretraining: {settings.pretrain_steps} steps x {settings.pretrain_batch} x {settings.pretrain_length} "
        f"tokens; continuation (LPT and StateX alike): {settings.continue_steps} steps x {settings.continue_batch} "
        f"x {settings.continue_length} tokens; StateX: `statex-hf convert "
        f"{' '.join(settings.convert_args) or '(defaults)'}`. Values: mean ± std over seeds.",
        "",
    ]
    verdicts = []
    for arch in ARCHS:
        seeds = sorted((s for s in runs if arch in runs[s]), key=int)
        if not seeds:
            continue
        first = runs[seeds[0]][arch]
        mqar_lengths, passkey_lengths = first["original"]["mqar_lengths"], first["original"]["passkey_lengths"]
        lines += [
            f"## {arch}: seeds {', '.join(seeds)}; expanded layers {first['statex_layers']}",
            "",
            "| model | MQAR mean | "
            + " | ".join(f"MQAR {format_length(n)}" for n in mqar_lengths)
            + " | passkey mean | "
            + " | ".join(f"passkey {format_length(n)}" for n in passkey_lengths)
            + " | prose loss |",
            "|---" * (4 + len(mqar_lengths) + len(passkey_lengths)) + "|",
        ]
        curves: dict[str, dict[str, Any]] = {"mqar": {}, "passkey": {}}
        errors: dict[str, dict[str, Any]] = {"mqar": {}, "passkey": {}}
        for name in MODELS:
            per_seed = [runs[s][arch][name] for s in seeds]
            cells = [_fmt([r["mqar_mean"] for r in per_seed])]
            for j in range(len(mqar_lengths)):
                column = [r["mqar_by_length"][j] for r in per_seed]
                cells.append("-" if None in column else _fmt(column))
            cells.append(_fmt([r["passkey_mean"] for r in per_seed]))
            cells += [_fmt([r["passkey_by_length"][j] for r in per_seed]) for j in range(len(passkey_lengths))]
            cells.append(_fmt([r["prose_loss"] for r in per_seed]))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
            for task, lengths in (("mqar", mqar_lengths), ("passkey", passkey_lengths)):
                points = [
                    (n, _mean_std([r[f"{task}_by_length"][j] for r in per_seed]))
                    for j, n in enumerate(lengths)
                    if all(r[f"{task}_by_length"][j] is not None for r in per_seed)
                ]
                curves[task][name] = ([n for n, _ in points], [m for _, (m, _) in points])
                errors[task][name] = [s for _, (_, s) in points]
        lines.append("")
        # Runs made before this check lack it: report it over the seeds that have it, and say which.
        have = [s for s in seeds if all(runs[s][arch][n].get("passkey_teacher_forced") is not None for n in MODELS)]
        if have:
            forced = {n: [runs[s][arch][n]["passkey_teacher_forced"] for s in have] for n in MODELS}
            which = "" if have == seeds else f" (seeds {', '.join(map(str, have))})"
            lines += [
                f"Passkey at {format_length(settings.continue_length)} tokens with the answer given{which} (the model "
                "in memory, fp32 weights: what it learned, apart from saving, bf16 and decoding): "
                + ", ".join(f"{n} {_fmt(v)}" for n, v in forced.items()),
                "",
            ]
        for task, title in (("mqar", "MQAR accuracy (mean over pair counts)"), ("passkey", "passkey exact match")):
            plot_accuracy_by_length(
                curves[task],
                out / f"{arch}_{task}.png",
                f"{arch}: {title}, {len(seeds)} seed(s)",
                errors=errors[task],
            )
            lines.append(f"![{arch} {task}]({arch}_{task}.png)")
        lines.append("")
        for metric in ("mqar_mean", "passkey_mean"):
            diffs = [runs[s][arch]["StateX"][metric] - runs[s][arch]["LPT"][metric] for s in seeds]
            wins = sum(d > 0 for d in diffs)
            verdicts.append(
                f"- {arch} {metric.split('_')[0]}: StateX - LPT = {_fmt(diffs)} "
                f"(StateX ahead in {wins} of {len(diffs)} seeds; per seed {', '.join(f'{d:+.3f}' for d in diffs)})"
            )
        # The comparison means something only if pretraining taught recall where it trained.
        learned = [x for s in seeds if (x := runs[s][arch]["original"]["mqar_by_length"][0]) is not None]
        if learned and min(learned) < 0.5:
            verdicts.append(
                f"- WARNING {arch}: the pretrained model's MQAR accuracy at {format_length(mqar_lengths[0])} tokens is "
                f"{_fmt(learned)}: pretraining did not teach recall well, so StateX vs LPT says little. "
                "Train longer (--pretrain-steps) before reading the verdict."
            )
    lines += ["## Verdict", "", *verdicts, ""]
    text = "\n".join(lines)
    (out / "results.md").write_text(text)
    return text


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny models, a few steps")
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results/reproduce_statex"))
    parser.add_argument("--seeds", help="comma-separated seeds (default 0,1,2; with --tiny 0)")
    parser.add_argument("--archs", default="gla,mamba2", help="comma-separated, from gla,mamba2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=18.0,
        help="start another (seed, arch) unit only if the longest one so far still fits (default 18)",
    )
    parser.add_argument(
        "--convert-args",
        help="extra statex-hf convert arguments for the StateX arm, split at spaces; give them with '=', "
        "e.g. --convert-args=--layers=2,4,6 (default: none, the CLI's defaults)",
    )
    parser.add_argument("--pretrain-steps", type=int)
    parser.add_argument("--continue-steps", type=int)
    parser.add_argument("--work-dir", type=Path, help="where checkpoints live while a seed runs (default: a temp dir)")
    parser.add_argument("--fresh", action="store_true", help="ignore results.json in --output-dir instead of resuming")
    parser.add_argument(
        "--merge", type=Path, nargs="+", metavar="DIR", help="no training: merge these runs' results.json into a report"
    )
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in (args.seeds or ("0" if args.tiny else "0,1,2")).split(",") if s.strip()]
    args.archs = [a for a in args.archs.split(",") if a.strip()]
    if not args.seeds or any(a not in ARCHS for a in args.archs):
        parser.error("--seeds needs at least one seed; --archs takes gla and/or mamba2")
    return args


def load_runs(directory: Path) -> tuple[Settings, dict[str, dict[str, Any]], str]:
    """Settings, runs and device of an earlier results.json (fields it predates take their defaults)."""
    payload = json.loads((directory / "results.json").read_text())
    return Settings(**payload["settings"]), payload["runs"], payload["device"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from transformers.utils import logging

    logging.disable_progress_bar()
    settings = TINY if args.tiny else Settings()
    overrides = {
        "pretrain_steps": args.pretrain_steps,
        "continue_steps": args.continue_steps,
        "convert_args": args.convert_args.split() if args.convert_args else None,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    args.output_dir.mkdir(parents=True, exist_ok=True)
    results_file = args.output_dir / "results.json"

    if args.merge:  # only the report, from runs made elsewhere (e.g. one seed per GPU job)
        runs: dict[str, dict[str, Any]] = {}
        for i, directory in enumerate(args.merge):
            their_settings, more, device = load_runs(directory)
            # A mean over seeds means something only within one configuration (e.g. not across --convert-args).
            if i and asdict(their_settings) != asdict(settings):
                print(f"--merge: {directory} was made with other settings than {args.merge[0]}", file=sys.stderr)
                return 2
            settings = their_settings
            for seed, by_arch in more.items():
                if twice := sorted(set(by_arch) & set(runs.get(seed, {}))):
                    print(f"--merge: seed {seed} {', '.join(twice)} is in two folders (again in {directory})",
                          file=sys.stderr)  # fmt: skip
                    return 2
                runs.setdefault(seed, {}).update(by_arch)
        for directory in args.merge:
            if (directory / "evals").is_dir() and directory.resolve() != args.output_dir.resolve():
                shutil.copytree(directory / "evals", args.output_dir / "evals", dirs_exist_ok=True)
        results_file.write_text(json.dumps({"settings": asdict(settings), "device": device, "runs": runs}, indent=2))
        print(report(runs, settings, args.output_dir, device))
        return 0

    runs = {}
    if results_file.exists() and not args.fresh:  # resume: keep what an earlier invocation finished
        earlier_settings, runs, _ = load_runs(args.output_dir)
        if asdict(earlier_settings) != json.loads(json.dumps(asdict(settings))):
            print(f"{results_file} was made with other settings: use --fresh or another --output-dir", file=sys.stderr)
            return 2
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    elif args.tiny:
        # Tiny matmuls gain nothing from threads, and on a shared CPU the idle threads' spinning costs 5x.
        torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    start, longest = time.time(), 0.0
    with tempfile.TemporaryDirectory(prefix="statex-repro-") as tmp:
        work = args.work_dir or Path(tmp)
        for seed in args.seeds:
            for arch in args.archs:
                if arch in runs.get(str(seed), {}):
                    print(f"[seed {seed}] {arch}: already in {results_file}")
                    continue
                elapsed = time.time() - start
                if longest and elapsed + longest > args.max_minutes * 60:
                    print(f"stopping before seed {seed} {arch}: {elapsed / 60:.1f} min spent, a unit takes up to "
                          f"{longest / 60:.1f} (--max-minutes {args.max_minutes:g}); run again to resume")  # fmt: skip
                    break
                unit_start = time.time()
                result = run_arch(arch, seed, settings, tokenizer, work, args.output_dir, args.device)
                result["seconds"] = time.time() - unit_start
                longest = max(longest, result["seconds"])
                runs.setdefault(str(seed), {})[arch] = result
                # Written after every unit: a run cut short keeps what it finished, and the next one resumes.
                payload = {"settings": asdict(settings), "device": args.device, "runs": runs}
                results_file.write_text(json.dumps(payload, indent=2) + "\n")
            else:
                continue
            break
    print(report(runs, settings, args.output_dir, args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
