"""A block's RMSNorm as the prologue of the one-row GEMVs that read its output, and the residual add as the epilogue
of the GEMV that ends a sublayer (issue 20: a B = 1 decode step's norms, one launch each, cost much of the step).

A pre-norm block runs ``h = h + out_proj(mixer(norm(h)))``: the norm is a kernel of its own between the add and the
products that read it. Here the products read ``h`` and normalize it as they use it. Every program of a one-row GEMV
already walks the whole row of x, so it sums the row's squares in its product loop and scales its sums once at the
end (``gemv._one_row_dot``)::

    u = round_x(h)                            Mamba2's block: its norm reads the fp32 stream cast to bf16
    y[n] = rstd * sum_k W[n, k] (u_k w_k)     rstd = (mean_K(u^2) + eps)^(-1/2)

which is the norm's value (both forms, ``kernels/norm/gated_rmsnorm.py``) without its rounding to bf16 before the
product: a pass over the row for ``rstd`` before the products would cost every program one more round trip, and the
thousands of small programs of a one-row GEMV made that slower than the norm's own launch (``benchmarks/README.md``).
A program that walks only a share of the row (a split of K) does make that pass first and normalizes each value as
the norm kernel rounds it. So the products agree with the norm kernel's then the GEMV's to that rounding, not bit
for bit; a decode step gives the same tokens eagerly and in its CUDA graph, which run these same kernels. The add:
``h' = round(residual + round(y))``, torch's add of the product (rounded as ``gemv.py`` stores it) to the stream.

**Mamba2's gated norm before ``out_proj``** (``gate``, ``squares``). The mixer's ``w * round(norm(y * silu(z)))`` over
the whole row (one group of B and C) is taken by ``out_proj``'s product as it loads y. Its sum of squares is not the
product's to take: the one-launch step that writes y (``ssd/conv_state_update.py``) stores it, one partial sum per
program (``squares``). Each GEMV program adds those few up after its wait, and then normalizes each value as the norm
kernel rounds it (the norm's value bit for bit but for the order of that sum). The step kernel then ends with its
state's stores, not with one program's pass over the group's y after every other program's ticket.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

FLOATS = (torch.float32, torch.bfloat16, torch.float16)


class RowNorm(NamedTuple):
    """The RMSNorm a one-row product applies to its x first: ``gated_rmsnorm(x, gate, weight, eps, K,
    norm_before_gate, input_dtype)`` (one group, the whole row): GLA's block norms (``norm_before_gate``, no
    ``input_dtype``, no gate), Mamba2's (gate first, ``input_dtype`` its weight's dtype), Mamba2's mixer norm (gate
    first, with ``gate`` and ``squares``). The kernels' side is
    ``gemv.py``'s (``norm_constants``, ``_row_rstd``, ``_normed``)."""

    weight: torch.Tensor
    eps: float
    norm_before_gate: bool = True
    input_dtype: torch.dtype | None = None
    # Mamba2's gated norm (gate first, one group over the row): z, in x's shape, and the partial sums of
    # ``(x * silu(z))^2`` over the row, fp32, which add up to its sum of squares (module docstring).
    gate: torch.Tensor | None = None
    squares: torch.Tensor | None = None
    # The dtype the norm's output is cast to before the products, where the caller casts it: a causal LM head's
    # ``lm_head(norm_f(h).to(lm_head.weight.dtype))`` after Mamba2's final norm, whose output is fp32.
    output_dtype: torch.dtype | None = None

    def normed_dtype(self, x_dtype: torch.dtype) -> torch.dtype:
        """The dtype of the norm's output for an x of ``x_dtype`` (the norm kernel's, or ``output_dtype``): what the
        products multiply."""
        if self.output_dtype is not None:
            return self.output_dtype
        # Imported here: this module stays torch-only for dispatch.py, which imports no Triton module at import time.
        from statex_hf.kernels.norm.gated_rmsnorm import output_dtype

        return output_dtype(self.input_dtype or x_dtype, self.weight, self.norm_before_gate)

    def applies(self, x: torch.Tensor) -> bool:
        """Whether the prologue computes this norm of ``x``: a weight ``[K]`` on x's device, contiguous, every
        dtype one the kernels take."""
        w = self.weight
        return (
            self._gate_applies(x)
            and w.shape == x.shape[-1:]
            and w.device == x.device
            and w.is_contiguous()
            and {x.dtype, w.dtype, self.input_dtype or x.dtype, self.output_dtype or x.dtype} <= set(FLOATS)
        )

    def _gate_applies(self, x: torch.Tensor) -> bool:
        """No gate, or Mamba2's mixer norm as the prologue takes it: gate first, z in x's shape with unit-stride
        channels, the partial sums fp32 and contiguous, all on x's device."""
        gate, squares = self.gate, self.squares
        if gate is None and squares is None:
            return True
        return (
            gate is not None
            and squares is not None
            and not self.norm_before_gate
            and self.input_dtype is None
            and gate.shape == x.shape
            and gate.stride(-1) == 1
            and gate.dtype in FLOATS
            and gate.device == squares.device == x.device
            and squares.dtype == torch.float32
            and squares.is_contiguous()
            and squares.numel() > 0
        )
