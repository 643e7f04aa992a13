"""The one place that picks an implementation for each token-mixer call.

Decided per call from the tensors (device, shape, grad), never at import: CUDA tensors go to the
Triton kernels, everything else to the PyTorch paths. ``STATEX_FORCE_TORCH=1`` forces PyTorch.
"""

from __future__ import annotations

import os

import torch
from statex_hf.kernels.conv.causal_conv1d import causal_conv1d as torch_causal_conv1d
from statex_hf.kernels.gla.chunk_torch import chunk_gla_torch
from statex_hf.kernels.gla.naive import naive_recurrent_gla
from statex_hf.kernels.ssd.naive import naive_ssd


def use_triton(*tensors: torch.Tensor) -> bool:
    """Triton kernels run on CUDA tensors unless ``STATEX_FORCE_TORCH=1``."""
    if os.environ.get("STATEX_FORCE_TORCH", "0") == "1":
        return False
    return all(t.is_cuda for t in tensors)


# Up to this many tokens a no-grad GLA call on CUDA runs token by token (one pass over the state)
# rather than chunked (several kernels and per-chunk states).
GLA_RECURRENT_MAX_T = 64


def gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated linear attention; shapes as in ``kernels/gla/naive.py`` (state ``[N, H, K, V]``, fp32).

    CUDA: the Triton recurrent kernel for short inputs that need no gradient (decode steps, short
    prompts: state read and written once), else the Triton chunked kernel. CPU (or
    ``STATEX_FORCE_TORCH=1``): the token loop for one or two tokens, else the chunked PyTorch path.
    """
    T = q.shape[1]
    args = (q, k, v, gk, scale, initial_state, output_final_state, cu_seqlens)
    if use_triton(q, k, v, gk):
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (q, k, v, gk, initial_state)
        )
        if T <= GLA_RECURRENT_MAX_T and not needs_grad:
            from statex_hf.kernels.gla.fused_recurrent import fused_recurrent_gla

            return fused_recurrent_gla(*args)
        from statex_hf.kernels.gla.chunk import chunk_gla

        return chunk_gla(*args)
    if T <= 2:
        return naive_recurrent_gla(*args)
    return chunk_gla_torch(*args)


def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    chunk_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mamba2 SSD scan; shapes as in ``kernels/ssd/naive.py`` (state ``[n, H, P, N]``, fp32)."""
    return naive_ssd(
        x, dt, A, B, C, D, dt_bias, dt_softplus, dt_limit, initial_state, output_final_state, cu_seqlens
    )


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    conv_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Depthwise causal conv1d; shapes as in ``kernels/conv/causal_conv1d.py``."""
    return torch_causal_conv1d(x, weight, bias, activation, conv_state, output_final_state, cu_seqlens)
