"""The recurrent cache used by ``generate``: per layer a fixed-size state, each layer its own shape.

StateX layers hold a larger state than the others, so the cache keeps one tensor (or tuple of
tensors) per layer rather than one stacked tensor. Nothing in it grows with the sequence.
"""

from __future__ import annotations

import torch


class StateXRecurrentCache:
    """Recurrent and convolution states of every layer, plus how many tokens they have absorbed.

    Attributes:
        recurrent_states: per layer, the mixer's state (GLA ``[B, H, K, V]``, Mamba2 ``[B, H, P, N]``; fp32).
        conv_states: per layer, the last ``conv_kernel - 1`` inputs of each causal convolution
            (Mamba2 ``[B, conv_dim, K - 1]``; GLA a tuple for q, k, v when short convolutions are on).
        seen_tokens: tokens of the longest row absorbed so far (padding included).
    """

    is_compileable = False

    def __init__(self, num_layers: int) -> None:
        self.recurrent_states: list[torch.Tensor | None] = [None] * num_layers
        self.conv_states: list[torch.Tensor | tuple[torch.Tensor, ...] | None] = [None] * num_layers
        self.seen_tokens = 0

    def __len__(self) -> int:
        return len(self.recurrent_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep the rows ``beam_idx`` (beam search and ``num_return_sequences`` expansion)."""

        def select(state):
            if state is None:
                return None
            if isinstance(state, tuple):
                return tuple(select(s) for s in state)
            return state.index_select(0, beam_idx.to(state.device))

        self.recurrent_states = [select(s) for s in self.recurrent_states]
        self.conv_states = [select(s) for s in self.conv_states]

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row ``repeats`` times, as ``generate`` does for ``num_return_sequences``."""
        rows = next((s for s in self.recurrent_states if s is not None), None)
        if rows is None:
            return
        self.reorder_cache(torch.arange(rows.shape[0], device=rows.device).repeat_interleave(repeats))
