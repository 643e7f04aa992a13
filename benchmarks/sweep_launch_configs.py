"""Launch-config sweeps for the two memory-bound kernels, on one GPU: the GLA decode step and the gated RMSNorm.

    python benchmarks/sweep_launch_configs.py [--json out.json]

Each kernel runs every config of a small grid at the shapes that matter: the decode step at GLA-1.3B's
layer (H4 256x512) and its StateX layer (H1 1024x2048), B = 16 / 64; the norm at Mamba2-1.3B's width
(D = 4096, one group), T = 16K / 64K. GB/s counts the bytes a kernel must move once (decode: the fp32
state read and written; norm forward: x, z read and out written; backward: x, z, dy read and dx, dz
written), beside a device copy of the same bytes (read + write), the ceiling. Times are
``triton.testing.do_bench`` medians (L2 flushed between runs), kernel time without the host's launch.
The launchers' defaults (``step_config`` in ``kernels/gla/fused_recurrent.py``, ``_launch_config`` and
``_WAVES`` in ``kernels/norm/gated_rmsnorm_triton.py``) are marked ``*``.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import triton

DECODE_SHAPES = {"H4 256x512": (4, 256, 512), "H1 1024x2048": (1, 1024, 2048)}
NORM_D = 4096


def _bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _copy_gbps(nbytes: int) -> float:
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    return 2 * nbytes / (_bench(lambda: dst.copy_(src)) * 1e-3) / 1e9


def sweep_decode(rows: list[dict]) -> None:
    for (name, (H, K, V)), B in itertools.product(DECODE_SHAPES.items(), (16, 64)):
        _decode_case(rows, name, H, K, V, B)


def _decode_case(rows: list[dict], name: str, H: int, K: int, V: int, B: int) -> None:
    from statex_hf.kernels.gla import fused_recurrent as fr

    q, k, g = (torch.randn(B, 1, H, K, device="cuda", dtype=torch.bfloat16) * 0.1 for _ in range(3))
    v = torch.randn(B, 1, H, V, device="cuda", dtype=torch.bfloat16)
    h0 = torch.randn(B, H, K, V, device="cuda") * 0.1
    ht, o = torch.empty_like(h0), torch.empty_like(v)
    nbytes = 2 * h0.numel() * 4
    case = {"op": "decode", "shape": name, "B": B, "copy_gbps": _copy_gbps(nbytes // 2)}
    default = fr.step_config(B, H, K, V, h0.device)
    for BK, BV, warps in itertools.product((32, 64, 128), (32, 64, 128), (2, 4, 8)):
        if BK * BV > 8192 or BK > K or BV > V:
            continue

        def step(BK=BK, BV=BV, warps=warps):
            fr.fused_recurrent_gla_step_kernel[(triton.cdiv(V, BV), B * H)](
                q, k, v, g, o, h0, ht, K**-0.5, H=H, K=K, V=V, BK=BK, BV=BV,
                USE_INITIAL_STATE=True, STORE_FINAL_STATE=True, num_warps=warps,
            )  # fmt: skip

        ms = _bench(step)
        rows.append({**case, "config": f"BK={BK} BV={BV} warps={warps}", "default": (BK, BV, warps) == default,
                     "us": ms * 1e3, "gbps": nbytes / (ms * 1e-3) / 1e9})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)


def sweep_norm(rows: list[dict]) -> None:
    from statex_hf.kernels.norm import gated_rmsnorm_triton as gn

    launch, waves0 = gn._launch_config, gn._WAVES
    try:
        for T in (16384, 65536):
            _norm_case(rows, gn, T, launch(T, NORM_D), waves0)
    finally:
        gn._launch_config, gn._WAVES = launch, waves0


def _norm_case(rows: list[dict], gn, T: int, default: tuple, default_waves: int) -> None:
    x, z, dy = (torch.randn(T, NORM_D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    w = torch.ones(NORM_D, device="cuda", dtype=torch.bfloat16)
    for t in (x, z, w):
        t.requires_grad_(True)
    unit = T * NORM_D * 2

    def fwd():
        with torch.no_grad():
            gn.gated_rmsnorm_triton(x, z, w, 1e-5, NORM_D)

    def fwd_bwd():
        gn.gated_rmsnorm_triton(x, z, w, 1e-5, NORM_D).backward(dy)

    case = {"op": "norm", "T": T, "copy_gbps": _copy_gbps(2 * unit)}
    for rows_per_tile, warps, waves in itertools.product((1, 2, 4), (4, 8, 16), (2, 4, 8)):
        cfg = (rows_per_tile, NORM_D, 1, warps)
        gn._launch_config, gn._WAVES = (lambda M, S, cfg=cfg: cfg), waves
        fwd_ms = _bench(fwd)
        bwd_ms = triton.testing.do_bench(fwd_bwd, grad_to_none=[x, z, w], return_mode="median") - fwd_ms
        rows.append({**case, "config": f"rows={rows_per_tile} warps={warps} waves={waves}",
                     "default": cfg == default and waves == default_waves,
                     "fwd_us": fwd_ms * 1e3, "fwd_gbps": 3 * unit / (fwd_ms * 1e-3) / 1e9,
                     "bwd_us": bwd_ms * 1e3, "bwd_gbps": 5 * unit / (bwd_ms * 1e-3) / 1e9})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)


def print_tables(rows: list[dict]) -> None:
    print(f"\nGLA decode step, one token, fp32 state in and out, {torch.cuda.get_device_name()}")
    print(f"{'shape':<14} {'B':>3} {'config':<24} {'us':>8} {'GB/s':>6} {'copy GB/s':>9}")
    for r in sorted((r for r in rows if r["op"] == "decode"), key=lambda r: (r["shape"], r["B"], r["us"])):
        mark = "*" if r["default"] else " "
        print(f"{r['shape']:<14} {r['B']:>3} {mark}{r['config']:<23} {r['us']:>8.1f} {r['gbps']:>6.0f} "
              f"{r['copy_gbps']:>9.0f}")  # fmt: skip
    print(f"\nGated RMSNorm, D = {NORM_D}, one group, bf16")
    print(f"{'T':>6} {'config':<26} {'fwd us':>8} {'GB/s':>6} {'bwd us':>8} {'GB/s':>6} {'copy GB/s':>9}")
    for r in sorted((r for r in rows if r["op"] == "norm"), key=lambda r: (r["T"], r["fwd_us"] + r["bwd_us"])):
        mark = "*" if r["default"] else " "
        print(f"{r['T']:>6} {mark}{r['config']:<25} {r['fwd_us']:>8.1f} {r['fwd_gbps']:>6.0f} {r['bwd_us']:>8.1f} "
              f"{r['bwd_gbps']:>6.0f} {r['copy_gbps']:>9.0f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write every row here")
    args = parser.parse_args()
    rows: list[dict] = []
    sweep_decode(rows)
    sweep_norm(rows)
    print_tables(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
