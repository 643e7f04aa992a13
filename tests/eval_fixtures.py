"""Test fixtures of the recall evals: tokenizers trained on the shipped haystack, a tiny random Llama,
and a stub that answers by copying (the perfect recaller the scoring is checked against).

Everything is built in-process; nothing is downloaded.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from statex_hf.eval.haystack import haystack_text
from statex_hf.eval.niah import _ADJECTIVES, _NOUNS, TEMPLATES

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]


def _training_text() -> list[str]:
    """The haystack, the prompt templates, the needle keys and the digits: every word a prompt can hold."""
    templates = [f"{t.intro} {t.head} {t.tail} {t.question}" for t in TEMPLATES.values()]
    return [haystack_text(), *templates, " ".join(_ADJECTIVES + _NOUNS), " ".join("0123456789")]


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


@functools.cache
def word_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level: one token per word, punctuation mark and digit; prepends <s> like a Llama tokenizer."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer.train_from_iterator(_training_text(), trainers.WordLevelTrainer(special_tokens=SPECIAL))
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return _wrap(tokenizer)


@functools.cache
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style: ``Ġ`` marks a word start, numbers merge into multi-digit tokens), no BOS."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    # Numbers in the training text so that digit pairs merge, as in real BPE vocabularies.
    numbers = " ".join(str(n) for n in range(10, 100)) * 3
    tokenizer.train_from_iterator([*_training_text(), numbers], trainer)
    return _wrap(tokenizer)


@functools.cache
def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece style (Llama / Mistral: ``▁`` marks a word start, digits split), prepends <s>."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(prepend_scheme="first"), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=SPECIAL)
    tokenizer.train_from_iterator(_training_text(), trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return _wrap(tokenizer)


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialized two-layer Llama: a real AutoModelForCausalLM that recalls nothing."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


class InductionCopier(torch.nn.Module):
    """Predicts, at every position, the token that followed the longest earlier match of the text so far.

    On a needle prompt (which ends with the needle's head) it continues with the needle's value; on MQAR
    it predicts each queried key's value: the perfect recaller. A test stub, not a model.
    """

    def __init__(self, vocab_size: int, max_match: int = 64) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.max_match = max_match

    def _next(self, ids: list[int], t: int, positions: dict[int, list[int]]) -> int:
        best, best_len = None, 0
        for j in reversed(positions.get(ids[t], [])):
            if j >= t:
                continue
            n = 1
            while n < self.max_match and j - n >= 0 and ids[j - n] == ids[t - n]:
                n += 1
            if n > best_len:
                best, best_len = j, n
        return ids[best + 1] if best is not None else 0

    def _positions(self, ids: list[int]) -> dict[int, list[int]]:
        positions: dict[int, list[int]] = {}
        for i, token in enumerate(ids):
            positions.setdefault(token, []).append(i)
        return positions

    def forward(self, input_ids: torch.Tensor, **kwargs: object) -> SimpleNamespace:
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        for b, row in enumerate(input_ids.tolist()):
            positions = self._positions(row)
            for t in range(len(row)):
                logits[b, t, self._next(row, t, positions)] = 1.0
        return SimpleNamespace(logits=logits)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **kwargs: object) -> torch.Tensor:
        rows = input_ids.tolist()
        for row in rows:
            for _ in range(max_new_tokens):
                row.append(self._next(row, len(row) - 1, self._positions(row)))
        return torch.tensor(rows)
