"""SwiGLU in PyTorch: the definition of correct for ``swiglu.py``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up``, two torch ops: silu computed in fp32 and rounded to the inputs' dtype, then the
    product computed in fp32 and rounded again (torch's half-precision arithmetic)."""
    return F.silu(gate) * up
