"""Tokenize documents and pack them into fixed-length sequences, keeping document boundaries.

Each packed sequence carries ``position_ids`` that restart at 0 where a document starts; the
StateX models reset their recurrent state (and convolution window) there, as they do for
``DataCollatorWithFlattening``. With ``reset_state=False`` the positions simply run 0..T-1 and the
state flows across documents (the paper's plain concatenation, ``--no-reset``). Either way every
document ends with EOS, so the model also sees where one ends.

A document longer than the sequence continues in the next one; its positions keep counting, and
the model treats the start of every row as a document start anyway. Packing happens per ``map``
batch of ``docs_per_batch`` documents; the tokens left over at the end of a batch (less than one
sequence) are dropped, as in transformers' ``run_clm.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from transformers import PreTrainedTokenizerBase

from statex_hf.training.errors import PosttrainInputError

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset


def pack_documents(
    documents: Iterable[Sequence[int]], seq_len: int, reset_state: bool = True
) -> dict[str, list[list[int]]]:
    """Concatenate token lists and cut them into ``seq_len`` blocks; the remainder is dropped.

    Returns ``{"input_ids": [...], "position_ids": [...]}``, one list of ``seq_len`` ints per block.
    """
    if seq_len < 2:
        raise PosttrainInputError(f"seq_len must be at least 2 tokens, got {seq_len}")
    tokens: list[int] = []
    positions: list[int] = []
    for doc in documents:
        tokens.extend(doc)
        positions.extend(range(len(doc)))
    usable = len(tokens) // seq_len * seq_len
    blocks = [tokens[i : i + seq_len] for i in range(0, usable, seq_len)]
    if reset_state:
        position_blocks = [positions[i : i + seq_len] for i in range(0, usable, seq_len)]
    else:
        position_blocks = [list(range(seq_len)) for _ in blocks]
    return {"input_ids": blocks, "position_ids": position_blocks}


def tokenize_documents(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Token ids of each text as the tokenizer makes them (BOS where it adds one), ending with EOS."""
    # verbose=False: documents are meant to be longer than model_max_length here.
    ids = tokenizer(list(texts), add_special_tokens=True, return_attention_mask=False, verbose=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is None:
        return [list(doc) for doc in ids]
    return [list(doc) if doc and doc[-1] == eos else [*doc, eos] for doc in ids]


def pack_dataset(
    dataset: Dataset | IterableDataset,
    tokenizer: PreTrainedTokenizerBase | None,
    seq_len: int,
    *,
    reset_state: bool = True,
    text_column: str = "text",
    docs_per_batch: int = 1000,
    num_proc: int | None = None,
) -> Dataset | IterableDataset:
    """Documents (a text column, or already tokenized ``input_ids``) -> packed ``input_ids``/``position_ids`` rows."""
    columns = list(dataset.column_names or [])
    pretokenized = "input_ids" in columns
    if not pretokenized and text_column not in columns:
        raise PosttrainInputError(
            f"the dataset has no {text_column!r} column (columns: {columns}); pass text_column= "
            "(--text-column) naming the column that holds the documents"
        )
    if not pretokenized and tokenizer is None:
        raise PosttrainInputError(
            "a tokenizer is needed to tokenize the text column and none was found with the model; "
            "pass tokenizer= (--tokenizer NAME_OR_PATH)"
        )

    def pack(batch: dict[str, list]) -> dict[str, list[list[int]]]:
        docs = batch["input_ids"] if pretokenized else tokenize_documents(batch[text_column], tokenizer)
        return pack_documents(docs, seq_len, reset_state)

    from datasets import Dataset, IterableDataset  # imported with training, not with the package

    kwargs = {} if isinstance(dataset, IterableDataset) else {"num_proc": num_proc, "desc": f"Packing into {seq_len}"}
    packed = dataset.map(pack, batched=True, batch_size=docs_per_batch, remove_columns=columns, **kwargs)
    if isinstance(packed, Dataset) and len(packed) == 0:
        raise PosttrainInputError(
            f"the data holds fewer than seq_len={seq_len} tokens per {docs_per_batch} documents: nothing to train "
            "on; use a shorter --seq-len or more data"
        )
    return packed


__all__ = ["pack_dataset", "pack_documents", "tokenize_documents"]
