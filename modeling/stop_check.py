"""``generate``'s stop check, deferred by one step on CUDA while a StateX model samples.

After every token transformers' decoding loop reads ``unfinished_sequences.max() == 0`` on the host
(``StopCheck``): the host waits for the step to end before it prepares and launches the next one, and the GPU
idles meanwhile. At one sequence that idle time is a measurable share of a captured decode step
(benchmarks/README.md). transformers has the remedy, ``DeferredStopCheck``: the flag is copied asynchronously and
read one step late, so the host never waits; a sequence that stops on an end token costs one more step, whose
token ``generate`` drops. transformers uses it on ``mps`` only ("we should enable it for cuda if we observe perf
gains"). For these models the gain was measured, so inside :func:`deferred_stop_checks` (a StateX model's
``_sample``) it is used on CUDA too, unless the cache outlives ``generate`` (returned, or passed in): the extra
step would then have to be undone in the cache, and a StateX layer's state cannot be put back a step. (transformers
5.17 says so, ``LinearAttentionLayer.is_croppable`` being False once a layer holds a state; in 5.25 it is True,
as transformers records a layer's past states in its own updates, which the StateX layers' in-place updates bypass:
so inside the block a cache that outlives ``generate`` keeps the check at every step on every device, mps included.)

The switch is transformers' own class, replaced once in ``transformers.generation.utils`` by a subclass that
answers as transformers does outside the block (another model, another thread, or ``STATEX_DEFER_STOP_CHECK=0``:
a same-run baseline for the benchmarks).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers.generation import utils as generation_utils

_state = threading.local()
# transformers' class (there from 5.1x on: before it, the loop always checks on the host and this does nothing).
_TRANSFORMERS_DEFERRED = getattr(generation_utils, "DeferredStopCheck", None)


def defers_on(device: torch.device) -> bool:
    """Whether a StateX model's decoding loop on ``device`` defers its stop check (when its cache is not returned)."""
    return device.type == "cuda" and os.environ.get("STATEX_DEFER_STOP_CHECK", "1") != "0"


if _TRANSFORMERS_DEFERRED is not None:

    class StateXDeferredStopCheck(_TRANSFORMERS_DEFERRED):
        """transformers' ``DeferredStopCheck``, also supported on CUDA inside :func:`deferred_stop_checks`."""

        @staticmethod
        def is_supported(device: torch.device, cache, cache_is_returned: bool, is_assistant: bool) -> bool:
            rule = getattr(_state, "rule", None)
            if rule is not None:
                if rule == "every step" or cache_is_returned:  # on any device: transformers' rule (mps) would defer
                    return False
                if defers_on(device) and not is_assistant:
                    return True
            return _TRANSFORMERS_DEFERRED.is_supported(device, cache, cache_is_returned, is_assistant)


def _install() -> None:
    """Put the subclass where ``_sample`` looks the class up (once; it answers as transformers' outside the block)."""
    if _TRANSFORMERS_DEFERRED is not None and generation_utils.DeferredStopCheck is _TRANSFORMERS_DEFERRED:
        generation_utils.DeferredStopCheck = StateXDeferredStopCheck


@contextmanager
def deferred_stop_checks(every_step: bool = False) -> Iterator[None]:
    """Inside the block, this thread's decoding loops on CUDA defer their stop check unless their cache is returned
    (see the module's docstring); with ``every_step`` (a cache passed in, ``synced_gpus``), no loop defers on any
    device."""
    _install()
    previous = getattr(_state, "rule", None)
    _state.rule = "every step" if every_step else "defer"
    try:
        yield
    finally:
        _state.rule = previous
