"""Packed sequences: where documents start, from ``position_ids`` as ``DataCollatorWithFlattening`` makes them.

A recurrent layer must not carry state across a document boundary. Every row start and every
position whose ``position_id`` is 0 starts a document; the whole batch is then processed as one
packed row with ``cu_seqlens`` (the layout the kernels take).
"""

from __future__ import annotations

import torch


def cu_seqlens_from_position_ids(position_ids: torch.LongTensor | None) -> torch.LongTensor | None:
    """Cumulative document lengths of the flattened batch, or ``None`` when every row is one document."""
    if position_ids is None:
        return None
    if position_ids.dim() == 1:
        position_ids = position_ids[None]
    batch, seqlen = position_ids.shape
    starts = position_ids == 0
    starts[:, 0] = True
    if int(starts.sum()) == batch:
        return None
    flat = torch.nonzero(starts.reshape(-1), as_tuple=False).flatten()
    end = torch.tensor([batch * seqlen], device=flat.device, dtype=flat.dtype)
    return torch.cat([flat, end]).to(torch.int64)


def cu_seqlens_from_kwargs(position_ids: torch.LongTensor | None, kwargs: dict) -> torch.LongTensor | None:
    """Take ``cu_seq_lens_q`` (flash-attention style collators) if given, else derive from ``position_ids``."""
    cu = kwargs.get("cu_seq_lens_q", kwargs.get("cu_seqlens"))
    if cu is not None:
        return cu.to(torch.int64)
    return cu_seqlens_from_position_ids(position_ids)
