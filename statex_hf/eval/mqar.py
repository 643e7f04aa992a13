"""Multi-query associative recall (MQAR, from the Zoology work) on a real tokenizer's vocabulary.

Token-level formulation (one token per key, value and filler item; no text is tokenized):

    [prefix] k1 v1 k2 v2 ... kn vn | x x k3 v3 x k1 v1 x x x k2 v2 x ...   (exactly ``length`` tokens)

- ``prefix`` is what the tokenizer puts before any text (a BOS token, or nothing).
- Keys, values and filler come from three disjoint pools of the vocabulary's word-like tokens
  (``Ġriver`` / ``▁river`` / ``river``; special tokens never), split once with a fixed seed: a key
  never appears as a value or as filler, so the only way to predict a value is to recall its pair.
- After the ``n`` pairs every key is queried once, in random order, at random non-overlapping places
  in the rest of the sequence; the gaps hold random filler tokens. Each query is followed by its
  value, as in Zoology, so later queries are teacher-forced.
- Accuracy is the fraction of queries where the model's most likely next token after the key is the
  key's value (one forward pass per batch, argmax over the full vocabulary).

Zoology draws the query gaps from a power law and fills them with a fixed token; uniform gaps with
random word filler keep every query equally far from the pairs on average and look like text to a
pretrained LM. A (pairs, length) cell needs ``len(prefix) + 4 * pairs <= length``; cells that do not
fit are skipped (``null`` in the results).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from statex_hf.eval.decoding import batch_size_for, map_batches, next_token_argmax

# Word-like tokens with the tokenizer's word-start marker (byte-level BPE "Ġ", SentencePiece "▁") are
# preferred: a sequence of them reads as a list of words. Word-level vocabularies have no marker.
_SPACED_WORD = re.compile(r"^[\u0120\u2581][a-z]{3,}$")
_ANY_WORD = re.compile(r"^[\u0120\u2581]?[A-Za-z]{2,}$")


@dataclass
class MqarVocabulary:
    """Disjoint token pools for keys, values and filler."""

    keys: list[int]
    values: list[int]
    filler: list[int]

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase, min_pool: int = 1, seed: int = 0) -> MqarVocabulary:
        """Pools from ``tokenizer``'s vocabulary, each at least ``min_pool`` tokens (the most pairs asked for)."""
        special = set(tokenizer.all_special_ids)
        vocab = sorted((i, t) for t, i in tokenizer.get_vocab().items() if i not in special)
        for pattern in (_SPACED_WORD, _ANY_WORD):
            ids = [i for i, t in vocab if pattern.match(t)]
            if len(ids) >= 3 * min_pool:
                break
        else:
            raise ValueError(
                f"the tokenizer has only {len(ids)} word-like tokens; MQAR with {min_pool} pairs needs {3 * min_pool} "
                f"(keys, values and filler are disjoint): use fewer pairs"
            )
        random.Random(seed).shuffle(ids)
        third = len(ids) // 3
        return cls(keys=ids[:third], values=ids[third : 2 * third], filler=ids[2 * third :])


@dataclass
class MqarSample:
    """One MQAR sequence: ``input_ids[p + 1] == target`` for each query key position ``p``."""

    input_ids: list[int]
    query_positions: list[int]
    targets: list[int]
    num_pairs: int
    length: int


