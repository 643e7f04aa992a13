"""The miniature's data: a word-level tokenizer and endless recall sequences as a ``datasets`` stream.

Every training row is one sequence of exactly ``length`` tokens, ``position_ids`` 0..length-1 (so the
recurrent state starts empty), and ``labels`` that are -100 except where the row teaches recall:

- **MQAR** (``statex_hf.eval.mqar``'s construction, the task ``statex-hf eval mqar`` scores): n key-value
  pairs, then every key queried once among filler; the labels are the queried values. n is drawn from
  ``pairs`` for each row, so one model learns every load, and its accuracy against n shows where its
  state runs full.
- **passkey** (``statex_hf.eval.niah``'s prompt, the one ``statex-hf eval niah --task passkey`` scores): the
  prompt, then the five answer digits and EOS; the labels are the answer and EOS.

Rows come from a Python generator seeded per shard; the stream has several shards so that data-loader
workers split it (``datasets`` gives each worker whole shards).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from statex_hf.eval import MqarVocabulary, TokenizedHaystack, build_mqar_sample, build_needle_sample, haystack_text
from statex_hf.eval.mqar import min_length, prefix_ids
from statex_hf.eval.niah import _ADJECTIVES, _NOUNS, TEMPLATES

if TYPE_CHECKING:
    from datasets import IterableDataset

IGNORE = -100


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word level over the haystack prose, the needle templates and the digits (each digit a token).

    About 1,100 tokens; MQAR keys, values and filler come from three pools of about 350 words each.
    """
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


class RecallRows:
    """Builds training rows (``input_ids``, ``position_ids``, ``labels``) of one length."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, length: int, pairs: Sequence[int]) -> None:
        self.tokenizer, self.length = tokenizer, length
        self.prefix = prefix_ids(tokenizer)
        self.pairs = [n for n in pairs if min_length(n, len(self.prefix)) <= length]
        if not self.pairs:
            raise ValueError(f"no pair count of {list(pairs)} fits in {length} tokens")
        self.vocab = MqarVocabulary.build(tokenizer, min_pool=max(self.pairs))
        self.haystack = TokenizedHaystack.build(tokenizer)

    def mqar(self, rng: random.Random, num_pairs: int | None = None) -> dict[str, list[int]]:
        n = rng.choice(self.pairs) if num_pairs is None else num_pairs
        sample = build_mqar_sample(self.vocab, self.prefix, n, self.length, rng)
        labels = [IGNORE] * self.length
        for position, target in zip(sample.query_positions, sample.targets):
            labels[position + 1] = target  # the model's output at the key predicts the token after it
        return self._row(sample.input_ids, labels)

    def passkey(self, rng: random.Random) -> dict[str, list[int]]:
        # The word-level tokenizer gives every passkey the same token count (one token per digit).
        answer_len = TEMPLATES["passkey"].value_digits + 1
        sample = build_needle_sample(
            self.tokenizer, self.haystack, "passkey", self.length - answer_len, rng.random(), rng
        )
        answer = sample.answer_ids + [self.tokenizer.eos_token_id]
        if len(answer) != answer_len:
            raise ValueError(f"the passkey answer took {len(answer)} tokens, expected {answer_len}")
        return self._row(sample.input_ids + answer, [IGNORE] * len(sample.input_ids) + answer)

    def _row(self, input_ids: list[int], labels: list[int]) -> dict[str, list[int]]:
        return {"input_ids": input_ids, "position_ids": list(range(len(input_ids))), "labels": labels}


def _generate(
    tokenizer: PreTrainedTokenizerFast, length: int, pairs: tuple[int, ...], mix: dict[str, float], seeds: list[str]
) -> Iterator[dict[str, list[int]]]:
    rows = RecallRows(tokenizer, length, pairs)
    kinds, weights = zip(*mix.items())
    for seed in seeds:  # one seed per shard; a worker may get several shards and runs them in turn
        rng = random.Random(seed)
        while True:
            kind = rng.choices(kinds, weights)[0]
            yield rows.mqar(rng) if kind == "mqar" else rows.passkey(rng)


def recall_stream(
    tokenizer: PreTrainedTokenizerFast,
    length: int,
    pairs: Sequence[int],
    mix: Mapping[str, float],
    seed: int,
    shards: int = 4,
) -> IterableDataset:
    """An endless ``datasets.IterableDataset`` of recall rows (``mix``: weights of ``mqar`` and ``passkey``).

    The same arguments give the same rows in the same order, so arms continued from one source see
    the same data.
    """
    from datasets import Features, IterableDataset, List, Value

    unknown = sorted(set(mix) - {"mqar", "passkey"})
    if unknown:
        raise ValueError(f"unknown row kinds {unknown} in the mix; use mqar and passkey")
    rows = RecallRows(tokenizer, length, pairs)  # a length that does not fit fails here, not in a data-loader worker
    if mix.get("passkey"):
        rows.passkey(random.Random(0))
    return IterableDataset.from_generator(
        _generate,
        gen_kwargs={
            "tokenizer": tokenizer,
            "length": length,
            # datasets splits every list in gen_kwargs between the shards: only the seeds are a list.
            "pairs": tuple(pairs),
            "mix": dict(mix),
            "seeds": [f"{seed}-{shard}" for shard in range(shards)],
        },
        # Declared, so that posttrain sees packed rows (it reads column_names) without drawing one.
        features=Features({name: List(Value("int32")) for name in ("input_ids", "position_ids", "labels")}),
    )
