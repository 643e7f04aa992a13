"""The input handling every StateX model stack shares: embeddings, packing, cache and masks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from statex_hf.modeling.cache import StateXCache
from statex_hf.modeling.packing import cu_seqlens_from_kwargs
from torch import nn
from transformers.cache_utils import Cache
from transformers.utils import logging

# Under transformers' root logger, so its verbosity settings (set_verbosity_*, TRANSFORMERS_VERBOSITY) apply.
logger = logging.get_logger(f"transformers.{__name__}")


@dataclass
class RecurrentRun:
    """What the layers of one forward pass work with.

    Attributes:
        hidden_states: ``[B, T, D]``, the embedded input (packed documents are packed by each mixer).
        cache: the cache to read and update, or ``None`` (no cache wanted, or packed documents).
        cu_seqlens: document boundaries of the packed row ``[1, B * T]``, or ``None``.
        attention_mask: the padding mask, or ``None`` when no token of this call is padding.
    """

    hidden_states: torch.Tensor
    cache: Cache | None
    cu_seqlens: torch.LongTensor | None
    attention_mask: torch.Tensor | None


def _without_full_mask(attention_mask: torch.Tensor | None, seqlen: int) -> torch.Tensor | None:
    """``None`` when no token of this call is padding, so the layers take their unmasked fast path.

    Finding that out reads the mask on the host; inside a compiled graph that would break the graph,
    so there the mask is kept and applied (a mask of ones changes nothing).
    """
    if attention_mask is None or torch.compiler.is_compiling():
        return attention_mask
    return None if bool(attention_mask[:, -seqlen:].all()) else attention_mask


def start_recurrent_run(
    model: nn.Module,
    input_ids: torch.LongTensor | None,
    inputs_embeds: torch.Tensor | None,
    cache: Cache | None,
    use_cache: bool | None,
    attention_mask: torch.Tensor | None,
    position_ids: torch.LongTensor | None,
    kwargs: dict,
) -> RecurrentRun:
    """Embed the input and decide on packing, cache and mask, as transformers' models do."""
    config = model.config
    use_cache = use_cache if use_cache is not None else (config.use_cache and not model.training)
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds")
    if inputs_embeds is None:
        inputs_embeds = model.embeddings(input_ids)

    cu_seqlens = cu_seqlens_from_kwargs(position_ids, kwargs)
    if cu_seqlens is not None and (use_cache or cache is not None):
        logger.warning_once("Packed sequences (position_ids restarting at 0) are run without a cache.")
        use_cache, cache = False, None
    if model.gradient_checkpointing and model.training:
        use_cache = False
    if use_cache and cache is None:
        cache = StateXCache(config)
    attention_mask = _without_full_mask(attention_mask, inputs_embeds.shape[1])
    return RecurrentRun(inputs_embeds, cache if use_cache else None, cu_seqlens, attention_mask)
