"""Chunked GLA, gate bookkeeping: the in-chunk cumulative log decay and the decayed operands.

``g = cumsum(gk)`` restarted at every chunk start (fp32), which the in-chunk stage reads, and the
operands of the inter-chunk products, ``q exp(g) scale`` and ``k exp(g_L - g)``, formed once here
instead of in every program that reads them. (The gate gradient is formed in ``chunk_o``.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from statex_hf.kernels.gla.chunk_utils import ChunkLayout, chunk_bounds
from statex_hf.kernels.gla.configs import gla_launch
from statex_hf.kernels.launch import LaunchConfig


@triton.jit
def chunk_local_cumsum_kernel(
    q,
    k,
    gk,
    g,
    qg,
    kg,
    cu_seqlens,
    chunk_indices,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
):
    i_k, i_t, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, eos = chunk_bounds(cu_seqlens, chunk_indices, i_t, BT)
    rows = t0 + tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m = (rows < eos)[:, None] & (o_k < K)[None, :]
    p = (rows[:, None] * H + i_h) * K + o_k[None, :]
    b_gk = tl.load(gk + p, mask=m, other=0.0).to(tl.float32)
    b_g = tl.cumsum(b_gk, axis=0)
    b_gl = tl.sum(b_gk, axis=0)  # g of the chunk's last token (rows past the end add 0)
    tl.store(g + p, b_g, mask=m)
    # The decayed operands of every inter-chunk product, formed once in fp32 and stored in the
    # inputs' dtype (what the matrix units read): q exp(g) scale and k exp(g_L - g), both <= |q|, |k|.
    b_q = tl.load(q + p, mask=m, other=0.0).to(tl.float32)
    b_k = tl.load(k + p, mask=m, other=0.0).to(tl.float32)
    tl.store(qg + p, (b_q * tl.exp(b_g) * scale).to(qg.dtype.element_ty), mask=m)
    tl.store(kg + p, (b_k * tl.exp(b_gl[None, :] - b_g)).to(kg.dtype.element_ty), mask=m)


def chunk_local_cumsum(
    q: torch.Tensor, k: torch.Tensor, gk: torch.Tensor, layout: ChunkLayout, chunk_size: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """In-chunk cumulative log decay ``g`` (fp32), ``q exp(g) scale`` and ``k exp(g_L - g)`` (q's dtype)."""
    _, _, H, K = gk.shape
    g = torch.empty_like(gk, dtype=torch.float32)
    qg, kg = torch.empty_like(q), torch.empty_like(k)

    def run(c: LaunchConfig) -> None:
        chunk_local_cumsum_kernel[(triton.cdiv(K, c.BK), layout.num_chunks, H)](
            q, k, gk, g, qg, kg, layout.cu_seqlens, layout.chunk_indices, scale,
            H=H, K=K, BT=chunk_size, **c.kwargs(),
        )  # fmt: skip

    gla_launch("cumsum", run, K, 0, chunk_size, operand=q)
    return g, qg, kg
