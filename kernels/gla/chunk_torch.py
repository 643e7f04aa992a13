"""Chunked gated linear attention in plain PyTorch: the CPU path of the models (autograd backward).

Within a chunk of ``L`` tokens, with ``g`` the cumulative log decay from the chunk start,

    o_i = scale * [(q_i * exp(g_i)) S + sum_{j <= i} (sum_k q_ik k_jk exp(g_ik - g_jk)) v_j]
    S  <- exp(g_L) * S + sum_j (k_j * exp(g_L - g_j))^T v_j

The intra-chunk decay ``exp(g_i - g_j)`` is formed per pair and channel (an ``[L, L, K]`` tensor per
chunk and head) rather than as ``exp(g_i) * exp(-g_j)``: the split form overflows once a gate is
strongly negative, the pairwise form never leaves ``[0, 1]``. Memory is linear in ``T``
(``L * K`` per token), the state is fp32, and each sequence of a packed batch runs on its own.
"""

from __future__ import annotations

import torch
from statex_hf.kernels.utils import per_document


def _chunk_gla_dense(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``B`` sequences of one length at once; inputs ``[B, T, H, *]``, returns fp32 ``o`` and state."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    # [B, H, T, *] in fp32: the recurrence accumulates in fp32 whatever the input dtype.
    q, k, v, gk = (x.transpose(1, 2).float() for x in (q, k, v, gk))
    state = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    outputs = []
    for start in range(0, T, chunk_size):
        end = min(start + chunk_size, T)
        qc, kc, vc = q[:, :, start:end], k[:, :, start:end], v[:, :, start:end]
        g = gk[:, :, start:end].cumsum(dim=2)  # [B, H, L, K]
        L = end - start
        causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        # exp(g_i - g_j) for j <= i, exactly zero above the diagonal.
        pair = (g[:, :, :, None, :] - g[:, :, None, :, :]).masked_fill(~causal[:, :, None], float("-inf"))
        attn = torch.einsum("bhik,bhjk,bhijk->bhij", qc, kc, pair.exp())
        o = (qc * g.exp()) @ state + attn @ vc
        outputs.append(o * scale)
        g_last = g[:, :, -1:, :]  # [B, H, 1, K]
        state = state * g_last.transpose(-1, -2).exp() + (kc * (g_last - g).exp()).transpose(-1, -2) @ vc
    o = torch.cat(outputs, dim=2) if outputs else q.new_zeros(B, H, 0, V)
    return o.transpose(1, 2), state


def chunk_gla_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    chunk_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Chunked GLA in PyTorch; same contract as :func:`naive_recurrent_gla`.

    Args:
        q, k, gk: ``[B, T, H, K]``; ``gk`` is the log of the per-key-channel decay (``<= 0``).
        v: ``[B, T, H, V]``.
        scale: query scale, ``K ** -0.5`` when ``None``.
        initial_state: ``[N, H, K, V]`` (``N = B``, or the number of sequences with ``cu_seqlens``).
        output_final_state: return the state after the last token of each sequence.
        cu_seqlens: ``[N + 1]`` cumulative lengths of a packed batch (``B == 1``).
        chunk_size: tokens per chunk; the ``[L, L, K]`` decay tensor per chunk bounds memory.

    Returns:
        ``o`` ``[B, T, H, V]`` in ``v``'s dtype, and the final state ``[N, H, K, V]`` in fp32 or ``None``.
    """
    K = q.shape[-1]
    scale = K**-0.5 if scale is None else scale
    if cu_seqlens is None:
        o, final_state = _chunk_gla_dense(q, k, v, gk, scale, initial_state, chunk_size)
    else:
        if q.shape[0] != 1:
            raise ValueError(f"cu_seqlens needs a packed batch of size 1, got q of shape {tuple(q.shape)}")
        o, final_state = per_document(
            lambda s, e, h0: _chunk_gla_dense(q[:, s:e], k[:, s:e], v[:, s:e], gk[:, s:e], scale, h0, chunk_size),
            cu_seqlens,
            initial_state,
        )
    return o.to(v.dtype), final_state if output_final_state else None
