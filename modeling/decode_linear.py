"""``nn.Linear`` whose one-row no-grad CUDA calls (a B = 1 decode step) run the Triton GEMV, the products of one
input that such a step (and with ``dispatch.GROUPED_MAX_ROWS`` raised, a batch's) can take in one launch, and a
block's norm and residual add taken into its sublayers' first and last products (``kernels/linear/row_norm.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from statex_hf.kernels import dispatch
from statex_hf.kernels.dependent_launch import dependent_launches
from statex_hf.kernels.linear.row_norm import RowNorm
from torch import nn
from torch.nn.modules import module as _every_module


class DecodeLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, state dict, init and ``isinstance``, so peft, quantizers and checkpoints
    see no difference) whose forward goes through ``dispatch.linear``: the GEMV kernel where it beats cuBLAS (one
    row of x, CUDA, no gradient), ``F.linear`` for every other call."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if weight is self._parameters.get("weight"):
            return dispatch.linear(input, weight, self.bias)
        # A weight made in this call (a parametrization, torch's pruning hook) is the output of the kernel just before
        # the GEMV, which under PDL would read its first tiles before waiting for that kernel: launched without PDL.
        with dependent_launches(input.device, enabled=False):
            return dispatch.linear(input, weight, self.bias)


def hooked(module: nn.Module) -> bool:
    """Whether calling ``module`` runs more than its class's forward: torch's hooks, its own or those on every module
    (``nn.modules.module.register_module_forward_hook`` and ``..._pre_hook``: torch's module tracker, a debugger), or
    a ``forward`` set on the instance (accelerate's hooks, which ``device_map`` dispatch and offloading add, replace it
    there)."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or "forward" in vars(module)
        or _every_module._global_forward_hooks
        or _every_module._global_forward_pre_hooks
    )


def _bare(module: nn.Module) -> bool:
    return type(module) is DecodeLinear and module.bias is None and not hooked(module)


def one_launch(x: torch.Tensor, modules: list[nn.Module], norm: RowNorm | None = None) -> list[torch.Tensor] | None:
    """``[module(x) for module in modules]`` as one launch of the grouped GEMV (``dispatch.one_launch_products``),
    or ``None`` where that does not apply and the caller runs the modules. Only a bare ``DecodeLinear`` (not a
    peft or quantized wrapper, no bias, no hooks) is fused: its call is exactly its weight's product. ``norm``: the
    products of its output on x, in the same launch."""
    if not all(map(_bare, modules)):
        return None
    return dispatch.one_launch_products(x, [m.weight for m in modules], norm)


def normed_linear(
    module: nn.Module,
    x: torch.Tensor,
    norm: RowNorm,
    residual: torch.Tensor | None = None,
    residual_dtype: torch.dtype | None = None,
) -> torch.Tensor | None:
    """``module(norm(x))`` (with ``residual``, ``residual.to(residual_dtype)`` plus that) as one launch
    (``dispatch.one_launch_linear``) for a bare ``DecodeLinear``; ``None`` where that does not apply."""
    if not _bare(module):
        return None
    return dispatch.one_launch_linear(x, module.weight, norm=norm, residual=residual, residual_dtype=residual_dtype)


