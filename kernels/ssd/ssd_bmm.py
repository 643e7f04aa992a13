"""SSD stage 1: the intra-chunk ``C_t . B_s`` products, once per group (never per head).

``CB[b, c, g, t, s] = sum_n C[b, cL + t, g, n] B[b, cL + s, g, n]`` for every pair in a chunk, fp32,
zeroed where t and s belong to different documents. ``[b, nc, G, L, L]`` is ``T * L * G`` floats:
small next to the activations, and shared by the ``H / G`` heads that read it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.ssd.configs import ssd_config, ssd_launch
from statex_hf.kernels.utils import dot_precision


@triton.jit
def _bmm_chunk_kernel(
    C,
    B,
    seq,
    CB,
    T,
    Tp,
    G,
    N,
    nc,
    L: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    g = pid % G
    c = (pid // G) % nc
    bi = pid // (G * nc)
    lm = pid_m * BM + tl.arange(0, BM)
    ln = pid_n * BM + tl.arange(0, BM)
    tm = c * L + lm
    tn = c * L + ln
    acc = tl.zeros([BM, BM], dtype=tl.float32)
    for k0 in range(0, N, BK):
        ks = k0 + tl.arange(0, BK)
        a = tl.load(
            C + ((bi * T + tm[:, None]) * G + g) * N + ks[None, :],
            mask=(tm[:, None] < T) & (ks[None, :] < N),
            other=0.0,
        )
        bt = tl.load(
            B + ((bi * T + tn[None, :]) * G + g) * N + ks[:, None],
            mask=(tn[None, :] < T) & (ks[:, None] < N),
            other=0.0,
        )
        acc += tl.dot(a, bt, input_precision=DOT_PREC)
    if HAS_SEQ:
        sm = tl.load(seq + bi * Tp + tm)
        sn = tl.load(seq + bi * Tp + tn)
        acc = tl.where(sm[:, None] == sn[None, :], acc, 0.0)
    tl.store(CB + (pid * L + lm[:, None]) * L + ln[None, :], acc)


def bmm_chunk_fwd(C: torch.Tensor, B: torch.Tensor, seq: torch.Tensor | None, chunk_size: int) -> torch.Tensor:
    """``C, B`` ``[b, T, G, N]`` contiguous, ``seq`` ``[b, Tp]`` int32 or None -> ``CB`` ``[b, nc, G, L, L]`` fp32."""
    b, T, G, N = C.shape
    L = chunk_size
    nc = triton.cdiv(T, L)
    CB = torch.empty(b, nc, G, L, L, device=C.device, dtype=torch.float32)

    def run(c: LaunchConfig) -> None:
        _bmm_chunk_kernel[(b * nc * G, L // c.BM, L // c.BM)](
            C, B, seq if seq is not None else C, CB, T, nc * L, G, N, nc,
            L=L, HAS_SEQ=seq is not None, DOT_PREC=dot_precision(C.dtype), **c.kwargs(),
        )  # fmt: skip

    ssd_launch("bmm", run, ssd_config("bmm", L, 0, N, device=C.device), operand=C)
    return CB
