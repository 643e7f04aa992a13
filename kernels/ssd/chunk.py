"""Mamba2 SSD, chunked, in Triton: forward and backward composed from the stage files.

    ssd_chunk_cumsum.py      step sizes from the raw dt and their in-chunk log-decay (forward),
                             the decay gradient's sums and dt's, dt_bias's and A's gradients (backward)
    ssd_bmm.py               CB = C B^T per chunk and group
    ssd_chunk_state.py       chunk states + state passing (forward), state gradients (backward)
    ssd_chunk_scan.py        outputs (forward), dx and the direct ddt (backward)
    ssd_chunk_bc_bwd.py      dC, dB and the dy . y terms (backward)

The decay gradient needs no extra pass. With ``a_k`` the log-decay cumulated from the chunk start,
every term pairs a target t with a source s through ``exp(a_t - a_s)``, so inside a chunk
``dL/da_k = dy_k . y_k - x_k . dx_k`` (SSD parts only), plus, at the chunk's last token,
``<g_c, h_c>`` for what crosses the chunk end; ``dL/d(dt_k A)`` is the reverse cumulative sum of
that within the chunk. (Summing over the whole sequence instead would be exact too, but in bf16 its
rounding errors pile up over T: sums stay chunk-local, as in mamba_ssm.) ``ssd_chunk_cumsum.py``
takes these sums, and the step sizes' own discretization (bias, softplus, clamp), in one kernel each
way: the raw ``dt`` goes in and its gradient comes out (in the backward after three small reductions of
the ``dy . y`` / ``x . dx`` parts, made as soon as the parts are, to keep them out of the backward's peak).

Memory: the forward keeps the chunk-entry states ``[b, T / L, H, P, N]`` (input dtype) for the
backward only while they take at most ``kernels.utils.KEEP_STATES_MAX_BYTES``; larger ones (T = 64K
at N = 512: 1 GiB) are recomputed there, one chunk-state pass for the memory. At most two such
tensors (states and state gradients) are alive at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
from statex_hf.kernels.ssd.ssd_bmm import bmm_chunk_fwd
from statex_hf.kernels.ssd.ssd_chunk_bc_bwd import chunk_db, chunk_dc, chunk_dcb
from statex_hf.kernels.ssd.ssd_chunk_cumsum import chunk_cumsum_bwd, chunk_cumsum_fwd
from statex_hf.kernels.ssd.ssd_chunk_scan import chunk_scan_bwd_dx, chunk_scan_fwd
from statex_hf.kernels.ssd.ssd_chunk_state import chunk_state_bwd, chunk_state_fwd
from statex_hf.kernels.utils import kept_for_backward, per_document


def _padded_seq_idx(seq_idx: torch.Tensor | None, chunk_size: int) -> torch.Tensor | None:
    """``[b, T]`` -> ``[b, Tp]`` int32, padding with the last document (padding writes nothing anyway)."""
    if seq_idx is None:
        return None
    T = seq_idx.shape[1]
    pad = triton.cdiv(T, chunk_size) * chunk_size - T
    return F.pad(seq_idx.to(torch.int32), (0, pad), mode="replicate" if pad else "constant").contiguous()


def chunk_ssd_fwd(x, dt, A, B, C, D, dt_args, initial_state, seq, chunk_size, output_final_state):
    """``dt`` raw; ``dt_args`` = ``(dt_bias, dt_softplus, dt_limit)``. Also returns a compact copy of ``dt``
    for the backward (``chunk_cumsum_fwd``'s ``keep_dt``)."""
    dtp, Acs, dt_kept = chunk_cumsum_fwd(dt, A, *dt_args, chunk_size, keep_dt=True)
    CB = bmm_chunk_fwd(C, B, seq, chunk_size)
    hs, final = chunk_state_fwd(x, B, dtp, Acs, seq, initial_state, chunk_size, output_final_state)
    y = chunk_scan_fwd(x, C, CB, dtp, Acs, seq, hs, D, chunk_size)
    return y, final, CB, hs, dt_kept


def chunk_ssd_bwd(x, dt, A, B, C, D, dt_args, initial_state, seq, chunk_size, CB, hs, dy, dfinal):
    """All gradients (``dt``'s and ``dt_bias``'s for the raw inputs); ``hs`` are the forward's chunk states,
    or ``None`` to recompute them."""
    dtp, Acs, _ = chunk_cumsum_fwd(dt, A, *dt_args, chunk_size)
    # The per-tile parts of the decay gradient's dy . y and x . dx terms are summed as soon as they are made:
    # kept for chunk_cumsum_bwd they would be alive beside the chunk states and their gradients, the
    # backward's peak (8 fp32 parts a token and head each: 0.3 GB more at T = 64K, N = 512).
    dCB, dyy_intra, xdx_intra = chunk_dcb(x, dy, dtp, Acs, seq, CB, chunk_size)
    dyy_intra, xdx_intra = dyy_intra.sum(-1, keepdim=True), xdx_intra.sum(-1, keepdim=True)
    if hs is None:
        hs, _ = chunk_state_fwd(x, B, dtp, Acs, seq, initial_state, chunk_size, False)
    dC, dyy_inter = chunk_dc(dy, B, C, dCB, Acs, seq, hs, chunk_size)
    dyy_inter = dyy_inter.sum(-1, keepdim=True)
    dhs, dh0, r = chunk_state_bwd(dy, C, Acs, seq, dfinal, hs, chunk_size, initial_state is not None)
    del hs
    dB = chunk_db(x, C, dCB, dtp, Acs, seq, dhs, chunk_size)
    dx, ddt, xdx_state, dD_parts = chunk_scan_bwd_dx(x, B, CB, dtp, Acs, seq, dhs, D, dy, chunk_size)
    del dhs
    # The decay gradient (its in-chunk suffix sums, the state writes' prefix sums, r for the carried
    # state), then back through the discretization to the raw dt; dA, d dt_bias and dD summed over chunks.
    ddt_raw, dA, d_bias, dD = chunk_cumsum_bwd(
        dt, A, *dt_args, ddt, dyy_intra, xdx_intra, dyy_inter, xdx_state, r, dD_parts, chunk_size
    )
    return dx, ddt_raw, dA, dB, dC, dD, d_bias, dh0


class ChunkSSDFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_limit, initial_state, seq, chunk_size, output_final_state
    ):
        dt_args = (dt_bias, dt_softplus, dt_limit)
        y, final, CB, hs, dt_kept = chunk_ssd_fwd(
            x, dt, A, B, C, D, dt_args, initial_state, seq, chunk_size, output_final_state
        )
        ctx.save_for_backward(x, dt_kept, A, B, C, D, dt_bias, initial_state, seq, CB, kept_for_backward(hs))
        ctx.chunk_size, ctx.dt_softplus, ctx.dt_limit = chunk_size, dt_softplus, dt_limit
        if final is not None:
            return y, final
        return y

    @staticmethod
    def backward(ctx, dy, dfinal=None):
        x, dt, A, B, C, D, dt_bias, initial_state, seq, CB, hs = ctx.saved_tensors
        dt_args = (dt_bias, ctx.dt_softplus, ctx.dt_limit)
        dx, ddt, dA, dB, dC, dD, d_bias, dh0 = chunk_ssd_bwd(
            x, dt, A, B, C, D, dt_args, initial_state, seq, ctx.chunk_size, CB, hs, dy.contiguous(), dfinal
        )
        dA = dA.to(A.dtype)
        dD = dD.to(D.dtype) if D is not None else None
        d_bias = d_bias.to(dt_bias.dtype) if dt_bias is not None else None
        dh0 = dh0.to(initial_state.dtype) if initial_state is not None else None
        return dx, ddt, dA, dB, dC, dD, d_bias, None, None, dh0, None, None, None


