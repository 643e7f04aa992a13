"""The input handling every StateX model stack shares: embeddings, packing, cache and masks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from statex_hf.modeling.cache import StateXRecurrentCache
from statex_hf.modeling.packing import cu_seqlens_from_kwargs
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)


@dataclass
class RecurrentRun:
    """What the layers of one forward pass work with.

    Attributes:
        hidden_states: ``[B, T, D]``, or ``[1, B * T, D]`` when the batch holds packed documents.
        shape: ``(B, T, D)`` of the batch as given.
        cache: the cache to read and update, or ``None`` (no cache wanted, or packed documents).
        cu_seqlens: document boundaries of the packed row, or ``None``.
        attention_mask: the padding mask, or ``None`` when no token of this call is padding.
    """

    hidden_states: torch.Tensor
    shape: tuple[int, int, int]
    cache: StateXRecurrentCache | None
    cu_seqlens: torch.LongTensor | None
    attention_mask: torch.Tensor | None

    def unpacked(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``hidden_states`` in the batch's ``[B, T, D]`` shape."""
        return hidden_states.view(self.shape)


def start_recurrent_run(
    model: nn.Module,
    input_ids: torch.LongTensor | None,
    inputs_embeds: torch.Tensor | None,
    cache: StateXRecurrentCache | None,
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
    batch, seqlen, width = inputs_embeds.shape

    cu_seqlens = cu_seqlens_from_kwargs(position_ids, kwargs)
    if cu_seqlens is not None and (use_cache or cache is not None):
        logger.warning_once("Packed sequences (position_ids restarting at 0) are run without a cache.")
        use_cache, cache = False, None
    if model.gradient_checkpointing and model.training:
        use_cache = False
    if use_cache and cache is None:
        cache = StateXRecurrentCache(config.num_hidden_layers)
    if attention_mask is not None and bool(attention_mask[:, -seqlen:].all()):
        attention_mask = None
    hidden_states = inputs_embeds
    if cu_seqlens is not None:  # all documents of the batch as one packed row
        hidden_states = hidden_states.reshape(1, batch * seqlen, width)
    return RecurrentRun(hidden_states, (batch, seqlen, width), cache if use_cache else None, cu_seqlens, attention_mask)
