"""Where a GLA layer's forward+backward spends its time, kernel by kernel, on one GPU.

    python benchmarks/profile_gla.py [--ts 16384,65536]

For GLA-1.3B's layer (4 heads of 256 x 512) and its StateX layer (1 head of 1024 x 2048), bf16, B = 1:
the fwd and fwd+bwd kernel time (``triton.testing.do_bench`` medians, input grads reset before each
run, as ``bench_gla.py`` times them), then one profiled fwd+bwd (``torch.profiler``) with the CUDA time
of each of our kernels and how many times it ran.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton
from statex_hf.kernels.gla.chunk import chunk_gla
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its siblings, under python -P too
from bench_gla import SHAPES, _inputs  # noqa: E402


def profile_shape(name: str, T: int) -> None:
    H, K, V = SHAPES[name]
    xs = _inputs(1, T, H, K, V)
    do = torch.randn(1, T, H, V, device="cuda", dtype=torch.bfloat16)

    def fwd_bwd():
        o, _ = chunk_gla(*xs)
        o.backward(do)

    fwd_bwd()  # compile
    fwd = triton.testing.do_bench(lambda: chunk_gla(*xs), return_mode="median")
    both = triton.testing.do_bench(fwd_bwd, grad_to_none=xs, return_mode="median")
    print(f"\n{name}, T = {T}: fwd {fwd:.2f} ms, fwd+bwd {both:.2f} ms")
    for x in xs:
        x.grad = None
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fwd_bwd()
        torch.cuda.synchronize()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)
    for e in events:
        if e.key.startswith("chunk_"):
            print(f"  {e.key:<34} {e.self_device_time_total / 1e3:7.3f} ms  x{e.count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ts", default="16384,65536", help="comma-separated sequence lengths")
    args = parser.parse_args()
    print(f"GLA fwd+bwd by kernel, bf16, B = 1, {torch.cuda.get_device_name()}")
    for name in SHAPES:
        for T in (int(t) for t in args.ts.split(",")):
            profile_shape(name, T)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
