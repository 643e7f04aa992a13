"""Needle-in-a-haystack / passkey: the prompts hold the needle where they say, and scoring is exact."""

from __future__ import annotations

import random

import pytest
from eval_fixtures import InductionCopier, bpe_tokenizer, metaspace_tokenizer, tiny_llama, word_tokenizer

from statex_hf.eval import (
    TokenizedHaystack,
    build_needle_sample,
    build_needle_samples,
    extract_answer,
    is_correct,
    plot_niah_heatmap,
    run_niah,
)
from statex_hf.eval.haystack import haystack_text

TOKENIZERS = {"word": word_tokenizer, "bpe": bpe_tokenizer, "metaspace": metaspace_tokenizer}


@pytest.fixture(params=sorted(TOKENIZERS), scope="module")
def tokenizer(request):
    return TOKENIZERS[request.param]()


def test_shipped_haystack_has_no_digits_so_only_the_needle_holds_a_number():
    text = haystack_text()
    assert len(text.split()) > 2000
    assert not any(c.isdigit() for c in text)


@pytest.mark.parametrize("task", ["niah", "passkey"])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_needle_sits_at_the_requested_depth_in_a_prompt_of_exact_length(tokenizer, task, depth):
    haystack = TokenizedHaystack.build(tokenizer)
    sample = build_needle_sample(tokenizer, haystack, task, 400, depth, random.Random(1))
    ids = sample.input_ids
    assert len(ids) == 400
    start, end = sample.needle_start, sample.needle_start + len(sample.needle_ids)
    assert ids[start:end] == sample.needle_ids
    assert sample.intro_len + sample.haystack_len + len(sample.needle_ids) < len(ids)
    assert sample.actual_depth == pytest.approx((start - sample.intro_len) / sample.haystack_len)
    # The needle moves to the nearest sentence boundary: never further than the longest sentence.
    longest_sentence = max(len(s) for s in haystack.sentences)
    assert abs(sample.actual_depth - depth) * sample.haystack_len <= longest_sentence
    if depth == 0.0:
        assert start == sample.intro_len  # right after the intro
    if depth == 1.0:
        assert end == sample.intro_len + sample.haystack_len + len(sample.needle_ids)  # right before the question


@pytest.mark.parametrize("task", ["niah", "passkey"])
def test_prompt_ends_with_the_needle_head_and_the_answer_is_scorable(tokenizer, task):
    haystack = TokenizedHaystack.build(tokenizer)
    sample = build_needle_sample(tokenizer, haystack, task, 300, 0.5, random.Random(3))
    head = sample.needle_ids[: sample.head_len]
    assert sample.input_ids[-len(head) :] == head
    assert sample.needle_ids[len(head) : len(head) + len(sample.answer_ids)] == sample.answer_ids
    # Decoding the answer's tokens scores as correct, whatever the tokenizer does with digits.
    assert is_correct(tokenizer.decode(sample.answer_ids), sample.answer)
    # The only digits in the prompt are the needle's value (once, or twice for the passkey's repetition).
    digits = "".join(c for c in tokenizer.decode(sample.input_ids) if c.isdigit())
    assert digits == sample.answer * (2 if task == "passkey" else 1)


def test_grid_is_deterministic_and_its_samples_differ(tokenizer):
    first = build_needle_samples(tokenizer, "niah", [256], [0.0, 1.0], samples=3, seed=7)
    again = build_needle_samples(tokenizer, "niah", [256], [0.0, 1.0], samples=3, seed=7)
    other = build_needle_samples(tokenizer, "niah", [256], [0.0, 1.0], samples=3, seed=8)
    assert [s.input_ids for s in first[256]] == [s.input_ids for s in again[256]]
    assert [s.answer for s in first[256]] != [s.answer for s in other[256]]
    assert len({s.answer for s in first[256]}) == 6


def test_length_too_short_for_the_prompt_says_how_long_it_must_be(tokenizer):
    with pytest.raises(ValueError, match=r"length 20 is too short for the niah prompt.*at least \d+"):
        build_needle_sample(tokenizer, TokenizedHaystack.build(tokenizer), "niah", 20, 0.5, random.Random(0))


@pytest.mark.parametrize(
    ("output", "answer", "correct"),
    [
        (" 68220.", "68220", True),
        (" 6 8 2 2 0 .", "68220", True),  # a word-level tokenizer prints digits apart
        ("68220 is the pass key", "68220", True),
        (" 682201", "68220", False),
        (" 6822", "68220", False),
        (" the pass key", "68220", False),
        ("", "68220", False),
    ],
)
def test_exact_match_on_the_first_number(output, answer, correct):
    assert is_correct(output, answer) is correct


def test_extract_answer_returns_none_without_digits():
    assert extract_answer("no number here") is None


@pytest.mark.parametrize("task", ["niah", "passkey"])
def test_copier_scores_perfectly_and_a_random_model_scores_zero(tokenizer, task):
    grid = {"lengths": [200, 320], "depths": [0.0, 0.5, 1.0], "samples": 2, "progress": False}
    perfect = run_niah(InductionCopier(len(tokenizer)), tokenizer, task=task, batch_size=4, **grid)
    assert perfect["accuracy"] == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    assert all(r["prediction"] == r["answer"] for r in perfect["records"])

    random_model = run_niah(tiny_llama(len(tokenizer)), tokenizer, task=task, batch_size=4, **grid)
    assert random_model["mean_accuracy"] == 0.0
    assert len(random_model["records"]) == 12


def test_heatmap_is_written_and_not_empty(tmp_path):
    tokenizer = word_tokenizer()
    results = run_niah(
        InductionCopier(len(tokenizer)), tokenizer, lengths=[200, 256], depths=[0, 1], samples=1, progress=False
    )
    path = plot_niah_heatmap(results, tmp_path / "plots" / "niah.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000
