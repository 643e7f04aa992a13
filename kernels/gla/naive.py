"""Token-by-token gated linear attention: the definition of correct for every GLA kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from statex_hf.kernels.utils import sequence_bounds


def naive_recurrent_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Run ``S_t = diag(exp(gk_t)) S_{t-1} + k_t^T v_t``, ``o_t = (scale * q_t) S_t`` per head.

    Args:
        q, k, gk: ``[B, T, H, K]``; ``gk`` is the log of the per-key-channel decay (``<= 0``).
        v: ``[B, T, H, V]``.
        scale: query scale, ``K ** -0.5`` when ``None``.
        initial_state: ``[N, H, K, V]`` (``N = B``, or the number of sequences with ``cu_seqlens``).
        output_final_state: return the state after the last token of each sequence.
        cu_seqlens: ``[N + 1]`` cumulative sequence lengths of a packed batch (``B == 1``); the
            state starts afresh (or from ``initial_state[i]``) at each sequence start.

    Returns:
        ``o`` ``[B, T, H, V]`` in ``v``'s dtype, and the final state ``[N, H, K, V]`` in fp32 or ``None``.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    o = torch.zeros(B, T, H, V, dtype=torch.float32, device=q.device)
    finals = []
    for n, (b, start, end) in enumerate(sequence_bounds(B, T, cu_seqlens)):
        state = q.new_zeros(H, K, V, dtype=torch.float32)
        if initial_state is not None:
            state = state + initial_state[n].float()
        for t in range(start, end):
            decay = gk[b, t].float().exp()  # [H, K]
            kv = k[b, t].float()[:, :, None] * v[b, t].float()[:, None, :]  # [H, K, V]
            state = state * decay[:, :, None] + kv
            o[b, t] = torch.einsum("hk,hkv->hv", q[b, t].float() * scale, state)
        finals.append(state)
    final_state = torch.stack(finals) if output_final_state else None
    return o.to(v.dtype), final_state


def gla_log_decay(gk: torch.Tensor, gate_logit_normalizer: float, clamp_min: float | None = None) -> torch.Tensor:
    """GLA's log decay from its raw gate logits, as fla's ``GatedLinearAttention`` computes it:
    ``logsigmoid(gk) / gate_logit_normalizer``, then clamped below at ``clamp_min`` when given."""
    gk = F.logsigmoid(gk) / gate_logit_normalizer
    if clamp_min is not None:
        gk = torch.clamp_min(gk, clamp_min)
    return gk
