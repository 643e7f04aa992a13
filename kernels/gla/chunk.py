"""Chunked gated linear attention in Triton: forward, backward, and the public ``chunk_gla``.

The stages live one per file, in the order the math composes them:
``chunk_cumsum`` (in-chunk cumulative log decay and the decayed operands), ``chunk_h`` (the state carried
across chunks), ``chunk_intra`` (decayed attention inside a chunk), ``chunk_o`` (output and its
gradients). This file composes them into ``chunk_gla_fwd`` / ``chunk_gla_bwd`` and one autograd
function.

Memory: the inputs and the in-chunk attention ``A`` (``[B, T, H, BT]`` fp32) are kept for the
backward, and the per-chunk states (``[NT, H, K, V]``, bf16 for bf16 inputs) while they take at most
``kernels.utils.KEEP_STATES_MAX_BYTES``; larger ones (GLA-1.3B's 4 heads past T = 32K, its StateX
head past 8K) are recomputed there, one more ``chunk_h`` pass. The SSD kernels follow the same rule.
"""

from __future__ import annotations

import os

import torch
from statex_hf.kernels.gla.chunk_cumsum import chunk_local_cumsum
from statex_hf.kernels.gla.chunk_h import chunk_gla_bwd_dh, chunk_gla_fwd_h
from statex_hf.kernels.gla.chunk_intra import chunk_gla_bwd_intra, chunk_gla_fwd_intra
from statex_hf.kernels.gla.chunk_o import chunk_gla_bwd_dA, chunk_gla_bwd_dqk, chunk_gla_bwd_dv, chunk_gla_fwd_o
from statex_hf.kernels.gla.chunk_utils import ChunkLayout, prepare_chunk_layout
from statex_hf.kernels.utils import kept_for_backward

CHUNK_SIZE = 64


def chunk_size_for(K: int, V: int) -> int:
    """Tokens per chunk. Per-chunk states cost ``T / BT * K * V`` of memory traffic and ``T / BT``
    sequential steps; the in-chunk attention costs ``BT`` per token. ``STATEX_GLA_CHUNK_SIZE``
    (64 or 128) overrides, for benchmarking."""
    override = os.environ.get("STATEX_GLA_CHUNK_SIZE")
    if override:
        return int(override)
    return CHUNK_SIZE


def chunk_gla_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    layout: ChunkLayout,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Returns ``A`` (in-chunk attention), the per-chunk states ``h``, ``o`` and the final state."""
    g, qg, kg = chunk_local_cumsum(q, k, gk, layout, chunk_size, scale)
    h, ht = chunk_gla_fwd_h(kg, v, g, layout, chunk_size, initial_state, output_final_state)
    A = chunk_gla_fwd_intra(q, k, g, layout, chunk_size, scale)
    o = chunk_gla_fwd_o(qg, v, h, A, layout, chunk_size)
    return A, h, o, ht


def chunk_gla_bwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor,
    A: torch.Tensor,
    h: torch.Tensor | None,
    scale: float,
    initial_state: torch.Tensor | None,
    do: torch.Tensor,
    dht: torch.Tensor | None,
    layout: ChunkLayout,
    gk_dtype: torch.dtype,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of q, k, v, gk and the initial state; ``h`` is the forward's per-chunk states, or
    ``None`` to recompute them."""
    # g and the decayed operands are recomputed rather than kept: one elementwise pass, against
    # 8 bytes per element of q kept from forward to backward.
    g, qg, kg = chunk_local_cumsum(q, k, gk, layout, chunk_size, scale)
    if h is None:
        h, _ = chunk_gla_fwd_h(kg, v, g, layout, chunk_size, initial_state, output_final_state=False)
    dh, dh0 = chunk_gla_bwd_dh(qg, g, do, layout, chunk_size, dht, need_dh0=initial_state is not None)
    dA = chunk_gla_bwd_dA(v, do, layout, chunk_size, scale)
    dv = chunk_gla_bwd_dv(kg, A, do, dh, layout, chunk_size)
    dq_intra, dk_intra = chunk_gla_bwd_intra(q, k, g, dA, layout, chunk_size)
    dq, dk, dgk = chunk_gla_bwd_dqk(q, k, v, g, h, do, dh, dq_intra, dk_intra, layout, chunk_size, scale, gk_dtype)
    return dq, dk, dv, dgk, dh0


class ChunkGLAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, gk, scale, initial_state, output_final_state, cu_seqlens):
        B, T = q.shape[:2]
        chunk_size = chunk_size_for(q.shape[-1], v.shape[-1])
        layout = prepare_chunk_layout(B, T, chunk_size, cu_seqlens, q.device)
        A, h, o, ht = chunk_gla_fwd(q, k, v, gk, scale, initial_state, output_final_state, layout, chunk_size)
        ctx.save_for_backward(q, k, v, gk, A, kept_for_backward(h), initial_state)
        ctx.layout = layout
        ctx.chunk_size = chunk_size
        ctx.scale = scale
        ctx.gk_dtype = gk.dtype
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gk, A, h, initial_state = ctx.saved_tensors
        dq, dk, dv, dgk, dh0 = chunk_gla_bwd(
            q, k, v, gk, A, h, ctx.scale, initial_state, do.contiguous(), dht, ctx.layout, ctx.gk_dtype, ctx.chunk_size
        )
        if dh0 is not None:
            dh0 = dh0.to(initial_state.dtype)
        return dq, dk, dv, dgk, None, dh0, None, None


def chunk_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Gated linear attention, chunked, on CUDA tensors (Triton), with a full backward.

    ``S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t``, ``o_t = (scale * q_t) S_t`` per head.

    Args:
        q: queries ``[B, T, H, K]``.
        k: keys ``[B, T, H, K]``.
        v: values ``[B, T, H, V]``.
        g: log decay per key channel ``[B, T, H, K]`` (``<= 0``; e.g. ``logsigmoid(x) / 16``).
        scale: query scale, ``K ** -0.5`` when ``None``.
        initial_state: ``[N, H, K, V]`` (``N = B``, or the number of sequences with ``cu_seqlens``);
            any float dtype, accumulated in fp32; gets a gradient when it requires one.
        output_final_state: also return the state after each sequence's last token.
        cu_seqlens: ``[N + 1]`` cumulative sequence lengths of a packed batch (``B == 1``); the state
            restarts (from ``initial_state[i]`` or zero) at each sequence start.

    Returns:
        ``o`` ``[B, T, H, V]`` in ``v``'s dtype, and the final state ``[N, H, K, V]`` (fp32) or ``None``.

    q, k, v, g take bf16, fp16 or fp32 (one dtype for q, k, v); any head count; K from 16 to 1024
    and V from 16 to 2048 (the state is tiled, larger also runs). Gradients flow to q, k, v, g and
    ``initial_state``.
    """
    B, T, H, K = q.shape
    if k.shape != q.shape or g.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"chunk_gla: q, k, g must be [B, T, H, K] and v [B, T, H, V]; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}, g {tuple(g.shape)}"
        )
    if cu_seqlens is not None and B != 1:
        raise ValueError(f"chunk_gla: cu_seqlens needs a packed batch of size 1, got B={B}")
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    if initial_state is not None and initial_state.shape != (N, H, K, v.shape[-1]):
        raise ValueError(
            f"chunk_gla: initial_state must be [N, H, K, V] = {(N, H, K, v.shape[-1])}, "
            f"got {tuple(initial_state.shape)}"
        )
    scale = K**-0.5 if scale is None else scale
    q, k, v, g = (x.contiguous() for x in (q, k, v, g))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    o, final_state = ChunkGLAFunction.apply(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
    return o, final_state
