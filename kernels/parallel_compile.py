"""Compile the Triton kernels a forward launches on several threads at once, before it runs them.

A decode step's first capture (``modeling/decode_graphs.py``) launches a few dozen kernel variants that no call has
compiled yet (each step kernel, GEMV and norm at the step's shapes, in their PDL form). Triton compiles each one
when it is first launched, one after another, about 0.2 s each, so a first capture on a machine whose Triton cache
is empty took about 3 s. Most of a compile is MLIR and LLVM passes and ``ptxas``, which run without Python's GIL,
so the compiles run in parallel on threads.

``compiled_in_parallel`` does it in two passes. Inside the ``with`` block a launch whose kernel is not compiled yet
does not run: Triton's ``jit_cache_hook`` records its specialization (what ``JITFunction.preload`` takes) and skips
it. Kernels already compiled launch as usual. At the end of the block the recorded kernels are compiled on a thread
pool into Triton's own caches, so the next pass compiles nothing. The forward inside the block computes garbage
(the skipped kernels write nothing): run it on tensors whose values do not matter, and run it again after.

Where Triton has no such hook (before 3.4), under the interpreter, or with one worker, the block runs the forward
as it is and nothing changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

MAX_WORKERS = 8  # the cap measured with (H200, 16 cores: benchmarks/README.md); more were not tried


def workers() -> int:
    """Threads for the compiles: the machine's cores, up to ``MAX_WORKERS``."""
    return min(MAX_WORKERS, os.cpu_count() or 1)


def _runtime_knobs():
    """Triton's runtime knobs where they hold a ``jit_cache_hook`` (Triton 3.4 on), else None."""
    try:
        from triton import knobs
    except ImportError:
        return None
    runtime = getattr(knobs, "runtime", None)
    return runtime if hasattr(runtime, "jit_cache_hook") else None


@contextmanager
def compiled_in_parallel(device: torch.device, threads: int | None = None) -> Iterator[None]:
    """Inside: launches of kernels not yet compiled are skipped and recorded; at exit, those kernels are compiled
    on ``threads`` threads (default ``workers()``) for ``device``. See the module docstring."""
    threads = workers() if threads is None else threads
    runtime = _runtime_knobs()
    if threads <= 1 or runtime is None or os.environ.get("TRITON_INTERPRET") == "1" or device.type != "cuda":
        yield
        return
    pending: dict[tuple, tuple] = {}

    def record(*, key, fn, compile, is_manual_warmup=False, **_) -> bool | None:
        jit = getattr(fn, "jit_function", None)
        data = compile.get("specialization_data") if isinstance(compile, dict) else None
        if is_manual_warmup or jit is None or data is None or not hasattr(jit, "preload"):
            return None  # Triton compiles it now, as without this block
        pending.setdefault((id(jit), str(key)), (jit, data))
        return True  # skip: no compile, no launch

    previous, runtime.jit_cache_hook = runtime.jit_cache_hook, record
    try:
        yield
    finally:
        runtime.jit_cache_hook = previous

    def preload(job: tuple) -> None:
        jit, data = job
        with torch.cuda.device(device):
            jit.preload(data)

    # A compile that fails here (a config too large for the GPU, say) is left to the launch that needs it, which
    # compiles it again and reports or falls back as it always does (``kernels/launch.py``).
    with ThreadPoolExecutor(threads, thread_name_prefix="statex-compile") as pool:
        for _ in pool.map(_quietly(preload), pending.values()):
            pass


def _quietly(function):
    def run(job):
        try:
            function(job)
        except Exception:  # noqa: BLE001 - see the comment at the call
            pass

    return run
