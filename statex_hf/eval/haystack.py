"""The filler text of needle-in-a-haystack prompts, tokenized sentence by sentence.

The text ships with the package (``statex_hf/data/haystack.txt``: original prose written for this
project, no digits in it so a number in the prompt can only come from the needle). Prompts of any
length are cut from the sentences taken cyclically, so the haystack never runs out.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from importlib import resources

from transformers import PreTrainedTokenizerBase

# A sentence ends at . ! or ? followed by whitespace; the text has no abbreviations that would fool this.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Tokenizing a piece after this anchor and dropping the anchor's tokens gives the tokens the piece
# gets in the middle of a text (SentencePiece tokenizers otherwise treat every piece as a text start).
_ANCHOR = "."


def haystack_text() -> str:
    """The shipped haystack prose."""
    return resources.files("statex_hf").joinpath("data/haystack.txt").read_text(encoding="utf-8")


def haystack_sentences(text: str | None = None) -> list[str]:
    """The haystack split into sentences, paragraph breaks dropped."""
    text = haystack_text() if text is None else text
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def encode_piece(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of ``text`` as it reads in the middle of a longer text (no special tokens)."""
    return encode_pieces(tokenizer, [text])[0]


def encode_pieces(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """``encode_piece`` for many texts in one tokenizer call."""
    anchor = tokenizer(_ANCHOR, add_special_tokens=False)["input_ids"]
    encoded = tokenizer([_ANCHOR + t for t in texts], add_special_tokens=False)["input_ids"]
    pieces = []
    for text, ids in zip(texts, encoded):
        if ids[: len(anchor)] == anchor:
            pieces.append(list(ids[len(anchor) :]))
        else:  # the anchor merged with the piece's first characters: the piece alone is the best we have
            pieces.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return pieces


@dataclass
class TokenizedHaystack:
    """The haystack sentences as token ids; each sentence carries its leading space."""

    sentences: list[list[int]]

    def __post_init__(self) -> None:
        if not any(self.sentences):
            raise ValueError("the haystack tokenized to nothing: check that the tokenizer encodes plain English text")

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase, text: str | None = None) -> TokenizedHaystack:
        return cls(encode_pieces(tokenizer, [" " + s for s in haystack_sentences(text)]))

    def fill(self, num_tokens: int, rng: random.Random) -> tuple[list[int], list[int]]:
        """``num_tokens`` haystack tokens starting at a random sentence, and the sentence starts in them.

        Sentences are taken cyclically; the last one is cut to fit, so every prompt of one length has
        exactly the same number of tokens (and a batch of them needs no padding). The returned
        boundaries are the token offsets where a sentence starts, plus ``0`` and ``num_tokens``: the
        places a needle can go without splitting a sentence.
        """
        ids: list[int] = []
        boundaries = [0]
        index = rng.randrange(len(self.sentences))
        while len(ids) < num_tokens:
            ids.extend(self.sentences[index])
            boundaries.append(min(len(ids), num_tokens))
            index = (index + 1) % len(self.sentences)
        return ids[:num_tokens], sorted(set(boundaries))
