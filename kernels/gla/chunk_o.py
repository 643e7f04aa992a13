"""Chunked GLA, output stage: o from the chunk states and the in-chunk attention, and its gradients.

Forward, per chunk (``h`` the state before it, ``A`` from ``chunk_intra``):

    o = scale * (q * exp(g)) h + A v

Backward (``dh`` the gradient of the state after the chunk, ``g_L`` the chunk's last row of g):

    dA = scale * do v^T (lower triangle)
    dv = A^T do + (k * exp(g_L - g)) dh
    dq = scale * exp(g) * (do h^T) + dq_intra
    dk = exp(g_L - g) * (v dh^T) + dk_intra
    dgk_t = sum_{s >= t in chunk} (q_s dq_s - k_s dk_s) + sum_v S_{c+1} * dS_{c+1}

The gate gradient: the log decay of token t scales every term ``q_i (...) k_j`` with ``j < t <= i``,
so its gradient is the suffix sum of ``q dq - k dk``; past the chunk's end that suffix sum equals
the gradient of the decay of the next chunk's first token, which scales the state ``S_{c+1}``
after this chunk as a whole: ``sum_v S_{c+1} * dS_{c+1}``. Summing only inside the chunk keeps the
cancellation between the two terms short (a sum over the whole sequence loses bf16 precision).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from statex_hf.kernels.gla.chunk_utils import ChunkLayout, chunk_bounds
from statex_hf.kernels.gla.configs import gla_launch
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.utils import dot_precision


@triton.jit
def chunk_gla_fwd_o_kernel(
    qg,
    v,
    h,
    A,
    o,
    cu_seqlens,
    chunk_indices,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_v, i_t, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, eos = chunk_bounds(cu_seqlens, chunk_indices, i_t, BT)
    o_t = tl.arange(0, BT)
    rows = t0 + o_t
    m_t = rows < eos
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    base_h = (i_t.to(tl.int64) * H + i_h) * K * V

    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        p_q = (rows[:, None] * H + i_h) * K + o_k[None, :]
        b_qg = tl.load(qg + p_q, mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_h = tl.load(h + base_h + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
        b_o += tl.dot(b_qg.to(b_h.dtype), b_h, input_precision=DOT_PRECISION)
    b_A = tl.load(A + (rows[:, None] * H + i_h) * BT + o_t[None, :], mask=m_t[:, None], other=0.0)
    p_v = (rows[:, None] * H + i_h) * V + o_v[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    b_v = tl.load(v + p_v, mask=m_tv, other=0.0)
    b_o += tl.dot(b_A.to(b_v.dtype), b_v, input_precision=DOT_PRECISION)
    tl.store(o + p_v, b_o.to(o.dtype.element_ty), mask=m_tv)


@triton.jit
def chunk_gla_bwd_dA_kernel(
    v,
    do,
    dA,
    cu_seqlens,
    chunk_indices,
    scale,
    H: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    t0, eos = chunk_bounds(cu_seqlens, chunk_indices, i_t, BT)
    o_t = tl.arange(0, BT)
    rows = t0 + o_t
    m_t = rows < eos
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        p = (rows[:, None] * H + i_h) * V + o_v[None, :]
        b_do = tl.load(do + p, mask=m_tv, other=0.0)
        b_v = tl.load(v + p, mask=m_tv, other=0.0)
        b_dA += tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PRECISION)
    b_dA = tl.where(o_t[:, None] >= o_t[None, :], b_dA * scale, 0.0)
    tl.store(dA + (rows[:, None] * H + i_h) * BT + o_t[None, :], b_dA, mask=m_t[:, None])


@triton.jit
def chunk_gla_bwd_dv_kernel(
    kg,
    A,
    do,
    dh,
    dv,
    cu_seqlens,
    chunk_indices,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_v, i_t, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, eos = chunk_bounds(cu_seqlens, chunk_indices, i_t, BT)
    o_t = tl.arange(0, BT)
    rows = t0 + o_t
    m_t = rows < eos
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    base_h = (i_t.to(tl.int64) * H + i_h) * K * V

    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        p_k = (rows[:, None] * H + i_h) * K + o_k[None, :]
        b_kg = tl.load(kg + p_k, mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_dh = tl.load(dh + base_h + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
        b_dv += tl.dot(b_kg.to(b_dh.dtype), b_dh, input_precision=DOT_PRECISION)
    p_v = (rows[:, None] * H + i_h) * V + o_v[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    b_do = tl.load(do + p_v, mask=m_tv, other=0.0)
    # A^T read directly: element (j, i) of the tile is A_ij.
    b_At = tl.load(A + (rows[None, :] * H + i_h) * BT + o_t[:, None], mask=m_t[None, :], other=0.0)
    b_dv += tl.dot(b_At.to(b_do.dtype), b_do, input_precision=DOT_PRECISION)
    tl.store(dv + p_v, b_dv.to(dv.dtype.element_ty), mask=m_tv)


@triton.jit
def chunk_gla_bwd_dqk_kernel(
    q,
    k,
    v,
    g,
    h,
    do,
    dh,
    dq_intra,
    dk_intra,
    dq,
    dk,
    dgk,
    cu_seqlens,
    chunk_indices,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_k, i_t, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, eos = chunk_bounds(cu_seqlens, chunk_indices, i_t, BT)
    rows = t0 + tl.arange(0, BT)
    m_t = rows < eos
    last = tl.minimum(t0 + BT, eos) - 1
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    base_h = (i_t.to(tl.int64) * H + i_h) * K * V

    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_hdh = tl.zeros([BK], dtype=tl.float32)  # sum_v h_c * dh_c, for the gate gradient
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        p_v = (rows[:, None] * H + i_h) * V + o_v[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_do = tl.load(do + p_v, mask=m_tv, other=0.0)
        b_v = tl.load(v + p_v, mask=m_tv, other=0.0)
        # h^T and dh^T tiles, [BV, BK].
        p_ht = base_h + o_k[None, :] * V + o_v[:, None]
        m_ht = m_k[None, :] & m_v[:, None]
        b_ht = tl.load(h + p_ht, mask=m_ht, other=0.0)
        b_dht = tl.load(dh + p_ht, mask=m_ht, other=0.0)
        b_dq += tl.dot(b_do.to(b_ht.dtype), b_ht, input_precision=DOT_PRECISION)
        b_dk += tl.dot(b_v.to(b_dht.dtype), b_dht, input_precision=DOT_PRECISION)
        b_hdh += tl.sum(b_ht.to(tl.float32) * b_dht.to(tl.float32), axis=0)

    p_k = (rows[:, None] * H + i_h) * K + o_k[None, :]
    m_tk = m_t[:, None] & m_k[None, :]
    b_g = tl.load(g + p_k, mask=m_tk, other=0.0)
    b_gl = tl.load(g + (last * H + i_h) * K + o_k, mask=m_k, other=0.0)
    b_q = tl.load(q + p_k, mask=m_tk, other=0.0).to(tl.float32)
    b_k = tl.load(k + p_k, mask=m_tk, other=0.0).to(tl.float32)
    b_dq = b_dq * (scale * tl.exp(b_g)) + tl.load(dq_intra + p_k, mask=m_tk, other=0.0)
    b_dk_inter = tl.where(m_tk, b_dk * tl.exp(b_gl[None, :] - b_g), 0.0)
    b_dk = b_dk_inter + tl.load(dk_intra + p_k, mask=m_tk, other=0.0)
    tl.store(dq + p_k, b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + p_k, b_dk.to(dk.dtype.element_ty), mask=m_tk)
    # Gate gradient: in-chunk suffix sum of q dq - k dk, plus the gradient of the decay at the next
    # chunk's first token, sum_v S * dS of the state after this chunk. That state is
    # exp(g_L) h_c + kg^T v, so the term is exp(g_L) sum_v h_c dh_c + sum_t k_t dk_inter_t.
    b_dg = b_q * b_dq - b_k * b_dk
    b_next = tl.exp(b_gl) * b_hdh + tl.sum(b_k * b_dk_inter, axis=0)
    b_dgk = tl.sum(b_dg, axis=0)[None, :] - tl.cumsum(b_dg, axis=0) + b_dg + b_next[None, :]
    tl.store(dgk + p_k, b_dgk.to(dgk.dtype.element_ty), mask=m_tk)


def chunk_gla_fwd_o(
    qg: torch.Tensor,
    v: torch.Tensor,
    h: torch.Tensor,
    A: torch.Tensor,
    layout: ChunkLayout,
    chunk_size: int,
) -> torch.Tensor:
    """``o = qg h + A v`` with ``qg = q exp(g) scale``; ``o`` in ``v``'s dtype."""
    _, _, H, K = qg.shape
    V = v.shape[-1]
    o = torch.empty_like(v)

    def run(c: LaunchConfig) -> None:
        chunk_gla_fwd_o_kernel[(triton.cdiv(V, c.BV), layout.num_chunks, H)](
            qg,
            v,
            h,
            A,
            o,
            layout.cu_seqlens,
            layout.chunk_indices,
            H=H,
            K=K,
            V=V,
            BT=chunk_size,
            **c.kwargs(),
            DOT_PRECISION=dot_precision(qg.dtype),
        )

    gla_launch("fwd_o", run, K, V, chunk_size, operand=qg)
    return o


