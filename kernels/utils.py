"""Host-side helpers shared by every op's kernels (GLA, SSD, conv, norm): plain Python and torch.

No Triton import here: the PyTorch paths (``naive.py``, ``*_torch.py``) use these helpers too, and
they run where Triton does not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

# The chunked kernels keep the forward's per-chunk states for the backward while they take at most
# this much memory; larger ones are recomputed there (one more state pass). 512 MiB keeps the states
# of Mamba2-1.3B at T = 16K, N = 512 and of GLA-1.3B's 4 heads at T = 16K, and recomputes those at
# 64K (1 GiB and more), so that one layer's activations stay small. In a model trained with
# activation checkpointing only the block being recomputed holds them.
KEEP_STATES_MAX_BYTES = 512 * 2**20


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd would record a call on ``tensors`` (``None`` entries ignored): the decode kernels have
    no backward, so such a call takes the differentiable path."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def on_device_of(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """A Triton kernel runs on the current CUDA device (and its current stream), not on its tensors' device: for a
    tensor on another GPU than the current one (a model split over GPUs by ``device_map``), the block makes that
    GPU current, as torch's own ops on the tensor would run there; otherwise it changes nothing."""
    if tensor.is_cuda and tensor.device.index is not None and tensor.device.index != torch.cuda.current_device():
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def kept_for_backward(states: torch.Tensor) -> torch.Tensor | None:
    """``states`` if they are small enough to keep for the backward (``KEEP_STATES_MAX_BYTES``), else
    ``None``: the backward recomputes them."""
    return states if states.numel() * states.element_size() <= KEEP_STATES_MAX_BYTES else None


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision`` for inputs of ``dtype``: fp32 inputs keep exact fp32 products
    (the tests and the models' fp32 parity compare against fp32 references); half types use the
    tensor cores (their products are exact in fp32 anyway)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def pow2(n: int, lo: int = 16, hi: int | None = None) -> int:
    """The smallest power of two ``>= n``, at least ``lo`` (``tl.dot`` needs tiles of 16 or more) and
    at most ``hi``: a tile that covers ``n`` without wasting lanes on more than half of it."""
    p = max(1 << max(n - 1, 0).bit_length(), lo)
    return p if hi is None else min(p, hi)


_NUM_SMS: dict[int, int] = {}


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (cached), 1 off CUDA: grids are sized against it."""
    if device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _NUM_SMS:
        _NUM_SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _NUM_SMS[index]


def sequence_bounds(batch: int, seq_len: int, cu_seqlens: torch.Tensor | None) -> list[tuple[int, int, int]]:
    """``(batch row, first token, end)`` of every sequence: each row of a ``[batch, seq_len]`` batch, or
    each document of a packed one (``batch == 1``, boundaries ``cu_seqlens``)."""
    if cu_seqlens is None:
        return [(row, 0, seq_len) for row in range(batch)]
    if batch != 1:
        raise ValueError(f"cu_seqlens needs a packed batch of size 1, got batch {batch}")
    cu = cu_seqlens.tolist()
    return [(0, cu[i], cu[i + 1]) for i in range(len(cu) - 1)]


def per_document(
    run: Callable[[int, int, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]],
    cu_seqlens: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs each document of a packed batch on its own and joins the results.

    ``run(start, end, h0)`` returns the document's output ``[1, end - start, ...]`` and its final state
    ``[1, ...]``, ``h0`` being ``initial_state[i : i + 1]`` (or ``None``). Outputs are concatenated
    along time, final states along documents."""
    outputs, finals = [], []
    for i, (_, start, end) in enumerate(sequence_bounds(1, 0, cu_seqlens)):
        h0 = None if initial_state is None else initial_state[i : i + 1]
        out, final = run(start, end, h0)
        outputs.append(out)
        finals.append(final)
    return torch.cat(outputs, dim=1), torch.cat(finals, dim=0)
