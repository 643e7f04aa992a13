"""Packed sequences: the state and conv window reset at each document start."""

import pytest
import torch
from tiny_models import VARIANTS, VOCAB, build
from transformers import DataCollatorWithFlattening


@pytest.mark.parametrize("family,statex_layers", VARIANTS)
def test_packed_batch_loss_equals_token_weighted_loss_of_separate_documents(family, statex_layers):
    model = build(family, statex_layers=statex_layers)
    documents = [torch.randint(3, VOCAB, (n,)).tolist() for n in (7, 12, 5)]
    batch = DataCollatorWithFlattening(return_tensors="pt")([{"input_ids": d} for d in documents])
    with torch.no_grad():
        packed = model(**batch).loss
        total, count = 0.0, 0
        for doc in documents:
            ids = torch.tensor([doc])
            total += model(ids, labels=ids).loss * (len(doc) - 1)
            count += len(doc) - 1
    torch.testing.assert_close(packed, total / count, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_packed_logits_equal_each_document_run_alone(family):
    model = build(family, statex_layers=[0])
    documents = [torch.randint(3, VOCAB, (n,)) for n in (6, 9)]
    ids = torch.cat(documents)[None]
    position_ids = torch.cat([torch.arange(len(d)) for d in documents])[None]
    with torch.no_grad():
        packed = model(ids, position_ids=position_ids).logits[0]
        alone = torch.cat([model(d[None]).logits[0] for d in documents])
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-4)


def test_position_ids_without_restarts_change_nothing():
    model = build("mamba2", statex_layers=[1])
    ids = torch.randint(3, VOCAB, (2, 10))
    position_ids = torch.arange(10).expand(2, 10)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, position_ids=position_ids).logits, model(ids).logits)