def plus_residual(
    module: nn.Module, x: torch.Tensor, residual: torch.Tensor, residual_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``residual.to(residual_dtype) + module(x)`` (``dispatch.residual_add``; ``residual_dtype`` None keeps
    residual's), a sublayer's last product added to a block's residual stream: one launch where the one-row GEMV
    takes a bare ``DecodeLinear``'s product (``dispatch.one_launch_linear``), else the module and the add."""
    if _bare(module):
        summed = dispatch.one_launch_linear(x, module.weight, residual=residual, residual_dtype=residual_dtype)
        if summed is not None:
            return summed
    return dispatch.residual_add(residual, module(x).view(residual.shape), residual_dtype)


def _one_row_launches_open(dtype: torch.dtype) -> bool:
    """Whether a decode step's one-row launches may take norms: products in a ``dtype`` the one-row GEMV takes (bf16,
    fp16), no gradients, outside ``torch.compile``, the GEMV on (``dispatch.GEMV_MAX_ROWS``)."""
    return (
        dtype in (torch.bfloat16, torch.float16)
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and dispatch.GEMV_MAX_ROWS >= 1
    )


def _takes_a_norm(product: nn.Module, dtype: torch.dtype) -> bool:
    """Whether ``product``'s one-row launch can take a norm: a bare ``DecodeLinear``, its weight plain, of ``dtype``."""
    return _bare(product) and type(product.weight) in (torch.Tensor, nn.Parameter) and product.weight.dtype == dtype


def norms_go_into_products(
    hidden_states: torch.Tensor, dtype: torch.dtype, sublayers: Sequence[nn.Module], products: Sequence[nn.Module]
) -> bool:
    """Whether a pre-norm block hands its norms and residual adds to its sublayers (their ``input_norm`` and
    ``residual`` arguments), whose one-row kernels compute them inside their first and last products: one row of
    a decode step on the CUDA path, without gradients, outside ``torch.compile``, products in a ``dtype`` (the
    model's) that the one-row GEMV takes (bf16, fp16), its sublayers unhooked (a hook sees a sublayer's usual input
    and output), and ``products`` (those that would take the norms and adds) each a bare ``DecodeLinear`` with a
    plain weight of ``dtype`` on the GEMV path: where one is not (a peft or quantized wrapper, a hook, cuBLAS), the
    sublayer would normalize and add by itself, a kernel each, where the block apart adds and normalizes in one.
    Each sublayer still normalizes and adds by itself where its kernels do not apply otherwise (a hooked norm)."""
    return (
        _one_row_launches_open(dtype)
        and hidden_states.numel() == hidden_states.shape[-1] > 0
        and dispatch.use_triton(hidden_states)
        and not any(map(hooked, sublayers))
        and all(_takes_a_norm(m, dtype) for m in products)
    )


def final_norm_goes_into_head(decoder: nn.Module, head: nn.Module) -> bool:
    """Whether a causal LM's one-row step leaves ``decoder``'s final norm to ``head`` (``dispatch.FINAL_NORM_IN_HEAD``):
    on the CUDA path without gradients, outside ``torch.compile``, the decoder unhooked (a hook on it sees its usual
    output, the norm's), ``head`` a bare ``DecodeLinear`` with a plain bf16 / fp16 weight the one-row GEMV takes
    (``norms_go_into_products``' conditions on a product, told before the step runs). Where its launch then does not
    take the norm after all, the head normalizes apart (``causal_lm_head``)."""
    return (
        dispatch.FINAL_NORM_IN_HEAD
        and not hooked(decoder)
        and _bare(head)  # first: a wrapper's weight may be no attribute of its own
        and _one_row_launches_open(head.weight.dtype)
        and _takes_a_norm(head, head.weight.dtype)
        and dispatch.use_triton(head.weight)
    )


def normed_logits(head: nn.Module, x: torch.Tensor, norm: RowNorm) -> torch.Tensor | None:
    """``head(norm(x)).float()`` (a causal LM's logits after its final norm) as one launch of the one-row GEMV for a
    bare ``DecodeLinear`` head: the norm computed as x is loaded, the logits stored as fp32; ``None`` where that does
    not apply."""
    if not _bare(head):
        return None
    return dispatch.one_launch_linear(x, head.weight, norm=norm, out_dtype=torch.float32)


def fused_swiglu(
    x: torch.Tensor, gate_proj: nn.Module, up_proj: nn.Module, norm: RowNorm | None = None
) -> torch.Tensor | None:
    """``silu(gate_proj(x)) * up_proj(x)`` (with ``norm``, of its output on x) as one launch for bare
    ``DecodeLinear`` s at one row, or at a batch's rows up to ``dispatch.GROUPED_MAX_ROWS`` without a norm
    (``dispatch.one_launch_swiglu``); ``None`` where that does not apply."""
    if _bare(gate_proj) and _bare(up_proj):
        return dispatch.one_launch_swiglu(x, gate_proj.weight, up_proj.weight, norm)
    return None


def swiglu_of(x: torch.Tensor, gate_proj: nn.Module, up_proj: nn.Module) -> torch.Tensor:
    """``silu(gate_proj(x)) * up_proj(x)``: one launch for bare ``DecodeLinear`` s where ``fused_swiglu`` applies,
    else the two calls and ``dispatch.swiglu``."""
    fused = fused_swiglu(x, gate_proj, up_proj)
    return fused if fused is not None else dispatch.swiglu(gate_proj(x), up_proj(x))
