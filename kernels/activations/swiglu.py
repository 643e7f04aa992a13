"""SwiGLU, ``silu(gate) * up``, as one Triton kernel (forward only: the no-grad path of a model's MLP).

torch runs it as two kernels and rounds twice; this kernel rounds at the same two places, so its result
is torch's (``naive.py``) wherever its ``exp`` is (``elementwise.py``)::

    s   = round(x / (1 + exp(-x)))          x = gate in fp32; torch's silu, rounded to the inputs' dtype
    out = round(s * up)                     the product in fp32 (exact for bf16 and fp16 operands), rounded

``round`` is the cast to the inputs' dtype (a no-op in fp32). One program owns ``BLOCK`` consecutive
elements of the flattened inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from statex_hf.kernels.activations.configs import activation_launch
from statex_hf.kernels.activations.elementwise import silu
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.utils import needs_grad


@triton.jit
def _swiglu_fwd_kernel(gate, up, out, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(gate + offs, mask=mask, other=0.0)
    u = tl.load(up + offs, mask=mask, other=0.0).to(tl.float32)
    s = silu(g.to(tl.float32)).to(g.dtype).to(tl.float32)
    tl.store(out + offs, (s * u).to(out.dtype.element_ty), mask=mask)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for two tensors of one shape and dtype (bf16, fp16 or fp32); no gradient.

    Returns a new contiguous tensor of that shape and dtype, equal to ``F.silu(gate) * up``.
    """
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(
            f"swiglu: gate {tuple(gate.shape)} {gate.dtype} and up {tuple(up.shape)} {up.dtype} "
            "must have one shape and dtype"
        )
    if needs_grad(gate, up):
        raise RuntimeError("swiglu has no backward (it is the no-grad kernel); use F.silu(gate) * up for training")
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    n = gate.numel()

    def run(c: LaunchConfig) -> None:
        _swiglu_fwd_kernel[(triton.cdiv(n, c.BLOCK),)](gate, up, out, n, **c.kwargs())

    if n > 0:
        activation_launch("swiglu", run, operand=gate)
    return out
