"""SSD stage 2: chunk states and state passing, fused (forward), and their reverse (backward).

Forward, per ``(b, h)`` and one ``[BP, BN]`` tile of the ``P x N`` state, chunks in order:

    hs[c] = h_{c-1}                                   (the state entering chunk c, stored)
    h_c   = exp(a_last) h_{c-1} + sum_s exp(a_last - a_s) dt_s x_s B_s^T

with ``a`` the log-decay cumulated from the chunk start. The running state stays in fp32 registers;
only the per-chunk copies ``hs`` (``T / L * H * P * N``, in the input dtype) go to memory.

Backward runs the same recurrence in reverse on the state gradient ``g_c = dL/dh_c``:

    dhs[c]  = g_c,   r_c = <g_c, exp(a_last) h_{c-1}>
    g_{c-1} = exp(a_last) g_c + sum_t exp(a_t) dy_t C_t^T

``r_c`` is the gradient of the chunk's last cumulated log-decay through the state carried across
the chunk. The chunk's own writes add their part per token (``x_s . dx_s``), summed by the caller
as a prefix sum: computing ``<g_c, h_c>`` whole and subtracting the per-token parts instead would
cancel two large numbers rounded differently (``h_c`` is stored in bf16), which cost dA 30x its
bf16 rounding level.

Tiling the state over ``N`` is what lets N grow to 1024 and beyond: each program owns one tile.
A program walks its chunks in steps of ``BL`` tokens (a divisor of the chunk), each step decaying
the state from the previous step's end: the same recurrence on sub-chunks, whose pipelined loads
(``x`` / ``dy`` and ``B`` / ``C``, ``BL`` rows each) take a quarter of a chunk's shared memory at
``BL = L / 4``, so that more programs fit an SM.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.ssd.configs import ssd_config, ssd_launch
from statex_hf.kernels.utils import dot_precision


@triton.jit
def _chunk_state_fwd_kernel(
    x,
    B,
    dt,
    Acs,
    seq,
    h0,
    hs,
    hT,
    T,
    Tp,
    H,
    G,
    P,
    N,
    nc,
    L: tl.constexpr,
    BL: tl.constexpr,
    BP: tl.constexpr,
    BN: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    STORE_FINAL: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    h = pid % H
    bi = pid // H
    g = h // (H // G)
    ps = tl.program_id(1) * BP + tl.arange(0, BP)
    ns = tl.program_id(2) * BN + tl.arange(0, BN)
    tile_mask = (ps[:, None] < P) & (ns[None, :] < N)
    tile = ps[:, None] * N + ns[None, :]
    lt = tl.arange(0, BL)
    row = (bi * H + h) * Tp
    NB: tl.constexpr = L // BL
    state = tl.zeros([BP, BN], dtype=tl.float32)
    if HAS_H0:
        state += tl.load(h0 + (bi * H + h) * P * N + tile, mask=tile_mask, other=0.0).to(tl.float32)
    prev_seq = 0
    if HAS_SEQ:
        prev_seq = tl.load(seq + bi * Tp)
    # One step per sub-block of BL tokens (NB per chunk): a short step keeps the pipelined tiles small.
    for i in range(nc * NB):
        j = i % NB
        if j == 0:  # the state entering chunk i // NB
            tl.store(hs + ((bi * nc + i // NB) * H + h) * P * N + tile, state.to(hs.dtype.element_ty), mask=tile_mask)
        t0 = i * BL
        ts = t0 + lt
        acs = tl.load(Acs + row + ts)
        acs_end = tl.load(Acs + row + t0 + BL - 1)
        # a restarts at each chunk start; inside a chunk the step decays from the previous sub-block's end.
        acs_start = tl.where(j == 0, 0.0, tl.load(Acs + row + tl.maximum(t0 - 1, 0)))
        w = tl.exp(acs_end - acs) * tl.load(dt + row + ts)
        decay = tl.exp(acs_end - acs_start)
        if HAS_SEQ:
            sq = tl.load(seq + bi * Tp + ts)
            sq_end = tl.load(seq + bi * Tp + t0 + BL - 1)
            # Only the document that is still open at the step's end writes the carried state.
            w = tl.where(sq == sq_end, w, 0.0)
            decay = tl.where(sq_end == prev_seq, decay, 0.0)
            prev_seq = sq_end
        xt = tl.load(
            x + ((bi * T + ts[None, :]) * H + h) * P + ps[:, None],
            mask=(ts[None, :] < T) & (ps[:, None] < P),
            other=0.0,
        )  # [BP, BL]
        bt = tl.load(
            B + ((bi * T + ts[:, None]) * G + g) * N + ns[None, :],
            mask=(ts[:, None] < T) & (ns[None, :] < N),
            other=0.0,
        )  # [BL, BN]
        xw = (xt * w[None, :]).to(bt.dtype)
        state = state * decay + tl.dot(xw, bt, input_precision=DOT_PREC)
    if STORE_FINAL:
        tl.store(hT + (bi * H + h) * P * N + tile, state.to(hT.dtype.element_ty), mask=tile_mask)


@triton.jit
def _chunk_state_bwd_kernel(
    dy,
    C,
    Acs,
    seq,
    dhT,
    hs,
    dhs,
    dh0,
    r,
    T,
    Tp,
    H,
    G,
    P,
    N,
    nc,
    L: tl.constexpr,
    BL: tl.constexpr,
    BP: tl.constexpr,
    BN: tl.constexpr,
    HAS_DHT: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    STORE_DH0: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    h = pid % H
    bi = pid // H
    g = h // (H // G)
    ps = tl.program_id(1) * BP + tl.arange(0, BP)
    ns = tl.program_id(2) * BN + tl.arange(0, BN)
    tile_mask = (ps[:, None] < P) & (ns[None, :] < N)
    tile = ps[:, None] * N + ns[None, :]
    lt = tl.arange(0, BL)
    row = (bi * H + h) * Tp
    NB: tl.constexpr = L // BL
    grad = tl.zeros([BP, BN], dtype=tl.float32)
    if HAS_DHT:
        grad += tl.load(dhT + (bi * H + h) * P * N + tile, mask=tile_mask, other=0.0).to(tl.float32)
    n_tiles = tl.num_programs(1) * tl.num_programs(2)
    tile_id = tl.program_id(1) * tl.num_programs(2) + tl.program_id(2)
    for k in range(nc * NB):
        i = nc * NB - 1 - k
        c = i // NB
        j = i % NB
        if j == NB - 1:  # the chunk's first step in this reverse walk: the gradient after the chunk
            tl.store(dhs + ((bi * nc + c) * H + h) * P * N + tile, grad.to(dhs.dtype.element_ty), mask=tile_mask)
            # r_c = <g_c, exp(a_last) h_{c-1}>: the decay gradient at the chunk's last token through the
            # state carried across the chunk (the chunk's own writes are added per token by the caller).
            h_in = tl.load(hs + ((bi * nc + c) * H + h) * P * N + tile, mask=tile_mask, other=0.0).to(tl.float32)
            chunk_decay = tl.exp(tl.load(Acs + row + c * L + L - 1))
            if HAS_SEQ:
                chunk_first = tl.load(seq + bi * Tp + tl.maximum(c * L - 1, 0))
                chunk_decay = tl.where(tl.load(seq + bi * Tp + c * L + L - 1) == chunk_first, chunk_decay, 0.0)
            r_c = chunk_decay * tl.sum(tl.sum(grad * h_in, axis=1), axis=0)
            tl.store(r + ((bi * H + h) * nc + c) * n_tiles + tile_id, r_c)
        t0 = i * BL
        ts = t0 + lt
        acs_start = tl.where(j == 0, 0.0, tl.load(Acs + row + tl.maximum(t0 - 1, 0)))
        scale = tl.exp(tl.load(Acs + row + ts) - acs_start)
        decay = tl.exp(tl.load(Acs + row + t0 + BL - 1) - acs_start)
        if HAS_SEQ:
            prev_seq = tl.load(seq + bi * Tp + tl.maximum(t0 - 1, 0))
            sq = tl.load(seq + bi * Tp + ts)
            sq_last = tl.load(seq + bi * Tp + t0 + BL - 1)
            scale = tl.where(sq == prev_seq, scale, 0.0)
            decay = tl.where(sq_last == prev_seq, decay, 0.0)
        dyt = tl.load(
            dy + ((bi * T + ts[None, :]) * H + h) * P + ps[:, None],
            mask=(ts[None, :] < T) & (ps[:, None] < P),
            other=0.0,
        )  # [BP, BL]
        ct = tl.load(
            C + ((bi * T + ts[:, None]) * G + g) * N + ns[None, :],
            mask=(ts[:, None] < T) & (ns[None, :] < N),
            other=0.0,
        )  # [BL, BN]
        grad = grad * decay + tl.dot((dyt * scale[None, :]).to(ct.dtype), ct, input_precision=DOT_PREC)
    if STORE_DH0:
        tl.store(dh0 + (bi * H + h) * P * N + tile, grad, mask=tile_mask)


def chunk_state_fwd(
    x: torch.Tensor,
    B: torch.Tensor,
    dt: torch.Tensor,
    Acs: torch.Tensor,
    seq: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    chunk_size: int,
    output_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """States entering each chunk ``hs`` ``[b, nc, H, P, N]`` (x's dtype) and the final state (fp32)."""
    b, T, H, P = x.shape
    G, N = B.shape[-2:]
    L = chunk_size
    nc = triton.cdiv(T, L)
    hs = torch.empty(b, nc, H, P, N, device=x.device, dtype=x.dtype)
    hT = torch.empty(b, H, P, N, device=x.device, dtype=torch.float32) if output_final_state else None

    def run(c: LaunchConfig) -> None:
        _chunk_state_fwd_kernel[(b * H, triton.cdiv(P, c.BP), triton.cdiv(N, c.BN))](
            x, B, dt, Acs, seq if seq is not None else dt, initial_state if initial_state is not None else hs, hs,
            hT if hT is not None else hs, T, nc * L, H, G, P, N, nc,
            L=L, HAS_H0=initial_state is not None, HAS_SEQ=seq is not None, STORE_FINAL=output_final_state,
            DOT_PREC=dot_precision(x.dtype), **c.kwargs(),
        )  # fmt: skip

    ssd_launch("state_fwd", run, ssd_config("state_fwd", L, P, N, b * H, x.device), operand=x)
    return hs, hT


def chunk_state_bwd(
    dy: torch.Tensor,
    C: torch.Tensor,
    Acs: torch.Tensor,
    seq: torch.Tensor | None,
    dfinal: torch.Tensor | None,
    hs: torch.Tensor,
    chunk_size: int,
    need_dh0: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """State gradients after each chunk ``dhs`` ``[b, nc, H, P, N]`` (dy's dtype), ``dh0`` (fp32), and
    ``r`` = ``<g_c, exp(a_last) h_{c-1}>`` from the chunk states ``hs``, ``[b, H, nc, K]`` fp32 (one part
    per state tile, summed by ``chunk_cumsum_bwd``)."""
    b, T, H, P = dy.shape
    G, N = C.shape[-2:]
    L = chunk_size
    nc = triton.cdiv(T, L)
    dhs = torch.empty(b, nc, H, P, N, device=dy.device, dtype=dy.dtype)
    dh0 = torch.empty(b, H, P, N, device=dy.device, dtype=torch.float32) if need_dh0 else None
    r_parts: list[torch.Tensor] = []

    def run(c: LaunchConfig) -> None:
        grid = (b * H, triton.cdiv(P, c.BP), triton.cdiv(N, c.BN))
        r = torch.empty(b, H, nc, grid[1] * grid[2], device=dy.device, dtype=torch.float32)  # a part per tile
        _chunk_state_bwd_kernel[grid](
            dy, C, Acs, seq if seq is not None else Acs, dfinal if dfinal is not None else dhs, hs, dhs,
            dh0 if dh0 is not None else dhs, r, T, nc * L, H, G, P, N, nc,
            L=L, HAS_DHT=dfinal is not None, HAS_SEQ=seq is not None, STORE_DH0=need_dh0,
            DOT_PREC=dot_precision(dy.dtype), **c.kwargs(),
        )  # fmt: skip
        r_parts.append(r)

    ssd_launch("state_bwd", run, ssd_config("state_bwd", L, P, N, b * H, dy.device), operand=dy)
    return dhs, dh0, r_parts[-1]
