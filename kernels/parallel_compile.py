"""Compile the Triton kernels a forward launches on several threads at once, before it runs them.

A decode step's first capture (``modeling/decode_graphs.py``) launches a few dozen kernel variants that no call has
compiled yet (each step kernel, GEMV and norm at the step's shapes, in their PDL form). Triton compiles each one
when it is first launched, one after another, about 0.2 s each, so a first capture on a machine whose Triton cache
is empty took about 3 s. Most of a compile is MLIR and LLVM passes and ``ptxas``, which run without Python's GIL,
so the compiles run in parallel on threads.

``compiled_in_parallel`` does it in two passes. Inside the ``with`` block a launch of one of this package's kernels
that is not compiled yet does not run: Triton's ``jit_cache_hook`` records its specialization (what
``JITFunction.preload`` takes) and skips it. Kernels already compiled launch as usual, and so do other packages'
kernels (an autotuner of theirs would time skipped launches). At the end of the block the recorded kernels are
compiled on a thread pool into Triton's own caches, so the next pass compiles nothing, and each is readied for its
first launch there too: its module loaded onto the GPU and its launcher built (Triton 3.6 builds a C launcher per
kernel signature with the system's C compiler at a kernel's first launch; on the capturing thread those builds ran one
after another, where a pool's threads run them at once: on an H100 with an empty Triton cache, what a first capture
spends outside the pool is now what a capture with a warm cache spends, about 0.2 s; benchmarks/README.md, twenty-second
session). The forward inside the block computes garbage (the skipped kernels write nothing): run it on tensors whose
values do not matter, and run it again after.

With a ``background`` list the block returns as soon as its compiles start, and ``wait_for_compiles`` waits for
them, then readies the kernels: ``generate`` records its decode step before the prompt's forward and compiles it
beside that forward (``DecodeGraphs.compile_ahead``), where the capture would wait for the slowest kernel (Mamba2's
one-launch step kernel took 2.9 s on one H100 machine's pool). ``launches_skipped`` skips as a block does and
compiles nothing: for a forward that only has to leave tensors of the right shapes behind.

Only the thread that entered the block records. Where Triton is older than 3.6 (its hook and ``preload`` were
measured on 3.6 and read in 3.9), under the interpreter, or with one worker, the block runs the forward as it is
and nothing changes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from transformers.utils import logging

logger = logging.get_logger(f"transformers.{__name__}")

MAX_WORKERS = 8  # 16 threads compiled no faster on a 16-core H100 machine (benchmarks/README.md, 21st session)


def workers() -> int:
    """Threads for the compiles: the machine's cores, up to ``MAX_WORKERS``."""
    return min(MAX_WORKERS, os.cpu_count() or 1)


def _runtime_knobs():
    """Triton's runtime knobs from Triton 3.6 on, where they hold the ``jit_cache_hook`` this module uses; else
    None."""
    import triton
    from packaging.version import Version

    if Version(triton.__version__).release < (3, 6):
        return None
    from triton import knobs

    runtime = getattr(knobs, "runtime", None)
    return runtime if hasattr(runtime, "jit_cache_hook") else None


# The modules whose kernels a block records: this package's (``statex_hf.kernels``, or the same files under another
# name where a checkpoint's remote code imports them).
_OWN_KERNELS = __name__.rpartition(".")[0] + "."


# The launches being recorded, per thread: Triton's hook is one for the whole process, and a launch from another
# thread (another model, a data loader's kernels) must run as usual while one thread records.
_recording_of = threading.local()
# The hook that was installed before ours (called for every launch this module does not record), and how many
# threads are recording: the last one to stop puts that hook back.
_chained: list = [None]
_recorders = [0]
_lock = threading.Lock()


def _record(**kwargs) -> bool | None:
    """Triton's ``jit_cache_hook`` while a block records: True (no compile, no launch) for a launch of this thread
    inside the block, whose specialization it keeps; otherwise what the hook before it says."""
    pending = getattr(_recording_of, "pending", None)
    fn = kwargs.get("fn")
    jit, module = getattr(fn, "jit_function", None), str(getattr(fn, "module", ""))
    compile = kwargs.get("compile") if isinstance(kwargs.get("compile"), dict) else {}
    data, device = compile.get("specialization_data"), compile.get("device")
    ours = module.startswith(_OWN_KERNELS) and hasattr(jit, "preload") and data is not None and device is not None
    if pending is None or kwargs.get("is_manual_warmup") or not ours:
        return _chained[0](**kwargs) if _chained[0] is not None else None
    pending.setdefault((id(jit), device, str(kwargs.get("key"))), (jit, device, data))
    return True


def blocks_record(device: torch.device, threads: int | None = None) -> bool:
    """Whether a block on ``device`` with ``threads`` threads records and skips launches (else it is no block): on
    CUDA, with Triton 3.6 or later, not under the interpreter, with more than one thread."""
    threads = workers() if threads is None else threads
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return threads > 1 and not interpreted and device.type == "cuda" and _runtime_knobs() is not None


