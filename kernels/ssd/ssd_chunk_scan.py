"""SSD stage 3: the chunk scan (outputs) forward, and its gradient for x and dt.

Forward, per ``(b, chunk, head)`` and a block of ``BT`` output rows:

    y_t = exp(a_t) C_t . h_{c-1}                                  (inter-chunk, from the stored state)
        + sum_{s<=t} exp(a_t - a_s) CB[t, s] dt_s x_s             (intra-chunk)
        + D x_t

Backward, per ``(b, chunk, head)`` and a block of ``BS`` source rows (u_s = dL/d(dt_s x_s)):

    u_s  = exp(a_last - a_s) g_c B_s + sum_{t>=s} exp(a_t - a_s) CB[t, s] dy_t
    dx_s = dt_s u_s + D dy_s,      ddt_s = x_s . u_s   (direct part; the decay part comes in chunk.py)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.ssd.configs import ssd_config, ssd_launch
from statex_hf.kernels.ssd.ssd_chunk_bc_bwd import chunk_major_ids
from statex_hf.kernels.utils import dot_precision, pow2


@triton.jit
def _chunk_scan_fwd_kernel(
    x,
    C,
    CB,
    dt,
    Acs,
    seq,
    hs,
    D,
    y,
    T,
    Tp,
    H,
    G,
    P,
    N,
    nc,
    L: tl.constexpr,
    BT: tl.constexpr,
    BS: tl.constexpr,
    BP: tl.constexpr,
    BN: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid_t, pid_p, pid = chunk_major_ids(L // BT, tl.cdiv(P, BP))  # a chunk's programs share its states
    h = pid % H
    c = (pid // H) % nc
    bi = pid // (H * nc)
    g = h // (H // G)
    lt = pid_t * BT + tl.arange(0, BT)
    ts = c * L + lt
    ps = pid_p * BP + tl.arange(0, BP)
    row = (bi * H + h) * Tp
    acs_t = tl.load(Acs + row + ts)
    scale = tl.exp(acs_t)
    if HAS_SEQ:
        prev_seq = tl.load(seq + bi * Tp + tl.maximum(c * L - 1, 0))
        sq_t = tl.load(seq + bi * Tp + ts)
        scale = tl.where(sq_t == prev_seq, scale, 0.0)
    acc = tl.zeros([BT, BP], dtype=tl.float32)
    state_base = hs + ((bi * nc + c) * H + h) * P * N
    for n0 in range(0, N, BN):
        ns = n0 + tl.arange(0, BN)
        ct = tl.load(
            C + ((bi * T + ts[:, None]) * G + g) * N + ns[None, :],
            mask=(ts[:, None] < T) & (ns[None, :] < N),
            other=0.0,
        )  # [BT, BN]
        st = tl.load(state_base + ps[None, :] * N + ns[:, None], mask=(ps[None, :] < P) & (ns[:, None] < N), other=0.0)
        acc += tl.dot(ct, st.to(ct.dtype), input_precision=DOT_PREC)
    acc = acc * scale[:, None]
    cb_base = CB + ((bi * nc + c) * G + g) * L * L
    for s0 in range(0, (pid_t + 1) * BT, BS):
        ls = s0 + tl.arange(0, BS)
        ss = c * L + ls
        acs_s = tl.load(Acs + row + ss)
        dt_s = tl.load(dt + row + ss)
        cb = tl.load(cb_base + lt[:, None] * L + ls[None, :])
        causal = lt[:, None] >= ls[None, :]
        m = cb * tl.exp(tl.where(causal, acs_t[:, None] - acs_s[None, :], float("-inf"))) * dt_s[None, :]
        xs = tl.load(
            x + ((bi * T + ss[:, None]) * H + h) * P + ps[None, :],
            mask=(ss[:, None] < T) & (ps[None, :] < P),
            other=0.0,
        )
        acc += tl.dot(m.to(xs.dtype), xs, input_precision=DOT_PREC)
    out_mask = (ts[:, None] < T) & (ps[None, :] < P)
    offs = ((bi * T + ts[:, None]) * H + h) * P + ps[None, :]
    if HAS_D:
        acc += tl.load(D + h).to(tl.float32) * tl.load(x + offs, mask=out_mask, other=0.0).to(tl.float32)
    tl.store(y + offs, acc.to(y.dtype.element_ty), mask=out_mask)


@triton.jit
def _chunk_scan_bwd_dx_kernel(
    x,
    B,
    CB,
    dt,
    Acs,
    seq,
    dhs,
    D,
    dy,
    dx,
    ddt,
    xdx,
    dD,
    T,
    Tp,
    H,
    G,
    P,
    N,
    nc,
    L: tl.constexpr,
    BS: tl.constexpr,
    BT: tl.constexpr,
    BP: tl.constexpr,
    BN: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid_s, _, pid = chunk_major_ids(L // BS, 1)  # a chunk's programs share its state gradients
    h = pid % H
    c = (pid // H) % nc
    bi = pid // (H * nc)
    g = h // (H // G)
    ls = pid_s * BS + tl.arange(0, BS)
    ss = c * L + ls
    ps = tl.arange(0, BP)
    row = (bi * H + h) * Tp
    acs_s = tl.load(Acs + row + ss)
    dt_s = tl.load(dt + row + ss)
    w = tl.exp(tl.load(Acs + row + c * L + L - 1) - acs_s)
    if HAS_SEQ:
        sq_last = tl.load(seq + bi * Tp + c * L + L - 1)
        w = tl.where(tl.load(seq + bi * Tp + ss) == sq_last, w, 0.0)
    acc = tl.zeros([BS, BP], dtype=tl.float32)
    grad_base = dhs + ((bi * nc + c) * H + h) * P * N
    for n0 in range(0, N, BN):
        ns = n0 + tl.arange(0, BN)
        bs = tl.load(
            B + ((bi * T + ss[:, None]) * G + g) * N + ns[None, :],
            mask=(ss[:, None] < T) & (ns[None, :] < N),
            other=0.0,
        )  # [BS, BN]
        gt = tl.load(grad_base + ps[None, :] * N + ns[:, None], mask=(ps[None, :] < P) & (ns[:, None] < N), other=0.0)
        acc += tl.dot(bs, gt.to(bs.dtype), input_precision=DOT_PREC)
    acc = acc * w[:, None]
    io_mask = (ss[:, None] < T) & (ps[None, :] < P)
    offs = ((bi * T + ss[:, None]) * H + h) * P + ps[None, :]
    xs = tl.load(x + offs, mask=io_mask, other=0.0).to(tl.float32)
    # x_s . dx_s through the state write only (the decay gradient's share at s, see chunk.py).
    tl.store(xdx + row + ss, tl.sum(acc * xs, axis=1) * dt_s)
    cb_base = CB + ((bi * nc + c) * G + g) * L * L
    for t0 in range(pid_s * BS, L, BT):
        lt = t0 + tl.arange(0, BT)
        ts = c * L + lt
        acs_t = tl.load(Acs + row + ts)
        cbt = tl.load(cb_base + lt[None, :] * L + ls[:, None])  # [BS, BT] = CB[t, s]^T
        causal = lt[None, :] >= ls[:, None]
        m = cbt * tl.exp(tl.where(causal, acs_t[None, :] - acs_s[:, None], float("-inf")))
        dyt = tl.load(
            dy + ((bi * T + ts[:, None]) * H + h) * P + ps[None, :],
            mask=(ts[:, None] < T) & (ps[None, :] < P),
            other=0.0,
        )
        acc += tl.dot(m.to(dyt.dtype), dyt, input_precision=DOT_PREC)
    tl.store(ddt + row + ss, tl.sum(acc * xs, axis=1))
    dxs = acc * dt_s[:, None]
    if HAS_D:
        dys = tl.load(dy + offs, mask=io_mask, other=0.0).to(tl.float32)
        dxs += tl.load(D + h).to(tl.float32) * dys
        tl.store(dD + pid * (L // BS) + pid_s, tl.sum(tl.sum(dys * xs, axis=1), axis=0))
    tl.store(dx + offs, dxs.to(dx.dtype.element_ty), mask=io_mask)


def chunk_scan_fwd(
    x: torch.Tensor,
    C: torch.Tensor,
    CB: torch.Tensor,
    dt: torch.Tensor,
    Acs: torch.Tensor,
    seq: torch.Tensor | None,
    hs: torch.Tensor,
    D: torch.Tensor | None,
    chunk_size: int,
) -> torch.Tensor:
    """``y`` ``[b, T, H, P]`` in x's dtype from the stored chunk-entry states ``hs``."""
    b, T, H, P = x.shape
    G, N = C.shape[-2:]
    L = chunk_size
    nc = triton.cdiv(T, L)
    y = torch.empty_like(x)

    def run(c: LaunchConfig) -> None:
        _chunk_scan_fwd_kernel[(b * nc * H * (L // c.BT) * triton.cdiv(P, c.BP),)](
            x, C, CB, dt, Acs, seq if seq is not None else dt, hs, D if D is not None else dt, y,
            T, nc * L, H, G, P, N, nc,
            L=L, HAS_D=D is not None, HAS_SEQ=seq is not None, DOT_PREC=dot_precision(x.dtype), **c.kwargs(),
        )  # fmt: skip

    ssd_launch("scan_fwd", run, ssd_config("scan_fwd", L, P, N, device=x.device), operand=x)
    return y


def chunk_scan_bwd_dx(
    x: torch.Tensor,
    B: torch.Tensor,
    CB: torch.Tensor,
    dt: torch.Tensor,
    Acs: torch.Tensor,
    seq: torch.Tensor | None,
    dhs: torch.Tensor,
    D: torch.Tensor | None,
    dy: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``dx`` (x's dtype), the direct ``ddt`` ``[b, H, Tp]`` (fp32), ``x . dx`` through the state write
    ``[b, H, Tp]`` (fp32) and the parts of ``dD`` ``[b, nc, H, K]`` (fp32; one per program, summed by
    ``chunk_cumsum_bwd``) or None."""
    b, T, H, P = x.shape
    G, N = B.shape[-2:]
    L = chunk_size
    nc = triton.cdiv(T, L)
    dx = torch.empty_like(x)
    ddt = torch.empty(b, H, nc * L, device=x.device, dtype=torch.float32)
    xdx = torch.empty_like(ddt)
    dD_parts: list[torch.Tensor] = []

    def run(c: LaunchConfig) -> None:
        # dD: one part per program.
        dD = torch.empty(b, nc, H, L // c.BS, device=x.device, dtype=torch.float32) if D is not None else ddt
        _chunk_scan_bwd_dx_kernel[(b * nc * H * (L // c.BS),)](
            x, B, CB, dt, Acs, seq if seq is not None else dt, dhs, D if D is not None else dt, dy, dx, ddt, xdx,
            dD, T, nc * L, H, G, P, N, nc,
            L=L, BP=pow2(P), HAS_D=D is not None, HAS_SEQ=seq is not None, DOT_PREC=dot_precision(x.dtype),
            **c.kwargs(),
        )  # fmt: skip
        dD_parts.append(dD)

    ssd_launch("scan_bwd_dx", run, ssd_config("scan_bwd_dx", L, P, N, device=x.device), operand=x)
    return dx, ddt, xdx, (dD_parts[-1] if D is not None else None)
