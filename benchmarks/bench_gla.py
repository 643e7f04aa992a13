"""GLA kernels: ours vs flash-linear-attention 0.6, one table from one run on one GPU.

    python benchmarks/bench_gla.py                       # everything, prints the table
    python benchmarks/bench_gla.py --impls ours          # our kernels only
    python benchmarks/bench_gla.py --fla-timeout 300     # seconds allowed to each fla process
    python benchmarks/bench_gla.py --impls fla --shapes H1 --triton-cache DIR   # one shape, cache kept

Each (implementation, head shape) runs in its own fresh process with an empty Triton cache (or, with
``--triton-cache``, the one an earlier run left in DIR), so its first call (compile and autotune
included) is measured as a user meets it; the process then times forward and forward+backward
(``triton.testing.do_bench`` medians, input grads reset before each run; bf16, B = 1 at T = 4K / 16K
/ 64K, and B = 16 at T = 4K), the peak memory of forward+backward (inputs included), and a decode
step (T = 1, state in and out, B = 1 / 16 / 64, GPU time from ``triton.testing.do_bench``; GB/s
counts the fp32 state read and written once; the host's launch cost shows in the 24-layer decode
step, eager vs CUDA graph). A process that runs past its time limit (fla's autotuning at the StateX
head) reports what it finished. Rows are printed as JSON lines by the workers and as one table by
the driver.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_specs, under python -P too
from worker_process import run_worker  # noqa: E402

SHAPES = {"H4 256x512": (4, 256, 512), "H1 1024x2048": (1, 1024, 2048)}
TRAIN_CASES = [(1, 4096), (1, 16384), (1, 65536), (16, 4096)]
DECODE_BATCHES = [1, 16, 64]


def _kernels(impl: str):
    if impl == "ours":
        from statex_hf.kernels.gla.chunk import chunk_gla
        from statex_hf.kernels.gla.fused_recurrent import fused_recurrent_gla

        def decode(q, k, v, g, h0):
            return fused_recurrent_gla(q, k, v, g, None, h0, True)

        return chunk_gla, decode
    from fla.ops.gla import chunk_gla, fused_recurrent_gla

    def decode(q, k, v, g, h0):
        return fused_recurrent_gla(q, k, v, gk=g, initial_state=h0, output_final_state=True)

    return chunk_gla, decode


def _inputs(B: int, T: int, H: int, K: int, V: int, requires_grad: bool = True):
    import torch
    import torch.nn.functional as F

    q = torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16)
    k = (torch.randn(B, T, H, K, device="cuda") * K**-0.5).bfloat16()
    v = torch.randn(B, T, H, V, device="cuda", dtype=torch.bfloat16)
    g = (F.logsigmoid(torch.randn(B, T, H, K, device="cuda")) / 16).bfloat16()
    return [x.requires_grad_(requires_grad) for x in (q, k, v, g)]


def _time_ms(fn, reps: int) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _emit(row: dict) -> None:
    print("ROW " + json.dumps(row), flush=True)


def worker(impl: str, shape_name: str) -> None:
    import torch
    import triton

    H, K, V = SHAPES[shape_name]
    chunk, decode = _kernels(impl)

    def fwd_bwd(q, k, v, g):
        o, _ = chunk(q, k, v, g)
        o.backward(torch.ones_like(o))

    # First call: compile (and autotune) included, in this fresh process with an empty Triton cache.
    B0, T0 = TRAIN_CASES[0]
    xs = _inputs(B0, T0, H, K, V)
    torch.cuda.synchronize()
    t = time.perf_counter()
    fwd_bwd(*xs)
    torch.cuda.synchronize()
    _emit({"impl": impl, "shape": shape_name, "kind": "first_call", "seconds": time.perf_counter() - t,
           "warm_cache": os.environ.get("STATEX_BENCH_WARM_CACHE") == "1"})  # fmt: skip

    for B, T in TRAIN_CASES:
        xs = _inputs(B, T, H, K, V)
        # do_bench resets the input grads before each run (so no accumulation kernels are timed) and
        # queues the runs back to back: kernel time, as fla's own benchmarks measure it.
        fwd = triton.testing.do_bench(lambda xs=xs: chunk(*xs), return_mode="median")
        both = triton.testing.do_bench(lambda xs=xs: fwd_bwd(*xs), grad_to_none=xs, return_mode="median")
        for x in xs:
            x.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd(*xs)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
        _emit({"impl": impl, "shape": shape_name, "kind": "train", "B": B, "T": T, "fwd_ms": fwd, "fwdbwd_ms": both,
               "peak_gib": peak})  # fmt: skip
        del xs

    with torch.no_grad():
        for B in DECODE_BATCHES:
            q, k, v, g = _inputs(B, 1, H, K, V, requires_grad=False)
            h0 = torch.randn(B, H, K, V, device="cuda") * 0.1
            # Kernel time: do_bench queues calls back to back (and flushes L2 between them), so the
            # host's launch overlaps the GPU's work; the host-bound B = 1 case is the 24-layer row's.
            ms = triton.testing.do_bench(lambda q=q, k=k, v=v, g=g, h0=h0: decode(q, k, v, g, h0), return_mode="median")
            gbps = 2 * h0.numel() * 4 / (ms * 1e-3) / 1e9
            _emit({"impl": impl, "shape": shape_name, "kind": "decode", "B": B, "us": ms * 1e3, "GBps": gbps})


def layers_decode(impl: str) -> None:
    """A whole GLA-1.3B StateX decode step at B = 1: 20 unexpanded + 4 merged layers, eager and CUDA graph."""
    import torch

    _, decode = _kernels(impl)
    layers = []
    for i in range(24):
        H, K, V = SHAPES["H1 1024x2048"] if i % 6 == 0 else SHAPES["H4 256x512"]
        q, k, v, g = _inputs(1, 1, H, K, V, requires_grad=False)
        layers.append((q, k, v, g, torch.randn(1, H, K, V, device="cuda") * 0.1))

    def step():
        for q, k, v, g, h0 in layers:
            decode(q, k, v, g, h0)

    with torch.no_grad():
        eager = _time_ms(step, 30)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        graphed = _time_ms(graph.replay, 30)
    _emit({"impl": impl, "kind": "decode_24_layers", "eager_us": eager * 1e3, "graph_us": graphed * 1e3})


def _run_process(args: list[str], timeout: float, cache_dir: str | None = None) -> tuple[list[dict], str]:
    """Runs one worker with an empty Triton cache, or with ``cache_dir`` (kept, and reused if filled)."""
    env = dict(os.environ, TRITON_CACHE_DIR=cache_dir or tempfile.mkdtemp(prefix="triton-cache-"), PYTHONUNBUFFERED="1")
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        env["STATEX_BENCH_WARM_CACHE"] = "1" if os.listdir(cache_dir) else "0"
    return run_worker([sys.executable, __file__, *args], env, timeout)


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(rows: list[dict], statuses: dict) -> None:
    def find(**kw):
        for r in rows:
            if all(r.get(k) == v for k, v in kw.items()):
                return r
        return None

    import torch
    from gpu_specs import describe, hbm_tbps

    print(f"\nGLA kernels, bf16, {describe()}, torch {torch.__version__}\n")
    print("| shape | B x T | impl | fwd ms | fwd+bwd ms | peak GiB | first call s |")
    print("|---|---|---|---:|---:|---:|---:|")
    for shape in SHAPES:
        for B, T in TRAIN_CASES:
            for impl in ("ours", "fla"):
                status = statuses.get((impl, shape))
                if status is None:
                    continue
                r = find(impl=impl, shape=shape, kind="train", B=B, T=T) or {}
                first = find(impl=impl, shape=shape, kind="first_call") if (B, T) == TRAIN_CASES[0] else None
                first_s = _fmt(first and first["seconds"], ".1f") if first else ""
                if first and first.get("warm_cache"):
                    first_s += " (Triton cache from an earlier run)"
                if (B, T) == TRAIN_CASES[0] and not first:
                    first_s = f"> limit ({status})"
                cells = [_fmt(r.get("fwd_ms"), ".2f"), _fmt(r.get("fwdbwd_ms"), ".2f"), _fmt(r.get("peak_gib"), ".2f")]
                print(f"| {shape} | {B} x {T // 1024}K | {impl} | " + " | ".join(cells) + f" | {first_s} |")
    print(f"\nDecode: GB/s of state read and written once; this GPU's HBM: {hbm_tbps() * 1e3:.0f} GB/s")
    print("\n| shape | impl | " + " | ".join(f"decode B={b} us (GB/s)" for b in DECODE_BATCHES) + " |")
    print("|---|---|" + "---:|" * len(DECODE_BATCHES))
    for shape in SHAPES:
        for impl in ("ours", "fla"):
            if (impl, shape) not in statuses:
                continue
            cells = []
            for b in DECODE_BATCHES:
                r = find(impl=impl, shape=shape, kind="decode", B=b)
                cells.append(f"{r['us']:.1f} ({r['GBps']:.0f})" if r else "-")
            print(f"| {shape} | {impl} | " + " | ".join(cells) + " |")
    for impl in ("ours", "fla"):
        r = find(impl=impl, kind="decode_24_layers")
        if r:
            print(f"\n24-layer StateX GLA-1.3B decode step, B=1 ({impl}): eager {r['eager_us']:.0f} us, "
                  f"CUDA graph {r['graph_us']:.0f} us")  # fmt: skip
    bad = {k: v for k, v in statuses.items() if v != "ok"}
    if bad:
        print("\nprocesses that did not finish: " + ", ".join(f"{i} {s}: {st}" for (i, s), st in bad.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impls", default="ours,fla")
    by_prefix = {name.split()[0]: name for name in SHAPES}
    parser.add_argument("--shapes", default=",".join(by_prefix), help=f"head shapes by first word: {list(by_prefix)}")
    parser.add_argument("--timeout", type=float, default=240, help="seconds for each of our processes")
    parser.add_argument("--fla-timeout", type=float, default=300, help="seconds for each fla process")
    parser.add_argument("--skip-layers", action="store_true", help="skip the 24-layer decode step")
    parser.add_argument(
        "--triton-cache",
        metavar="DIR",
        help="keep each worker's Triton cache (compiled kernels, autotuning results) under DIR and reuse it: "
        "fla's autotuning can outlast one run; the first-call column then says the cache was warm",
    )
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "SHAPE"), help=argparse.SUPPRESS)
    parser.add_argument("--layers-decode", metavar="IMPL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)
    if args.layers_decode:
        return layers_decode(args.layers_decode)

    unknown = set(args.shapes.split(",")) - set(by_prefix)
    if unknown:
        parser.error(f"unknown --shapes {sorted(unknown)}; choose from {sorted(by_prefix)}")
    rows, statuses = [], {}
    for impl in args.impls.split(","):
        timeout = args.fla_timeout if impl == "fla" else args.timeout
        if not args.skip_layers:
            r, _ = _run_process(["--layers-decode", impl], 120)
            rows += r
        for prefix in args.shapes.split(","):
            shape = by_prefix[prefix]
            cache_dir = os.path.join(args.triton_cache, f"{impl}-{prefix}") if args.triton_cache else None
            r, st = _run_process(["--worker", impl, shape], timeout, cache_dir)
            rows += r
            statuses[(impl, shape)] = st
    print_table(rows, statuses)


if __name__ == "__main__":
    main()
