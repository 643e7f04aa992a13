"""A residual add and the RMSNorm that reads its sum, in one Triton pass (forward only: the no-grad path of a
model's blocks, where a pre-norm block's ``h = h + out`` is followed by the next ``norm(h)``)::

    h = round(fp32(residual) + fp32(update))          round: the cast to torch's result dtype of the add
    n = gated_rmsnorm(h, None, weight, ...)           the norm kernel's own code on the h just computed

Both families' blocks take it: GLA's (one dtype, the norm first, ``norm_before_gate``) and Mamba2's (an fp32
residual stream plus a bf16 mixer output, the first block's bf16 embeddings cast to fp32 as ``dtype``; the next
block's norm of ``h.to(weight dtype)`` as ``input_dtype``, gate first; or the model's final norm of the fp32 ``h``).

It is the norm's forward kernel (``gated_rmsnorm.py``) with the add as its prologue, launched with the norm's
config: each row is normalized in the same tiles and summed in the same order as the separate norm, so ``n`` is
that kernel's output on torch's ``residual + update`` bit for bit, and ``h`` is torch's sum (one rounding of an
exact fp32 sum, torch's opmath for these dtypes). One form is the exception: an fp32 sum normalized as it is (no
``input_dtype`` cast; Mamba2's final norm) matched at one row but differed in the last bit at 16 and 64 rows on an
H100 (``tests/gpu/test_mamba2_residual_norm_gpu.py``), so the model fuses that form at one row only. torch would
run the add as one kernel and the norm as another, writing ``h`` and reading it back.
"""

from __future__ import annotations

import torch
import triton
from statex_hf.kernels.dependent_launch import pdl_kwargs
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.norm.configs import norm_launch
from statex_hf.kernels.norm.gated_rmsnorm import TRITON_DTYPES, _norm_fwd_kernel, output_dtype
from statex_hf.kernels.utils import needs_grad


def add_rmsnorm(
    residual: torch.Tensor,
    update: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    norm_before_gate: bool = True,
    input_dtype: torch.dtype | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = residual.to(dtype) + update`` and ``gated_rmsnorm(h, None, weight, eps, D, norm_before_gate,
    input_dtype)``.

    residual, update ``[..., D]`` of one shape (bf16, fp16 or fp32 each), weight ``[D]``; one group (the whole
    row) and no gate: a block's norm. ``dtype`` (default residual's) must hold residual exactly, as
    ``residual_add``'s: the cast is exact, and the kernel loads residual in its own dtype. ``h`` has torch's dtype
    for the add (``promote_types(dtype, update.dtype)``), ``n`` the norm's. Both are new contiguous tensors, equal
    to torch's add and to the norm kernel on it. No gradient.
    """
    if residual.shape != update.shape:
        raise ValueError(f"add_rmsnorm: residual {tuple(residual.shape)} and update {tuple(update.shape)} differ")
    if residual.dtype not in TRITON_DTYPES or update.dtype not in TRITON_DTYPES:
        raise ValueError(f"add_rmsnorm: residual {residual.dtype} and update {update.dtype} must be bf16, fp16 or fp32")
    D = residual.shape[-1]
    if weight is not None and weight.shape != (D,):
        raise ValueError(f"add_rmsnorm: weight {tuple(weight.shape)} must be [{D}]")
    if input_dtype is not None and input_dtype not in TRITON_DTYPES:
        raise ValueError(f"add_rmsnorm: input_dtype {input_dtype} is not one of bf16, fp16, fp32")
    dtype = residual.dtype if dtype is None else dtype
    if dtype not in TRITON_DTYPES or torch.promote_types(residual.dtype, dtype) != dtype:
        raise ValueError(f"add_rmsnorm: dtype {dtype} does not hold the residual's {residual.dtype}; cast it first")
    if needs_grad(residual, update, weight):
        raise RuntimeError("add_rmsnorm has no backward (a decode kernel): use residual + update and the norm to train")
    sum_dtype = torch.promote_types(dtype, update.dtype)
    input_dtype = sum_dtype if input_dtype is None else input_dtype
    shape = residual.shape
    residual, update = residual.reshape(-1, D).contiguous(), update.reshape(-1, D).contiguous()
    weight = weight.contiguous() if weight is not None else None
    M = residual.shape[0]
    h = torch.empty(M, D, device=residual.device, dtype=sum_dtype)
    n = torch.empty(M, D, device=residual.device, dtype=output_dtype(input_dtype, weight, norm_before_gate))
    rstd = torch.empty(M, 1, device=residual.device, dtype=torch.float32)

    def run(c: LaunchConfig) -> None:
        _norm_fwd_kernel[(triton.cdiv(M, c.BM), 1)](
            residual, residual, weight if weight is not None else residual, n, rstd, update, h,
            M, D, D, D, 0, eps,
            NCHUNK=triton.cdiv(D, c.BS), HAS_GATE=False, HAS_WEIGHT=weight is not None,
            NORM_BEFORE_GATE=norm_before_gate, ROUND_X=input_dtype != sum_dtype, X_DTYPE=TRITON_DTYPES[input_dtype],
            HAS_UPDATE=True, SUM_DTYPE=TRITON_DTYPES[sum_dtype], **c.kwargs(), **pdl_kwargs(),
        )  # fmt: skip

    if M > 0 and D > 0:
        norm_launch("fwd", run, M, D, operand=h, name="norm.add_fwd")
    return h.view(shape), n.view(shape)
