"""SSD stage 0: the step sizes and their in-chunk log-decay (forward), and their gradients (backward).

Forward, per ``(b, chunk, block of heads)``, from the raw ``dt`` projection as the model's in_proj
split leaves it (read through its strides, any float dtype):

    dtp_t = clamp(softplus(dt_t + dt_bias), dt_min, dt_max)    (0 past the end: padding)
    Acs_t = sum_{s <= t in the chunk} dtp_s A                  (the log-decay from the chunk start)

exactly as transformers' Mamba2 discretizes (``naive.discretize_dt``: softplus with threshold 20,
``torch.clamp``), both ``[b, H, Tp]`` fp32 (``Tp``: T padded to whole chunks).

Backward, the reverse in one pass: the decay gradient per token (see chunk.py)

    da_t = sum_{j >= t} dacs_j + sum_{s < t} xdx_s + r_c       (all in chunk c)

from the stage kernels' per-tile parts (any number a token or chunk, summed here: ``chunk.py`` passes the
``dy . y`` and ``x . dx`` terms already summed, one part each, and ``r``'s parts as they come), then
``dL/d dtp_t = ddt_t + A da_t``, through the clamp (``torch.clamp``'s gradient: 1 inside the closed
interval), the softplus (``sigmoid``, 1 above the threshold) and the bias to the raw ``dt``. The sums
over tokens (``dA = sum_t dtp_t da_t``, the bias gradient, and ``dD`` from the dx kernel's parts) are
left per chunk and summed by one small reduction.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from statex_hf.kernels.activations.elementwise import exp, log1p
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.ssd.configs import ssd_config, ssd_launch


@triton.jit
def _softplus(z):
    """``F.softplus(z)``: ``log1p(exp(z))``, and ``z`` itself above torch's threshold of 20."""
    return tl.where(z > 20.0, z, log1p(exp(tl.minimum(z, 20.0))))


@triton.jit
def _load_dt(dt, bi, ts, hs, stride_b, stride_t, stride_h, T, H):
    """The raw ``dt`` of tokens ``ts`` and heads ``hs``, ``[BH, L]`` in its own dtype (0 outside T and H)."""
    mask = (hs[:, None] < H) & (ts[None, :] < T)
    return tl.load(dt + bi * stride_b + ts[None, :] * stride_t + hs[:, None] * stride_h, mask=mask, other=0.0)


