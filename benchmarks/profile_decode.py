"""Where one decode step of the 1.3B StateX models spends its GPU time, kernel by kernel.

    python benchmarks/profile_decode.py [--impls ours_gla,ours_mamba2] [--batch 1] [bench_generate's baseline flags]

For each model (``bench_generate.py``'s: random weights, bf16, 1.3B shapes): one eager one-token
step after a 64-token prompt, profiled with ``torch.profiler``: how many kernels it launches, their
summed GPU time beside the weight-read roofline, and the kernels by total time. A CUDA graph removes
the launch cost but not the kernels: the summed kernel time is the floor of a graph-replayed step.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", default="ours_gla,ours_mamba2")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--top", type=int, default=25, help="kernels listed per model")
    add_baseline_arguments(parser)
    args = parser.parse_args()
    apply_same_run_baselines(args)
    print(f"one decode step by kernel, bf16, {torch.cuda.get_device_name()}")
    for impl in args.impls.split(","):
        profile_step(impl, args.batch, args.top)


if __name__ == "__main__":
    main()