def prefix_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokens the tokenizer puts before any text (e.g. BOS)."""
    return list(tokenizer("", add_special_tokens=True)["input_ids"])


def min_length(num_pairs: int, prefix_len: int) -> int:
    """The shortest sequence that holds ``num_pairs`` pairs and their queries."""
    return prefix_len + 4 * num_pairs


def build_mqar_sample(
    vocab: MqarVocabulary, prefix: Sequence[int], num_pairs: int, length: int, rng: random.Random
) -> MqarSample:
    """A sequence of exactly ``length`` tokens with ``num_pairs`` key-value pairs, each queried once."""
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be at least 1, got {num_pairs}")
    if length < min_length(num_pairs, len(prefix)):
        shortest = min_length(num_pairs, len(prefix))
        raise ValueError(f"length {length} cannot hold {num_pairs} pairs and their queries: use at least {shortest}")
    if num_pairs > min(len(vocab.keys), len(vocab.values)):
        raise ValueError(
            f"{num_pairs} pairs need more distinct keys and values than the vocabulary pools hold ({len(vocab.keys)})"
        )
    keys = rng.sample(vocab.keys, num_pairs)
    values = rng.sample(vocab.values, num_pairs)
    ids = list(prefix)
    for k, v in zip(keys, values):
        ids += [k, v]

    # Place num_pairs two-token queries among the remaining slots without overlap: choosing the queries'
    # ranks among (queries + filler items) uniformly gives uniformly random non-overlapping positions.
    rest = length - len(ids)
    num_filler = rest - 2 * num_pairs
    slots = sorted(rng.sample(range(num_filler + num_pairs), num_pairs))
    order = list(range(num_pairs))
    rng.shuffle(order)
    query_positions, targets = [], []
    tail: list[int] = []
    next_query = 0
    for item in range(num_filler + num_pairs):
        if next_query < num_pairs and item == slots[next_query]:
            pair = order[next_query]
            query_positions.append(len(ids) + len(tail))
            targets.append(values[pair])
            tail += [keys[pair], values[pair]]
            next_query += 1
        else:
            tail.append(rng.choice(vocab.filler))
    ids += tail
    assert len(ids) == length
    return MqarSample(ids, query_positions, targets, num_pairs, length)


def score_predictions(sample: MqarSample, predictions: Sequence[int]) -> int:
    """How many queries of ``sample`` the per-position argmax ``predictions`` get right."""
    return sum(int(predictions[p] == t) for p, t in zip(sample.query_positions, sample.targets))


def mqar_cells(
    tokenizer: PreTrainedTokenizerBase, num_pairs: Sequence[int], lengths: Sequence[int]
) -> tuple[list[tuple[int, int]], MqarVocabulary]:
    """The (pairs, length) cells that fit, and the vocabulary pools; ValueError when nothing can run."""
    prefix_len = len(prefix_ids(tokenizer))
    cells = [(n, length) for n in num_pairs for length in lengths if length >= min_length(n, prefix_len)]
    if not cells:
        raise ValueError(
            f"no (pairs, length) combination fits: {min(num_pairs)} pairs need at least "
            f"{min_length(min(num_pairs), prefix_len)} tokens, the longest length is {max(lengths)}"
        )
    return cells, MqarVocabulary.build(tokenizer, min_pool=max(n for n, _ in cells))


def run_mqar(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    *,
    num_pairs: Sequence[int] = (4, 8, 16, 32, 64),
    lengths: Sequence[int] = (256, 512, 1024, 2048),
    samples: int = 16,
    seed: int = 0,
    batch_size: int = 16,
    max_batch_tokens: int = 65536,
    progress: bool = True,
    model_name: str | None = None,
) -> dict[str, Any]:
    """MQAR accuracy for every (pairs, length) cell; returns a JSON-ready dict.

    ``accuracy[i][j]`` is the query accuracy with ``num_pairs[i]`` pairs at ``lengths[j]`` tokens, or None
    where the cell does not fit (see ``skipped``).
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    cells, vocab = mqar_cells(tokenizer, num_pairs, lengths)
    prefix = prefix_ids(tokenizer)
    accuracy: dict[tuple[int, int], float] = {}
    with tqdm(total=len(cells) * samples, desc="mqar", disable=not progress, unit="seq") as bar:
        for n, length in cells:
            bar.set_postfix(pairs=n, length=length)
            cell = [
                build_mqar_sample(vocab, prefix, n, length, random.Random(f"{seed}-{n}-{length}-{i}"))
                for i in range(samples)
            ]

            def score(batch: Sequence[MqarSample]) -> list[int]:
                predictions = next_token_argmax(model, [s.input_ids for s in batch])
                return [score_predictions(s, p) for s, p in zip(batch, predictions)]

            correct = map_batches(score, cell, batch_size_for(length, batch_size, max_batch_tokens), bar.update)
            accuracy[(n, length)] = sum(correct) / (n * samples)
    return {
        "task": "mqar",
        "model": model_name,
        "num_pairs": list(num_pairs),
        "lengths": list(lengths),
        "samples": samples,
        "seed": seed,
        "accuracy": [[accuracy.get((n, length)) for length in lengths] for n in num_pairs],
        "skipped": [[n, length] for n in num_pairs for length in lengths if (n, length) not in accuracy],
        "mean_accuracy": sum(accuracy.values()) / len(accuracy),
    }
