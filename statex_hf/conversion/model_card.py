"""The README model card of a converted checkpoint: what was expanded, how, and how to post-train it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData, metadata_load

from statex_hf.families import get_family

CITATION = """@article{shen2025statex,
  title   = {StateX: Enhancing RNN Recall via Post-training State Expansion},
  author  = {Shen, Xingyu and Chen, Yingfa and Thai, Zhen Leng and Han, Xu and Liu, Zhiyuan and Sun, Maosong},
  journal = {arXiv preprint arXiv:2509.22630},
  year    = {2025}
}"""


def init_description(family: str, init: str) -> str:
    """What ``--init`` did to the expanded layers, in one sentence part (the registry's words)."""
    return get_family(family).init_cards[init]


@dataclass
class CardFacts:
    """What the card reports; filled in by the conversion."""

    family: str
    source: str
    source_is_repo: bool
    source_format: str
    layers: list[int]
    num_layers: int
    init: str
    seed: int
    state_before: list[int]
    state_after: list[int]
    params_before: int
    params_after: int
    layer_params_before: list[int]
    layer_params_after: list[int]
    architecture: str
    model_id: str  # what users pass to from_pretrained: the Hub repo when pushed, else the folder
    license: dict[str, str] = field(default_factory=dict)  # the source card's license fields


LICENSE_FIELDS = ("license", "license_name", "license_link")


def source_license(folder: Path) -> dict[str, str]:
    """The license of the source's model card (``README.md`` metadata), empty if it names none."""
    card = folder / "README.md"
    metadata = (metadata_load(card) if card.is_file() else None) or {}
    return {name: str(metadata[name]) for name in LICENSE_FIELDS if metadata.get(name)}


def model_card(facts: CardFacts) -> ModelCard:
    """A ``huggingface_hub.ModelCard`` (YAML metadata + body) for a converted checkpoint."""
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["statex", facts.family, "recurrent", "state-expansion"],
        base_model=facts.source if facts.source_is_repo else None,
        **facts.license,
    )
    rows = "\n".join(
        f"| {i} | {facts.state_before[i]:,} → {facts.state_after[i]:,} "
        f"| {facts.layer_params_before[i]:,} → {facts.layer_params_after[i]:,} |"
        for i in facts.layers
    )
    total_before, total_after = sum(facts.state_before), sum(facts.state_after)
    delta = facts.params_after - facts.params_before
    growth = f"{100 * (total_after - total_before) / total_before:+.1f}%" if total_before else "n/a"
    layers = ", ".join(map(str, facts.layers)) or "none"
    body = f"""
# StateX {facts.family.upper()} ({facts.architecture})

This checkpoint is `{facts.source}` ({facts.source_format}) after **StateX** post-training state expansion
([arXiv:2509.22630](https://arxiv.org/abs/2509.22630)), converted with the `statex-hf` package
(`statex-hf convert {facts.family}`). It has **not been post-trained yet**: expect it to need
long-context post-training before it matches or beats the source model.

## What was expanded

- Method: {get_family(facts.family).card_method}.
- Expanded layers: {layers} (of {facts.num_layers}).
- Init mode: `{facts.init}` — {init_description(facts.family, facts.init)}. Seed: {facts.seed}.
- Parameters: {facts.params_before:,} → {facts.params_after:,} ({delta:+,}).
- Recurrent state, all layers: {total_before:,} → {total_after:,} values per sequence ({growth}).

| layer | recurrent state | parameters |
|------:|----------------:|-----------:|
{rows}

## Use

The model's code ships with the weights, so `transformers` alone loads it:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{facts.model_id}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{facts.model_id}", trust_remote_code=True)
```

With the `statex-hf` package installed, `import statex_hf` and leave out `trust_remote_code` to use its classes.

## Post-training (the paper's setting)

Long-context data (SlimPajama), 64K-token sequences, 10B tokens, batch 512K tokens, AdamW (0.9, 0.95),
weight decay 0.1, lr 3e-4 with cosine decay and 1000 warm-up steps, gradient clipping 1.0, bf16.
`transformers.Trainer` works as with any causal LM.

## Citation

```bibtex
{CITATION}
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
