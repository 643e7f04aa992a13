"""Mamba2 decode: one token, the state updated in place (the "selective state update").

    dt    = clamp(softplus(dt + dt_bias))                   (as transformers applies them)
    state = exp(dt A) state + dt x B^T                      ([b, H, P, N], fp32, in place)
    y     = state C + D x

Pure state traffic: each program streams its heads' ``[BP, N]`` rows of the state once in and once
out, tiled over N so any state size fits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.ssd.configs import ssd_config, ssd_launch


@triton.jit
def _softplus(v):
    # torch.nn.functional.softplus with its default threshold of 20.
    return tl.where(v > 20.0, v, tl.log(1.0 + tl.exp(tl.minimum(v, 20.0))))


@triton.jit
def _state_update_kernel(
    state,
    x,
    dt,
    A,
    B,
    C,
    D,
    dt_bias,
    y,
    H,
    G,
    P,
    N,
    dt_min,
    dt_max,
    BP: tl.constexpr,
    BN: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    h = pid % H
    bi = pid // H
    g = h // (H // G)
    ps = tl.program_id(1) * BP + tl.arange(0, BP)
    pmask = ps < P
    d = tl.load(dt + bi * H + h).to(tl.float32)
    if HAS_BIAS:
        d += tl.load(dt_bias + h).to(tl.float32)
    if SOFTPLUS:
        d = _softplus(d)
    d = tl.minimum(tl.maximum(d, dt_min), dt_max)
    decay = tl.exp(d * tl.load(A + h).to(tl.float32))
    xv = tl.load(x + (bi * H + h) * P + ps, mask=pmask, other=0.0).to(tl.float32)
    acc = tl.zeros([BP], dtype=tl.float32)
    base = state + (bi * H + h) * P * N
    for n0 in range(0, N, BN):
        ns = n0 + tl.arange(0, BN)
        nmask = ns < N
        m = pmask[:, None] & nmask[None, :]
        s = tl.load(base + ps[:, None] * N + ns[None, :], mask=m, other=0.0)
        bv = tl.load(B + (bi * G + g) * N + ns, mask=nmask, other=0.0).to(tl.float32)
        cv = tl.load(C + (bi * G + g) * N + ns, mask=nmask, other=0.0).to(tl.float32)
        s = s * decay + (d * xv)[:, None] * bv[None, :]
        tl.store(base + ps[:, None] * N + ns[None, :], s, mask=m)
        acc += tl.sum(s * cv[None, :], axis=1)
    if HAS_D:
        acc += tl.load(D + h).to(tl.float32) * xv
    tl.store(y + (bi * H + h) * P + ps, acc.to(y.dtype.element_ty), mask=pmask)


def ssd_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
) -> torch.Tensor:
    """One decode step; ``state`` is updated in place.

    Args:
        state: ``[b, H, P, N]`` fp32, contiguous (updated in place).
        x: ``[b, H, P]``.
        dt: ``[b, H]`` raw (bias, softplus, ``dt_limit`` applied here as transformers does).
        A: ``[H]``.
        B, C: ``[b, G, N]``.
        D, dt_bias: ``[H]`` or ``None``.

    Returns:
        ``y`` ``[b, H, P]`` in ``x``'s dtype.
    """
    b, H, P, N = state.shape
    G = B.shape[-2]
    if state.dtype != torch.float32 or not state.is_contiguous():
        raise ValueError("ssd_state_update: the state must be a contiguous fp32 tensor (it is updated in place)")
    if H % G:
        raise ValueError(f"ssd_state_update: the {G} groups of B/C must divide the {H} heads")
    x, dt, B, C = x.contiguous(), dt.contiguous(), B.contiguous(), C.contiguous()
    y = torch.empty_like(x)

    def run(c: LaunchConfig) -> None:
        _state_update_kernel[(b * H, triton.cdiv(P, c.BP))](
            state, x, dt, A, B, C, D if D is not None else A, dt_bias if dt_bias is not None else A, y,
            H, G, P, N, float(dt_limit[0]), float(dt_limit[1]),
            HAS_D=D is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, **c.kwargs(),
        )  # fmt: skip

    ssd_launch("state_update", run, ssd_config("state_update", 0, P, N, device=state.device), operand=x)
    return y
