"""Needle-in-a-haystack and passkey retrieval, built with the evaluated model's own tokenizer.

A prompt of exactly ``length`` tokens is::

    intro | haystack[:p] | needle | haystack[p:] | question | answer prefix

The needle is ``head + value + tail`` (``The special magic number for amber falcon is: 4718203.``),
and the prompt ends with the needle's ``head`` token for token, so a model that recalls the needle
continues with the value. The needle goes in at the sentence boundary of the haystack nearest to
``depth * len(haystack)``; depth 0 puts it right after the intro, depth 1 right before the question.
Scoring is exact match: the first run of digits in the greedy continuation (whitespace removed, so
tokenizers that print digits apart still score) must equal the value.

``task="passkey"`` is the classic passkey prompt (a five-digit key, stated twice in the needle);
``task="niah"`` is the single-needle magic-number prompt with a named key (seven digits).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from statex_hf.eval.decoding import batch_size_for, greedy_continuations, map_batches
from statex_hf.eval.haystack import TokenizedHaystack, encode_pieces

TASKS = ("niah", "passkey")


@dataclass(frozen=True)
class NeedleTemplate:
    """The fixed text of one task; ``{key}`` and ``{value}`` are filled per sample."""

    intro: str
    head: str
    tail: str
    question: str
    value_digits: int


TEMPLATES: dict[str, NeedleTemplate] = {
    "passkey": NeedleTemplate(
        intro="There is an important piece of information hidden inside a lot of irrelevant text. "
        "Find it and memorize it. I will quiz you about the important information there.",
        head="The pass key is",
        tail=". Remember it. {value} is the pass key.",
        question="What is the pass key?",
        value_digits=5,
    ),
    "niah": NeedleTemplate(
        intro="Some special magic numbers are hidden within the following text. "
        "Make sure to memorize them. I will quiz you about the numbers afterwards.",
        head="The special magic number for {key} is:",
        tail=".",
        question="What is the special magic number for {key} mentioned in the provided text?",
        value_digits=7,
    ),
}

# Keys of the magic-number needle: an adjective and a noun, so every key is plain words.
_ADJECTIVES = (
    "amber brave calm dusty eager fading gentle hollow icy jolly kind lively misty noble quiet rusty silent tidy "
    "velvet wild"
).split()
_NOUNS = (
    "anchor badger canyon dolphin ember falcon garden harbor island jacket kettle lantern meadow orchard pebble quarry "
    "river saddle tower willow"
).split()


@dataclass
class NeedleSample:
    """One prompt and where its needle is.

    ``input_ids[needle_start : needle_start + len(needle_ids)] == needle_ids``; ``actual_depth`` is the
    needle's offset in the haystack as a fraction of the haystack (the requested ``depth`` rounded to a
    sentence boundary). The layout is ``intro_len`` intro tokens, then ``haystack_len`` haystack tokens
    with the needle among them, then the question and the needle's first ``head_len`` tokens again.
    """

    input_ids: list[int]
    answer: str
    answer_ids: list[int]
    needle_ids: list[int]
    needle_start: int
    length: int
    depth: float
    actual_depth: float
    key: str | None
    intro_len: int
    haystack_len: int
    head_len: int


def _random_value(rng: random.Random, digits: int) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def build_needle_sample(
    tokenizer: PreTrainedTokenizerBase,
    haystack: TokenizedHaystack,
    task: str,
    length: int,
    depth: float,
    rng: random.Random,
) -> NeedleSample:
    """A prompt of exactly ``length`` tokens with one needle at ``depth`` (0 = start, 1 = end)."""
    if task not in TEMPLATES:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth {depth} is outside [0, 1]")
    template = TEMPLATES[task]
    key = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}" if "{key}" in template.head else None
    value = _random_value(rng, template.value_digits)
    fill = {"key": key, "value": value}

    intro_ids = list(tokenizer(template.intro, add_special_tokens=True)["input_ids"])
    head_ids, value_ids, tail_ids, question_ids = encode_pieces(
        tokenizer,
        [
            " " + template.head.format(**fill),
            " " + value,
            template.tail.format(**fill),
            " " + template.question.format(**fill),
        ],
    )
    needle_ids = head_ids + value_ids + tail_ids
    # The prompt ends with the needle's own head tokens: recalling the needle means continuing with the value.
    ending_ids = question_ids + head_ids

    budget = length - len(intro_ids) - len(needle_ids) - len(ending_ids)
    if budget < 1:
        minimum = length - budget + 1
        raise ValueError(
            f"length {length} is too short for the {task} prompt: its fixed text takes {minimum - 1} tokens "
            f"with this tokenizer; use lengths of at least {minimum}"
        )
    hay_ids, boundaries = haystack.fill(budget, rng)
    target = depth * budget
    position = min(boundaries, key=lambda b: abs(b - target))
    input_ids = intro_ids + hay_ids[:position] + needle_ids + hay_ids[position:] + ending_ids
    assert len(input_ids) == length
    return NeedleSample(
        input_ids=input_ids,
        answer=value,
        answer_ids=value_ids,
        needle_ids=needle_ids,
        needle_start=len(intro_ids) + position,
        length=length,
        depth=depth,
        actual_depth=position / budget,
        key=key,
        intro_len=len(intro_ids),
        haystack_len=budget,
        head_len=len(head_ids),
    )


_DIGITS = re.compile(r"\d+")


def extract_answer(text: str) -> str | None:
    """The first run of digits in ``text`` once whitespace is removed, or None."""
    match = _DIGITS.search("".join(text.split()))
    return match.group(0) if match else None


def is_correct(output: str, answer: str) -> bool:
    """Exact match of the extracted number (``68220`` is right; ``682201`` and ``6822`` are wrong)."""
    return extract_answer(output) == answer


def build_needle_samples(
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    lengths: Sequence[int],
    depths: Sequence[float],
    samples: int,
    seed: int = 0,
    haystack: TokenizedHaystack | None = None,
) -> dict[int, list[NeedleSample]]:
    """All prompts of the grid, by length; each cell's samples are seeded by (seed, length, depth, index)."""
    haystack = TokenizedHaystack.build(tokenizer) if haystack is None else haystack
    grid: dict[int, list[NeedleSample]] = {}
    for length in lengths:
        grid[length] = [
            build_needle_sample(tokenizer, haystack, task, length, depth, random.Random(f"{seed}-{length}-{depth}-{i}"))
            for depth in depths
            for i in range(samples)
        ]
    return grid


