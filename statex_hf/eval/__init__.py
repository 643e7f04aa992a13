"""Recall evaluation: needle in a haystack / passkey, multi-query associative recall, and their plots.

Works with any ``AutoModelForCausalLM`` and its own tokenizer::

    from statex_hf.eval import run_niah, plot_niah_heatmap
    results = run_niah(model, tokenizer, task="passkey", lengths=[1024, 4096], depths=[0, 0.5, 1])
    plot_niah_heatmap(results, "passkey.png")

The command line is ``statex-hf eval niah MODEL`` and ``statex-hf eval mqar MODEL``.
"""

from statex_hf.lazy import lazy_exports

lazy_exports(
    __name__,
    {
        "TokenizedHaystack": "statex_hf.eval.haystack",
        "encode_piece": "statex_hf.eval.haystack",
        "haystack_sentences": "statex_hf.eval.haystack",
        "haystack_text": "statex_hf.eval.haystack",
        "MqarSample": "statex_hf.eval.mqar",
        "MqarVocabulary": "statex_hf.eval.mqar",
        "build_mqar_sample": "statex_hf.eval.mqar",
        "run_mqar": "statex_hf.eval.mqar",
        "NeedleSample": "statex_hf.eval.niah",
        "build_needle_sample": "statex_hf.eval.niah",
        "build_needle_samples": "statex_hf.eval.niah",
        "extract_answer": "statex_hf.eval.niah",
        "is_correct": "statex_hf.eval.niah",
        "run_niah": "statex_hf.eval.niah",
        "plot_accuracy_by_length": "statex_hf.eval.plots",
        "plot_mqar": "statex_hf.eval.plots",
        "plot_niah_heatmap": "statex_hf.eval.plots",
    },
)

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
