"""Token-by-token Mamba2 state-space recurrence (SSD): the definition of correct for every SSD kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from statex_hf.kernels.utils import sequence_bounds


def discretize_dt(
    dt: torch.Tensor,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
) -> torch.Tensor:
    """Turn the raw ``dt`` projection into the step size, exactly as transformers' Mamba2 does (fp32)."""
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    return torch.clamp(dt, min=dt_limit[0], max=dt_limit[1])


def naive_ssd(
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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Run ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``, ``y_t = h_t C_t + D x_t`` per head.

    Args:
        x: ``[b, T, H, P]``.
        dt: ``[b, T, H]``, raw; ``dt_bias``, softplus and ``dt_limit`` are applied as transformers does.
        A: ``[H]``, negative (``-exp(A_log)``).
        B, C: ``[b, T, G, N]``, shared by the ``H // G`` heads of each group.
        D: ``[H]`` skip weight, or ``None``.
        initial_state: ``[n, H, P, N]`` (``n = b``, or the number of sequences with ``cu_seqlens``).
        output_final_state: return the state after the last token of each sequence.
        cu_seqlens: ``[n + 1]`` cumulative sequence lengths of a packed batch (``b == 1``).

    Returns:
        ``y`` ``[b, T, H, P]`` in ``x``'s dtype, and the final state ``[n, H, P, N]`` in fp32 or ``None``.
    """
    b, T, H, P = x.shape
    G, N = B.shape[-2:]
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)
    heads_per_group = H // G
    Bh = B.float().repeat_interleave(heads_per_group, dim=2)  # [b, T, H, N]
    Ch = C.float().repeat_interleave(heads_per_group, dim=2)
    y = torch.zeros(b, T, H, P, dtype=torch.float32, device=x.device)
    finals = []
    for n, (i, start, end) in enumerate(sequence_bounds(b, T, cu_seqlens)):
        state = x.new_zeros(H, P, N, dtype=torch.float32)
        if initial_state is not None:
            state = state + initial_state[n].float()
        for t in range(start, end):
            decay = torch.exp(dt[i, t] * A.float())  # [H]
            write = (dt[i, t, :, None] * x[i, t].float())[:, :, None] * Bh[i, t][:, None, :]  # [H, P, N]
            state = state * decay[:, None, None] + write
            y[i, t] = torch.einsum("hpn,hn->hp", state, Ch[i, t])
        finals.append(state)
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    final_state = torch.stack(finals) if output_final_state else None
    return y.to(x.dtype), final_state
