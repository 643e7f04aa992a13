"""``nn.Linear`` whose one-row no-grad CUDA calls (a B = 1 decode step) run the Triton GEMV, and the products of
one input that such a step can take in one launch."""

from __future__ import annotations

import torch
from statex_hf.kernels import dispatch
from statex_hf.kernels.dependent_launch import dependent_launches
from torch import nn


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
    """Whether calling ``module`` runs more than its class's forward: torch's hooks, or a ``forward`` set on the
    instance (accelerate's hooks, which ``device_map`` dispatch and offloading add, replace it there)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or "forward" in vars(module))


def _bare(module: nn.Module) -> bool:
    return type(module) is DecodeLinear and module.bias is None and not hooked(module)


def one_launch(x: torch.Tensor, modules: list[nn.Module]) -> list[torch.Tensor] | None:
    """``[module(x) for module in modules]`` as one launch of the grouped GEMV (``dispatch.one_launch_products``),
    or ``None`` where that does not apply and the caller runs the modules. Only a bare ``DecodeLinear`` (not a
    peft or quantized wrapper, no bias, no hooks) is fused: its call is exactly its weight's product."""
    if not all(map(_bare, modules)):
        return None
    return dispatch.one_launch_products(x, [m.weight for m in modules])


def swiglu_of(x: torch.Tensor, gate_proj: nn.Module, up_proj: nn.Module) -> torch.Tensor:
    """``silu(gate_proj(x)) * up_proj(x)``: one launch for bare ``DecodeLinear`` s at one row
    (``dispatch.one_launch_swiglu``), else the two calls and ``dispatch.swiglu``."""
    fused = (
        dispatch.one_launch_swiglu(x, gate_proj.weight, up_proj.weight) if _bare(gate_proj) and _bare(up_proj) else None
    )
    return fused if fused is not None else dispatch.swiglu(gate_proj(x), up_proj(x))
