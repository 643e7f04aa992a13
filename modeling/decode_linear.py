"""``nn.Linear`` whose one-row no-grad CUDA calls (a B = 1 decode step) run the Triton GEMV."""

from __future__ import annotations

import torch
from statex_hf.kernels import dispatch
from torch import nn


class DecodeLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, state dict, init and ``isinstance``, so peft, quantizers and checkpoints
    see no difference) whose forward goes through ``dispatch.linear``: the GEMV kernel where it beats cuBLAS (one
    row of x, CUDA, no gradient), ``F.linear`` for every other call."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return dispatch.linear(input, self.weight, self.bias)
