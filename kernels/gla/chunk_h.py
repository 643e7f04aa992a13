"""Chunked GLA, inter-chunk stage: the state carried across chunks, forward and backward.

Forward (state before chunk ``c`` is ``h_c``; ``g`` the in-chunk cumulative log decay, ``g_L`` its
last row):

    h_{c+1} = exp(g_L) * h_c + (k * exp(g_L - g))^T v

Backward (``dh_c`` the gradient of the state after chunk ``c``, i.e. of ``h_{c+1}``):

    dh_{c-1} = exp(g_L) * dh_c + scale * (q * exp(g))^T do

One program owns a ``[BK, BV]`` tile of one head's state and walks the chunks of one sequence in
order (forward) or in reverse (backward); tiling the state is what lets one head reach
``K = 1024, V = 2048``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from statex_hf.kernels.gla.chunk_utils import ChunkLayout, sequence_chunks
from statex_hf.kernels.gla.configs import gla_launch
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.utils import dot_precision


@triton.jit
def chunk_gla_fwd_h_kernel(
    kg,
    v,
    g,
    h,
    h0,
    ht,
    cu_seqlens,
    chunk_offsets,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, boh, nt = sequence_chunks(cu_seqlens, chunk_offsets, i_n, BT)

    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_t = tl.arange(0, BT)
    # State tile offsets inside one [K, V] matrix.
    p_kv = o_k[:, None] * V + o_v[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + i_nh.to(tl.int64) * K * V + p_kv, mask=m_kv, other=0.0).to(tl.float32)

    for i_t in range(0, nt):
        tl.store(h + ((boh + i_t) * H + i_h) * K * V + p_kv, b_h.to(h.dtype.element_ty), mask=m_kv)
        t0 = bos + i_t * BT
        rows = t0 + o_t
        m_t = rows < eos
        last = tl.minimum(t0 + BT, eos) - 1
        # k exp(g_L - g) loaded transposed, [BK, BT]: the update is a [BK, BT] x [BT, BV] product.
        p_kt = (rows[None, :] * H + i_h) * K + o_k[:, None]
        b_kg = tl.load(kg + p_kt, mask=m_k[:, None] & m_t[None, :], other=0.0)
        b_gl = tl.load(g + (last * H + i_h) * K + o_k, mask=m_k, other=0.0)
        b_v = tl.load(v + (rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
        b_h = b_h * tl.exp(b_gl)[:, None]
        b_h += tl.dot(b_kg, b_v, input_precision=DOT_PRECISION)

    if STORE_FINAL_STATE:
        tl.store(ht + i_nh.to(tl.int64) * K * V + p_kv, b_h, mask=m_kv)


@triton.jit
def chunk_gla_bwd_dh_kernel(
    qg,
    g,
    do,
    dh,
    dht,
    dh0,
    cu_seqlens,
    chunk_offsets,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_FINAL_STATE_GRADIENT: tl.constexpr,
    STORE_INITIAL_STATE_GRADIENT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, boh, nt = sequence_chunks(cu_seqlens, chunk_offsets, i_n, BT)

    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_t = tl.arange(0, BT)
    p_kv = o_k[:, None] * V + o_v[None, :]

    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_FINAL_STATE_GRADIENT:
        b_dh += tl.load(dht + i_nh.to(tl.int64) * K * V + p_kv, mask=m_kv, other=0.0).to(tl.float32)

    for i_r in range(0, nt):
        i_t = nt - 1 - i_r
        tl.store(dh + ((boh + i_t) * H + i_h) * K * V + p_kv, b_dh.to(dh.dtype.element_ty), mask=m_kv)
        t0 = bos + i_t * BT
        rows = t0 + o_t
        m_t = rows < eos
        last = tl.minimum(t0 + BT, eos) - 1
        # q exp(g) scale, transposed [BK, BT].
        p_qt = (rows[None, :] * H + i_h) * K + o_k[:, None]
        b_qg = tl.load(qg + p_qt, mask=m_k[:, None] & m_t[None, :], other=0.0)
        b_gl = tl.load(g + (last * H + i_h) * K + o_k, mask=m_k, other=0.0)
        b_do = tl.load(do + (rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
        b_dh = b_dh * tl.exp(b_gl)[:, None]
        b_dh += tl.dot(b_qg.to(b_do.dtype), b_do, input_precision=DOT_PRECISION)

    if STORE_INITIAL_STATE_GRADIENT:
        tl.store(dh0 + i_nh.to(tl.int64) * K * V + p_kv, b_dh, mask=m_kv)


def state_buffer_dtype(dtype: torch.dtype) -> torch.dtype:
    """Per-chunk states are kept in bf16 for bf16 inputs (half the traffic, bf16 has fp32's range) and
    in fp32 otherwise: fp16 would overflow on a large state."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def chunk_gla_fwd_h(
    kg: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    layout: ChunkLayout,
    chunk_size: int,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """States before every chunk ``[NT, H, K, V]`` (see ``state_buffer_dtype``) and the final state (fp32).

    ``kg`` is ``k exp(g_L - g)`` from ``chunk_local_cumsum``; ``g`` supplies each chunk's total decay.
    """
    k = kg
    _, _, H, K = k.shape
    V = v.shape[-1]
    N = layout.num_seqs
    h = k.new_empty(layout.num_chunks, H, K, V, dtype=state_buffer_dtype(k.dtype))
    ht = k.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None

    def run(c: LaunchConfig) -> None:
        chunk_gla_fwd_h_kernel[(triton.cdiv(K, c.BK), triton.cdiv(V, c.BV), N * H)](
            kg,
            v,
            g,
            h,
            initial_state,
            ht,
            layout.cu_seqlens,
            layout.chunk_offsets,
            H=H,
            K=K,
            V=V,
            BT=chunk_size,
            **c.kwargs(),
            USE_INITIAL_STATE=initial_state is not None,
            STORE_FINAL_STATE=output_final_state,
            DOT_PRECISION=dot_precision(k.dtype),
        )

    gla_launch("fwd_h", run, K, V, chunk_size, operand=kg, num_states=N * H)
    return h, ht


def chunk_gla_bwd_dh(
    qg: torch.Tensor,
    g: torch.Tensor,
    do: torch.Tensor,
    layout: ChunkLayout,
    chunk_size: int,
    dht: torch.Tensor | None,
    need_dh0: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of the state after every chunk ``[NT, H, K, V]`` and of the initial state (fp32).

    ``qg`` is ``q exp(g) scale`` from ``chunk_local_cumsum``.
    """
    q = qg
    _, _, H, K = q.shape
    V = do.shape[-1]
    N = layout.num_seqs
    dh = q.new_empty(layout.num_chunks, H, K, V, dtype=state_buffer_dtype(q.dtype))
    dh0 = q.new_empty(N, H, K, V, dtype=torch.float32) if need_dh0 else None

    def run(c: LaunchConfig) -> None:
        chunk_gla_bwd_dh_kernel[(triton.cdiv(K, c.BK), triton.cdiv(V, c.BV), N * H)](
            qg,
            g,
            do,
            dh,
            dht,
            dh0,
            layout.cu_seqlens,
            layout.chunk_offsets,
            H=H,
            K=K,
            V=V,
            BT=chunk_size,
            **c.kwargs(),
            USE_FINAL_STATE_GRADIENT=dht is not None,
            STORE_INITIAL_STATE_GRADIENT=need_dh0,
            DOT_PRECISION=dot_precision(q.dtype),
        )

    gla_launch("bwd_dh", run, K, V, chunk_size, operand=qg, num_states=N * H)
    return dh, dh0
