"""The matrix-vector products of a decode step: our Triton GEMV beside cuBLASLt and cuBLAS, 1.3B shapes, bf16.

    python benchmarks/bench_gemv.py                        # every shape at M = 1, 16, 64; prints the table
    python benchmarks/bench_gemv.py --ms 1 --json gemv.json
    python benchmarks/bench_gemv.py --tiny                 # toy shapes on CPU (Triton interpreter): a check
    python benchmarks/bench_gemv.py --ms 1 --pick-only --pdl   # the table's pick alone, launched as in a decode graph

``y = x @ W.T`` for x ``[M, K]`` and nn.Linear weights ``[N, K]`` of StateX GLA-1.3B and Mamba2-1.3B
(``SHAPES``), M the rows of a decode step (the batch). Rows per (shape, M):
- ``cublaslt`` / ``cublas``: ``F.linear`` under ``torch.backends.cuda.preferred_blas_library`` set to each
  (torch's default is printed; the setting is restored afterwards);
- ``ours``: ``statex_hf.kernels.linear.gemv.gemv`` with the launch table's pick (``pick``), then each config
  of a short list (``candidates``, through ``launch.OVERRIDES``), split-K variants included.

Each is timed as CUDA-graph replays (``triton.testing.do_bench_cudagraph``, median), so the launch overhead a
decode graph does not pay is left out, while the second launch of a split-K call is counted, as a graph step
pays it. A decode step reads each weight once, cold in L2 (the other layers' weights evict it); one timed call
therefore runs the product over ``copies`` distinct copies of W, together at least twice the L2 cache (at most
``MAX_COPIES``: the smallest weights stay in L2, where their time is the kernel's latency), and its time is
divided by ``copies``. TB/s counts W, x and y once; % is of the device's HBM bandwidth (``gpu_specs.py``).
``err`` is the largest deviation from the fp32 product over its largest magnitude; the fastest row of each
(shape, M) is marked ``*``.

The launches GLA's decode step makes of several products (``FUSED``, ``kernels/linear/gemv_group.py``): the grouped
GEMV of the mixer's five projections of one input and the MLP's gate and up products with their SwiGLU, beside
torch's separate calls (``F.linear`` per weight, and ``silu`` and a product). Their kernels take the GEMV table's
tiles for the rows, so each candidate is timed for them too. At more rows (where a decode step takes them only with
``dispatch.GROUPED_MAX_ROWS`` raised) also one library call over the weights stacked (``cat`` rows; the epilogue
split off after it): the most grouping could save with the library's kernels. ``--pick-only`` times the library
rows and the table's pick alone (a same-run baseline: the script run against another install of the package),
``--pdl`` captures the launches with programmatic dependent launch as a decode graph does
(``kernels/dependent_launch.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its siblings, under python -P too

# (name, K, N) of the 1.3B models' decode-step products (nn.Linear's in_features, out_features).
SHAPES = [
    ("gla q/k", 2048, 1024),
    ("gla v/g/o", 2048, 2048),
    ("gla mlp gate/up", 2048, 5632),
    ("gla mlp down", 5632, 2048),
    ("gla lm_head", 2048, 32000),
    ("gla gate lowrank down", 2048, 16),
    ("gla gate lowrank up", 16, 1024),
    ("mamba2 in_proj", 2048, 2 * 4096 + 2 * 128 + 64),
    ("mamba2 in_proj statex", 2048, 2 * 4096 + 2 * 512 + 64),
    ("mamba2 out_proj", 4096, 2048),
    ("mamba2 lm_head", 2048, 50288),
]
# (name, K, (N of each weight), kind) of the launches that serve several products of one x (at M > 1 the library's
# separate calls also beside one over the weights stacked).
FUSED = [
    ("gla q,k,v,gk_down,g group", 2048, (1024, 1024, 2048, 16, 2048), "group"),
    ("gla mlp gate+up swiglu", 2048, (5632, 5632), "swiglu"),
]
MS = "1,16,64"
TINY_MS = "1,3"
MAX_COPIES = 64


def tiny_shape(k: int, n: int) -> tuple[int, int]:
    """A toy stand-in for (k, n): small enough for the interpreter, a multiple of no tile."""
    return max(16, k // 64) + 3, max(8, n // 256) + 5


def tiny_case(name: str, k: int, ns: tuple[int, ...], kind: str) -> tuple[str, int, tuple[int, ...], str]:
    """A case with each weight's shape replaced by its toy stand-in (``tiny_shape``)."""
    return name, tiny_shape(k, 0)[0], tuple(tiny_shape(k, n)[1] for n in ns), kind


