"""Causal-LM loss that never holds the full-vocabulary logits of a long sequence at once.

At 64K tokens and a 50K vocabulary, fp32 logits alone take 13 GB. The sequence is cut into
chunks; each chunk's logits are made, reduced to a loss sum and dropped, and recomputed in the
backward pass (activation checkpointing), so peak memory holds one chunk's logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight).float()
    return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")


def chunked_causal_lm_loss(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.LongTensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int = 4096,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Mean next-token cross-entropy, equal to transformers' ``ForCausalLMLoss``.

    Args:
        hidden_states: ``[B, T, D]`` final hidden states.
        lm_head_weight: ``[vocab, D]``.
        labels: ``[B, T]``, unshifted (token ``t`` predicts ``labels[t + 1]``), ``ignore_index`` ignored.
        num_items_in_batch: the divisor under gradient accumulation (Trainer passes it); else the
            number of labels that are not ignored.
        chunk_size: tokens per chunk.
    """
    shifted = F.pad(labels, (0, 1), value=ignore_index)[:, 1:]
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    targets = shifted.reshape(-1).to(hidden.device)
    if ignore_index != -100:
        targets = targets.masked_fill(targets == ignore_index, -100)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        part = slice(start, start + chunk_size)
        if torch.is_grad_enabled():
            total = total + checkpoint(
                _chunk_loss_sum, hidden[part], lm_head_weight, targets[part], use_reentrant=False
            )
        else:
            total = total + _chunk_loss_sum(hidden[part], lm_head_weight, targets[part])
    if num_items_in_batch is None:
        divisor = (targets != -100).sum()
    else:
        divisor = num_items_in_batch
    if torch.is_tensor(divisor):
        divisor = divisor.to(total.device)
    return total / divisor
