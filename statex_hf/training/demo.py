"""``statex-hf demo``: the whole StateX pipeline in about a minute, offline, on a CPU.

For each family (GLA and Mamba2): build a small source model, expand its state with StateX
(``statex_hf.expansion``, the paper's default re-initialization), post-train it with ``posttrain``
on the short documents shipped in ``statex_hf/data/demo_corpus.jsonl`` (packed, state reset at
document starts), generate a sample, and save it. The tokenizer is a small byte-level BPE trained
on the same text, so nothing is downloaded. The source models are random: the demo shows the
mechanics (and that the loss falls), not the paper's recall gains, and it says so. (The miniature in
``benchmarks/reproduce_statex.py`` measures StateX against plain post-training on recall; at its scale
StateX did not come out ahead, so there is no pretrained source model worth shipping for a recall demo.)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from statex_hf.families import FAMILIES, get_family

if TYPE_CHECKING:  # torch and transformers load when the demo runs, not when the CLI parses
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

    from statex_hf.expansion import Expansion

DEMO_CORPUS = "demo_corpus.jsonl"
PROMPT = "The key to the garden shed is"
EOS = "<|endoftext|>"


@dataclass
class DemoResult:
    """What the demo did for one family."""

    family: str
    output_dir: str
    parameters: int
    expanded_layers: list[int]
    growth: str  # e.g. "heads merged 4 -> 1"
    state_before: int
    state_after: int
    steps: int
    first_loss: float
    last_loss: float
    seconds: float
    sample: str


def corpus_path() -> str:
    """The demo corpus shipped in the package (one JSON object with a ``text`` field per line)."""
    return str(resources.files("statex_hf") / "data" / DEMO_CORPUS)


def corpus_texts() -> list[str]:
    with open(corpus_path(), encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def build_tokenizer(texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` (deterministic; EOS doubles as padding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, pad_token=EOS)


def source_config(family: str, vocab_size: int, eos_id: int) -> dict[str, Any]:
    """A small source checkpoint's config.json contents (the family's source field names, e.g. fla GLA's)."""
    entry = get_family(family)
    special = {"vocab_size": vocab_size, "bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}
    fields = entry.config_class(**entry.demo_config, **special).to_dict()
    # With no expanded layer the StateX classes are the source architectures (the parity
    # invariant), so this is exactly what a source checkpoint's config.json holds.
    for key in ("statex_layers", entry.state_option.config_field, "chunked_loss_size", "architectures"):
        fields.pop(key, None)
    fields["model_type"] = entry.source_model_type
    return fields


def build_source(family: str, config: dict[str, Any]) -> PreTrainedModel:
    """A freshly initialized source model (no expanded layer) for ``config``."""
    entry = get_family(family)
    fields = {k: v for k, v in config.items() if k != "model_type"}
    return entry.causal_lm_class(entry.config_class(**fields))


def expansion(family: str, config: dict[str, Any]) -> Expansion:
    """StateX's choices for the demo: every second layer, the paper's init, the family's default growth
    (GLA merges all heads into one, Mamba2 grows N 4x)."""
    return get_family(family).expansion_class(config, every=2, init="reinit")


def expand(family: str, config: dict[str, Any], source: PreTrainedModel) -> PreTrainedModel:
    """The source model with StateX applied (:func:`expansion`)."""
    surgery = expansion(family, config)
    model = get_family(family).causal_lm_class(surgery.config)
    model.load_state_dict(surgery.expand(source.state_dict()), strict=True)
    return model


def run_family(
    family: str,
    tokenizer: PreTrainedTokenizerFast,
    output_dir: str,
    steps: int,
    seq_len: int,
    batch_size: int,
    learning_rate: float,
) -> DemoResult:
    import torch

    from statex_hf.training.posttrain import posttrain
    from statex_hf.training.progress import LossProgressBar

    start = time.perf_counter()
    torch.manual_seed(0)
    config = source_config(family, len(tokenizer), tokenizer.eos_token_id)
    source = build_source(family, config)
    model = expand(family, config, source)
    surgery = expansion(family, config)
    layers = list(model.config.statex_layers)
    bar = LossProgressBar(desc=f"[{family}] post-train")
    posttrain(
        model,
        corpus_path(),
        output_dir,
        tokenizer=tokenizer,
        seq_len=seq_len,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=learning_rate,
        # A model this small needs no activation checkpointing; recomputing would only cost time.
        gradient_checkpointing=False,
        warmup_steps=max(1, steps // 10),
        logging_steps=1,
        save_strategy="no",
        callbacks=[bar],
        seed=0,
        show_recipe=False,  # the demo's own lines say what it runs
    )
    model.eval()
    prompt = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    sample = tokenizer.decode(out[0], skip_special_tokens=True)
    return DemoResult(
        family=family,
        output_dir=output_dir,
        parameters=sum(p.numel() for p in model.parameters()),
        expanded_layers=layers,
        growth=surgery.growth(),
        state_before=sum(surgery.state_size(i, expanded=False) for i in range(source.config.num_hidden_layers)),
        state_after=sum(surgery.state_size(i, expanded=i in layers) for i in range(model.config.num_hidden_layers)),
        steps=steps,
        first_loss=bar.losses[0],
        last_loss=bar.losses[-1],
        seconds=time.perf_counter() - start,
        sample=" ".join(sample.split()),
    )


def describe(result: DemoResult) -> list[str]:
    return [
        f"[{result.family}] expanded layers {result.expanded_layers} ({result.growth}): recurrent state "
        f"{result.state_before:,} -> {result.state_after:,} elements, {result.parameters:,} parameters",
        f"[{result.family}] post-trained {result.steps} steps: loss {result.first_loss:.2f} -> {result.last_loss:.2f} "
        f"({result.seconds:.0f} s)",
        f'[{result.family}] sample: "{result.sample}"',
        f"[{result.family}] saved to {result.output_dir}",
    ]


def demo(
    output_dir: str = "statex-demo",
    steps: int = 60,
    seq_len: int = 64,
    batch_size: int = 4,
    families: tuple[str, ...] = tuple(FAMILIES),
    learning_rate: float = 1e-2,
) -> list[DemoResult]:
    """Run the demo; writes ``output_dir/<family>`` and prints what it did. Returns one result per family."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # save_pretrained's shard bar; the demo keeps its own bars
    # The demo's tensors are tiny: one thread is faster than several (synchronization costs more
    # than it saves, and far more on a shared 2-core machine, where spinning threads fight).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _demo(output_dir, steps, seq_len, batch_size, families, learning_rate)
    finally:
        torch.set_num_threads(threads)


def _demo(
    output_dir: str, steps: int, seq_len: int, batch_size: int, families: tuple[str, ...], learning_rate: float
) -> list[DemoResult]:
    import torch

    start = time.perf_counter()
    texts = corpus_texts()
    tokenizer = build_tokenizer(texts)
    tokens = sum(len(ids) for ids in tokenizer(texts)["input_ids"])
    threads = torch.get_num_threads()
    device = "GPU" if torch.cuda.is_available() else f"CPU, {threads} thread{'s' if threads > 1 else ''}"
    print(
        f"StateX demo ({device}): the pipeline's mechanics on small models from random weights: build a source "
        "model, expand its state, post-train, generate, save."
    )
    print(
        f"data: {DEMO_CORPUS} shipped in statex_hf/data ({len(texts)} documents, {tokens:,} tokens; "
        f"byte-level BPE, {len(tokenizer)} tokens, trained on it), packed into {seq_len}-token sequences "
        "with the state reset at each document start"
    )
    results = []
    for family in families:
        out = os.path.join(output_dir, family)
        result = run_family(family, tokenizer, out, steps, seq_len, batch_size, learning_rate)
        for line in describe(result):
            print(line)
        results.append(result)
    print(
        f"What this shows: expansion, post-training and saving run end to end and the loss falls. What it does not: "
        f"recall. Models this small, started from random weights and trained on {tokens:,} tokens, only learn which "
        "words are frequent (hence the samples). Whether StateX beats plain post-training on recall is measured by "
        "benchmarks/reproduce_statex.py; see the README, 'StateX in miniature'."
    )
    print(f"done in {time.perf_counter() - start:.0f} s. Load a result with:")
    print("  import statex_hf; from transformers import AutoModelForCausalLM")
    print(f"  AutoModelForCausalLM.from_pretrained({os.path.join(output_dir, families[0])!r})")
    return results


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str, argv: Sequence[str] = ()) -> None:
    """``statex-hf demo``; every number is checked as it is read."""
    from statex_hf.cli import at_least, set_command

    p = subparsers.add_parser(name, help=help_text, description=help_text)
    p.add_argument("output_dir", nargs="?", default="statex-demo", help="where to save (default ./statex-demo)")
    p.add_argument("--steps", type=at_least(1), default=60, help="post-training steps per model (60)")
    p.add_argument("--seq-len", type=at_least(2), default=64, help="tokens per packed sequence (default 64)")
    p.add_argument("--batch-size", type=at_least(1), default=4, help="sequences per step (default 4)")
    p.add_argument(
        "--learning-rate",
        type=at_least(0, float),
        default=1e-2,
        help="peak learning rate (default 1e-2)",
    )
    p.add_argument("--family", choices=tuple(FAMILIES), action="append", help="only this family (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace the folders an earlier demo wrote")
    set_command(p, _run)


def _run(args: argparse.Namespace) -> int:
    import shutil

    from statex_hf.outputs import check_output_folder

    families = tuple(dict.fromkeys(args.family)) if args.family else tuple(FAMILIES)
    # Every folder the demo writes is checked before the first model is built.
    outputs = [
        check_output_folder(os.path.join(args.output_dir, family), overwrite=args.overwrite) for family in families
    ]
    for out in outputs:
        if out.exists():
            shutil.rmtree(out)  # --overwrite, and checked: a folder an earlier StateX save wrote
    demo(
        args.output_dir,
        steps=args.steps,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        families=families,
        learning_rate=args.learning_rate,
    )
    return 0


__all__ = ["DemoResult", "add_parser", "build_tokenizer", "corpus_path", "demo"]
