"""Programmatic dependent launch (PDL) for the kernels of a captured decode step.

A one-token step is hundreds of small kernels in a row, each waiting for the previous one to end before
it is even scheduled: at B = 1 that gap, not HBM, is much of the step. On Hopper and later a kernel
launched with PDL (``launch_pdl=True``) may be scheduled as soon as every program of the kernel before it
has called ``gdc_launch_dependents``; it then waits in ``gdc_wait`` until that kernel has finished and its
writes are visible. The launch and the programs' start overlap the previous kernel's tail, and a CUDA
graph keeps the overlap (stream capture records the dependency as a programmatic edge).

The rule every kernel with a ``USE_PDL`` switch follows: ``gdc_wait`` before its first global load or
store, so it reads nothing a predecessor is still writing and overwrites nothing it still reads; then
``gdc_launch_dependents``. Three exceptions read, before the wait, what no kernel of a step writes before
them, so that DRAM round trip overlaps the kernel before:
- the one-row GEMVs their first weight tiles (``gemv._one_row_dot``);
- Mamba2's one-launch step its weights and its own layer's state and conv windows
  (``ssd/conv_state_update.py``), which only that layer's launch writes, once a step;
- GLA's one-token step its layer's state, where it is one tile (``gla/fused_recurrent.py``).

That is safe because a PDL kernel's predecessor is always a kernel of the same step. Each step starts with
torch's embedding lookup, launched without PDL, which waits for everything before it. In a graph, the first
node waits for the stream's earlier work in full (programmatic edges join only kernels captured together).
A kernel is launched only once every program of the one before has passed its own wait (or ended, for a
kernel without PDL), so every kernel two or more back has finished. So an in-place weight update before the
step, and a layer's launch a step earlier, have ended before such a read. The kernel just before must not
write that memory either: on the models' path no launcher copies what its kernel reads early
(``one_launch_conv_ssd`` takes only a contiguous conv weight; GLA's step gets the cache's contiguous state,
updated in place), and a weight made inside the step (a parametrization, torch's pruning hook) is read by a
GEMV launched without PDL (``DecodeLinear``). A forward hook that wrote a stored weight in place would break
this.

PDL is on only inside ``dependent_launches`` (the decode graphs' warm-up and capture), on a GPU of compute
capability 9 or more, with a Triton that has it (3.3 on), outside Triton's interpreter, and unless
``STATEX_PDL=0`` (a same-run baseline for the benchmarks). Everywhere else the kernels take ``USE_PDL=False``:
no wait, and the same results (the exceptions issue their early loads first there too).
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


def _triton_has_pdl() -> bool:
    """Whether this Triton has PDL: the ``gdc_*`` intrinsics and the ``launch_pdl`` launch option (Triton 3.3 on;
    not 3.2, which ``pyproject.toml`` allows)."""
    if not hasattr(getattr(tl.extra, "cuda", None), "gdc_wait"):
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except Exception:  # a Triton without the NVIDIA backend
        return False
    return "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})


TRITON_HAS_PDL = _triton_has_pdl()


def supported(device: torch.device) -> bool:
    """Whether kernels on ``device`` can be launched with PDL (CUDA, compute capability 9+, compiled, a Triton
    that has it)."""
    return (
        TRITON_HAS_PDL
        and device.type == "cuda"
        and os.environ.get("TRITON_INTERPRET", "0") != "1"
        and os.environ.get("STATEX_PDL", "1") != "0"
        and torch.cuda.get_device_capability(device)[0] >= 9
    )


@contextmanager
def dependent_launches(device: torch.device, enabled: bool = True) -> Iterator[bool]:
    """Launches the kernels with a ``USE_PDL`` switch with PDL inside the block, where ``device`` supports
    it; yields whether it does. Nests (the outer block's setting returns after the inner one); ``enabled=False``
    turns it off inside, for a launch whose early reads the kernel before it may write."""
    previous = getattr(_state, "on", False)
    _state.on = enabled and supported(device)
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


if TRITON_HAS_PDL:

    @triton.jit
    def wait_for_predecessor(USE_PDL: tl.constexpr):
        """Under PDL, a kernel's first step but for the module's exceptions: wait until the kernel before it has
        finished, then let the next one be scheduled. Nothing when ``USE_PDL`` is off."""
        if USE_PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()

else:  # Triton 3.2: its cache key looks up every name a kernel's code uses, taken branch or not, so naming the
    # missing intrinsics would fail every kernel that waits (PDL stays off there: ``supported``).

    @triton.jit
    def wait_for_predecessor(USE_PDL: tl.constexpr):
        """Nothing: this Triton has no PDL."""
        pass