def chunk_ssd(
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
    seq_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Mamba2 SSD scan in Triton (forward and backward); same contract as ``naive_ssd``.

    ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``, ``y_t = h_t C_t + D x_t`` per head, in chunks of
    ``chunk_size`` tokens, state accumulated in fp32.

    Args:
        x: ``[b, T, H, P]`` (bf16, fp16 or fp32; P up to 128).
        dt: ``[b, T, H]`` raw, any float dtype and strides (a slice of the in_proj output is read where it
            is); ``dt_bias``, softplus and ``dt_limit`` are applied in-kernel as transformers does.
        A: ``[H]``, negative.
        B, C: ``[b, T, G, N]``, shared by the ``H // G`` heads of each group (G divides H; N any size,
            the state is tiled over it).
        D: ``[H]`` or ``None``.
        dt_bias: ``[H]`` or ``None``.
        initial_state: ``[n, H, P, N]`` (``n = b``, or the number of sequences with ``cu_seqlens``).
        output_final_state: also return the fp32 state ``[n, H, P, N]`` after each sequence.
        cu_seqlens: ``[n + 1]`` cumulative lengths of a packed batch (``b == 1``); the state resets
            at each sequence start.
        chunk_size: a power of two >= 16 (256 suits long sequences; smaller is fine for short ones).
        seq_idx: ``[b, T]`` document index per token (non-decreasing), an alternative to ``cu_seqlens``.

    Returns:
        ``y`` ``[b, T, H, P]`` in ``x``'s dtype, and the final state ``[n, H, P, N]`` (fp32) or ``None``.
        Gradients flow to x, dt, dt_bias, A, B, C, D and initial_state.
    """
    b, T, H, P = x.shape
    G, N = B.shape[-2:]
    if H % G:
        raise ValueError(f"chunk_ssd: the {G} groups of B/C must divide the {H} heads")
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_ssd: chunk_size must be a power of two >= 16, got {chunk_size}")
    if cu_seqlens is not None:
        if b != 1:
            raise ValueError(f"chunk_ssd: cu_seqlens needs a packed batch of size 1, got batch {b}")
        if initial_state is not None or output_final_state:
            # Per-document states in and out: run the documents one by one (prefill of a packed
            # batch; training with packing needs neither and takes the seq_idx path below).
            return _per_document(
                x, dt, A, B, C, D, dt_bias, dt_softplus, dt_limit, initial_state, output_final_state, cu_seqlens,
                chunk_size,
            )  # fmt: skip
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        seq_idx = torch.repeat_interleave(torch.arange(len(lengths), device=x.device), lengths, output_size=T)[None]
    elif seq_idx is not None and (initial_state is not None or output_final_state):
        raise ValueError("chunk_ssd: seq_idx with initial/final states is not supported; pass cu_seqlens instead")
    seq = _padded_seq_idx(seq_idx, chunk_size)
    # dt goes in raw, with any strides (a slice of the in_proj output): the dt kernels read it as it is.
    out = ChunkSSDFunction.apply(
        x.contiguous(), dt, A, B.contiguous(), C.contiguous(), D, dt_bias, dt_softplus, tuple(dt_limit),
        initial_state.contiguous() if initial_state is not None else None, seq, chunk_size, output_final_state,
    )  # fmt: skip
    if output_final_state:
        return out[0], out[1]
    return out, None


def _per_document(
    x, dt, A, B, C, D, dt_bias, dt_softplus, dt_limit, initial_state, output_final_state, cu_seqlens, chunk_size
):
    def document(s: int, e: int, h0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if e == s:
            empty = x.new_zeros(1, *x.shape[2:], B.shape[-1], dtype=torch.float32)
            return x[:, s:e], (h0.float() if h0 is not None else empty)
        return chunk_ssd(
            x[:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e], D, dt_bias, dt_softplus, dt_limit, h0, True, None,
            chunk_size,
        )  # fmt: skip

    y, finals = per_document(document, cu_seqlens, initial_state)
    return y, (finals if output_final_state else None)
