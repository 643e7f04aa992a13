"""``generate``'s one-token steps on CUDA, replayed as captured CUDA graphs.

A decode step of a 1.3B model launches hundreds of small kernels, and launching them takes longer
than running them. So on CUDA, the first one-token step of each batch size is captured once into a
CUDA graph, and every later step copies its token ids in and replays the graph: the same kernels, on
the same tensors, launched at once.

It plugs into transformers' own switch for compiling the decode step: ``generate`` asks the model
whether to use a compiled forward (``_valid_auto_compile_criteria``) and for that forward
(``get_compiled_call``); the StateX models answer with a :class:`DecodeGraphs`. It is on by default on
CUDA and off with ``generate(..., disable_compile=True)`` (transformers' ``GenerationConfig`` switch);
``compile_config`` is not used (``torch.compile`` would take minutes here where a capture takes a
fraction of a second). CPU runs are unchanged. A first ``generate`` of a batch size starts compiling its step's
Triton kernels on threads before the prompt's forward (:meth:`DecodeGraphs.compile_ahead`), so that a cold
process's capture does not wait for them (``STATEX_COMPILE_AHEAD=0`` turns that off).

How the state stays right: a graph reads and writes fixed tensors, one set per batch size. A cache
served by a graph is bound to that set: its states are copied in, then its layers hold those very
tensors, so each replay updates the cache in place (a cache bound earlier and still alive first gets
copies of its own). Any step a graph cannot serve exactly (more than one token, a padding mask, hidden
states asked for, gradients, a cache that is not a :class:`StateXCache`, ...) runs the eager forward.
"""

from __future__ import annotations

import operator
import os
import time
import weakref
from dataclasses import dataclass, field

import torch
from statex_hf.kernels.dependent_launch import dependent_launches
from statex_hf.kernels.parallel_compile import (
    blocks_record,
    compiled_in_parallel,
    launches_skipped,
    wait_for_compiles,
    workers,
)
from statex_hf.modeling.cache import (
    StateXCache,
    copy_states,
    recurrent_state,
    share_states,
    state_slots,
    unshare_states,
)
from torch import nn
from transformers import GenerationConfig
from transformers.utils import ModelOutput, logging

logger = logging.get_logger(f"transformers.{__name__}")

# Keyword arguments a graph serves; any other one that is set sends the step to the eager forward.
SERVED_KEYWORDS = {"input_ids", "cache", "use_cache", "return_dict", "logits_to_keep"}
# Warm-up calls before a capture: Triton compiles and cuBLAS sets up outside the graph.
_WARMUP_CALLS = 2
# Threads that compile a capture's new Triton kernels (1: each compiles when first launched, one after another).
COMPILE_THREADS = workers()
# Graphs kept per model (one per batch size and state layout); the oldest goes first.
_MAX_GRAPHS = 4


def compile_ahead_wanted() -> bool:
    """Whether ``generate`` compiles its decode step's kernels beside the prompt's forward
    (:meth:`DecodeGraphs.compile_ahead`): yes unless ``STATEX_COMPILE_AHEAD=0``, the switch back to compiling in
    the first capture (benchmarks/README.md, twenty-third and twenty-fourth sessions)."""
    return os.environ.get("STATEX_COMPILE_AHEAD", "1") != "0"


def graphs_wanted(model: nn.Module, generation_config: GenerationConfig) -> bool:
    """Whether ``generate`` should decode through CUDA graphs: on CUDA, unless ``disable_compile`` is set."""
    if getattr(generation_config, "disable_compile", False) or model.training:
        return False
    devices = {p.device for p in model.parameters()}
    return len(devices) == 1 and next(iter(devices)).type == "cuda"


