"""``y = x @ W.T + b`` in PyTorch with fp32 accumulation: the reference the Triton GEMV (``gemv.py``) is
tested against. The products and their sum in fp32, one rounding to x's dtype at the end, which is what the
kernel computes (in another order of the sum)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` in fp32, rounded once to x's dtype. x ``[..., K]``, weight ``[N, K]``, bias ``[N]``."""
    y = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    return y.to(x.dtype)
