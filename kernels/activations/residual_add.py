"""A residual connection, ``residual.to(dtype) + update``, as one vectorized Triton kernel (forward only: the
no-grad path of a model's blocks).

With ``residual_in_fp32`` a Mamba2 block adds its bf16 (or fp16) mixer output to the fp32 residual stream;
torch runs that mixed-dtype add as a kernel that is not vectorized, and the first block's cast of the bf16
embeddings to fp32 as one more kernel. Here each element is loaded in its own dtype and::

    out = round(fp32(residual) + fp32(update))        round: the cast to the output dtype

``fp32(.)`` is exact for bf16, fp16 and fp32, so this is torch's result (its opmath for these dtypes is fp32),
bit for bit. One program owns ``BLOCK`` consecutive elements of the flattened inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from statex_hf.kernels.activations.configs import activation_launch
from statex_hf.kernels.dependent_launch import pdl_kwargs, wait_for_predecessor
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.utils import needs_grad

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _residual_add_kernel(residual, update, out, n, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    wait_for_predecessor(USE_PDL)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    r = tl.load(residual + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(update + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out + offs, (r + u).to(out.dtype.element_ty), mask=mask)


def residual_add(residual: torch.Tensor, update: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``residual.to(dtype) + update`` for two tensors of one shape (bf16, fp16 or fp32 each); no gradient.

    ``dtype`` (default residual's) must hold residual exactly (as wide or wider). Returns a new contiguous
    tensor of torch's result dtype, ``promote_types(dtype, update.dtype)``, equal to torch's sum.
    """
    dtype = residual.dtype if dtype is None else dtype
    if residual.shape != update.shape:
        raise ValueError(f"residual_add: residual {tuple(residual.shape)} and update {tuple(update.shape)} differ")
    if not {residual.dtype, update.dtype, dtype} <= set(DTYPES):
        raise ValueError(
            f"residual_add: residual {residual.dtype}, update {update.dtype} and dtype {dtype} must each be "
            "bf16, fp16 or fp32"
        )
    if torch.promote_types(residual.dtype, dtype) != dtype:
        raise ValueError(f"residual_add: dtype {dtype} does not hold the residual's {residual.dtype}; cast it first")
    if needs_grad(residual, update):
        raise RuntimeError("residual_add has no backward (a decode kernel): use residual.to(dtype) + update to train")
    residual, update = residual.contiguous(), update.contiguous()
    out = torch.empty(residual.shape, device=residual.device, dtype=torch.promote_types(dtype, update.dtype))
    n = out.numel()

    def run(c: LaunchConfig) -> None:
        _residual_add_kernel[(triton.cdiv(n, c.BLOCK),)](residual, update, out, n, **c.kwargs(), **pdl_kwargs())

    if n > 0:
        activation_launch("residual_add", run, operand=out)
    return out
