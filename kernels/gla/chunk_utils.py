"""The packed-batch layout every chunked GLA Triton kernel reads: host-side bookkeeping and the
kernels' shared prologues.

Every chunked kernel sees a packed batch: ``[B, T, ...]`` without ``cu_seqlens`` is the packed
batch ``cu_seqlens = [0, T, 2T, ..., BT]``, so one code path serves both. A chunk is named by its
global index ``i_t``; ``chunk_indices[i_t] = (sequence, chunk within the sequence)`` and the
per-chunk state buffers are indexed by ``i_t`` directly (chunks are numbered sequence by sequence).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl


class ChunkLayout(NamedTuple):
    cu_seqlens: torch.Tensor  # [N + 1] int32, token offsets of each sequence in the packed batch
    chunk_offsets: torch.Tensor  # [N + 1] int32, first global chunk of each sequence
    chunk_indices: torch.Tensor  # [NT, 2] int32, (sequence, chunk within sequence) per global chunk
    num_seqs: int
    num_chunks: int


def prepare_chunk_layout(
    batch: int, seq_len: int, chunk_size: int, cu_seqlens: torch.Tensor | None, device: torch.device
) -> ChunkLayout:
    """Chunk bookkeeping for a ``[batch, seq_len]`` batch, or a packed one when ``cu_seqlens`` is given."""
    if cu_seqlens is None:
        nt = triton.cdiv(seq_len, chunk_size)
        cu = torch.arange(0, batch + 1, device=device, dtype=torch.int32) * seq_len
        offsets = torch.arange(0, batch + 1, device=device, dtype=torch.int32) * nt
        idx = torch.arange(batch * nt, device=device, dtype=torch.int32)
        indices = torch.stack([idx // max(nt, 1), idx % max(nt, 1)], dim=1)
        return ChunkLayout(cu, offsets, indices.contiguous(), batch, batch * nt)
    cu = cu_seqlens.to(device=device, dtype=torch.int32)
    lens = cu[1:] - cu[:-1]
    nts = (lens + chunk_size - 1) // chunk_size
    offsets = torch.cat([nts.new_zeros(1), nts.cumsum(0)]).to(torch.int32)
    num_chunks = int(offsets[-1].item())  # one host sync: the grid needs the chunk count
    seq = torch.repeat_interleave(torch.arange(len(nts), device=device, dtype=torch.int32), nts, output_size=num_chunks)
    within = torch.arange(num_chunks, device=device, dtype=torch.int32) - offsets[seq.long()]
    indices = torch.stack([seq, within], dim=1).contiguous()
    return ChunkLayout(cu, offsets, indices, len(nts), num_chunks)


@triton.jit
def chunk_bounds(cu_seqlens, chunk_indices, i_t, BT: tl.constexpr):
    """First token of global chunk ``i_t`` and the end of its sequence (int64)."""
    i_n = tl.load(chunk_indices + i_t * 2)
    i_w = tl.load(chunk_indices + i_t * 2 + 1)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    return bos + i_w * BT, eos


@triton.jit
def sequence_chunks(cu_seqlens, chunk_offsets, i_n, BT: tl.constexpr):
    """Sequence ``i_n``'s first token, end, first global chunk and number of chunks (int64)."""
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    boh = tl.load(chunk_offsets + i_n).to(tl.int64)
    return bos, eos, boh, tl.cdiv(eos - bos, BT)