@contextmanager
def _recording(device: torch.device, threads: int) -> Iterator[dict | None]:
    """Inside: this thread's launches of this package's kernels not yet compiled are skipped, and what each would
    have compiled is kept in the dict this yields (``None`` where blocks are off: nothing is skipped)."""
    if not blocks_record(device, threads):
        yield None
        return
    runtime = _runtime_knobs()
    with _lock:
        if _recorders[0] == 0:
            _chained[0], runtime.jit_cache_hook = runtime.jit_cache_hook, _record
        _recorders[0] += 1
    outer = getattr(_recording_of, "pending", None)  # a block around this one, on this thread
    _recording_of.pending = pending = {}
    try:
        yield pending
    finally:
        _recording_of.pending = outer
        with _lock:
            _recorders[0] -= 1
            if _recorders[0] == 0 and runtime.jit_cache_hook is _record:
                runtime.jit_cache_hook = _chained[0]


@contextmanager
def compiled_in_parallel(
    device: torch.device, threads: int | None = None, background: list | None = None
) -> Iterator[None]:
    """Inside: this thread's launches of this package's kernels not yet compiled are skipped and recorded; at exit,
    those kernels are compiled on ``threads`` threads (default ``workers()``), each for the GPU it was launched on.
    With a ``background`` list the block returns as the compiles start, noted in that list, and
    ``wait_for_compiles(background)`` waits for them. ``device``: the forward's; the block does nothing off CUDA.
    See the module docstring."""
    threads = workers() if threads is None else threads
    with _recording(device, threads) as pending:
        yield
    if not pending:
        return
    jobs = list(pending.values())
    pool = ThreadPoolExecutor(threads, thread_name_prefix="statex-compile")
    # Readied with the compile where the caller waits for the pool; in the background, once a caller waits
    # (``wait_for_compiles``): readying builds and loads a kernel's launcher, as the forward that runs meanwhile does
    # for its own kernels, and with both at once a GPU test once saw one of that forward's kernels launched through
    # another kernel's launcher (the cause was not found; the capture's pool, which readies while its caller waits,
    # has not shown it).
    ready = background is None
    started = (time.perf_counter(), jobs, threads, [pool.submit(_compile, job, ready) for job in jobs])
    pool.shutdown(wait=False)  # its threads end once the compiles are done
    if background is None:
        _log_when_done(*started)
    else:
        background.append(started)


@contextmanager
def launches_skipped(device: torch.device, threads: int | None = None) -> Iterator[None]:
    """Inside: this thread's launches of this package's kernels not yet compiled are skipped, and nothing is
    compiled (where ``compiled_in_parallel`` would record them). For a forward that only has to leave tensors of
    the right shapes behind, such as a cache's states."""
    with _recording(device, workers() if threads is None else threads):
        yield


def wait_for_compiles(background: list) -> None:
    """Wait for the compiles the blocks given ``background`` started (at once if none is left), then ready their
    kernels for their first launch on threads. Each caller keeps its own list: it readies only its own kernels,
    while no forward of its runs."""
    started, background[:] = list(background), []
    for start, jobs, threads, futures in started:
        kernels = _log_when_done(start, jobs, threads, futures)
        with ThreadPoolExecutor(threads, thread_name_prefix="statex-compile") as pool:
            list(pool.map(_ready_on, [job[1] for job in jobs], kernels))


def _compile(job: tuple, ready: bool) -> tuple[float, float, object]:
    """Compiles one kernel, and readies it with ``ready``: its seconds on the thread, the ``perf_counter`` it ended
    at, and the compiled kernel (``None`` where compiling failed)."""
    jit, launched_on, data = job
    start, kernel = time.perf_counter(), None
    try:
        with torch.cuda.device(launched_on):  # Triton compiles for, and caches on, the current GPU
            kernel = jit.preload(data)
            if ready:
                _ready(kernel)
    except Exception:  # noqa: BLE001 - left to the launch that needs the kernel: it compiles it again and
        pass  # reports or falls back as it always does (``kernels/launch.py``), a config too large, say
    end = time.perf_counter()
    return end - start, end, kernel


def _ready(kernel) -> None:
    """Do what a compiled kernel's first launch would: load its module onto the GPU and build its launcher."""
    ready = getattr(kernel, "_init_handles", None)
    if ready is not None:
        ready()


def _ready_on(launched_on: int, kernel) -> None:
    try:
        with torch.cuda.device(launched_on):
            _ready(kernel)
    except Exception:  # noqa: BLE001 - as in ``_compile``: the launch reports it (not enough shared memory, say)
        pass


def _log_when_done(start: float, jobs: list[tuple], threads: int, futures: list) -> list:
    """Wait for a block's compiles, log what a first capture's time is mostly made of (``bench_generate.py`` shows
    it) and return the compiled kernels. With enough threads the slowest kernel is the wait: the log names it, the
    kernel to make cheaper to compile."""
    seconds, ends, kernels = zip(*(future.result() for future in futures))
    longest, (jit, _, _) = max(zip(seconds, jobs), key=lambda timed: timed[0])
    count = f"{len(jobs)} kernel{'s' if len(jobs) > 1 else ''}"
    logger.info(
        f"Compiled {count} on {threads} threads in {max(ends) - start:.2f} s "
        f"(the slowest, {getattr(jit, '__name__', 'unnamed')}, in {longest:.2f} s)."
    )
    return list(kernels)
