"""Depthwise causal conv1d over ``[B, T, D]`` with a decode state and document resets, in PyTorch:
the reference the Triton kernels (``causal_conv1d.py``; ``causal_conv1d_update.py`` for decode steps)
are tested against, and the path of CPU and of what the kernels do not take (a decode step with a
gradient, packed documents or more than ``CONV_UPDATE_MAX_T`` new tokens after a state).

Used by Mamba2's ``conv1d`` over ``[x | B | C]`` and by GLA's optional short convolutions. Memory is
linear in T: the kernel is applied as ``K`` shifted multiply-adds, so a document boundary is a mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_starts(cu_seqlens: torch.LongTensor, total: int) -> torch.LongTensor:
    """``[total]``: for each packed position, the index of the first token of its sequence."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    return torch.repeat_interleave(cu_seqlens[:-1], lengths, output_size=total)


def naive_causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    conv_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``y_t = act(bias + sum_j weight[:, j] * x_{t - K + 1 + j})`` within each sequence.

    Args:
        x: ``[B, T, D]``.
        weight: ``[D, K]`` (``nn.Conv1d.weight`` squeezed).
        bias: ``[D]`` or ``None``.
        activation: ``"silu"``/``"swish"`` or ``None``.
        conv_state: ``[B, D, K - 1]``, the inputs before ``x`` (decode); zeros when ``None``.
        output_final_state: return the last ``K - 1`` inputs, ``[B, D, K - 1]``, for the next call.
        cu_seqlens: packed batch (``B == 1``): the window never reaches into the previous sequence.
    """
    batch, seqlen, dim = x.shape
    width = weight.shape[-1]
    history = x.new_zeros(batch, width - 1, dim) if conv_state is None else conv_state.transpose(1, 2).to(x.dtype)
    padded = torch.cat([history, x], dim=1)  # [B, K - 1 + T, D]
    starts = None
    if cu_seqlens is not None:
        starts = sequence_starts(cu_seqlens, seqlen)
        positions = torch.arange(seqlen, device=x.device)
    out = torch.zeros(batch, seqlen, dim, dtype=torch.float32, device=x.device)
    for j in range(width):
        lag = width - 1 - j
        term = padded[:, j : j + seqlen].float() * weight[:, j].float()
        if starts is not None and lag > 0:
            term = term * (positions - lag >= starts)[None, :, None]
        out = out + term
    if bias is not None:
        out = out + bias.float()
    if activation in ("silu", "swish"):
        out = F.silu(out)
    elif activation is not None:
        raise ValueError(f"causal_conv1d: unsupported activation {activation!r}; use 'silu' or None")
    final_state = None
    if output_final_state:
        final_state = (
            padded[:, -(width - 1) :].transpose(1, 2).contiguous() if width > 1 else x.new_zeros(batch, dim, 0)
        )
        if cu_seqlens is not None and cu_seqlens.numel() > 2:
            raise ValueError("causal_conv1d: a final conv state is defined for one sequence, not a packed batch")
    return out.to(x.dtype), final_state
