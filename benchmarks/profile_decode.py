"""Where one decode step of the 1.3B StateX models spends its GPU time, kernel by kernel.

    python benchmarks/profile_decode.py [--impls ours_gla,ours_mamba2] [--batch 1] [bench_generate's baseline flags]
    python benchmarks/profile_decode.py --graph      # the captured step as generate replays it

For each model (``bench_generate.py``'s: random weights, bf16, 1.3B shapes): one eager one-token
step after a 64-token prompt, profiled with ``torch.profiler``: how many kernels it launches, their
summed GPU time beside the weight-read roofline, and the kernels by total time. A CUDA graph removes
the launch cost but not the kernels: the summed kernel time is the floor of a graph-replayed step.

``--graph`` profiles replays of the decode graph ``generate`` captured instead, launched as it launches
them (programmatic dependent launch included). Under PDL a kernel starts before the one before it ends
and waits inside, so its own duration overstates it: each kernel is charged what it adds to the step,
the time from the previous kernel's end to its own (its first kernel, its duration). These add up to
the replay's GPU time, and they show what the eager profile cannot: the time between kernels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its siblings, under python -P too
from bench_generate import (  # noqa: E402
    add_baseline_arguments,
    apply_same_run_baselines,
    build,
    hbm_bandwidth,
    weight_bytes,
)


def profile_step(impl: str, batch: int, top: int) -> None:
    model, state_bytes = build(impl)
    ids = torch.randint(1, model.config.vocab_size, (batch, 64), device="cuda")
    with torch.no_grad():
        cache = getattr(model(ids, use_cache=True), model.cache_output_field)
        step = ids[:, -1:]
        for _ in range(3):  # compile and warm up
            model(step, cache=cache, use_cache=True, logits_to_keep=1)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(step, cache=cache, use_cache=True, logits_to_keep=1)
            torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(e.device_time for e in kernels)
    spec, _ = hbm_bandwidth()
    roofline_us = (weight_bytes(model) + 2 * state_bytes * batch) / spec * 1e6
    print(f"\n{impl}, B = {batch}: {len(kernels)} kernels, {total_us:.0f} us of kernel time "
          f"(roofline {roofline_us:.0f} us)")  # fmt: skip
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        by_name.setdefault(e.name, []).append(e.device_time)
    for name, times in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]:
        print(f"  {sum(times):8.0f} us  x{len(times):4d}  {name[:110]}")
    del model, cache
    torch.cuda.empty_cache()


def _added(before, kernel) -> float:
    """What ``kernel`` adds to a replay: from the end of the kernel ``before`` it (``None``: its start) to its end."""
    start = kernel.time_range.start if before is None else max(before.time_range.end, kernel.time_range.start)
    return max(0.0, kernel.time_range.end - start)


def profile_graph(impl: str, batch: int, top: int, sequence: int = 0, replays: int = 5) -> None:
    from statex_hf.modeling.decode_graphs import decode_graphs_for

    model, _ = build(impl)
    ids = torch.randint(1, model.config.vocab_size, (batch, 64), device="cuda")
    model.generate(ids, max_new_tokens=4, do_sample=False, eos_token_id=None)  # captures the step's graph
    (step,) = decode_graphs_for(model)._steps.values()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            step.graph.replay()
            torch.cuda.synchronize()  # replays apart: the first kernel of each is charged its own duration
    kernels = sorted(
        (e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda e: e.time_range.start
    )
    per_replay = len(kernels) // replays
    added: dict[str, list[float]] = {}
    spans = []
    for r in range(replays):
        chunk = kernels[r * per_replay : (r + 1) * per_replay]
        spans.append(chunk[-1].time_range.end - chunk[0].time_range.start)
        for before, e in zip([None, *chunk], chunk):
            added.setdefault(e.name, []).append(_added(before, e) / replays)
    print(f"\n{impl}, B = {batch}, graph replay: {per_replay} kernels, {sum(spans) / replays:.0f} us a replay "
          f"(first kernel's start to last kernel's end)")  # fmt: skip
    for name, times in sorted(added.items(), key=lambda kv: -sum(kv[1]))[:top]:
        print(f"  {sum(times):8.0f} us  x{round(len(times) / replays):4d}  {name[:110]}")
    if sequence:  # the last replay's first kernels in order: start (from the replay's first), duration, added
        chunk = kernels[-per_replay:]
        t0 = chunk[0].time_range.start
        print("   start      dur    added  kernel")
        for before, e in zip([None, *chunk[:sequence]], chunk[:sequence]):
            dur = e.time_range.end - e.time_range.start
            print(f"  {e.time_range.start - t0:7.1f} {dur:7.2f} {_added(before, e):7.2f}  {e.name[:80]}")
    del model, step
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", default="ours_gla,ours_mamba2")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--top", type=int, default=25, help="kernels listed per model")
    parser.add_argument("--graph", action="store_true", help="profile replays of generate's decode graph")
    parser.add_argument("--sequence", type=int, default=0, help="with --graph: list this many kernels in order")
    add_baseline_arguments(parser)
    args = parser.parse_args()
    apply_same_run_baselines(args)
    print(f"one decode step by kernel, bf16, {torch.cuda.get_device_name()}")
    for impl in args.impls.split(","):
        if args.graph:
            profile_graph(impl, args.batch, args.top, args.sequence)
        else:
            profile_step(impl, args.batch, args.top)


if __name__ == "__main__":
    main()