class _Binding:
    """Where a bound cache keeps the graph's state tensors: its layers, their state dicts and each tensor's slot.

    Checked before every replay, while the GPU waits for the step (``generate`` syncs once a token), so the check
    runs in C (``map`` over identities) rather than walking the layers in Python as ``state_tensors`` does: the same
    answer, in a few microseconds at 48 layers. Replacing a layer, a layer's state dict or a tensor in a slot is
    seen; the tensors' values may change freely (a replay writes them in place).
    """

    def __init__(self, cache: StateXCache, tensors: list[torch.Tensor]) -> None:
        self.layers = list(cache.layers)
        self.recurrent_stores = [layer.recurrent_states for layer in self.layers]
        self.conv_stores = [layer.conv_states for layer in self.layers]
        slots = state_slots(cache)
        self.stores, self.keys = [store for store, _ in slots], [key for _, key in slots]
        self.tensors = tensors

    def holds(self, cache: StateXCache) -> bool:
        layers = cache.layers
        return (
            len(layers) == len(self.layers)
            and all(map(operator.is_, layers, self.layers))
            and all(map(operator.is_, map(_RECURRENT_STORE, layers), self.recurrent_stores))
            and all(map(operator.is_, map(_CONV_STORE, layers), self.conv_stores))
            and all(map(operator.is_, map(dict.get, self.stores, self.keys), self.tensors))
        )


_RECURRENT_STORE, _CONV_STORE = operator.attrgetter("recurrent_states"), operator.attrgetter("conv_states")


@dataclass(eq=False)
class _CapturedStep:
    graph: torch.cuda.CUDAGraph
    input_ids: torch.Tensor
    logits: torch.Tensor
    states: StateXCache  # the tensors the graph reads and writes
    owner: weakref.ref | None = None
    live: bool = True
    capture_seconds: float = field(default=0.0)
    tensors: list[torch.Tensor] = field(init=False)  # ``states``' tensors, layer by layer
    binding: _Binding | None = None  # where the cache bound to it (``owner``) keeps those tensors

    def __post_init__(self) -> None:
        self.tensors = self.states.state_tensors()


def _step_call(input_ids: torch.Tensor, states: StateXCache, logits_to_keep: int) -> dict:
    """The keyword arguments of a captured step's forward (``_capture``'s, and ``compile_ahead``'s recording of it,
    which must launch the same kernels)."""
    return {"input_ids": input_ids, "cache": states, "use_cache": True, "return_dict": True,
            "logits_to_keep": logits_to_keep}  # fmt: skip


def keywords_served(inputs: dict) -> bool:
    """Whether a step's keyword arguments leave it to a graph: none set but ``SERVED_KEYWORDS``, and neither
    ``use_cache`` nor ``return_dict`` off."""
    if inputs.get("use_cache") is False or inputs.get("return_dict") is False:
        return False
    return all(key in SERVED_KEYWORDS or value is None or value is False for key, value in inputs.items())


def _served_batch(model: nn.Module, inputs: dict) -> int | None:
    """The batch size of a one-token step a graph can serve exactly, else ``None``."""
    if torch.is_grad_enabled() or model.training:
        return None
    input_ids, cache = inputs.get("input_ids"), inputs.get("cache")
    if input_ids is None or input_ids.dim() != 2 or input_ids.shape[1] != 1 or not input_ids.is_cuda:
        return None
    if not isinstance(cache, StateXCache) or cache.get_seq_length() == 0:
        return None
    if not keywords_served(inputs):
        return None
    if not isinstance(inputs.get("logits_to_keep", 0), int):
        return None
    return input_ids.shape[0]


def _layout(model: nn.Module, cache: StateXCache, input_ids: torch.Tensor) -> tuple | None:
    """What a graph is captured for: the batch and every state's shape, dtype and device (``None`` if a layer
    has no state yet, so a step would not be a plain decode step)."""
    if any(recurrent_state(cache, i) is None for i in range(len(cache.layers))):
        return None
    states = tuple((tuple(t.shape), t.dtype, t.device) for t in cache.state_tensors())
    return (tuple(input_ids.shape), input_ids.dtype, states)


