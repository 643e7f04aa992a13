"""Gated RMSNorm in PyTorch, the reference, in its two orders: Mamba2's ``weight * norm_per_group(x * silu(gate))``
and GLA's ``norm(x) * weight * silu(gate)``.

What ``StateXMamba2RMSNorm`` and ``StateXGLARMSNorm`` run on CPU (``kernels/dispatch.py``), and what the
Triton kernel (``gated_rmsnorm.py``) is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_gated_rmsnorm(
    x: torch.Tensor,
    gate: torch.Tensor | None,
    weight: torch.Tensor | None,
    eps: float,
    group_size: int,
    norm_before_gate: bool = False,
) -> torch.Tensor:
    """RMSNorm over groups of ``group_size`` channels with an optional swish gate and weight; x, gate ``[..., D]``,
    weight ``[D]``.

    ``norm_before_gate=False`` (Mamba2): normalizes ``x * silu(gate)`` in fp32 and casts to x's dtype *before*
    the weight, as transformers' Mamba2 does; the result's dtype is torch's promotion of (x's dtype, weight's
    dtype). ``norm_before_gate=True`` (GLA): ``norm(x) * weight * silu(gate)`` in fp32, cast to x's dtype once
    at the end, as fla's ``FusedRMSNormGated``.
    """
    input_dtype = x.dtype
    h = x.float()
    if norm_before_gate:
        # torch's rms_norm is x * rsqrt(mean(x^2) + eps), then * weight when given: the weight is applied
        # after it so that groups can share one call.
        h = F.rms_norm(h.view(*h.shape[:-1], -1, group_size), (group_size,), None, eps).view_as(h)
        if weight is not None:
            h = h * weight.float()
        if gate is not None:
            h = h * F.silu(gate.float())
        return h.to(input_dtype)
    if gate is not None:
        h = h * F.silu(gate.float())
    grouped = h.view(*h.shape[:-1], -1, group_size)
    grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)
    normalized = grouped.view_as(h).to(input_dtype)
    return normalized if weight is None else weight * normalized
