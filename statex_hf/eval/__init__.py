"""Recall evaluation: needle in a haystack / passkey, multi-query associative recall, and their plots.

Works with any ``AutoModelForCausalLM`` and its own tokenizer::

    from statex_hf.eval import run_niah, plot_niah_heatmap
    results = run_niah(model, tokenizer, task="passkey", lengths=[1024, 4096], depths=[0, 0.5, 1])
    plot_niah_heatmap(results, "passkey.png")

The command line is ``statex-hf eval niah MODEL`` and ``statex-hf eval mqar MODEL``.
"""

from statex_hf.eval.haystack import TokenizedHaystack, encode_piece, haystack_sentences, haystack_text
from statex_hf.eval.mqar import MqarSample, MqarVocabulary, build_mqar_sample, run_mqar
from statex_hf.eval.niah import (
    NeedleSample,
    build_needle_sample,
    build_needle_samples,
    extract_answer,
    is_correct,
    run_niah,
)
from statex_hf.eval.plots import plot_accuracy_by_length, plot_mqar, plot_niah_heatmap

__all__ = [
    "MqarSample",
    "MqarVocabulary",
    "NeedleSample",
    "TokenizedHaystack",
    "build_mqar_sample",
    "build_needle_sample",
    "build_needle_samples",
    "encode_piece",
    "extract_answer",
    "haystack_sentences",
    "haystack_text",
    "is_correct",
    "plot_accuracy_by_length",
    "plot_mqar",
    "plot_niah_heatmap",
    "run_mqar",
    "run_niah",
]
