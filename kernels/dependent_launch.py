"""Programmatic dependent launch (PDL) for the kernels of a captured decode step.

A one-token step is hundreds of small kernels in a row, each waiting for the previous one to end before
it is even scheduled: at B = 1 that gap, not HBM, is much of the step. On Hopper and later a kernel
launched with PDL (``launch_pdl=True``) may be scheduled as soon as every program of the kernel before it
has called ``gdc_launch_dependents``; it then waits in ``gdc_wait`` until that kernel has finished and its
writes are visible. The launch and the programs' start overlap the previous kernel's tail, and a CUDA
graph keeps the overlap (stream capture records the dependency as a programmatic edge).

The rule every kernel with a ``USE_PDL`` switch follows: ``gdc_wait`` before its first global load or
store, so it reads nothing a predecessor is still writing and overwrites nothing it still reads; then
``gdc_launch_dependents``. (Prefetching weights before the wait would overlap more, but would read a
weight an in-place update just before the step might still be writing.)

PDL is on only inside ``dependent_launches`` (the decode graphs' warm-up and capture), on a GPU of compute
capability 9 or more, outside Triton's interpreter, and unless ``STATEX_PDL=0`` (a same-run baseline for
the benchmarks). Everywhere else the kernels take ``USE_PDL=False``: the very same code as before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import triton
import triton.language as tl

_state = threading.local()


def supported(device: torch.device) -> bool:
    """Whether kernels on ``device`` can be launched with PDL (CUDA, compute capability 9+, compiled)."""
    return (
        device.type == "cuda"
        and os.environ.get("TRITON_INTERPRET", "0") != "1"
        and os.environ.get("STATEX_PDL", "1") != "0"
        and torch.cuda.get_device_capability(device)[0] >= 9
    )


@contextmanager
def dependent_launches(device: torch.device) -> Iterator[bool]:
    """Launches the kernels with a ``USE_PDL`` switch with PDL inside the block, where ``device`` supports
    it; yields whether it does. Nests (the outer block's setting returns after the inner one)."""
    previous = getattr(_state, "on", False)
    _state.on = supported(device)
    try:
        yield _state.on
    finally:
        _state.on = previous


def pdl_kwargs() -> dict[str, bool]:
    """A launch's PDL arguments: ``kernel[grid](..., **pdl_kwargs())`` (the ``USE_PDL`` constexpr, and
    Triton's ``launch_pdl`` when on)."""
    if getattr(_state, "on", False):
        return {"USE_PDL": True, "launch_pdl": True}
    return {"USE_PDL": False}


@triton.jit
def wait_for_predecessor(USE_PDL: tl.constexpr):
    """A kernel's first step under PDL (the module's rule): wait until the kernel before it has finished,
    then let the next one be scheduled. Nothing when ``USE_PDL`` is off."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
