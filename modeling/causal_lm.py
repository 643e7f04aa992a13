"""The causal-LM head shared by the StateX models: logits and loss."""

from __future__ import annotations

import torch
from statex_hf.kernels.linear.row_norm import RowNorm
from statex_hf.modeling.decode_linear import normed_logits
from statex_hf.modeling.loss import chunked_causal_lm_loss
from transformers import PreTrainedModel


def causal_lm_head(
    model: PreTrainedModel,
    hidden_states: torch.Tensor,
    labels: torch.LongTensor | None,
    logits_to_keep: int | torch.Tensor = 0,
    final_norm: RowNorm | None = None,
    **kwargs,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Logits and loss of a causal LM head, with the chunked loss for long sequences.

    With ``config.chunked_loss_size`` set and labels given, only the loss is computed (chunk by
    chunk, logits never all in memory) and ``logits`` is ``None``. ``final_norm``: the decoder left its final norm
    to the head (a one-row decode step, ``StateXRecurrentForCausalLM``), computed here in the head's launch where the
    one-row GEMV takes it, else by the decoder's norm module as the decoder would have run it.
    """
    if final_norm is not None:
        logits = normed_logits(model.lm_head, hidden_states, final_norm)
        if logits is not None:
            return None, logits
        decoder = model.get_decoder()
        hidden_states = getattr(decoder, decoder.final_norm_name)(hidden_states)
    chunk = getattr(model.config, "chunked_loss_size", None)
    if labels is not None and chunk:
        loss = chunked_causal_lm_loss(
            hidden_states, model.lm_head.weight, labels, kwargs.get("num_items_in_batch"), chunk_size=chunk
        )
        return loss, None
    if isinstance(logits_to_keep, int) and logits_to_keep > 0 and labels is None:
        hidden_states = hidden_states[:, -logits_to_keep:]
    elif not isinstance(logits_to_keep, int):
        hidden_states = hidden_states[:, logits_to_keep]
    logits = model.lm_head(hidden_states.to(model.lm_head.weight.dtype)).float()
    loss = None
    if labels is not None:
        loss = model.loss_function(logits=logits, labels=labels, vocab_size=model.config.vocab_size, **kwargs)
    return loss, logits
