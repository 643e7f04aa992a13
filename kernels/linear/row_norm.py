"""A block's RMSNorm as the prologue of the one-row GEMVs that read its output, and the residual add as the epilogue
of the GEMV that ends a sublayer (issue 20: a B = 1 decode step's norms, one launch each, cost much of the step).

A pre-norm block runs ``h = h + out_proj(mixer(norm(h)))``: the norm is a kernel of its own between the add and the
products that read it. Here the products read ``h`` and normalize it as they load it: every program of a one-row
GEMV already walks the whole row of x (no split of K at the 1.3B models' shapes; a split program walks it once more
for the sum of squares), so one pass over the row gives ``rstd`` and the loop multiplies the weights by the norm's
output, rounded where the norm kernel rounds (``kernels/norm/gated_rmsnorm.py``, its two forms)::

    u = round_x(h)                                   Mamba2's block: its norm reads the fp32 stream cast to bf16
    rstd = (mean_K(u^2) + eps)^(-1/2)
    n = round(u rstd w)                              GLA (norm first)
    n = round(round_x(u rstd) w)                     Mamba2 (transformers' order: round, then the weight)

The sum of squares runs in another order than the norm kernel's, so ``n`` agrees with it to rounding (an ``rstd``
one ulp apart can move a value by one bf16 ulp), not bit for bit; a decode step gives the same tokens eagerly and in
its CUDA graph, which run these same kernels. The add: ``h' = round(residual + round(y))``, torch's add of the
product (``gemv.py``'s rounding of y) to the residual stream.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

FLOATS = (torch.float32, torch.bfloat16, torch.float16)


class RowNorm(NamedTuple):
    """The RMSNorm a one-row product applies to its x first: ``gated_rmsnorm(x, None, weight, eps, K,
    norm_before_gate, input_dtype)`` (one group, the whole row, no gate): GLA's block norms (``norm_before_gate``,
    no ``input_dtype``), Mamba2's (gate first, ``input_dtype`` its weight's dtype). The kernels' side is
    ``gemv.py``'s (``norm_constants``, ``_row_rstd``, ``_normed``)."""

    weight: torch.Tensor
    eps: float
    norm_before_gate: bool = True
    input_dtype: torch.dtype | None = None

    def normed_dtype(self, x_dtype: torch.dtype) -> torch.dtype:
        """The dtype of the norm's output for an x of ``x_dtype`` (``gated_rmsnorm.output_dtype``'s rule): what the
        products multiply."""
        dtype = self.input_dtype or x_dtype
        return dtype if self.norm_before_gate else torch.promote_types(dtype, self.weight.dtype)

    def applies(self, x: torch.Tensor) -> bool:
        """Whether the prologue computes this norm of ``x``: a weight ``[K]`` on x's device, contiguous, every
        dtype one the kernels take."""
        w = self.weight
        return (
            w.shape == x.shape[-1:]
            and w.device == x.device
            and w.is_contiguous()
            and {x.dtype, w.dtype, self.input_dtype or x.dtype} <= set(FLOATS)
        )