class DecodeGraphs:
    """The CUDA graphs of one model's decode steps; call it like the model's forward."""

    def __init__(self, model: nn.Module) -> None:
        self._model = weakref.ref(model)
        self._steps: dict[tuple, _CapturedStep] = {}
        self._failed: set[tuple] = set()
        self._weights: tuple[int, ...] = ()
        self._pool = None
        self._compiled_ahead: set[int] = set()  # the batch sizes whose step kernels compile_ahead compiled
        self._compiling: list = []  # compile_ahead's compiles that no capture has waited for yet
        self.last_capture_seconds: float | None = None

    def check_weights(self) -> None:
        """Drop every graph if a parameter moved (``.to()``, a new dtype): the graphs read the old memory."""
        weights = tuple(p.data_ptr() for p in self._model().parameters())
        if weights != self._weights:
            self.clear()
            self._weights = weights

    def clear(self) -> None:
        for step in self._steps.values():
            step.live = False
        self._steps.clear()
        self._failed.clear()
        # A memory pool no live graph uses cannot take another capture (torch's allocator asserts that a
        # shared pool is in use): the next capture starts a pool of its own.
        self._pool = None
        self._compiled_ahead.clear()
        self.last_capture_seconds = None

    def compile_ahead(self, batch: int, device: torch.device, logits_to_keep: int = 0) -> None:
        """Start compiling the Triton kernels of a ``batch``-sequence decode step on threads, and return: they
        compile while the prompt's forward runs (itself mostly compiling, on a first call), where the step's
        first capture would otherwise wait for them (``_capture`` waits for what is left).

        The step is recorded as ``_capture`` records it, on a cache of its own: a one-token forward whose
        kernels are skipped leaves that cache states of the right shapes (their values do not matter), then a
        decode step on them records its kernels. Nothing is done for a batch size compiled ahead or captured
        before, where launches cannot be recorded (``blocks_record``: one compile thread, off CUDA, ...), or with
        ``STATEX_COMPILE_AHEAD=0`` (``compile_ahead_wanted``)."""
        model = self._model()
        captured = any(step.input_ids.shape[0] == batch for step in self._steps.values())
        if not compile_ahead_wanted() or captured or batch in self._compiled_ahead:
            return
        if not blocks_record(device, COMPILE_THREADS):  # the two forwards would run and compile for real
            return
        self._compiled_ahead.add(batch)
        input_ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        with torch.no_grad():
            states = StateXCache(model.config)
            with launches_skipped(device, COMPILE_THREADS):
                model(input_ids=input_ids, cache=states, use_cache=True)
            with dependent_launches(device), compiled_in_parallel(device, COMPILE_THREADS, self._compiling):
                model(**_step_call(input_ids, states, logits_to_keep))

    def __call__(self, **inputs) -> ModelOutput:
        model = self._model()
        step = self._step_for(model, inputs)
        if step is None:
            return model(**inputs)
        cache = inputs["cache"]
        step.input_ids.copy_(inputs["input_ids"])
        step.graph.replay()
        cache.seen_tokens += 1
        # A copy: the next replay overwrites the graph's logits, and a caller may keep these.
        return model.output_class(logits=step.logits.clone(), **{model.cache_output_field: cache})

    def _step_for(self, model: nn.Module, inputs: dict) -> _CapturedStep | None:
        if _served_batch(model, inputs) is None:
            return None
        cache = inputs["cache"]
        step = cache.graph_binding
        if isinstance(step, _CapturedStep) and self._still_bound(step, cache, inputs["input_ids"]):
            return step
        layout = _layout(model, cache, inputs["input_ids"])
        if layout is None or layout in self._failed:
            return None
        step = self._steps.get(layout)
        if step is None:
            step = self._capture(model, cache, inputs, layout)
            if step is None:
                return None
        self._bind(step, cache)
        return step

    def _still_bound(self, step: _CapturedStep, cache: StateXCache, input_ids: torch.Tensor) -> bool:
        """Whether ``cache`` still holds ``step``'s state tensors, ``step`` is one of this model's live graphs
        and ``input_ids`` has its shape: a cache bound by another model's graphs, or whose tensors were replaced
        (``cache.layers[i].recurrent_states[0] = ...``, an older transformers' ``reset``), is bound afresh."""
        if not step.live or step.owner is None or step.owner() is not cache:
            return False
        if not any(step is mine for mine in self._steps.values()) or input_ids.shape != step.input_ids.shape:
            return False
        return step.binding is not None and step.binding.holds(cache)

    def _capture(self, model: nn.Module, cache: StateXCache, inputs: dict, layout: tuple) -> _CapturedStep | None:
        start = time.perf_counter()
        wait_for_compiles(self._compiling)  # compile_ahead's, for this step
        device = inputs["input_ids"].device
        caller_stream = torch.cuda.current_stream(device)
        try:
            # The warm-up too: it compiles the kernels' PDL variants outside the capture.
            with torch.no_grad(), dependent_launches(device):
                states = StateXCache(model.config)
                copy_states(cache, states)
                input_ids = inputs["input_ids"].clone()
                call = _step_call(input_ids, states, inputs.get("logits_to_keep", 0))
                side = torch.cuda.Stream(device=device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    # The step's kernels not compiled yet compile on threads at once, not one by one in the first
                    # warm-up call (``kernels/parallel_compile.py``). What this pass leaves in ``states`` does not
                    # matter: the warm-up calls step them too, and a bound cache's states are copied in (``_bind``).
                    with compiled_in_parallel(device, COMPILE_THREADS):
                        model(**call)
                    for _ in range(_WARMUP_CALLS):
                        model(**call)
                torch.cuda.current_stream(device).wait_stream(side)
                if self._pool is None:
                    self._pool = torch.cuda.graph_pool_handle()
                graph = torch.cuda.CUDAGraph()
                # A stream of its own: one a failed capture left capturing is never asked to capture again.
                with torch.cuda.graph(graph, pool=self._pool, stream=torch.cuda.Stream(device=device)):
                    logits = model(**call).logits
            torch.cuda.synchronize(device)
        except Exception as error:  # a model or kernel the capture cannot take: decode eagerly instead
            # A capture the forward broke (a host sync, say) makes capture_end raise inside torch.cuda.graph's
            # __exit__, which then never restores the caller's stream: every later kernel would run on the
            # capture stream. Restore it, and let the warm-up's kernels on the side stream finish before the
            # tensors they use are freed and handed to the caller's stream.
            torch.cuda.set_stream(caller_stream)
            torch.cuda.synchronize(device)
            _end_failed_capture(device)
            self._pool = None  # the failed capture's pool is not reused
            logger.warning_once(f"Decode steps run eagerly: capturing them as a CUDA graph failed ({error}).")
            self._failed.add(layout)
            return None
        if len(self._steps) >= _MAX_GRAPHS:
            oldest = next(iter(self._steps))
            self._steps.pop(oldest).live = False
        step = _CapturedStep(graph, input_ids, logits, states, capture_seconds=time.perf_counter() - start)
        self._steps[layout] = step
        self.last_capture_seconds = step.capture_seconds
        return step

    def _bind(self, step: _CapturedStep, cache: StateXCache) -> None:
        """Make ``cache`` hold the graph's state tensors, with its own values."""
        previous = step.owner() if step.owner is not None else None
        if previous is not None and previous is not cache:
            unshare_states(previous)
            previous.graph_binding = None
        copy_states(cache, step.states)
        share_states(step.states, cache)
        cache.graph_binding = step
        step.owner = weakref.ref(cache, _binding_release(step))
        step.binding = _Binding(cache, step.tensors)


def _binding_release(step: _CapturedStep):
    """The callback of ``step.owner``: when the bound cache is dropped, so is the binding, which holds the cache's
    layers (and whatever states they were handed since); weak to ``step`` too, so that no cycle keeps a graph."""
    step_ref = weakref.ref(step)

    def release(owner: weakref.ref) -> None:
        bound = step_ref()
        if bound is not None and bound.owner is owner:
            bound.binding = None

    return release


def _end_failed_capture(device: torch.device) -> None:
    """Leave the device's random generator as a capture that ended would.

    torch ends a capture's hold on the generator only when the capture ends cleanly; after a failed one (a
    sync in the forward, or an error in ``capture_begin`` itself) the generator still counts itself as
    capturing, and every later random op on the device raises ("Offset increment outside graph capture",
    from ``torch.multinomial`` in sampling, say). A clone of its state (same seed and offset, so the random
    stream goes on unchanged) carries no capture mark: the generator continues from that.
    """
    generator = torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    generator.graphsafe_set_state(generator.clone_state())


_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def decode_graphs_for(model: nn.Module) -> DecodeGraphs:
    """The model's :class:`DecodeGraphs` (kept beside the model, not in it: it is neither saved nor copied)."""
    decoder = _DECODERS.get(model)
    if decoder is None:
        decoder = _DECODERS[model] = DecodeGraphs(model)
    decoder.check_weights()
    return decoder
