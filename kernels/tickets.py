"""Zeroed int32 counters for the "last block" pattern: the programs of a group each take a ticket (an atomic add)
once their part is done, and the one that draws the last ticket finishes the group's work (Mamba2's conv windows
and gated norm in ``ssd/conv_state_update.py``), then sets the count back to zero for the next launch.

One buffer per device, shared by the kernels that take tickets: launches on one device must not overlap (as a
model's steps, in order on a stream, do not; two streams stepping two models at once would share the counts). A
larger need takes a new, larger buffer; the older ones stay alive, since a captured CUDA graph may still replay
them. Allocated inside the launch, before the first kernel.
"""

from __future__ import annotations

import torch
import triton

HELD: dict[torch.device, list[torch.Tensor]] = {}


def zeroed_tickets(device: torch.device, count: int) -> torch.Tensor:
    """At least ``count`` zeroed tickets on ``device`` (allocated, with one memset, on first need only)."""
    held = HELD.setdefault(device, [])
    if not held or held[-1].numel() < count:
        held.append(torch.zeros(max(1024, triton.next_power_of_2(count)), dtype=torch.int32, device=device))
    return held[-1]