@triton.jit
def _step_sizes(raw, dt_bias, ts, hs, T, H, dt_min, dt_max, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """From the raw ``dt`` ``[BH, L]``: ``dt + dt_bias``, its softplus (or itself) and the step size
    (clamped; 0 outside ``T`` and ``H``), all fp32."""
    z = raw.to(tl.float32)
    if HAS_BIAS:
        z += tl.load(dt_bias + hs, mask=hs < H, other=0.0).to(tl.float32)[:, None]
    s = _softplus(z) if SOFTPLUS else z
    # torch.clamp: the lower bound, then the upper (which wins if they cross); NaN stays NaN.
    step = tl.minimum(tl.maximum(s, dt_min, propagate_nan=tl.PropagateNan.ALL), dt_max, tl.PropagateNan.ALL)
    return z, s, tl.where((hs[:, None] < H) & (ts[None, :] < T), step, 0.0)


@triton.jit
def _program_block(H, nc, L: tl.constexpr, BH: tl.constexpr):
    """This program's batch row, chunk, ``BH`` heads and ``L`` tokens. A chunk's head blocks are consecutive
    programs: they read the same rows of the raw dt."""
    pid = tl.program_id(0).to(tl.int64)
    n_hb = tl.cdiv(H, BH)
    hs = (pid % n_hb) * BH + tl.arange(0, BH)
    c = (pid // n_hb) % nc
    return pid // (n_hb * nc), c, hs, c * L + tl.arange(0, L)


@triton.jit
def _chunk_cumsum_fwd_kernel(
    dt,
    dt_bias,
    A,
    dtp,
    Acs,
    dt_kept,
    stride_b,
    stride_t,
    stride_h,
    T,
    Tp,
    H,
    nc,
    dt_min,
    dt_max,
    L: tl.constexpr,
    BH: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    KEEP_DT: tl.constexpr,
):
    bi, c, hs, ts = _program_block(H, nc, L, BH)
    h_mask = hs < H
    raw = _load_dt(dt, bi, ts, hs, stride_b, stride_t, stride_h, T, H)
    _, _, step = _step_sizes(raw, dt_bias, ts, hs, T, H, dt_min, dt_max, HAS_BIAS, SOFTPLUS)
    a = tl.load(A + hs, mask=h_mask, other=0.0).to(tl.float32)
    rows = (bi * H + hs[:, None]) * Tp + ts[None, :]
    if KEEP_DT:  # the raw dt as it came, compact, for the backward
        tl.store(dt_kept + rows, raw, mask=h_mask[:, None])
    tl.store(dtp + rows, step, mask=h_mask[:, None])
    tl.store(Acs + rows, tl.cumsum(step * a[:, None], axis=1), mask=h_mask[:, None])


@triton.jit
def _chunk_cumsum_bwd_kernel(
    dt,
    dt_bias,
    A,
    ddt,
    dyy_intra,
    xdx_intra,
    dyy_inter,
    xdx_state,
    r,
    dD_parts,
    ddt_raw,
    sums,
    stride_b,
    stride_t,
    stride_h,
    T,
    Tp,
    H,
    nc,
    n_parts,
    dt_min,
    dt_max,
    K_INTRA,
    K_INTER,
    K_R,
    K_D,
    L: tl.constexpr,
    BH: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_D: tl.constexpr,
):
    bi, c, hs, ts = _program_block(H, nc, L, BH)
    h_mask = hs < H
    mask = h_mask[:, None] & (ts[None, :] < T)
    rows = (bi * H + hs[:, None]) * Tp + ts[None, :]  # [BH, L], inside the padded rows
    # The in-chunk gradient of the cumulated log-decay, from its parts (one per tile of the kernels
    # that made them): dy . y (intra and inter) minus x . dx (intra).
    dacs = tl.zeros([BH, L], dtype=tl.float32)
    for k in range(K_INTRA):
        dacs += tl.load(dyy_intra + rows * K_INTRA + k, mask=h_mask[:, None], other=0.0)
        dacs -= tl.load(xdx_intra + rows * K_INTRA + k, mask=h_mask[:, None], other=0.0)
    for k in range(K_INTER):
        dacs += tl.load(dyy_inter + rows * K_INTER + k, mask=h_mask[:, None], other=0.0)
    r_c = tl.zeros([BH], dtype=tl.float32)
    for k in range(K_R):
        r_c += tl.load(r + ((bi * H + hs) * nc + c) * K_R + k, mask=h_mask, other=0.0)
    writes = tl.load(xdx_state + rows, mask=h_mask[:, None], other=0.0)
    # Suffix sum of the in-chunk terms, exclusive prefix sum of the state writes, and the carried state.
    da = tl.cumsum(dacs, axis=1, reverse=True) + (tl.cumsum(writes, axis=1) - writes) + r_c[:, None]
    # The step sizes again, as the forward made them.
    raw = _load_dt(dt, bi, ts, hs, stride_b, stride_t, stride_h, T, H)
    z, s, step = _step_sizes(raw, dt_bias, ts, hs, T, H, dt_min, dt_max, HAS_BIAS, SOFTPLUS)
    a = tl.load(A + hs, mask=h_mask, other=0.0).to(tl.float32)
    g = tl.load(ddt + rows, mask=h_mask[:, None], other=0.0) + a[:, None] * da  # dL/d dtp
    g = tl.where((s >= dt_min) & (s <= dt_max) & mask, g, 0.0)
    if SOFTPLUS:
        # torch's softplus_backward: g e^z / (e^z + 1), and g itself above the threshold.
        e = exp(tl.minimum(z, 20.0))
        g = tl.where(z > 20.0, g, g * tl.math.div_rn(e, e + 1.0))
    tl.store(ddt_raw + (bi * T + ts[None, :]) * H + hs[:, None], g.to(ddt_raw.dtype.element_ty), mask=mask)
    part = (bi * nc + c) * H + hs
    tl.store(sums + part, tl.sum(step * da, axis=1), mask=h_mask)
    tl.store(sums + n_parts * H + part, tl.sum(g, axis=1), mask=h_mask)  # the bias's (dt's with no bias)
    if HAS_D:
        dD = tl.zeros([BH], dtype=tl.float32)
        for k in range(K_D):
            dD += tl.load(dD_parts + part * K_D + k, mask=h_mask, other=0.0)
        tl.store(sums + 2 * n_parts * H + part, dD, mask=h_mask)


def _config(kernel: str, L: int, H: int, device: torch.device) -> LaunchConfig:
    return ssd_config(kernel, L, 0, 0, device=device, heads=H)


def chunk_cumsum_fwd(
    dt: torch.Tensor,
    A: torch.Tensor,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
    dt_limit: tuple[float, float],
    chunk_size: int,
    keep_dt: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Raw ``dt`` ``[b, T, H]`` (any strides and float dtype) -> the step sizes ``dtp`` and the in-chunk
    cumulated ``dtp * A`` ``Acs``, both ``[b, H, Tp]`` fp32, zero-padded to whole chunks; with ``keep_dt``
    also a compact copy of ``dt`` (its dtype, a ``[b, T, H]`` view of ``[b, H, Tp]``), else None.

    The copy is what the backward keeps: ``dt`` itself is mostly a slice of the in_proj output, whose
    whole row (over 100 times dt's width at Mamba2-1.3B) it would keep alive, the gated norm and the conv
    having copied their slices."""
    b, T, H = dt.shape
    L = chunk_size
    nc = triton.cdiv(T, L)
    dtp = torch.empty(b, H, nc * L, device=dt.device, dtype=torch.float32)
    Acs = torch.empty_like(dtp)
    kept = torch.empty(b, H, nc * L, device=dt.device, dtype=dt.dtype) if keep_dt else None

    def run(c: LaunchConfig) -> None:
        _chunk_cumsum_fwd_kernel[(b * nc * triton.cdiv(H, c.BH),)](
            dt, dt_bias if dt_bias is not None else A, A, dtp, Acs, kept if kept is not None else dtp, *dt.stride(),
            T, nc * L, H, nc, float(dt_limit[0]), float(dt_limit[1]),
            L=L, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, KEEP_DT=keep_dt, **c.kwargs(),
        )  # fmt: skip

    ssd_launch("cumsum", run, _config("cumsum", L, H, dt.device), operand=dt)
    return dtp, Acs, (kept[..., :T].transpose(1, 2) if kept is not None else None)


def chunk_cumsum_bwd(
    dt: torch.Tensor,
    A: torch.Tensor,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
    dt_limit: tuple[float, float],
    ddt: torch.Tensor,
    dyy_intra: torch.Tensor,
    xdx_intra: torch.Tensor,
    dyy_inter: torch.Tensor,
    xdx_state: torch.Tensor,
    r: torch.Tensor,
    dD_parts: torch.Tensor | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of the raw ``dt`` (``[b, T, H]``, dt's dtype), ``A``, ``dt_bias`` and ``D`` (``[H]`` fp32;
    ``None`` without a bias or ``D``).

    From the stage kernels' outputs: the direct ``ddt`` and ``xdx_state`` ``[b, H, Tp]``, the parts of
    the in-chunk decay gradient ``dyy_intra``, ``xdx_intra`` ``[b, H, Tp, K]`` and ``dyy_inter``
    ``[b, H, Tp, K']``, ``r`` ``[b, H, nc, K'']`` (summed over their last axis here), and ``dD``'s parts
    ``[b, nc, H, K''']``."""
    b, T, H = dt.shape
    L = chunk_size
    nc = triton.cdiv(T, L)
    ddt_raw = torch.empty(b, T, H, device=dt.device, dtype=dt.dtype)
    # Per chunk and head: dA, the bias gradient and dD, summed over chunks below (one reduction).
    sums = torch.empty(3, b * nc, H, device=dt.device, dtype=torch.float32)

    def run(c: LaunchConfig) -> None:
        _chunk_cumsum_bwd_kernel[(b * nc * triton.cdiv(H, c.BH),)](
            dt, dt_bias if dt_bias is not None else A, A, ddt, dyy_intra, xdx_intra, dyy_inter, xdx_state, r,
            dD_parts if dD_parts is not None else r, ddt_raw, sums, *dt.stride(), T, nc * L, H, nc, b * nc,
            float(dt_limit[0]), float(dt_limit[1]), dyy_intra.shape[-1], dyy_inter.shape[-1], r.shape[-1],
            dD_parts.shape[-1] if dD_parts is not None else 0,
            L=L, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, HAS_D=dD_parts is not None, **c.kwargs(),
        )  # fmt: skip

    ssd_launch("cumsum_bwd", run, _config("cumsum_bwd", L, H, dt.device), operand=dt)
    totals = sums[: 3 if dD_parts is not None else 2].sum(1)
    dA = totals[0]
    d_bias = totals[1] if dt_bias is not None else None
    dD = totals[2] if dD_parts is not None else None
    return ddt_raw, dA, d_bias, dD
