"""The recurrent state of a StateX model, kept in a transformers ``Cache`` of ``LinearAttentionLayer``s.

One ``transformers.cache_utils.LinearAttentionLayer`` per model layer, as transformers' own Mamba2 keeps
its state, each with that layer's shapes (a StateX layer's state is larger):

- ``recurrent_states[0]``: the mixer's state (GLA ``[B, H, K, V]``, Mamba2 ``[B, H, P, N]``; fp32);
- ``conv_states[i]``: the last ``conv_kernel - 1`` inputs of causal convolution ``i``, ``[B, D, K - 1]``
  (Mamba2: one over ``[x | B | C]``; GLA with short convolutions: three, for q, k and v).

A state is written by copying into the tensor allocated on its first write (``copy_``), so its address
never changes: a captured CUDA graph keeps reading the right memory. The models accept any transformers
``Cache`` whose layers are ``LinearAttentionLayer`` (``DynamicCache(config=model.config)`` builds one);
they create a :class:`StateXCache` when they need one.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, LinearAttentionLayer


class StateXCache(Cache):
    """A transformers ``Cache`` with one ``LinearAttentionLayer`` per layer and a count of the tokens it absorbed.

    Unlike transformers' layers (whose token count only exists from transformers 5.2x on, and only for
    layers with a convolution), the count is kept here, on the host, so ``get_seq_length`` is right on
    every supported transformers version and a ``generate`` that continues from this cache feeds only
    the new tokens. Every reordering is done in place, so the states keep their addresses.
    """

    def __init__(self, config) -> None:
        states = getattr(config, "number_of_conv_states", 1)
        layers = [LinearAttentionLayer(number_of_states=states) for _ in range(config.num_hidden_layers)]
        super().__init__(layers=layers)
        self.seen_tokens = 0
        # Set by whoever relies on the states' addresses (the CUDA-graph decoder); cleared when they move.
        self.graph_binding: object | None = None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reset(self) -> None:
        super().reset()
        self.seen_tokens = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep the rows ``beam_idx`` (beam search), in place."""
        for state in self.state_tensors():
            state.copy_(state.index_select(0, beam_idx.to(state.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row ``repeats`` times (``generate``'s expansion of a given cache); the states move."""
        self._select(lambda rows: torch.arange(rows, device=self._device()).repeat_interleave(repeats))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows ``indices``; the states move."""
        self._select(lambda rows: indices.to(self._device()))

    def state_tensors(self) -> list[torch.Tensor]:
        """Every allocated state tensor, layer by layer (recurrent states first, then the conv states)."""
        return [store[i] for store, i in state_slots(self)]

    def _device(self) -> torch.device:
        tensors = self.state_tensors()
        return tensors[0].device if tensors else torch.device("cpu")

    def _select(self, rows_to_keep) -> None:
        tensors = self.state_tensors()
        if not tensors:
            return
        index = rows_to_keep(tensors[0].shape[0])
        for store, i in state_slots(self):
            store[i] = store[i].index_select(0, index)
        self.graph_binding = None


def state_slots(cache: Cache) -> list[tuple[dict, int]]:
    """``(store, index)`` of every allocated state: ``store[index]`` is the tensor, layer by layer."""
    slots = []
    for layer in cache.layers:
        for store, initialized in (
            (layer.recurrent_states, layer.is_recurrent_states_initialized),
            (layer.conv_states, layer.is_conv_states_initialized),
        ):
            slots.extend((store, i) for i in sorted(store) if initialized[i])
    return slots


def _layer(cache: Cache, layer_idx: int) -> LinearAttentionLayer:
    layer = cache.layers[layer_idx] if layer_idx < len(cache.layers) else None
    if not isinstance(layer, LinearAttentionLayer):
        raise TypeError(
            f"the cache's layer {layer_idx} is {type(layer).__name__}, not a LinearAttentionLayer; pass a cache "
            "built for this model (StateXCache(model.config) or DynamicCache(config=model.config)), or none"
        )
    return layer


def recurrent_state(cache: Cache, layer_idx: int) -> torch.Tensor | None:
    """The mixer state of layer ``layer_idx`` left by earlier calls, or ``None`` before the first."""
    layer = _layer(cache, layer_idx)
    if layer.is_recurrent_states_initialized[0] and layer.has_previous_state[0]:
        return layer.recurrent_states[0]
    return None


def conv_state(cache: Cache, layer_idx: int, state_idx: int = 0) -> torch.Tensor | None:
    """Convolution ``state_idx``'s window of layer ``layer_idx``, or ``None`` before the first call."""
    layer = _layer(cache, layer_idx)
    if layer.is_conv_states_initialized[state_idx] and layer.has_previous_state[state_idx]:
        return layer.conv_states[state_idx]
    return None


def store_recurrent_state(cache: Cache, layer_idx: int, state: torch.Tensor) -> None:
    """Make ``state`` layer ``layer_idx``'s mixer state (copied into the layer's tensor; nothing to do when
    ``state`` is that tensor, updated in place)."""
    layer = _layer(cache, layer_idx)
    if not layer.is_recurrent_states_initialized[0]:
        layer.lazy_initialization(recurrent_states=state)
    if state is not layer.recurrent_states[0]:
        layer.recurrent_states[0].copy_(state)
    layer.has_previous_state[0] = True


def store_conv_state(cache: Cache, layer_idx: int, state: torch.Tensor, state_idx: int = 0) -> None:
    """Make ``state`` (``[B, D, K - 1]``) the window of convolution ``state_idx`` of layer ``layer_idx``."""
    layer = _layer(cache, layer_idx)
    if not layer.is_conv_states_initialized[state_idx]:
        layer.lazy_initialization(conv_states=state, state_idx=state_idx, conv_kernel_size=state.shape[-1])
    if state is not layer.conv_states[state_idx]:
        layer.conv_states[state_idx].copy_(state)
    layer.has_previous_state[state_idx] = True


def count_tokens(cache: Cache, tokens: int) -> None:
    """Record that every layer absorbed ``tokens`` more tokens (what :func:`tokens_seen` reports)."""
    if isinstance(cache, StateXCache):
        cache.seen_tokens += tokens
        return
    counts = [getattr(layer, "cumulative_length_linear", None) for layer in cache.layers]
    if all(count is not None for count in counts):  # transformers' own per-layer count (from 5.2x on)
        for count in counts:
            count.add_(tokens)
    else:  # older transformers keep no count for recurrent layers: keep one beside them
        cache.statex_seen_tokens = getattr(cache, "statex_seen_tokens", 0) + tokens


def tokens_seen(cache: Cache) -> int:
    """How many tokens ``cache`` has absorbed (transformers 5.17's caches cannot tell for recurrent layers)."""
    if isinstance(cache, StateXCache):
        return cache.seen_tokens
    if hasattr(cache, "statex_seen_tokens"):
        return cache.statex_seen_tokens
    if not any(getattr(layer, "has_previous_state", {}).get(0) for layer in cache.layers):
        return 0
    return int(cache.get_seq_length())


def copy_states(source: Cache, target: Cache) -> None:
    """Write every state ``source`` holds into ``target`` (into its own tensors, allocated if needed)."""
    for layer_idx, layer in enumerate(source.layers):
        state = recurrent_state(source, layer_idx)
        if state is not None:
            store_recurrent_state(target, layer_idx, state)
        for state_idx in range(layer.number_of_states):
            window = conv_state(source, layer_idx, state_idx)
            if window is not None:
                store_conv_state(target, layer_idx, window, state_idx)


def share_states(owner: Cache, borrower: Cache) -> None:
    """Make ``borrower``'s layers hold ``owner``'s state tensors themselves (same memory, same addresses)."""
    for (store, i), (own_store, j) in zip(state_slots(borrower), state_slots(owner), strict=True):
        store[i] = own_store[j]


def unshare_states(cache: Cache) -> None:
    """Give ``cache`` its own copy of every state tensor (after :func:`share_states`)."""
    for store, i in state_slots(cache):
        store[i] = store[i].clone()
