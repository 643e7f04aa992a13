"""Tiny StateX configs and models shared by the tests (built in-process; nothing is downloaded)."""

from __future__ import annotations

import torch

from statex_hf import StateXGLAConfig, StateXGLAForCausalLM, StateXMamba2Config, StateXMamba2ForCausalLM

VOCAB = 64


def gla_config(**overrides) -> StateXGLAConfig:
    fields = dict(
        hidden_size=32,
        num_heads=4,
        num_hidden_layers=2,
        vocab_size=VOCAB,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    fields.update(overrides)
    return StateXGLAConfig(**fields)


def mamba2_config(**overrides) -> StateXMamba2Config:
    fields = dict(
        num_heads=4,
        head_dim=8,
        hidden_size=16,
        state_size=8,
        num_hidden_layers=2,
        n_groups=1,
        vocab_size=VOCAB,
        chunk_size=8,
        statex_state_size=16,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    fields.update(overrides)
    return StateXMamba2Config(**fields)


def build(family: str, **overrides) -> torch.nn.Module:
    """A tiny causal LM of ``family`` ("gla" or "mamba2") in eval mode."""
    if family == "gla":
        return StateXGLAForCausalLM(gla_config(**overrides)).eval()
    return StateXMamba2ForCausalLM(mamba2_config(**overrides)).eval()


FAMILIES = ["gla", "mamba2"]
# Unexpanded and expanded variants of each family, as used across the suite.
VARIANTS = [("gla", []), ("gla", [0]), ("mamba2", []), ("mamba2", [1])]


def returned_cache(output):
    """The cache an output holds (``cache`` from transformers 5.24 on, else ``past_key_values`` / ``cache_params``)."""
    for name in ("cache", "past_key_values", "cache_params"):
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    raise AssertionError(f"{type(output).__name__} holds no cache")
