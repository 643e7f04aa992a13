"""Mamba2 decode: one token, the state updated in place (the "selective state update").

    A     = -exp(A_log)                                     (when given A_log: no launches for A)
    dt    = clamp(softplus(dt + dt_bias))                   (as transformers applies them)
    state = exp(dt A) state + dt x B^T                      ([b, H, P, N], fp32, in place)
    y     = state C + D x

Pure state traffic: each program streams its heads' ``[BP, N]`` rows of the state once in and once
out, tiled over N so any state size fits. x, dt, B and C are read through their strides: the slices
of the in_proj / conv outputs a model passes need no copies (one launch per step in all).

Compiled without fused multiply-adds: each product rounds before it is added, as in the PyTorch path (separate
ops), and as in ``conv_state_update.py``, which runs this kernel's code after the conv step in one launch and
so gives this kernel's bits on the GPU too.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from statex_hf.kernels.activations.elementwise import exp
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.ssd.configs import ssd_config, ssd_launch


@triton.jit
def _softplus(v):
    # torch.nn.functional.softplus with its default threshold of 20.
    return tl.where(v > 20.0, v, tl.log(1.0 + tl.exp(tl.minimum(v, 20.0))))


@triton.jit
def _step_and_decay(dt_at, dt_bias_at, A_at, dt_min, dt_max, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    A_IS_LOG: tl.constexpr):  # fmt: skip
    """A head's step size ``d`` (bias, softplus, clamp to ``[dt_min, dt_max]``, as transformers) and its decay
    ``exp(d A)``, in fp32; shared with ``conv_state_update.py``'s kernel, so the two are one computation."""
    d = tl.load(dt_at).to(tl.float32)
    if HAS_BIAS:
        d += tl.load(dt_bias_at).to(tl.float32)
    if SOFTPLUS:
        d = _softplus(d)
    d = tl.minimum(tl.maximum(d, dt_min), dt_max)
    a = tl.load(A_at).to(tl.float32)
    if A_IS_LOG:
        a = -exp(a)  # the model's -exp(A_log.float()), with torch's expf (libdevice)
    return d, tl.exp(d * a)


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
    stride_x_b,
    stride_x_h,
    stride_x_p,
    stride_dt_b,
    stride_dt_h,
    stride_B_b,
    stride_B_g,
    stride_B_n,
    stride_C_b,
    stride_C_g,
    stride_C_n,
    BP: tl.constexpr,
    BN: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    A_IS_LOG: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    h = pid % H
    bi = pid // H
    g = h // (H // G)
    ps = tl.program_id(1) * BP + tl.arange(0, BP)
    pmask = ps < P
    d, decay = _step_and_decay(dt + bi * stride_dt_b + h * stride_dt_h, dt_bias + h, A + h, dt_min, dt_max,
                               HAS_BIAS, SOFTPLUS, A_IS_LOG)  # fmt: skip
    xv = tl.load(x + bi * stride_x_b + h * stride_x_h + ps * stride_x_p, mask=pmask, other=0.0).to(tl.float32)
    acc = tl.zeros([BP], dtype=tl.float32)
    base = state + (bi * H + h) * P * N
    for n0 in range(0, N, BN):
        ns = n0 + tl.arange(0, BN)
        nmask = ns < N
        m = pmask[:, None] & nmask[None, :]
        s = tl.load(base + ps[:, None] * N + ns[None, :], mask=m, other=0.0)
        bv = tl.load(B + bi * stride_B_b + g * stride_B_g + ns * stride_B_n, mask=nmask, other=0.0).to(tl.float32)
        cv = tl.load(C + bi * stride_C_b + g * stride_C_g + ns * stride_C_n, mask=nmask, other=0.0).to(tl.float32)
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
    A: torch.Tensor | None,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    A_log: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode step; ``state`` is updated in place.

    Args:
        state: ``[b, H, P, N]`` fp32, contiguous (updated in place).
        x: ``[b, H, P]``, any strides.
        dt: ``[b, H]`` raw (bias, softplus, ``dt_limit`` applied here as transformers does), any strides.
        A: ``[H]``, or ``None`` with ``A_log``.
        B, C: ``[b, G, N]``, any strides.
        D, dt_bias: ``[H]`` or ``None``.
        A_log: ``[H]`` instead of ``A``: the kernel takes ``A = -exp(A_log)`` in fp32 itself (a model's
            parameter passed as it is, with no kernels per step to compute A).

    Returns:
        ``y`` ``[b, H, P]`` in ``x``'s dtype.
    """
    b, H, P, N = state.shape
    G = B.shape[-2]
    if state.dtype != torch.float32 or not state.is_contiguous():
        raise ValueError("ssd_state_update: the state must be a contiguous fp32 tensor (it is updated in place)")
    if H % G:
        raise ValueError(f"ssd_state_update: the {G} groups of B/C must divide the {H} heads")
    if (A is None) == (A_log is None):
        raise ValueError("ssd_state_update: give exactly one of A and A_log")
    A_in = A if A is not None else A_log
    y = torch.empty(b, H, P, device=x.device, dtype=x.dtype)

    def run(c: LaunchConfig) -> None:
        _state_update_kernel[(b * H, triton.cdiv(P, c.BP))](
            state, x, dt, A_in, B, C, D if D is not None else A_in, dt_bias if dt_bias is not None else A_in, y,
            H, G, P, N, float(dt_limit[0]), float(dt_limit[1]), *x.stride(), *dt.stride(), *B.stride(), *C.stride(),
            HAS_D=D is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, A_IS_LOG=A is None,
            enable_fp_fusion=False, **c.kwargs(),
        )  # fmt: skip

    ssd_launch("state_update", run, ssd_config("state_update", 0, P, N, device=state.device), operand=x)
    return y