def run_niah(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    *,
    task: str = "niah",
    lengths: Sequence[int] = (1024, 4096),
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    samples: int = 5,
    seed: int = 0,
    batch_size: int = 8,
    max_batch_tokens: int = 65536,
    progress: bool = True,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Evaluate needle retrieval over ``lengths`` x ``depths``; returns a JSON-ready dict.

    ``accuracy[i][j]`` is the exact-match rate at ``lengths[i]`` and ``depths[j]``, ``placed_depth[i][j]`` the
    mean depth its needles landed at (the sentence boundary nearest the depth asked for); ``records`` holds
    every prompt's needle position, answer and the model's continuation.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    grid = build_needle_samples(tokenizer, task, lengths, depths, samples, seed)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    records: list[dict[str, Any]] = []
    total = sum(len(v) for v in grid.values())
    with tqdm(total=total, desc=f"{task}", disable=not progress, unit="prompt") as bar:
        for length, cell_samples in grid.items():
            bar.set_postfix(length=length)
            max_new_tokens = max(len(s.answer_ids) for s in cell_samples) + 4

            def generate(batch: Sequence[NeedleSample], max_new_tokens: int = max_new_tokens) -> list[list[int]]:
                return greedy_continuations(model, [s.input_ids for s in batch], max_new_tokens, pad_token_id)

            outputs = map_batches(
                generate, cell_samples, batch_size_for(length, batch_size, max_batch_tokens), bar.update
            )
            for sample, output_ids in zip(cell_samples, outputs):
                output = tokenizer.decode(output_ids, skip_special_tokens=True)
                record = {k: v for k, v in asdict(sample).items() if not k.endswith(("_ids", "_len"))}
                record.update(
                    output=output, prediction=extract_answer(output), correct=is_correct(output, sample.answer)
                )
                records.append(record)

    def cell(length: int, depth: float, field: str) -> float:
        return _mean([r[field] for r in records if r["length"] == length and r["depth"] == depth])

    accuracy = [[cell(length, depth, "correct") for depth in depths] for length in lengths]
    # Where the needles really went: the depth asked for, moved to a sentence boundary (far, at short lengths).
    placed_depth = [[cell(length, depth, "actual_depth") for depth in depths] for length in lengths]
    return {
        "task": task,
        "model": model_name,
        "lengths": list(lengths),
        "depths": list(depths),
        "samples": samples,
        "seed": seed,
        "accuracy": accuracy,
        "placed_depth": placed_depth,
        "mean_accuracy": _mean([r["correct"] for r in records]),
        "records": records,
    }


def _mean(values: Sequence[bool | float]) -> float:
    return float(sum(values)) / len(values) if values else float("nan")
