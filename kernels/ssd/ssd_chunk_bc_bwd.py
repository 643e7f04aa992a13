"""SSD backward for the group-shared inputs B and C (summed over the heads of a group in-kernel).

    dCB[t, s] = sum_h exp(a_t - a_s) dt_s (dy_t . x_s)                          (s <= t, same document)
    dC_t      = sum_h exp(a_t) h_{c-1}^T dy_t + sum_{s<=t} dCB[t, s] B_s
    dB_s      = sum_h exp(a_last - a_s) dt_s g_c^T x_s + sum_{t>=s} dCB[t, s] C_t

They also return, per head and token, the pieces of the decay gradient ``dy_t . y_t - x_t . dx_t``
(see chunk.py): both intra-chunk parts from the dCB kernel, the inter-chunk ``dy_t . y_t`` from the
dC kernel, without a second pass over the states. Reductions over heads never leave the program, so nothing per head of
size ``T * H * N`` is ever written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.ssd.configs import ssd_config, ssd_launch
from statex_hf.kernels.utils import dot_precision, pow2


@triton.jit
def chunk_major_ids(n_first, n_second):
    """A flat program id -> (first block, second block, the rest), first blocks fastest.

    A chunk's programs are then consecutive, so what they share (its states, x, dy) comes from L2
    instead of HBM: with the chunk index outermost of a 3-d grid, two programs of a chunk ran up to
    ``b * nc * G`` (or ``b * nc * H``) programs apart, and each read it from HBM."""
    flat = tl.program_id(0).to(tl.int64)
    return flat % n_first, (flat // n_first) % n_second, flat // (n_first * n_second)


@triton.jit
def _chunk_dcb_kernel(
    x,
    dy,
    dt,
    Acs,
    seq,
    CB,
    dCB,
    dyy,
    xdx,
    T,
    Tp,
    H,
    G,
    P,
    nc,
    L: tl.constexpr,
    BLK: tl.constexpr,
    BP: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid_t, pid_s, pid = chunk_major_ids(L // BLK, L // BLK)  # a chunk's programs share its x and dy
    g = pid % G
    c = (pid // G) % nc
    bi = pid // (G * nc)
    lt = pid_t * BLK + tl.arange(0, BLK)
    ls = pid_s * BLK + tl.arange(0, BLK)
    tile = (pid * L + lt[:, None]) * L + ls[None, :]
    if pid_s > pid_t:
        tl.store(dCB + tile, tl.zeros([BLK, BLK], dtype=tl.float32))
        return
    ts = c * L + lt
    ss = c * L + ls
    ps = tl.arange(0, BP)
    keep = lt[:, None] >= ls[None, :]
    if HAS_SEQ:
        keep = keep & (tl.load(seq + bi * Tp + ts)[:, None] == tl.load(seq + bi * Tp + ss)[None, :])
    cb = tl.load(CB + tile)
    acc = tl.zeros([BLK, BLK], dtype=tl.float32)
    HG = H // G
    n_sblk = L // BLK
    for k in range(HG):
        h = g * HG + k
        row = (bi * H + h) * Tp
        dyt = tl.load(
            dy + ((bi * T + ts[:, None]) * H + h) * P + ps[None, :],
            mask=(ts[:, None] < T) & (ps[None, :] < P),
            other=0.0,
        )
        xst = tl.load(
            x + ((bi * T + ss[None, :]) * H + h) * P + ps[:, None],
            mask=(ss[None, :] < T) & (ps[:, None] < P),
            other=0.0,
        )  # [BP, BLK]
        dyx = tl.dot(dyt, xst, input_precision=DOT_PREC)
        acs_t = tl.load(Acs + row + ts)
        acs_s = tl.load(Acs + row + ss)
        dt_s = tl.load(dt + row + ss)
        d = dyx * tl.exp(tl.where(keep, acs_t[:, None] - acs_s[None, :], float("-inf"))) * dt_s[None, :]
        acc += d
        # W[t, s] = d[t, s] CB[t, s]: the term through exp(a_t - a_s). Its row sums are dy_t . y_t and
        # its column sums x_s . dx_s (intra parts), both from the same fp32 products, so that
        # their difference (the decay gradient) has no rounding mismatch to amplify.
        wts = d * cb
        tl.store(dyy + (row + ts) * n_sblk + pid_s, tl.sum(wts, axis=1))
        tl.store(xdx + (row + ss) * n_sblk + pid_t, tl.sum(wts, axis=0))
    tl.store(dCB + tile, acc)


@triton.jit
def _chunk_dc_kernel(
    dy,
    B,
    C,
    dCB,
    Acs,
    seq,
    hs,
    dC,
    dyy,
    T,
    Tp,
    H,
    G,
    P,
    N,
    nc,
    n_nblk,
    L: tl.constexpr,
    BT: tl.constexpr,
    BS: tl.constexpr,
    BP: tl.constexpr,
    BN: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid_t, pid_n, pid = chunk_major_ids(L // BT, n_nblk)  # a chunk's programs share its states and dy
    g = pid % G
    c = (pid // G) % nc
    bi = pid // (G * nc)
    lt = pid_t * BT + tl.arange(0, BT)
    ts = c * L + lt
    ns = pid_n * BN + tl.arange(0, BN)
    ps = tl.arange(0, BP)
    io_mask = (ts[:, None] < T) & (ns[None, :] < N)
    ct = tl.load(C + ((bi * T + ts[:, None]) * G + g) * N + ns[None, :], mask=io_mask, other=0.0).to(tl.float32)
    from_prev = tl.full([BT], 1, tl.int1)
    if HAS_SEQ:
        prev_seq = tl.load(seq + bi * Tp + tl.maximum(c * L - 1, 0))
        from_prev = tl.load(seq + bi * Tp + ts) == prev_seq
    acc = tl.zeros([BT, BN], dtype=tl.float32)
    HG = H // G
    for k in range(HG):
        h = g * HG + k
        row = (bi * H + h) * Tp
        dyt = tl.load(
            dy + ((bi * T + ts[:, None]) * H + h) * P + ps[None, :],
            mask=(ts[:, None] < T) & (ps[None, :] < P),
            other=0.0,
        )
        st = tl.load(
            hs + ((bi * nc + c) * H + h) * P * N + ps[:, None] * N + ns[None, :],
            mask=(ps[:, None] < P) & (ns[None, :] < N),
            other=0.0,
        )
        scale = tl.where(from_prev, tl.exp(tl.load(Acs + row + ts)), 0.0)
        part = tl.dot(dyt, st.to(dyt.dtype), input_precision=DOT_PREC) * scale[:, None]
        acc += part
        tl.store(dyy + (row + ts) * n_nblk + pid_n, tl.sum(part * ct, axis=1))
    cb_base = dCB + pid * L * L
    for s0 in range(0, (pid_t + 1) * BT, BS):
        ls = s0 + tl.arange(0, BS)
        ss = c * L + ls
        dcb = tl.load(cb_base + lt[:, None] * L + ls[None, :])
        dcb = tl.where(lt[:, None] >= ls[None, :], dcb, 0.0)
        bs = tl.load(
            B + ((bi * T + ss[:, None]) * G + g) * N + ns[None, :],
            mask=(ss[:, None] < T) & (ns[None, :] < N),
            other=0.0,
        )
        acc += tl.dot(dcb.to(bs.dtype), bs, input_precision=DOT_PREC)
    tl.store(dC + ((bi * T + ts[:, None]) * G + g) * N + ns[None, :], acc.to(dC.dtype.element_ty), mask=io_mask)


@triton.jit
def _chunk_db_kernel(
    x,
    C,
    dCB,
    dt,
    Acs,
    seq,
    dhs,
    dB,
    T,
    Tp,
    H,
    G,
    P,
    N,
    nc,
    n_nblk,
    L: tl.constexpr,
    BS: tl.constexpr,
    BT: tl.constexpr,
    BP: tl.constexpr,
    BN: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid_s, pid_n, pid = chunk_major_ids(L // BS, n_nblk)  # a chunk's programs share its x and dhs
    g = pid % G
    c = (pid // G) % nc
    bi = pid // (G * nc)
    ls = pid_s * BS + tl.arange(0, BS)
    ss = c * L + ls
    ns = pid_n * BN + tl.arange(0, BN)
    ps = tl.arange(0, BP)
    to_end = tl.full([BS], 1, tl.int1)
    if HAS_SEQ:
        to_end = tl.load(seq + bi * Tp + ss) == tl.load(seq + bi * Tp + c * L + L - 1)
    acc = tl.zeros([BS, BN], dtype=tl.float32)
    HG = H // G
    for k in range(HG):
        h = g * HG + k
        row = (bi * H + h) * Tp
        xs = tl.load(
            x + ((bi * T + ss[:, None]) * H + h) * P + ps[None, :],
            mask=(ss[:, None] < T) & (ps[None, :] < P),
            other=0.0,
        )
        gt = tl.load(
            dhs + ((bi * nc + c) * H + h) * P * N + ps[:, None] * N + ns[None, :],
            mask=(ps[:, None] < P) & (ns[None, :] < N),
            other=0.0,
        )
        w = tl.exp(tl.load(Acs + row + c * L + L - 1) - tl.load(Acs + row + ss)) * tl.load(dt + row + ss)
        w = tl.where(to_end, w, 0.0)
        acc += tl.dot(xs, gt.to(xs.dtype), input_precision=DOT_PREC) * w[:, None]
    cb_base = dCB + pid * L * L
    for t0 in range(pid_s * BS, L, BT):
        lt = t0 + tl.arange(0, BT)
        ts = c * L + lt
        dcbt = tl.load(cb_base + lt[None, :] * L + ls[:, None])  # [BS, BT] = dCB[t, s]^T
        dcbt = tl.where(lt[None, :] >= ls[:, None], dcbt, 0.0)
        ct = tl.load(
            C + ((bi * T + ts[:, None]) * G + g) * N + ns[None, :],
            mask=(ts[:, None] < T) & (ns[None, :] < N),
            other=0.0,
        )
        acc += tl.dot(dcbt.to(ct.dtype), ct, input_precision=DOT_PREC)
    io_mask = (ss[:, None] < T) & (ns[None, :] < N)
    tl.store(dB + ((bi * T + ss[:, None]) * G + g) * N + ns[None, :], acc.to(dB.dtype.element_ty), mask=io_mask)


def chunk_dcb(
    x: torch.Tensor,
    dy: torch.Tensor,
    dt: torch.Tensor,
    Acs: torch.Tensor,
    seq: torch.Tensor | None,
    CB: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dCB`` ``[b, nc, G, L, L]`` fp32 and the intra parts of ``dy . y`` and ``x . dx`` per head,
    ``[b, H, Tp, K]`` (K parts each, one per block of the other index, to be summed over the last axis)."""
    b, T, H, P = x.shape
    G = CB.shape[2]
    L = chunk_size
    nc = triton.cdiv(T, L)
    dCB = torch.empty_like(CB)
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []

    def run(c: LaunchConfig) -> None:
        # dy . y and x . dx: one part per block of the other index.
        dyy = torch.zeros(b, H, nc * L, L // c.BLK, device=x.device, dtype=torch.float32)
        xdx = torch.zeros_like(dyy)
        _chunk_dcb_kernel[(b * nc * G * (L // c.BLK) ** 2,)](
            x, dy, dt, Acs, seq if seq is not None else dt, CB, dCB, dyy, xdx, T, nc * L, H, G, P, nc,
            L=L, BP=pow2(P), HAS_SEQ=seq is not None, DOT_PREC=dot_precision(x.dtype), **c.kwargs(),
        )  # fmt: skip
        parts.append((dyy, xdx))

    ssd_launch("dcb", run, ssd_config("dcb", L, P, 0, device=x.device), operand=x)
    return dCB, *parts[-1]


def chunk_dc(
    dy: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dCB: torch.Tensor,
    Acs: torch.Tensor,
    seq: torch.Tensor | None,
    hs: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dC`` ``[b, T, G, N]`` (C's dtype) and the inter part of ``dy . y`` per head, ``[b, H, Tp, K]`` fp32
    (one part per N block)."""
    b, T, H, P = dy.shape
    G, N = C.shape[-2:]
    L = chunk_size
    nc = triton.cdiv(T, L)
    dC = torch.empty_like(C)
    parts: list[torch.Tensor] = []

    def run(c: LaunchConfig) -> None:
        nN = triton.cdiv(N, c.BN)
        dyy = torch.empty(b, H, nc * L, nN, device=dy.device, dtype=torch.float32)  # a part per N block
        _chunk_dc_kernel[(b * nc * G * (L // c.BT) * nN,)](
            dy, B, C, dCB, Acs, seq if seq is not None else Acs, hs, dC, dyy, T, nc * L, H, G, P, N, nc, nN,
            L=L, BP=pow2(P), HAS_SEQ=seq is not None, DOT_PREC=dot_precision(dy.dtype), **c.kwargs(),
        )  # fmt: skip
        parts.append(dyy)

    ssd_launch("dc", run, ssd_config("dc", L, P, N, device=dy.device), operand=dy)
    return dC, parts[-1]


def chunk_db(
    x: torch.Tensor,
    C: torch.Tensor,
    dCB: torch.Tensor,
    dt: torch.Tensor,
    Acs: torch.Tensor,
    seq: torch.Tensor | None,
    dhs: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """``dB`` ``[b, T, G, N]`` in C's dtype."""
    b, T, H, P = x.shape
    G, N = C.shape[-2:]
    L = chunk_size
    nc = triton.cdiv(T, L)
    dB = torch.empty_like(C)

    def run(c: LaunchConfig) -> None:
        nN = triton.cdiv(N, c.BN)
        _chunk_db_kernel[(b * nc * G * (L // c.BS) * nN,)](
            x, C, dCB, dt, Acs, seq if seq is not None else dt, dhs, dB, T, nc * L, H, G, P, N, nc, nN,
            L=L, BP=pow2(P), HAS_SEQ=seq is not None, DOT_PREC=dot_precision(x.dtype), **c.kwargs(),
        )  # fmt: skip

    ssd_launch("db", run, ssd_config("db", L, P, N, device=x.device), operand=x)
    return dB
