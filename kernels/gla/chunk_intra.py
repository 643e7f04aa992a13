"""Chunked GLA, intra-chunk stage: the decayed attention inside a chunk, forward and backward.

Forward, per chunk of ``BT`` tokens (``g`` the in-chunk cumulative log decay):

    A_ij = scale * sum_k q_ik k_jk exp(g_ik - g_jk)      (j <= i)

Backward, with ``dA_ij = scale * do_i . v_j`` (``j <= i``):

    dq_i = sum_{j <= i} dA_ij k_j exp(g_i - g_j)         dk_j = sum_{i >= j} dA_ij q_i exp(g_i - g_j)

``exp(g_i) * exp(-g_j)`` overflows once gates are strongly negative, so the chunk is cut into
sub-blocks of ``BC`` rows. Between sub-blocks the product is split around a reference row ``r``
that lies between ``j`` and ``i`` (``g_j >= g_r >= g_i``): ``exp(g_i - g_r) * exp(g_r - g_j)``, both
factors in ``[0, 1]``, so it is a matrix product (tf32 for half inputs in the forward, as fla's: its
error, 7e-4 of A's largest entry, is below bf16's rounding of the inputs). Inside a diagonal
sub-block each pair is formed exactly, one column (or row) at a time.
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
def chunk_gla_fwd_A_kernel(
    q,
    k,
    g,
    A,
    cu_seqlens,
    chunk_indices,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One program: the ``BC`` rows of sub-block ``i_c`` of one chunk, written as ``BC x BC`` blocks:
    earlier sub-blocks by matrix products, the diagonal pair by pair, later ones as zeros. Each block
    loads only its own ``BC`` columns, so no program reads the whole chunk's keys."""
    i_tc, i_h = tl.program_id(0), tl.program_id(1)
    NC: tl.constexpr = BT // BC
    i_t, i_c = i_tc // NC, i_tc % NC
    t0, eos = chunk_bounds(cu_seqlens, chunk_indices, i_t, BT)
    r0 = t0 + i_c * BC  # first row of this sub-block: the reference row for earlier columns
    if r0 >= eos:
        return
    o_c = tl.arange(0, BC)
    rows = r0 + o_c
    m_i = rows < eos
    p_A = A + (rows[:, None] * H + i_h) * BT + o_c[None, :]

    for i_j in range(0, i_c):
        cols = t0 + i_j * BC + o_c
        m_j = cols < eos
        b_A = tl.zeros([BC, BC], dtype=tl.float32)
        for i_k in range(0, tl.cdiv(K, BK)):
            o_k = i_k * BK + tl.arange(0, BK)
            m_k = o_k < K
            p_i = (rows[:, None] * H + i_h) * K + o_k[None, :]
            p_j = (cols[:, None] * H + i_h) * K + o_k[None, :]
            m_ik = m_i[:, None] & m_k[None, :]
            m_jk = m_j[:, None] & m_k[None, :]
            b_gr = tl.load(g + (r0 * H + i_h) * K + o_k, mask=m_k, other=0.0)
            b_q = tl.load(q + p_i, mask=m_ik, other=0.0).to(tl.float32)
            b_qg = b_q * tl.exp(tl.load(g + p_i, mask=m_ik, other=0.0) - b_gr[None, :])
            b_k = tl.load(k + p_j, mask=m_jk, other=0.0).to(tl.float32)
            b_kg = b_k * tl.exp(b_gr[None, :] - tl.load(g + p_j, mask=m_jk, other=0.0))
            b_A += tl.dot(b_qg, tl.trans(b_kg), input_precision=DOT_PRECISION)
        tl.store(p_A + i_j * BC, b_A * scale, mask=m_i[:, None])

    b_A = tl.zeros([BC, BC], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        p_i = (rows[:, None] * H + i_h) * K + o_k[None, :]
        m_ik = m_i[:, None] & m_k[None, :]
        b_q = tl.load(q + p_i, mask=m_ik, other=0.0).to(tl.float32)
        b_gq = tl.load(g + p_i, mask=m_ik, other=0.0)
        for j in range(0, BC):
            t_j = r0 + j
            # (scalar < scalar) & tensor is not a boolean under the Triton interpreter: compare a tensor.
            m_kj = m_k & (o_k * 0 + t_j < eos)
            b_kj = tl.load(k + (t_j * H + i_h) * K + o_k, mask=m_kj, other=0.0).to(tl.float32)
            b_gj = tl.load(g + (t_j * H + i_h) * K + o_k, mask=m_kj, other=0.0)
            b_e = tl.exp(tl.where(o_c[:, None] >= j, b_gq - b_gj[None, :], float("-inf")))
            b_Aj = tl.sum(b_q * b_kj[None, :] * b_e, axis=1)
            b_A += tl.where(o_c[None, :] == j, b_Aj[:, None], 0.0)
    tl.store(p_A + i_c * BC, b_A * scale, mask=m_i[:, None])

    b_zero = tl.zeros([BC, BC], dtype=tl.float32)
    for i_j in range(i_c + 1, NC):
        tl.store(p_A + i_j * BC, b_zero, mask=m_i[:, None])


@triton.jit
def chunk_gla_bwd_intra_kernel(
    q,
    k,
    g,
    dA,
    dq,
    dk,
    cu_seqlens,
    chunk_indices,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One program: dq of the rows and dk of the columns of sub-block ``i_c``, one ``BK`` slice of K."""
    i_k, i_tc, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    NC: tl.constexpr = BT // BC
    i_t, i_c = i_tc // NC, i_tc % NC
    t0, eos = chunk_bounds(cu_seqlens, chunk_indices, i_t, BT)
    r0 = t0 + i_c * BC
    if r0 >= eos:
        return
    o_i = tl.arange(0, BC)
    o_j = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    rows = r0 + o_i  # this sub-block's tokens
    cols = t0 + o_j  # the whole chunk's tokens
    m_i, m_j = rows < eos, cols < eos
    m_ik = m_i[:, None] & m_k[None, :]
    m_jk = m_j[:, None] & m_k[None, :]
    p_i = (rows[:, None] * H + i_h) * K + o_k[None, :]
    p_j = (cols[:, None] * H + i_h) * K + o_k[None, :]
    b_gb = tl.load(g + p_i, mask=m_ik, other=0.0)  # g of the sub-block, [BC, BK]
    b_gc = tl.load(g + p_j, mask=m_jk, other=0.0)  # g of the chunk, [BT, BK]

    # dq of the sub-block's rows: earlier sub-blocks through the reference row r0.
    b_gr = tl.load(g + (r0 * H + i_h) * K + o_k, mask=m_k, other=0.0)
    b_k = tl.load(k + p_j, mask=m_jk, other=0.0).to(tl.float32)
    b_kg = tl.where((o_j < i_c * BC)[:, None] & m_jk, b_k * tl.exp(b_gr[None, :] - b_gc), 0.0)
    b_dA = tl.load(dA + (rows[:, None] * H + i_h) * BT + o_j[None, :], mask=m_i[:, None], other=0.0)
    b_dq = tl.dot(b_dA, b_kg, input_precision=DOT_PRECISION) * tl.exp(b_gb - b_gr[None, :])
    for j in range(0, BC):
        t_j = r0 + j
        m_kj = m_k & (o_k * 0 + t_j < eos)
        b_kj = tl.load(k + (t_j * H + i_h) * K + o_k, mask=m_kj, other=0.0).to(tl.float32)
        b_gj = tl.load(g + (t_j * H + i_h) * K + o_k, mask=m_kj, other=0.0)
        b_dAj = tl.load(dA + (rows * H + i_h) * BT + i_c * BC + j, mask=m_i, other=0.0)
        b_e = tl.exp(tl.where(o_i[:, None] >= j, b_gb - b_gj[None, :], float("-inf")))
        b_dq += b_dAj[:, None] * b_kj[None, :] * b_e

    # dk of the sub-block's columns: later sub-blocks through the reference row at the block's end.
    t_r = tl.minimum(r0 + BC, eos) - 1
    b_gr = tl.load(g + (t_r * H + i_h) * K + o_k, mask=m_k, other=0.0)
    b_q = tl.load(q + p_j, mask=m_jk, other=0.0).to(tl.float32)
    b_qg = tl.where((o_j >= (i_c + 1) * BC)[:, None] & m_jk, b_q * tl.exp(b_gc - b_gr[None, :]), 0.0)
    # dA[:, block]^T, [BC, BT]: column block of dA read transposed.
    b_dAt = tl.load(dA + (cols[None, :] * H + i_h) * BT + i_c * BC + o_i[:, None], mask=m_j[None, :], other=0.0)
    b_dk = tl.dot(b_dAt, b_qg, input_precision=DOT_PRECISION) * tl.exp(b_gr[None, :] - b_gb)
    for i in range(0, BC):
        t_i = r0 + i
        m_ki = m_k & (o_k * 0 + t_i < eos)
        b_qi = tl.load(q + (t_i * H + i_h) * K + o_k, mask=m_ki, other=0.0).to(tl.float32)
        b_gi = tl.load(g + (t_i * H + i_h) * K + o_k, mask=m_ki, other=0.0)
        b_dAi = tl.load(dA + (t_i * H + i_h) * BT + i_c * BC + o_i, mask=m_i & (o_i * 0 + t_i < eos), other=0.0)
        m_e = (o_i[:, None] <= i) & (o_k[None, :] * 0 + t_i < eos)  # a row past the end would make exp(-g) overflow
        b_e = tl.exp(tl.where(m_e, b_gi[None, :] - b_gb, float("-inf")))
        b_dk += b_dAi[:, None] * b_qi[None, :] * b_e

    tl.store(dq + p_i, b_dq, mask=m_ik)
    tl.store(dk + p_i, b_dk, mask=m_ik)


def _sub_block(chunk_size: int) -> int:
    return min(16, chunk_size)


def chunk_gla_fwd_intra(
    q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, layout: ChunkLayout, chunk_size: int, scale: float
) -> torch.Tensor:
    """The in-chunk attention ``A`` ``[B, T, H, BT]`` (fp32, zero above the diagonal)."""
    B, T, H, K = q.shape
    BC = _sub_block(chunk_size)
    A = q.new_empty(B, T, H, chunk_size, dtype=torch.float32)

    def run(c: LaunchConfig) -> None:
        chunk_gla_fwd_A_kernel[(layout.num_chunks * (chunk_size // BC), H)](
            q,
            k,
            g,
            A,
            layout.cu_seqlens,
            layout.chunk_indices,
            scale,
            H=H,
            K=K,
            BT=chunk_size,
            BC=BC,
            **c.kwargs(),
            DOT_PRECISION=dot_precision(q.dtype),
        )

    gla_launch("fwd_A", run, K, 0, chunk_size, operand=q)
    return A


def chunk_gla_bwd_intra(
    q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, dA: torch.Tensor, layout: ChunkLayout, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The in-chunk parts of dq and dk (fp32, ``[B, T, H, K]``); ``dA`` already carries the scale."""
    B, T, H, K = q.shape
    BC = _sub_block(chunk_size)
    dq = torch.empty(B, T, H, K, dtype=torch.float32, device=q.device)
    dk = torch.empty_like(dq)

    def run(c: LaunchConfig) -> None:
        chunk_gla_bwd_intra_kernel[(triton.cdiv(K, c.BK), layout.num_chunks * (chunk_size // BC), H)](
            q,
            k,
            g,
            dA,
            dq,
            dk,
            layout.cu_seqlens,
            layout.chunk_indices,
            H=H,
            K=K,
            BT=chunk_size,
            BC=BC,
            **c.kwargs(),
            DOT_PRECISION=dot_precision(torch.float32),
        )

    gla_launch("bwd_intra", run, K, 0, chunk_size, operand=q)
    return dq, dk
