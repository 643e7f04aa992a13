"""Where ``generate``'s decode loop spends the time between two tokens, on the host and on the GPU.

    python benchmarks/profile_generate_loop.py [--impls ours_gla,ours_mamba2] [--batch 1] [--tokens 64]

For each model (``bench_generate.py``'s: random weights, bf16, 1.3B shapes), one greedy ``generate``
after warm-up, with the loop's stages timed on the host by wrapping them (nothing is synchronized that
``generate`` does not synchronize itself). Per decode step, the median of each stage in microseconds:

- ``wait``: inside transformers' stop check, which reads a flag from the GPU and so waits for the step (on
  CUDA ours reads it a step late, ``modeling/stop_check.py``: it waits for the step before, while this one runs);
- ``loop``: from the stop check's return to the next step's input preparation (the loop's own code);
- ``prepare``: ``prepare_inputs_for_generation``;
- ``to forward``: from the prepared inputs to the forward's call;
- ``to replay``: the forward up to the graph's launch (ours: the check that a captured graph serves it);
- ``replay``: launching the graph;
- ``after replay``: the rest of the forward (the output object);
- ``post``: from the forward's return to the stop check (logits copy, processors, argmax, stopping criteria).

The GPU idles from the end of a step until the next graph starts: roughly ``loop`` + ``prepare`` +
``to forward`` + ``to replay`` + the post-processing kernels. ``wait`` is what the GPU's step costs
beyond the host work that overlaps it; the step's graph replayed back to back gives its GPU time
alone. On CPU (no graphs) ``to replay`` is the whole eager forward.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its siblings, under python -P too
from bench_generate import build  # noqa: E402

REPLAYS = 50
_ABSENT = object()  # an attribute a class inherits: unwrapping deletes the wrap
STAGES = ["wait", "loop", "prepare", "to forward", "to replay", "replay", "after replay", "post"]


class StageClock:
    """Timestamps of the loop's events, step by step."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []
        self._wrapped: list[tuple[object, str, object]] = []  # (owner, attribute, its own entry or _ABSENT)

    def mark(self, name: str) -> None:
        self.events.append((name, time.perf_counter()))

    def wrap(self, owner, attribute: str, before: str, after: str) -> None:
        original = getattr(owner, attribute)
        self._wrapped.append((owner, attribute, vars(owner).get(attribute, _ABSENT)))

        def timed(*args, **kwargs):
            self.mark(before)
            try:
                return original(*args, **kwargs)
            finally:
                self.mark(after)

        setattr(owner, attribute, timed)

    def unwrap(self) -> None:
        """Put every wrapped attribute back as it was (an inherited one inherited again), the last wrap first."""
        for owner, attribute, own in reversed(self._wrapped):
            if own is _ABSENT:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, own)
        self._wrapped.clear()

    def stages(self) -> dict[str, list[float]]:
        """Each stage's duration (us) per decode step: the time from one event to the next, by event pair."""
        pairs = {
            ("stop_start", "stop_end"): "wait",
            ("stop_end", "prepare_start"): "loop",
            ("prepare_start", "prepare_end"): "prepare",
            ("prepare_end", "forward_start"): "to forward",
            ("forward_start", "replay_start"): "to replay",
            ("replay_start", "replay_end"): "replay",
            ("replay_end", "forward_end"): "after replay",
            ("forward_end", "stop_start"): "post",
        }
        out: dict[str, list[float]] = {stage: [] for stage in STAGES}
        for (a, ta), (b, tb) in zip(self.events, self.events[1:]):
            stage = pairs.get((a, b))
            if stage is not None:
                out[stage].append((tb - ta) * 1e6)
        return out


def profile_loop(impl: str, batch: int, tokens: int, tiny: bool) -> None:
    from transformers.generation import utils as generation_utils

    model, _ = build(impl, tiny)
    device = next(model.parameters()).device
    ids = torch.randint(1, model.config.vocab_size, (batch, 512 if not tiny else 16), device=device)
    settings = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        for _ in range(2):  # capture and warm up
            model.generate(ids, max_new_tokens=8, min_new_tokens=8, **settings)
    clock = StageClock()
    forward_call = model.get_compiled_call() if device.type == "cuda" else model
    compiled_type = type(forward_call)
    # Class-level wraps (generate looks the methods up on the instance's class or the instance), undone after the
    # timed generate: the next model's clock must not time this one's wraps too.
    clock.wrap(compiled_type, "__call__", "forward_start", "forward_end")
    clock.wrap(type(model), "prepare_inputs_for_generation", "prepare_start", "prepare_end")
    clock.wrap(generation_utils.StopCheck, "__call__", "stop_start", "stop_end")
    if hasattr(generation_utils, "DeferredStopCheck"):  # the stop check on CUDA (modeling/stop_check.py)
        clock.wrap(generation_utils.DeferredStopCheck, "__call__", "stop_start", "stop_end")
    clock.wrap(torch.cuda.CUDAGraph, "replay", "replay_start", "replay_end")
    try:
        with torch.no_grad():
            start = time.perf_counter()
            model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **settings)
            if device.type == "cuda":
                torch.cuda.synchronize()
            total_ms = (time.perf_counter() - start) * 1e3
    finally:
        clock.unwrap()
    stages = clock.stages()
    if not stages["replay"]:  # eager steps (CPU): the whole forward is one stage
        stages["to replay"] = _spans(clock.events, "forward_start", "forward_end")
    step_us = _spans(clock.events, "stop_end", "stop_end")
    print(f"\n{impl}, B = {batch}, {tokens} new tokens: generate {total_ms:.1f} ms, "
          f"median step {statistics.median(step_us):.0f} us (stop check to stop check)")  # fmt: skip
    if device.type == "cuda" and forward_call._steps:
        graph = list(forward_call._steps.values())[-1].graph
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(REPLAYS):
            graph.replay()
        torch.cuda.synchronize()
        print(f"  the step's graph replayed back to back: {(time.perf_counter() - start) / REPLAYS * 1e6:.0f} us")
    for stage in STAGES:
        values = stages[stage]
        if values:
            print(f"  {stage:>13}: median {statistics.median(values):7.1f} us   (n = {len(values)})")


def _spans(events: list[tuple[str, float]], first: str, then: str) -> list[float]:
    """Microseconds from each ``first`` event to the next ``then`` event (from one ``first`` to the next when both
    are one name), in one pass."""
    spans, opened = [], None
    for name, stamp in events:
        if name == then and opened is not None:
            spans.append((stamp - opened) * 1e6)
            opened = None
        if name == first:
            opened = stamp
    return spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", default="ours_gla,ours_mamba2")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--tiny", action="store_true", help="toy shapes (a check of this script, runs on CPU)")
    args = parser.parse_args()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"generate's decode loop by stage, bf16, {gpu}")
    for impl in args.impls.split(","):
        profile_loop(impl, args.batch, args.tokens, args.tiny)


if __name__ == "__main__":
    main()
