"""Chunked Mamba2 SSD in plain PyTorch (autograd): the CPU path, memory linear in T.

The sequence is cut into chunks of ``L`` tokens. Inside a chunk the output is a masked ``L x L``
product (the "intra-chunk" quadratic form); across chunks only the ``[H, P, N]`` state travels,
in fp32. No tensor is larger than ``T * L * H`` or ``T / L * H * P * N``, so memory is linear in T.
Shapes follow ``kernels/ssd/naive.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from statex_hf.kernels.ssd.naive import discretize_dt
from statex_hf.kernels.utils import per_document


def _chunk_scan_torch(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of independent sequences; ``dt`` already discretized (fp32). Returns fp32 ``y`` and final state."""
    b, T, H, P = x.shape
    G, N = B.shape[-2:]
    K = H // G  # heads per group: B and C are shared, so heads are viewed as [G, K] and never expanded
    L = chunk_size
    nc = (T + L - 1) // L
    pad = nc * L - T
    # Zero padding is exact: dt = 0 means no decay and no write.
    x = F.pad(x.float(), (0, 0, 0, 0, 0, pad)).view(b, nc, L, G, K, P)
    dt = F.pad(dt, (0, 0, 0, pad)).view(b, nc, L, G, K)
    B = F.pad(B.float(), (0, 0, 0, 0, 0, pad)).view(b, nc, L, G, N)
    C = F.pad(C.float(), (0, 0, 0, 0, 0, pad)).view(b, nc, L, G, N)
    a_cum = torch.cumsum(dt * A.float().view(G, K), dim=2)  # [b, nc, L, G, K], log-decay from chunk start
    dtx = dt[..., None] * x

    # Intra-chunk: y_t += sum_{s<=t} exp(a_t - a_s) (C_t . B_s) dt_s x_s.
    CB = torch.einsum("bclgn,bcsgn->bcgls", C, B)  # [b, nc, G, L, L], shared by the group's heads
    diff = a_cum.permute(0, 1, 3, 4, 2)[..., :, None] - a_cum.permute(0, 1, 3, 4, 2)[..., None, :]
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp(diff.masked_fill(~causal, float("-inf")))  # [b, nc, G, K, L, L]
    y = torch.einsum("bcgls,bcgkls,bcsgkp->bclgkp", CB, decay, dtx)

    # Each chunk's own contribution to the state at its end.
    to_end = torch.exp(a_cum[:, :, -1:] - a_cum)  # [b, nc, L, G, K]
    chunk_states = torch.einsum("bclgn,bclgkp->bcgkpn", B, to_end[..., None] * dtx)  # [b, nc, G, K, P, N]

    # State passing: sequential over chunks, fp32, only [b, H, P, N] per step.
    state = x.new_zeros(b, G, K, P, N) if initial_state is None else initial_state.float().view(b, G, K, P, N)
    chunk_decay = torch.exp(a_cum[:, :, -1])[..., None, None]  # [b, nc, G, K, 1, 1]
    entering = []
    # unbind, not [:, c]: indexing's backward would write a full-size zero tensor for every chunk.
    for decay_c, write_c in zip(chunk_decay.unbind(1), chunk_states.unbind(1)):
        entering.append(state)
        state = state * decay_c + write_c
    entering = torch.stack(entering, dim=1)  # [b, nc, G, K, P, N]

    # Inter-chunk: y_t += exp(a_t) C_t . h_{c-1}.
    y = y + torch.einsum("bclgn,bcgkpn->bclgkp", C, entering) * torch.exp(a_cum)[..., None]
    y = y.reshape(b, nc * L, H, P)[:, :T]
    return y, state.reshape(b, H, P, N)


def chunk_ssd_torch(
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
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Chunked SSD, same contract as :func:`statex_hf.kernels.ssd.naive.naive_ssd`.

    Args:
        x: ``[b, T, H, P]``.
        dt: ``[b, T, H]`` raw; ``dt_bias``, softplus and ``dt_limit`` applied as transformers does.
        A: ``[H]`` (negative).
        B, C: ``[b, T, G, N]``, shared by the ``H // G`` heads of a group.
        D: ``[H]`` or ``None``.
        initial_state: ``[n, H, P, N]`` or ``None``.
        output_final_state: also return the fp32 state ``[n, H, P, N]`` after each sequence.
        cu_seqlens: ``[n + 1]`` packed-sequence boundaries (``b == 1``); the state resets at each start.
        chunk_size: tokens per chunk (64 is a good CPU default).

    Returns:
        ``y`` ``[b, T, H, P]`` in ``x``'s dtype and the final state (fp32) or ``None``.
    """
    dtd = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)
    if cu_seqlens is None:
        y, final = _chunk_scan_torch(x, dtd, A, B, C, initial_state, chunk_size)
    else:
        if x.shape[0] != 1:
            raise ValueError(f"chunk_ssd_torch: cu_seqlens needs a packed batch of size 1, got batch {x.shape[0]}")

        # Documents are independent: run each on its own slice (state and chunks restart with it).
        def document(s: int, e: int, h0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            if e == s:
                empty = x.new_zeros(1, *x.shape[2:], B.shape[-1], dtype=torch.float32)
                return x.new_zeros(1, 0, *x.shape[2:], dtype=torch.float32), (empty if h0 is None else h0)
            return _chunk_scan_torch(x[:, s:e], dtd[:, s:e], A, B[:, s:e], C[:, s:e], h0, chunk_size)

        y, final = per_document(document, cu_seqlens, initial_state)
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    return y.to(x.dtype), (final if output_final_state else None)