def candidates(m: int):
    """The configs timed beside the table's pick at ``m`` rows (each also at the split the pick's rule gives)."""
    from statex_hf.kernels.launch import LaunchConfig

    if m == 1:  # one row: the loop with its look-ahead load (``gemv._one_row_dot``); num_stages does nothing there
        return [
            LaunchConfig.of(4, 1, BM=1, BN=4, BK=1024, SPLIT_K=1),
            LaunchConfig.of(4, 1, BM=1, BN=2, BK=2048, SPLIT_K=1),
            LaunchConfig.of(4, 1, BM=1, BN=8, BK=512, SPLIT_K=1),
            LaunchConfig.of(2, 1, BM=1, BN=2, BK=1024, SPLIT_K=1),
            LaunchConfig.of(2, 1, BM=1, BN=4, BK=512, SPLIT_K=1),
            LaunchConfig.of(8, 1, BM=1, BN=8, BK=1024, SPLIT_K=1),
            LaunchConfig.of(8, 1, BM=1, BN=4, BK=2048, SPLIT_K=1),
            LaunchConfig.of(8, 1, BM=1, BN=2, BK=4096, SPLIT_K=1),
        ]
    if m <= 4:
        bm = 1 << (m - 1).bit_length()
        bases = [
            LaunchConfig.of(4, 4, BM=bm, BN=4, BK=4096 // (4 * bm), SPLIT_K=1),
            LaunchConfig.of(4, 4, BM=bm, BN=8, BK=4096 // (8 * bm), SPLIT_K=1),
            LaunchConfig.of(4, 3, BM=bm, BN=16, BK=4096 // (16 * bm), SPLIT_K=1),
            LaunchConfig.of(8, 3, BM=bm, BN=8, BK=8192 // (8 * bm), SPLIT_K=1),
            LaunchConfig.of(2, 4, BM=bm, BN=8, BK=2048 // (8 * bm), SPLIT_K=1),
            LaunchConfig.of(4, 4, BM=16, BN=16, BK=256, SPLIT_K=1),  # tl.dot, M padded to 16
        ]
    elif m <= 16:
        bases = [
            LaunchConfig.of(4, 4, BM=16, BN=16, BK=256, SPLIT_K=1),
            LaunchConfig.of(4, 4, BM=16, BN=32, BK=128, SPLIT_K=1),
            LaunchConfig.of(4, 3, BM=16, BN=64, BK=128, SPLIT_K=1),
            LaunchConfig.of(8, 4, BM=16, BN=32, BK=256, SPLIT_K=1),
        ]
    else:
        bases = [
            LaunchConfig.of(4, 3, BM=64, BN=32, BK=128, SPLIT_K=1),
            LaunchConfig.of(4, 3, BM=64, BN=64, BK=64, SPLIT_K=1),
            LaunchConfig.of(8, 3, BM=64, BN=128, BK=64, SPLIT_K=1),
            LaunchConfig.of(4, 4, BM=32, BN=64, BK=128, SPLIT_K=1),
        ]
    return bases


def describe(config) -> str:
    tiles = " ".join(f"{name}{size}" for name, size in config.tiles if name != "SPLIT_K")
    return f"{tiles} S{config.SPLIT_K} w{config.num_warps} s{config.num_stages}"


def time_us(fn, copies: int, cuda: bool, pdl: bool, rep: int) -> float:
    """Median microseconds of one product: CUDA-graph replays of ``fn`` (``copies`` products) over ``rep`` ms on a
    GPU, captured with programmatic dependent launch if ``pdl``; on CPU wall clock of one call (a check of the
    script, not a measurement)."""
    import torch
    from statex_hf.kernels.dependent_launch import dependent_launches

    device = torch.device("cuda" if cuda else "cpu")
    with dependent_launches(device) if pdl else contextlib.nullcontext():
        fn()  # compile outside the capture
        if cuda:
            from triton.testing import do_bench_cudagraph

            return do_bench_cudagraph(fn, rep=rep, return_mode="median") * 1e3 / copies
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e6 / copies


def products(kind: str):
    """(torch's call, ours, the fp32 reference, our launch's name in ``launch.OVERRIDES``) for a kind of case: each
    takes x and the case's weights."""
    import torch.nn.functional as F
    from statex_hf.kernels.linear.gemv import gemv
    from statex_hf.kernels.linear.gemv_group import gemv_group, gemv_swiglu

    if kind == "linear":
        return (lambda x, ws: F.linear(x, ws[0])), (lambda x, ws: gemv(x, ws[0])), None, "linear.gemv"
    if kind == "group":
        return (lambda x, ws: [F.linear(x, w) for w in ws]), gemv_group, None, "linear.gemv_group"

    def torch_swiglu(x, ws):
        return F.silu(F.linear(x, ws[0])) * F.linear(x, ws[1])

    def reference(x, ws):
        return F.silu(F.linear(x.float(), ws[0].float())) * F.linear(x.float(), ws[1].float())

    return torch_swiglu, (lambda x, ws: gemv_swiglu(x, *ws)), reference, "linear.gemv_swiglu"


def stacked_call(kind: str, cases: list[list], ns: tuple[int, ...]):
    """One library product over each case's weights stacked (made once here, outside the timing), then split into
    the case's outputs (``group``) or put through the SwiGLU as torch's call does (``swiglu``)."""
    import torch
    import torch.nn.functional as F

    stacked = {id(ws[0]): torch.cat(ws) for ws in cases}

    def call(x, ws):
        parts = F.linear(x, stacked[id(ws[0])]).split(ns, dim=-1)
        return list(parts) if kind == "group" else F.silu(parts[0]) * parts[1]

    return call


def deviation(got, want) -> float:
    """The largest deviation over the largest magnitude, over a case's outputs."""
    got, want = (got if isinstance(got, list) else [got]), (want if isinstance(want, list) else [want])
    return max(((g.float() - w).abs().max() / w.abs().max().clamp_min(1e-30)).item() for g, w in zip(got, want))


def bench_shape(name: str, k: int, ns: tuple[int, ...], m: int, args, hbm: float | None, kind: str = "linear"):
    """The rows of one case: ``kind`` "linear" (one weight ``[ns[0], k]``), "group" or "swiglu" (``FUSED``)."""
    import torch
    import torch.nn.functional as F
    from statex_hf.kernels import launch
    from statex_hf.kernels.linear import configs

    cuda = not args.tiny
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    n = sum(ns)
    weight_bytes = n * k * torch.finfo(dtype).bits // 8
    l2 = torch.cuda.get_device_properties(0).L2_cache_size if cuda else 0
    copies = min(MAX_COPIES, max(2, math.ceil(2 * l2 / weight_bytes)))
    cases = [[torch.randn(size, k, device=device).div_(math.sqrt(k)).to(dtype) for size in ns] for _ in range(copies)]
    x = torch.randn(m, k, device=device).to(dtype)
    torch_call, ours, reference, launch_name = products(kind)
    want = reference(x, cases[0]) if reference else [F.linear(x.float(), w.float()) for w in cases[0]]
    moved = weight_bytes + (m * k + m * n) * torch.finfo(dtype).bits // 8

    def row(impl: str, config: str, call) -> dict:
        with torch.no_grad():
            err = deviation(call(x, cases[0]), want)
            us = time_us(lambda: [call(x, ws) for ws in cases], copies, cuda, args.pdl, args.rep)
        tbps = moved / us / 1e6
        record = dict(shape=name, K=k, N=n, M=m, impl=impl, config=config, us=us, tbps=tbps, err=err)
        record["pct_hbm"] = 100 * tbps / hbm if hbm else None
        record["copies"], record["pdl"] = copies, args.pdl
        return record

    rows = []
    # At more rows, where the library would run a fused case's products apart: also one library call over the weights
    # stacked, the most grouping could save with the library's kernels.
    stacked_too = kind != "linear" and m > 1
    library_calls = [("-", torch_call)] + ([("cat", stacked_call(kind, cases, ns))] if stacked_too else [])
    libraries = ["cublaslt", "cublas"] if cuda else ["torch"]
    for library in libraries:
        default = torch.backends.cuda.preferred_blas_library() if cuda else None
        try:
            if cuda:
                torch.backends.cuda.preferred_blas_library(library)
            rows += [row(library, config, call) for config, call in library_calls]
        finally:
            if cuda:
                torch.backends.cuda.preferred_blas_library(default)
    sms = configs.multiprocessors(torch.device(device))
    if kind == "linear":
        picked = configs.pick(m, n, k, torch.device(device))
        splits_of = lambda base: {1, configs.split_k(base, m, n, k, sms)} | ({2} if args.tiny else set())  # noqa: E731
    else:  # the fused kernels take the table's tiles for their rows and never split K
        picked = configs.group_config(m, list(ns), torch.device(device))
        splits_of = lambda base: {1}  # noqa: E731
    tried = [("ours pick", picked)]
    for base in [] if args.pick_only else candidates(m):
        # --tiny's toy shapes never need a split: time one anyway, so the check covers that path.
        for splits in sorted(splits_of(base)):
            config = base.with_(SPLIT_K=splits)
            if config != picked:
                tried.append(("ours", config))
    for impl, config in tried:
        launch.OVERRIDES[launch_name] = config
        try:
            rows.append(row(impl, describe(config), ours))
        except Exception as error:  # a config this GPU cannot run is a row, not the end of the run
            rows.append(dict(shape=name, K=k, N=n, M=m, impl=impl, config=describe(config), error=str(error)[:200]))
        finally:
            launch.OVERRIDES.pop(launch_name, None)
    timed = [r for r in rows if "us" in r]
    best = min(timed, key=lambda r: r["us"])
    for r in rows:
        r["best"] = r is best
    cases.clear()  # the lambdas above hold the list: free the copies before the next shape
    if cuda:
        torch.cuda.empty_cache()
    return rows


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        head = f"{r['shape']:22} {r['K']:5d} {r['N']:6d} {r['M']:3d}  {r['impl']:9} {r['config']:30}"
        if "error" in r:
            print(f"{head} failed: {r['error']}")
            continue
        pct = f"{r['pct_hbm']:5.0f}" if r["pct_hbm"] is not None else "    -"
        mark = "*" if r["best"] else " "
        print(f"{head} {r['us']:9.2f} {r['tbps']:6.2f} {pct} {r['err']:8.1e} {mark}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ms", help=f"rows of x (default {MS}; with --tiny {TINY_MS})")
    parser.add_argument("--shapes", help="comma-separated substrings of the shape names to keep (default: all)")
    parser.add_argument("--json", help="write every row here")
    parser.add_argument("--tiny", action="store_true", help="toy shapes on CPU, Triton interpreter (a check)")
    parser.add_argument("--pick-only", action="store_true", help="time the library rows and the table's pick alone")
    parser.add_argument("--rep", type=int, default=50, help="milliseconds of replays per timing (default 50)")
    parser.add_argument("--pdl", action="store_true", help="capture with programmatic dependent launch (Hopper on)")
    args = parser.parse_args()
    if args.tiny and args.pdl:
        parser.error("--pdl needs a GPU (Hopper or later); --tiny runs on CPU")
    if args.tiny:  # before triton is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    ms = [int(m) for m in (args.ms or (TINY_MS if args.tiny else MS)).split(",")]
    kept = lambda name: not args.shapes or any(key in name for key in args.shapes.split(","))  # noqa: E731
    shapes = [(name, k, (n,), "linear") for name, k, n in SHAPES if kept(name)]
    fused = [case for case in FUSED if kept(case[0])]
    if args.tiny:
        hbm, device = None, "CPU (--tiny, Triton interpreter: not a measurement)"
        shapes, fused = ([tiny_case(*case) for case in cases] for cases in (shapes, fused))
    else:
        if not torch.cuda.is_available():
            print("bench_gemv.py: needs a CUDA GPU; use --tiny for a CPU check of the script", file=sys.stderr)
            sys.exit(2)
        from gpu_specs import describe as describe_gpu
        from gpu_specs import hbm_tbps
        from statex_hf.kernels.dependent_launch import supported

        if args.pdl and not supported(torch.device("cuda")):
            print("bench_gemv.py: --pdl: no PDL on this GPU or Triton (or STATEX_PDL=0)", file=sys.stderr)
            sys.exit(2)
        hbm, device = hbm_tbps(), describe_gpu()
        device += f", torch's default BLAS: {torch.backends.cuda.preferred_blas_library()}"
    if args.pdl:
        device += ", launched with PDL"
    print(f"y = x @ W.T, {'fp32' if args.tiny else 'bf16'}, {device}")
    header = f"{'shape':22} {'K':>5} {'N':>6} {'M':>3}  {'impl':9} {'config':30}"
    print(f"{header} {'us':>9} {'TB/s':>6} {'%HBM':>5} {'err':>8}")
    rows = []
    for m in ms:
        for name, k, ns, kind in fused + shapes:
            shape_rows = bench_shape(name, k, ns, m, args, hbm, kind)
            print_rows(shape_rows)
            rows += shape_rows
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"device": device, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
