"""GLA's gate handed to the one-token kernel before its up projection (torch-only: ``dispatch`` imports it on every
device, and the kernel that reads it, ``fused_recurrent.py``, only on CUDA)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class LowRankGate(NamedTuple):
    """A gate not yet projected up: ``gk = F.linear(down, weight, bias)``, computed by the one-token kernel as it
    loads each key tile (GLA's low-rank gate projection's second product, in the step's launch)."""

    down: torch.Tensor  # [B, 1, R], R a power of two, unit-stride
    weight: torch.Tensor  # [H * K, R], in down's dtype
    bias: torch.Tensor | None  # [H * K] or None
