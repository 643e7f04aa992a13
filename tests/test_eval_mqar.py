"""MQAR: the sequences hold each pair and its query where they say, and accuracy counts recalled values."""

from __future__ import annotations

import math
import random

import pytest
from eval_fixtures import InductionCopier, bpe_tokenizer, metaspace_tokenizer, tiny_llama, word_tokenizer

from statex_hf.eval import MqarVocabulary, build_mqar_sample, plot_mqar, run_mqar
from statex_hf.eval.mqar import prefix_ids

TOKENIZERS = {"word": word_tokenizer, "bpe": bpe_tokenizer, "metaspace": metaspace_tokenizer}


@pytest.fixture(params=sorted(TOKENIZERS), scope="module")
def tokenizer(request):
    return TOKENIZERS[request.param]()


def test_pools_are_disjoint_word_tokens_and_never_special(tokenizer):
    vocab = MqarVocabulary.build(tokenizer, min_pool=16)
    keys, values, filler = set(vocab.keys), set(vocab.values), set(vocab.filler)
    assert min(len(keys), len(values), len(filler)) >= 16
    assert not (keys & values or keys & filler or values & filler)
    assert not (keys | values | filler) & set(tokenizer.all_special_ids)
    for token in tokenizer.convert_ids_to_tokens(sorted(keys | values)):
        assert token.lstrip("\u0120\u2581").isalpha()
    if tokenizer is bpe_tokenizer():  # word-start tokens preferred when the vocabulary has them
        assert all(t.startswith("\u0120") for t in tokenizer.convert_ids_to_tokens(vocab.keys))


@pytest.mark.parametrize(("num_pairs", "length"), [(1, 8), (4, 64), (16, 64), (8, 300)])
def test_pairs_come_first_and_every_key_is_queried_once_before_its_value(tokenizer, num_pairs, length):
    vocab = MqarVocabulary.build(tokenizer, min_pool=16)
    prefix = prefix_ids(tokenizer)
    sample = build_mqar_sample(vocab, prefix, num_pairs, max(length, len(prefix) + 4 * num_pairs), random.Random(5))
    ids = sample.input_ids
    assert len(ids) == sample.length
    assert ids[: len(prefix)] == prefix
    pairs = dict(
        zip(ids[len(prefix) : len(prefix) + 2 * num_pairs : 2], ids[len(prefix) + 1 : len(prefix) + 2 * num_pairs : 2])
    )
    assert len(pairs) == num_pairs and set(pairs) <= set(vocab.keys) and set(pairs.values()) <= set(vocab.values)
    # Queries: after the pairs, not overlapping, each key once, each followed by its own value.
    positions = sample.query_positions
    assert positions == sorted(positions) and positions[0] >= len(prefix) + 2 * num_pairs
    assert all(b - a >= 2 for a, b in zip(positions, positions[1:]))
    assert sorted(ids[p] for p in positions) == sorted(pairs)
    assert [ids[p + 1] for p in positions] == [pairs[ids[p]] for p in positions] == sample.targets
    # Everything else after the pairs is filler.
    query_slots = {p for p in positions} | {p + 1 for p in positions}
    rest = [t for i, t in enumerate(ids) if i >= len(prefix) + 2 * num_pairs and i not in query_slots]
    assert set(rest) <= set(vocab.filler)


def test_length_that_cannot_hold_the_queries_is_refused():
    tokenizer = word_tokenizer()
    vocab = MqarVocabulary.build(tokenizer, min_pool=8)
    with pytest.raises(ValueError, match="cannot hold 8 pairs"):
        build_mqar_sample(vocab, prefix_ids(tokenizer), 8, 32, random.Random(0))


def test_copier_recalls_every_value_and_a_random_model_almost_none(tokenizer):
    grid = {"num_pairs": [2, 8], "lengths": [64, 128], "samples": 3, "progress": False}
    perfect = run_mqar(InductionCopier(len(tokenizer)), tokenizer, **grid)
    assert perfect["accuracy"] == [[1.0, 1.0], [1.0, 1.0]]
    random_model = run_mqar(tiny_llama(len(tokenizer)), tokenizer, batch_size=2, **grid)
    assert random_model["mean_accuracy"] < 0.1


def test_cells_too_short_are_skipped_and_a_grid_with_none_left_is_an_error():
    tokenizer = word_tokenizer()
    results = run_mqar(
        InductionCopier(len(tokenizer)), tokenizer, num_pairs=[4, 32], lengths=[64, 256], samples=1, progress=False
    )
    assert results["skipped"] == [[32, 64]]
    assert results["accuracy"][1][0] is None and results["accuracy"][1][1] == 1.0
    assert not math.isnan(results["mean_accuracy"])
    with pytest.raises(ValueError, match="no \\(pairs, length\\) combination fits"):
        run_mqar(InductionCopier(len(tokenizer)), tokenizer, num_pairs=[64], lengths=[64], samples=1, progress=False)


def test_line_plot_is_written_and_not_empty(tmp_path):
    tokenizer = word_tokenizer()
    results = run_mqar(
        InductionCopier(len(tokenizer)), tokenizer, num_pairs=[2, 4, 32], lengths=[32, 128], samples=1, progress=False
    )
    data = plot_mqar(results, tmp_path / "mqar.png").read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000
