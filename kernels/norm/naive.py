"""Gated RMSNorm in PyTorch, the reference: Mamba2's ``weight * norm_per_group(x * silu(gate))``.

What ``StateXMamba2RMSNorm`` runs on CPU (``kernels/dispatch.py``), and what the Triton kernel
(``gated_rmsnorm.py``) is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_gated_rmsnorm(
    x: torch.Tensor, gate: torch.Tensor | None, weight: torch.Tensor, eps: float, group_size: int
) -> torch.Tensor:
    """RMSNorm of ``x * silu(gate)`` (or of ``x`` without a gate) over groups of ``group_size`` channels.

    x, gate ``[..., D]``, weight ``[D]``. Computed in fp32 and cast to x's dtype *before* the weight, as
    transformers' Mamba2 does; the result's dtype is torch's promotion of (x's dtype, weight's dtype).
    """
    input_dtype = x.dtype
    h = x.float()
    if gate is not None:
        h = h * F.silu(gate.float())
    grouped = h.view(*h.shape[:-1], -1, group_size)
    grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)
    return weight * grouped.view_as(h).to(input_dtype)