def chunk_gla_bwd_dA(
    v: torch.Tensor, do: torch.Tensor, layout: ChunkLayout, chunk_size: int, scale: float
) -> torch.Tensor:
    B, T, H, V = v.shape
    dA = v.new_empty(B, T, H, chunk_size, dtype=torch.float32)

    def run(c: LaunchConfig) -> None:
        chunk_gla_bwd_dA_kernel[(layout.num_chunks, H)](
            v,
            do,
            dA,
            layout.cu_seqlens,
            layout.chunk_indices,
            scale,
            H=H,
            V=V,
            BT=chunk_size,
            **c.kwargs(),
            DOT_PRECISION=dot_precision(v.dtype),
        )

    gla_launch("bwd_dA", run, 0, V, chunk_size, operand=v)
    return dA


def chunk_gla_bwd_dv(
    kg: torch.Tensor,
    A: torch.Tensor,
    do: torch.Tensor,
    dh: torch.Tensor,
    layout: ChunkLayout,
    chunk_size: int,
) -> torch.Tensor:
    """``dv = A^T do + kg dh`` with ``kg = k exp(g_L - g)``."""
    _, _, H, K = kg.shape
    V = do.shape[-1]
    dv = torch.empty_like(do)

    def run(c: LaunchConfig) -> None:
        chunk_gla_bwd_dv_kernel[(triton.cdiv(V, c.BV), layout.num_chunks, H)](
            kg,
            A,
            do,
            dh,
            dv,
            layout.cu_seqlens,
            layout.chunk_indices,
            H=H,
            K=K,
            V=V,
            BT=chunk_size,
            **c.kwargs(),
            DOT_PRECISION=dot_precision(kg.dtype),
        )

    gla_launch("bwd_dv", run, K, V, chunk_size, operand=kg)
    return dv


def chunk_gla_bwd_dqk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    h: torch.Tensor,
    do: torch.Tensor,
    dh: torch.Tensor,
    dq_intra: torch.Tensor,
    dk_intra: torch.Tensor,
    layout: ChunkLayout,
    chunk_size: int,
    scale: float,
    gk_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk in the inputs' dtype and the gate gradient dgk in ``gk_dtype``."""
    _, _, H, K = q.shape
    V = v.shape[-1]
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    dgk = torch.empty_like(q, dtype=gk_dtype)

    def run(c: LaunchConfig) -> None:
        chunk_gla_bwd_dqk_kernel[(triton.cdiv(K, c.BK), layout.num_chunks, H)](
            q,
            k,
            v,
            g,
            h,
            do,
            dh,
            dq_intra,
            dk_intra,
            dq,
            dk,
            dgk,
            layout.cu_seqlens,
            layout.chunk_indices,
            scale,
            H=H,
            K=K,
            V=V,
            BT=chunk_size,
            **c.kwargs(),
            DOT_PRECISION=dot_precision(q.dtype),
        )

    gla_launch("bwd_dqk", run, K, V, chunk_size, operand=q)
    return dq, dk, dgk
