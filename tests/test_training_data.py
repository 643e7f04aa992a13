"""Post-training data: files through ``datasets``, packing with document boundaries, the collator, the recipe."""

import json

import pytest
import torch
from datasets import Dataset, IterableDataset

from statex_hf.training.collator import PackedCollator
from statex_hf.training.data import load_text_dataset
from statex_hf.training.demo import build_tokenizer, corpus_texts
from statex_hf.training.packing import pack_dataset, pack_documents, tokenize_documents
from statex_hf.training.recipe import CHECKPOINTING, PAPER_TRAINING_ARGS, recipe_training_arguments

DOCS = ["first document, short.", "the second document is a little longer than the first.", "third."]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(corpus_texts(), vocab_size=300)


def test_packing_restarts_positions_at_each_document_and_drops_the_remainder():
    docs = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10]]
    packed = pack_documents(docs, seq_len=4)
    assert packed["input_ids"] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    # Document 2 starts at column 3 of row 0 and continues into row 1 (its positions keep counting).
    assert packed["position_ids"] == [[0, 1, 2, 0], [1, 2, 3, 4]]


def test_no_reset_packing_is_plain_concatenation():
    packed = pack_documents([[1, 2, 3], [4, 5, 6, 7, 8]], seq_len=4, reset_state=False)
    assert packed["input_ids"] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert packed["position_ids"] == [[0, 1, 2, 3], [0, 1, 2, 3]]


def test_collator_ignores_the_label_that_crosses_a_document_start():
    batch = PackedCollator()([{"input_ids": [5, 6, 7, 8], "position_ids": [0, 1, 0, 1]}])
    assert batch["labels"].tolist() == [[-100, 6, -100, 8]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1]]
    plain = PackedCollator()([{"input_ids": [5, 6, 7, 8]}])
    assert plain["labels"].tolist() == [[-100, 6, 7, 8]] and plain["position_ids"].tolist() == [[0, 1, 2, 3]]


def test_every_document_ends_with_eos(tokenizer):
    docs = tokenize_documents(DOCS, tokenizer)
    assert all(doc[-1] == tokenizer.eos_token_id for doc in docs)
    assert tokenizer.decode(docs[0], skip_special_tokens=True) == DOCS[0]


def write(path, fmt):
    if fmt == "txt":
        path.write_text(DOCS[0])
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    else:
        Dataset.from_dict({"text": DOCS}).to_parquet(str(path))


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "parquet"])
def test_local_files_load_one_row_per_document(tmp_path, fmt):
    path = tmp_path / f"data.{fmt}"
    write(path, fmt)
    dataset = load_text_dataset(str(path), cache_dir=str(tmp_path / "cache"))
    expected = [DOCS[0]] if fmt == "txt" else DOCS
    assert dataset["text"] == expected


def test_a_directory_of_text_files_is_one_document_per_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i, doc in enumerate(DOCS):
        (data / f"doc{i}.txt").write_text(doc + "\n\nsecond paragraph")
    dataset = load_text_dataset(str(data), cache_dir=str(tmp_path / "cache"))
    assert len(dataset) == len(DOCS)
    paragraphs = load_text_dataset(str(data), text_sample_by="paragraph", cache_dir=str(tmp_path / "cache"))
    assert len(paragraphs) == 2 * len(DOCS)


def test_streaming_packs_the_same_rows_as_in_memory(tmp_path, tokenizer):
    path = tmp_path / "data.jsonl"
    write(path, "jsonl")
    eager = pack_dataset(load_text_dataset(str(path), cache_dir=str(tmp_path / "c")), tokenizer, 8)
    lazy = pack_dataset(load_text_dataset(str(path), streaming=True), tokenizer, 8)
    assert isinstance(lazy, IterableDataset)
    assert [row["input_ids"] for row in lazy] == eager["input_ids"]
    assert [row["position_ids"] for row in lazy] == eager["position_ids"]


def test_bad_data_gets_one_clear_error(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_text_dataset(str(tmp_path / "missing.jsonl"))
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.jsonl").write_text('{"text": "y"}\n')
    with pytest.raises(ValueError, match="mix formats"):
        load_text_dataset(str(tmp_path))
    with pytest.raises(ValueError, match="no 'body' column"):
        pack_dataset(Dataset.from_dict({"text": DOCS}), tokenizer, 8, text_column="body")
    with pytest.raises(ValueError, match="fewer than seq_len"):
        pack_dataset(Dataset.from_dict({"text": DOCS}), tokenizer, 10_000)


def test_pretokenized_documents_are_packed_without_a_tokenizer():
    packed = pack_dataset(Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5, 6, 7, 8]]}), None, 4)
    assert packed["position_ids"] == [[0, 1, 2, 0], [1, 2, 3, 4]]


def test_recipe_defaults_are_the_papers_and_every_one_can_be_overridden(tmp_path):
    args = recipe_training_arguments(str(tmp_path))
    for name, value in PAPER_TRAINING_ARGS.items():
        assert getattr(args, name) == value or str(getattr(args, name)).endswith(str(value)), name
    # 512K tokens per step at 64K tokens per sequence: 8 sequences.
    assert args.gradient_accumulation_steps == 8 and args.per_device_train_batch_size == 1
    assert getattr(args, CHECKPOINTING) and args.bf16 == torch.cuda.is_available()
    args = recipe_training_arguments(
        str(tmp_path), seq_len=4096, max_tokens=10 * 524_288, learning_rate=1e-4, warmup_steps=5, bf16=False
    )
    assert (args.learning_rate, args.warmup_steps) == (1e-4, 5)
    assert (args.gradient_accumulation_steps, args.max_steps) == (128, 10)
    with pytest.raises(ValueError, match="unknown TrainingArguments"):
        recipe_training_arguments(str(tmp_path), learnig_rate=1.0)


def test_under_fsdp_the_recipe_checkpoints_inside_fsdp(tmp_path):
    args = recipe_training_arguments(str(tmp_path), fsdp=True, fsdp_config={"transformer_layer_cls_to_wrap": ["B"]})
    assert not getattr(args, CHECKPOINTING)
    assert args.fsdp_config["activation_checkpointing"] and args.fsdp_config["transformer_layer_cls_to_wrap"] == ["B"]


def test_collator_keeps_the_labels_a_row_brings():
    row = {"input_ids": [5, 6, 7, 8], "position_ids": [0, 1, 2, 3], "labels": [-100, -100, 7, -100]}
    assert PackedCollator()([row])["labels"].tolist() == [[-100, -100, 7, -100]]
    restart = dict(row, position_ids=[0, 1, 0, 1], labels=[5, 6, 7, 8])  # a document start still ignores its label
    assert PackedCollator()([restart])["labels"].tolist() == [[-100, 6, -100, 8]]
