"""Launch-config sweeps on one GPU: the GLA decode step, the gated RMSNorm, the chunked GLA and the SSD kernels.

    python benchmarks/sweep_launch_configs.py [--ops decode,norm,gla,ssd] [--json out.json]

Each kernel runs every config of a small grid at the shapes that matter: the decode step at GLA-1.3B's
layer (H4 256x512) and its StateX layer (H1 1024x2048), B = 1 / 16 / 64 (``--decode-batches``), and at
B = 1 the whole model's 24 decode kernels as one CUDA graph (``do_bench_cudagraph``, each layer its own
state, so they do not sit in L2), main's config beside the default and the fastest single-layer ones;
the norm at Mamba2-1.3B's width (D = 4096, one group), T = 16K / 64K. GB/s counts the bytes a kernel
must move once (decode: the fp32 state read and written; norm forward: x, z read and out written;
backward: x, z, dy read and dx, dz written), beside a device copy of the same bytes (read + write), the
ceiling. Times are ``triton.testing.do_bench`` medians (L2 flushed between runs), kernel time without the
host's launch.
The launchers' defaults (``step_config`` in ``kernels/gla/fused_recurrent.py``, the ``configs.py``
tables of ``kernels/norm``, ``kernels/gla`` and ``kernels/ssd``) are marked ``*``.

The chunked GLA kernels (``--ops gla``) are timed one by one on the intermediates of a real
forward+backward, at both GLA-1.3B head shapes, B = 1, T = 16K, bf16; each kernel's grid covers its
tiles, warps and pipeline stages. The SSD kernels (``--ops ssd``) likewise, on one Mamba2-1.3B layer
at N = 128 and 512, T = 16K. The few hundred configs are compiled first by ``--warm-procs`` processes
in parallel (into Triton's on-disk cache, on a short sequence) and then timed one at a time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

import torch
import triton
from statex_hf.kernels import launch
from statex_hf.kernels.launch import LaunchConfig
from triton.runtime.errors import OutOfResources

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its siblings, under python -P too
from bench_gla import SHAPES  # noqa: E402

NORM_D = 4096
DEVICE = torch.device("cuda")


def _bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _copy_gbps(nbytes: int) -> float:
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    return 2 * nbytes / (_bench(lambda: dst.copy_(src)) * 1e-3) / 1e9


def sweep_decode(rows: list[dict], batches: tuple[int, ...] = (1, 16, 64), warm_procs: int = 8) -> None:
    _warm_in_processes("decode", warm_procs)
    for B in sorted(batches):
        for name, (H, K, V) in SHAPES.items():
            _decode_case(rows, name, H, K, V, B)
        if B == 1:
            _decode_layers(rows)


def _step_grid(B: int, K: int, V: int) -> list[tuple[int, int, int, int]]:
    """(BK, BV, warps, stages) of the one-token kernel swept at batch B: 16 and 64 the 64 x 64 neighbourhood,
    B = 1 narrow slices with tiles up to the whole key dimension, pipelined (3 stages) where a slice takes
    several."""
    if B > 1:
        grid = itertools.product((32, 64, 128), (32, 64, 128), (2, 4, 8))
        return [(bk, bv, w, 1) for bk, bv, w in grid if bk * bv <= 8192 and bk <= K and bv <= V]
    grid = itertools.product((64, 256, 1024), (8, 16, 32), (4, 8, 16), (1, 3))
    return [(bk, bv, w, st) for bk, bv, w, st in grid if bk * bv <= 16384 and bk <= K and (K > bk or st == 1)]


def _warm_decode(part: int, parts: int) -> None:
    """Compiles this process's share of the one-token kernel's configs (both grids, both shapes)."""
    n = 0
    for H, K, V in SHAPES.values():
        q, k, v, g, o, h0 = _step_inputs(1, H, K, V)
        for config in dict.fromkeys(_step_grid(1, K, V) + _step_grid(16, K, V)):
            if n % parts == part:
                _step(q, k, v, g, o, h0, h0, config)
            n += 1
    torch.cuda.synchronize()


def _step(q, k, v, g, o, h0, ht, config: tuple[int, int, int, int]):
    """One launch of the one-token kernel with ``config`` (PDL as ``dependent_launch`` says), as
    ``fused_recurrent_gla`` launches it (a one-tile state read before the wait)."""
    from statex_hf.kernels.dependent_launch import pdl_kwargs
    from statex_hf.kernels.gla import fused_recurrent as fr

    (N, _, H, K), V = q.shape, v.shape[-1]
    BK, BV, warps, stages = config
    fr.fused_recurrent_gla_step_kernel[(triton.cdiv(V, BV), N * H)](
        q, k, v, g, o, h0, ht, K**-0.5, 1.0, 0.0, H=H, K=K, V=V, BK=BK, BV=BV, STAGES=stages,
        USE_INITIAL_STATE=True, STORE_FINAL_STATE=True, GATE_LOGITS=False, HAS_CLAMP=False, PREFETCH_STATE=K <= BK,
        num_warps=warps, **pdl_kwargs(),
    )  # fmt: skip


def _step_inputs(B: int, H: int, K: int, V: int):
    q, k, g = (torch.randn(B, 1, H, K, device="cuda", dtype=torch.bfloat16) * 0.1 for _ in range(3))
    v = torch.randn(B, 1, H, V, device="cuda", dtype=torch.bfloat16)
    return q, k, v, g.float().sigmoid().log().bfloat16(), torch.empty_like(v), torch.randn(B, H, K, V, device="cuda")


def _config_name(config: tuple[int, int, int, int]) -> str:
    BK, BV, warps, stages = config
    return f"BK={BK} BV={BV} warps={warps}" + (f" stages={stages}" if stages > 1 else "")


def _decode_case(rows: list[dict], name: str, H: int, K: int, V: int, B: int) -> None:
    from statex_hf.kernels.gla import fused_recurrent as fr

    q, k, v, g, o, h0 = _step_inputs(B, H, K, V)
    ht = torch.empty_like(h0)
    nbytes = 2 * h0.numel() * 4
    case = {"op": "decode", "shape": name, "B": B, "copy_gbps": _copy_gbps(nbytes // 2)}
    default = tuple(fr.step_config(B, H, K, V, h0.device))
    for config in sorted(_step_grid(B, K, V), key=lambda config: config != default):  # the default first
        ms = _bench(lambda config=config: _step(q, k, v, g, o, h0, ht, config))
        rows.append({**case, "config": _config_name(config), "default": config == default, "us": ms * 1e3,
                     "gbps": nbytes / (ms * 1e-3) / 1e9, "step_config": config})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)


# main's one-token config at B = 1 before the small-batch rule: 64 x 16 tiles, 4 warps, one tile in flight.
MAIN_B1_STEP = (64, 16, 4, 1)


def _decode_layers(rows: list[dict], top: int = 3) -> None:
    """StateX GLA-1.3B's 24 one-token kernels at B = 1 (20 H4 layers, 4 H1, each its own state, updated in
    place) as one CUDA graph, ``do_bench_cudagraph``: main's config, the default, and each pair of the
    ``top`` fastest single-layer configs of each shape, with and without PDL."""
    from statex_hf.kernels.dependent_launch import dependent_launches
    from statex_hf.kernels.gla import fused_recurrent as fr

    shapes = [SHAPES["H1 1024x2048"] if i % 6 == 0 else SHAPES["H4 256x512"] for i in range(24)]
    layers = [_step_inputs(1, H, K, V) for H, K, V in shapes]
    nbytes = sum(2 * layer[-1].numel() * 4 for layer in layers)
    b1 = sorted((r for r in rows if r["op"] == "decode" and r["B"] == 1), key=lambda r: r["us"])
    fastest = {name: [r["step_config"] for r in b1 if r["shape"] == name][:top] for name in SHAPES}
    rules = {"main (64x16, 4 warps)": {name: MAIN_B1_STEP for name in SHAPES}}
    rules["default *"] = {name: tuple(fr.step_config(1, *SHAPES[name], DEVICE)) for name in SHAPES}
    for h4, h1 in itertools.product(fastest["H4 256x512"], fastest["H1 1024x2048"]):
        rules.setdefault(f"H4 {_config_name(h4)}; H1 {_config_name(h1)}", {"H4 256x512": h4, "H1 1024x2048": h1})
    names = {shape: name for name, shape in SHAPES.items()}
    for (label, rule), pdl in itertools.product(rules.items(), (False, True)):

        def step(rule=rule):
            for (q, k, v, g, o, h), shape in zip(layers, shapes):
                _step(q, k, v, g, o, h, h, rule[names[shape]])

        with dependent_launches(DEVICE if pdl else torch.device("cpu")):
            ms = triton.testing.do_bench_cudagraph(step, return_mode="median")
        rows.append({"op": "decode_layers", "rule": label, "pdl": pdl, "us": ms * 1e3,
                     "gbps": nbytes / (ms * 1e-3) / 1e9})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)


def sweep_norm(rows: list[dict]) -> None:
    from statex_hf.kernels.norm import configs

    waves0 = configs.WAVES
    try:
        for T in (16384, 65536):
            default = (configs.norm_config("fwd", T, NORM_D, torch.device("cuda")), waves0)
            _norm_case(rows, T, default)
    finally:
        configs.WAVES = waves0
        launch.OVERRIDES.clear()


def _norm_case(rows: list[dict], T: int, default: tuple) -> None:
    from statex_hf.kernels.norm import configs
    from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm

    x, z, dy = (torch.randn(T, NORM_D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    w = torch.ones(NORM_D, device="cuda", dtype=torch.bfloat16)
    for t in (x, z, w):
        t.requires_grad_(True)
    unit = T * NORM_D * 2

    def fwd():
        with torch.no_grad():
            gated_rmsnorm(x, z, w, 1e-5, NORM_D)

    def fwd_bwd():
        gated_rmsnorm(x, z, w, 1e-5, NORM_D).backward(dy)

    case = {"op": "norm", "T": T, "copy_gbps": _copy_gbps(2 * unit)}
    for rows_per_tile, warps, waves in itertools.product((1, 2, 4), (4, 8, 16), (2, 4, 8)):
        cfg = LaunchConfig.of(warps, 3, BM=rows_per_tile, BS=NORM_D)
        launch.OVERRIDES.update({"norm.fwd": cfg, "norm.bwd": cfg})
        configs.WAVES = waves
        fwd_ms = _bench(fwd)
        bwd_ms = triton.testing.do_bench(fwd_bwd, grad_to_none=[x, z, w], return_mode="median") - fwd_ms
        rows.append({**case, "config": f"rows={rows_per_tile} warps={warps} waves={waves}",
                     "default": (cfg, waves) == default,
                     "fwd_us": fwd_ms * 1e3, "fwd_gbps": 3 * unit / (fwd_ms * 1e-3) / 1e9,
                     "bwd_us": bwd_ms * 1e3, "bwd_gbps": 5 * unit / (bwd_ms * 1e-3) / 1e9})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)


GLA_SWEEP_T = 16384


def gla_grid(kernel: str) -> list[LaunchConfig]:
    """The configs a chunked GLA kernel is swept over (the fp32 state tile or accumulators at most
    8192 elements: 64 registers a thread at 4 warps)."""
    sizes = (32, 64, 128)
    if kernel == "cumsum":
        return [LaunchConfig.of(w, 3, BK=bk) for bk in sizes for w in (2, 4, 8)]
    if kernel in ("fwd_A", "bwd_intra"):
        return [LaunchConfig.of(w, s, BK=bk) for bk in sizes for w in (4, 8) for s in (1, 2)]
    if kernel == "bwd_dA":
        return [LaunchConfig.of(w, s, BV=bv) for bv in sizes for w in (4, 8) for s in (2, 3)]
    tiles = [(bk, bv) for bk in sizes for bv in sizes if bk * bv <= 8192]
    stages = (1, 2, 3) if kernel in ("fwd_h", "bwd_dh") else (2, 3)
    return [LaunchConfig.of(w, s, BK=bk, BV=bv) for bk, bv in tiles for w in (4, 8) for s in stages]


def _gla_calls(H: int, K: int, V: int, T: int) -> dict:
    """Each chunked GLA kernel's launcher as a closure over the intermediates of one fwd+bwd."""
    from bench_gla import _inputs
    from statex_hf.kernels.gla import chunk_cumsum, chunk_h, chunk_intra, chunk_o
    from statex_hf.kernels.gla.chunk import CHUNK_SIZE as BT
    from statex_hf.kernels.gla.chunk_utils import prepare_chunk_layout

    q, k, v, gk = _inputs(1, T, H, K, V, requires_grad=False)
    do = torch.randn_like(v)
    scale = K**-0.5
    lay = prepare_chunk_layout(1, T, BT, None, q.device)
    g, qg, kg = chunk_cumsum.chunk_local_cumsum(q, k, gk, lay, BT, scale)
    h, _ = chunk_h.chunk_gla_fwd_h(kg, v, g, lay, BT, None, False)
    A = chunk_intra.chunk_gla_fwd_intra(q, k, g, lay, BT, scale)
    dh, _ = chunk_h.chunk_gla_bwd_dh(qg, g, do, lay, BT, None, False)
    dA = chunk_o.chunk_gla_bwd_dA(v, do, lay, BT, scale)
    dq_i, dk_i = chunk_intra.chunk_gla_bwd_intra(q, k, g, dA, lay, BT)
    return {
        "cumsum": lambda: chunk_cumsum.chunk_local_cumsum(q, k, gk, lay, BT, scale),
        "fwd_h": lambda: chunk_h.chunk_gla_fwd_h(kg, v, g, lay, BT, None, False),
        "fwd_A": lambda: chunk_intra.chunk_gla_fwd_intra(q, k, g, lay, BT, scale),
        "fwd_o": lambda: chunk_o.chunk_gla_fwd_o(qg, v, h, A, lay, BT),
        "bwd_dh": lambda: chunk_h.chunk_gla_bwd_dh(qg, g, do, lay, BT, None, False),
        "bwd_dA": lambda: chunk_o.chunk_gla_bwd_dA(v, do, lay, BT, scale),
        "bwd_dv": lambda: chunk_o.chunk_gla_bwd_dv(kg, A, do, dh, lay, BT),
        "bwd_intra": lambda: chunk_intra.chunk_gla_bwd_intra(q, k, g, dA, lay, BT),
        "bwd_dqk": lambda: chunk_o.chunk_gla_bwd_dqk(q, k, v, g, h, do, dh, dq_i, dk_i, lay, BT, scale, gk.dtype),
    }


def _gla_shapes(T: int):
    """(shape, the kernels' calls, kernel -> its default config) per GLA head shape."""
    from statex_hf.kernels.gla.chunk import CHUNK_SIZE as BT
    from statex_hf.kernels.gla.configs import gla_config

    for name, (H, K, V) in SHAPES.items():
        yield name, _gla_calls(H, K, V, T), lambda kernel, K=K, V=V, H=H: gla_config(kernel, K, V, BT, H, DEVICE)


def _cases(op: str, shapes, grid, part: int = 0, parts: int = 1):
    """(shape, kernel, config, is_default, call) for every swept config of ``op`` (``launch.OVERRIDES``
    holds the config while the caller has it); ``part`` of ``parts`` of them."""
    n = 0
    for shape, calls, default_of in shapes:
        for kernel, call in calls.items():
            default = default_of(kernel)
            for config in grid(kernel):
                if n % parts == part:
                    launch.OVERRIDES[f"{op}.{kernel}"] = config
                    try:
                        yield shape, kernel, config, config == default, call
                    finally:
                        launch.OVERRIDES.clear()
                n += 1
        del calls
        torch.cuda.empty_cache()


def warm(op: str, part: int, parts: int) -> None:
    """Compiles this process's share of ``op``'s configs (Triton keeps them on disk for the timing run)."""
    if op == "decode":
        return _warm_decode(part, parts)
    for *_, call in SWEPT[op](WARM_T[op], part, parts):
        try:
            call()
        except OutOfResources:
            pass  # the timing run skips it too
    torch.cuda.synchronize()


def _warm_in_processes(op: str, warm_procs: int) -> None:
    """Compiles ``op``'s configs in ``warm_procs`` processes at once (into Triton's on-disk cache)."""
    cmd = [sys.executable, __file__, "--warm", op]
    procs = [subprocess.Popen([*cmd, str(i), str(warm_procs)]) for i in range(warm_procs)]
    if any([p.wait() for p in procs]):  # a list: wait for every process before raising
        raise RuntimeError(f"sweep_launch_configs: a {op} warm-up process failed (its traceback is above)")


def sweep_kernels(rows: list[dict], op: str, warm_procs: int) -> None:
    """Compiles ``op``'s configs in ``warm_procs`` processes at once, then times each config alone."""
    _warm_in_processes(op, warm_procs)
    for shape, kernel, config, is_default, call in SWEPT[op](SWEEP_T[op]):
        try:
            us = triton.testing.do_bench(call, warmup=10, rep=REP_MS[op], return_mode="median") * 1e3
        except OutOfResources:
            print(f"{shape} {kernel} {config}: needs more shared memory than this GPU has, skipped", flush=True)
            continue
        config_json = json.dumps({"tiles": dict(config.tiles), "num_warps": config.num_warps,
                                  "num_stages": config.num_stages})  # fmt: skip
        rows.append({"op": op, "shape": shape, "kernel": kernel, "config": repr(config), "default": is_default,
                     "us": us, "config_json": config_json})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)


SSD_SWEEP_T = 16384
SSD_SWEEP_NS = (128, 512)


def ssd_grid(kernel: str) -> list[LaunchConfig]:
    """The configs an SSD kernel is swept over (the state kernels: step length BL, state tile, warps and
    stages; the others: their row tiles and warps)."""
    if kernel in ("state_fwd", "state_bwd"):
        grid = [LaunchConfig.of(w, 3, BL=bl, BP=bp, BN=64) for bl in (32, 64, 128) for bp in (64, 32) for w in (4, 8)]
        extra = [(4, 2, 256, 64, 64), (4, 2, 256, 32, 64), (8, 2, 256, 64, 64), (8, 2, 64, 64, 64), (8, 3, 64, 64, 128)]
        return grid + [LaunchConfig.of(w, s, BL=bl, BP=bp, BN=bn) for w, s, bl, bp, bn in extra]
    if kernel in ("scan_fwd", "scan_bwd_dx"):
        rows, other = ("BT", "BS") if kernel == "scan_fwd" else ("BS", "BT")
        bp = {"BP": 64} if kernel == "scan_fwd" else {}
        grid = [
            LaunchConfig.of(w, 2, **{rows: r, other: o, **bp, "BN": 64})
            for r in (64, 128, 256)
            for o in (32, 64)
            for w in (4, 8)
        ]
        extra = [(8, 2, 128, 64, 128), (4, 3, 64, 64, 64), (8, 3, 128, 32, 64)]
        return grid + [LaunchConfig.of(w, s, **{rows: r, other: o, **bp, "BN": bn}) for w, s, r, o, bn in extra]
    if kernel in ("dc", "db"):
        rows, other = ("BT", "BS") if kernel == "dc" else ("BS", "BT")
        return [
            LaunchConfig.of(w, 2, **{rows: r, other: o, "BN": 64})
            for r in (32, 64, 128)
            for o in (32, 64)
            for w in (4, 8)
        ]
    if kernel == "dcb":
        return [LaunchConfig.of(w, 2, BLK=blk) for blk in (32, 64, 128) for w in (4, 8)]
    if kernel in ("cumsum", "cumsum_bwd"):  # no loop to pipeline: heads per program and warps
        return [LaunchConfig.of(w, 1, BH=bh) for bh in (2, 4, 8, 16, 32) for w in (1, 2, 4, 8)]
    return []


def pick_ssd(rows: list[dict], path: str) -> None:
    """Writes, per SSD kernel, the swept config with the least total time over the swept shapes (JSON:
    kernel -> {"tiles", "num_warps", "num_stages"}), for ``bench_ssd.py --configs``."""
    totals: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if r["op"] == "ssd":
            totals.setdefault(r["kernel"], {}).setdefault(r["config_json"], []).append(r["us"])
    shapes = len(SSD_SWEEP_NS)
    picks = {
        kernel: json.loads(min((c for c, us in configs.items() if len(us) == shapes), key=lambda c: sum(configs[c])))
        for kernel, configs in totals.items()
    }
    with open(path, "w") as f:
        json.dump(picks, f, indent=1)
    print(f"picked: {json.dumps(picks)}", flush=True)


def _ssd_calls(N: int, T: int) -> dict:
    """Each SSD kernel's launcher as a closure over the intermediates of one fwd+bwd (no documents)."""
    from bench_ssd import CHUNK as L
    from bench_ssd import make_inputs
    from statex_hf.kernels.ssd import ssd_bmm, ssd_chunk_bc_bwd, ssd_chunk_cumsum, ssd_chunk_scan, ssd_chunk_state

    i = make_inputs(T, N, torch.bfloat16)
    x, dt, A, B, C, D = i["x"], i["dt"], i["A"], i["B"], i["C"], i["D"]
    dt_args = (i["dt_bias"], True, (0.0, float("inf")))
    dtp, Acs, _ = ssd_chunk_cumsum.chunk_cumsum_fwd(dt, A, *dt_args, L)
    dy = torch.randn_like(x)
    CB = ssd_bmm.bmm_chunk_fwd(C, B, None, L)
    hs, _ = ssd_chunk_state.chunk_state_fwd(x, B, dtp, Acs, None, None, L, False)
    dCB, dyy_intra, xdx_intra = ssd_chunk_bc_bwd.chunk_dcb(x, dy, dtp, Acs, None, CB, L)
    _, dyy_inter = ssd_chunk_bc_bwd.chunk_dc(dy, B, C, dCB, Acs, None, hs, L)
    dhs, _, r = ssd_chunk_state.chunk_state_bwd(dy, C, Acs, None, None, hs, L, False)
    _, ddt, xdx_state, dD_parts = ssd_chunk_scan.chunk_scan_bwd_dx(x, B, CB, dtp, Acs, None, dhs, D, dy, L)
    # As chunk.py passes them: the dy . y and x . dx parts summed as soon as they are made (one part each).
    dyy_intra, xdx_intra, dyy_inter = (t.sum(-1, keepdim=True) for t in (dyy_intra, xdx_intra, dyy_inter))
    decay_grads = (ddt, dyy_intra, xdx_intra, dyy_inter, xdx_state, r, dD_parts)
    return {
        "cumsum": lambda: ssd_chunk_cumsum.chunk_cumsum_fwd(dt, A, *dt_args, L, keep_dt=True),
        "state_fwd": lambda: ssd_chunk_state.chunk_state_fwd(x, B, dtp, Acs, None, None, L, False),
        "scan_fwd": lambda: ssd_chunk_scan.chunk_scan_fwd(x, C, CB, dtp, Acs, None, hs, D, L),
        "dcb": lambda: ssd_chunk_bc_bwd.chunk_dcb(x, dy, dtp, Acs, None, CB, L),
        "dc": lambda: ssd_chunk_bc_bwd.chunk_dc(dy, B, C, dCB, Acs, None, hs, L),
        "state_bwd": lambda: ssd_chunk_state.chunk_state_bwd(dy, C, Acs, None, None, hs, L, False),
        "db": lambda: ssd_chunk_bc_bwd.chunk_db(x, C, dCB, dtp, Acs, None, dhs, L),
        "scan_bwd_dx": lambda: ssd_chunk_scan.chunk_scan_bwd_dx(x, B, CB, dtp, Acs, None, dhs, D, dy, L),
        "cumsum_bwd": lambda: ssd_chunk_cumsum.chunk_cumsum_bwd(dt, A, *dt_args, *decay_grads, L),
    }


def _ssd_shapes(T: int):
    """(shape, the kernels' calls, kernel -> its default config) per swept state size N."""
    from bench_ssd import CHUNK as L
    from bench_ssd import H, P
    from statex_hf.kernels.ssd.configs import ssd_config

    for N in SSD_SWEEP_NS:
        yield f"N{N}", _ssd_calls(N, T), lambda kernel, N=N: ssd_config(kernel, L, P, N, H, DEVICE, heads=H)


SWEPT = {
    "gla": lambda T, part=0, parts=1: _cases("gla", _gla_shapes(T), gla_grid, part, parts),
    "ssd": lambda T, part=0, parts=1: _cases("ssd", _ssd_shapes(T), ssd_grid, part, parts),
}
SWEEP_T = {"gla": GLA_SWEEP_T, "ssd": SSD_SWEEP_T}
WARM_T = {"gla": 256, "ssd": 1024}  # compiling needs a short sequence only
REP_MS = {"gla": 100, "ssd": 40}


def print_tables(rows: list[dict]) -> None:
    print(f"\n{torch.cuda.get_device_name()}")
    decode = sorted((r for r in rows if r["op"] == "decode"), key=lambda r: (r["shape"], r["B"], r["us"]))
    if decode:
        print("\nGLA decode step, one token, fp32 state in and out")
        print(f"{'shape':<14} {'B':>3} {'config':<33} {'us':>8} {'GB/s':>6} {'copy GB/s':>9}")
    for r in decode:
        mark = "*" if r["default"] else " "
        print(f"{r['shape']:<14} {r['B']:>3} {mark}{r['config']:<32} {r['us']:>8.1f} {r['gbps']:>6.0f} "
              f"{r['copy_gbps']:>9.0f}")  # fmt: skip
    layers = sorted((r for r in rows if r["op"] == "decode_layers"), key=lambda r: (r["pdl"], r["us"]))
    if layers:
        print("\nStateX GLA-1.3B's 24 one-token kernels at B = 1 as one CUDA graph (fp32 state in place)")
        print(f"{'PDL':<4} {'rule':<64} {'us':>8} {'GB/s':>6}")
    for r in layers:
        print(f"{'on' if r['pdl'] else 'off':<4} {r['rule']:<64} {r['us']:>8.1f} {r['gbps']:>6.0f}")
    norm = sorted((r for r in rows if r["op"] == "norm"), key=lambda r: (r["T"], r["fwd_us"] + r["bwd_us"]))
    if norm:
        print(f"\nGated RMSNorm, D = {NORM_D}, one group, bf16")
        print(f"{'T':>6} {'config':<26} {'fwd us':>8} {'GB/s':>6} {'bwd us':>8} {'GB/s':>6} {'copy GB/s':>9}")
    for r in norm:
        mark = "*" if r["default"] else " "
        print(f"{r['T']:>6} {mark}{r['config']:<25} {r['fwd_us']:>8.1f} {r['fwd_gbps']:>6.0f} {r['bwd_us']:>8.1f} "
              f"{r['bwd_gbps']:>6.0f} {r['copy_gbps']:>9.0f}")  # fmt: skip
    for op, title in (
        ("gla", f"Chunked GLA kernels, B = 1, T = {GLA_SWEEP_T}, bf16"),
        ("ssd", f"SSD kernels, one Mamba2-1.3B layer (H = 64, P = 64), B = 1, T = {SSD_SWEEP_T}, chunk 256, bf16"),
    ):
        print_kernel_table([r for r in rows if r["op"] == op], title)


def print_kernel_table(rows: list[dict], title: str) -> None:
    """The 5 fastest configs of each (shape, kernel) and the default, with the time relative to it."""
    if not rows:
        return
    print(f"\n{title}: the 5 fastest configs of each kernel and the default (*)")
    print(f"{'shape':<14} {'kernel':<12} {'config':<52} {'us':>9} {'vs default':>10}")
    for (shape, kernel), group in itertools.groupby(rows, key=lambda r: (r["shape"], r["kernel"])):
        group = sorted(group, key=lambda r: r["us"])
        base = next((r["us"] for r in group if r["default"]), float("nan"))
        for r in [r for i, r in enumerate(group) if i < 5 or r["default"]]:
            mark = "*" if r["default"] else " "
            config = r["config"].removeprefix("LaunchConfig(").removesuffix(")")
            print(f"{shape:<14} {kernel:<12} {config:<52} {mark}{r['us']:>8.1f} {r['us'] / base:>7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default="decode,norm,gla", help="which sweeps: decode, norm, gla, ssd")
    parser.add_argument("--decode-batches", default="1,16,64", help="batch sizes of the decode sweep")
    parser.add_argument("--warm-procs", type=int, default=8, help="processes compiling the configs first")
    parser.add_argument("--json", help="also write every row here")
    parser.add_argument("--pick-ssd", help="write the fastest SSD config of each kernel here (JSON)")
    parser.add_argument("--warm", nargs=3, metavar=("OP", "PART", "PARTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warm:
        return warm(args.warm[0], int(args.warm[1]), int(args.warm[2]))
    rows: list[dict] = []
    sweeps = {
        "decode": lambda rows: sweep_decode(
            rows, tuple(int(b) for b in args.decode_batches.split(",")), args.warm_procs
        ),
        "norm": sweep_norm,
        "gla": lambda rows: sweep_kernels(rows, "gla", args.warm_procs),
        "ssd": lambda rows: sweep_kernels(rows, "ssd", args.warm_procs),
    }
    unknown = set(args.ops.split(",")) - set(sweeps)
    if unknown:
        parser.error(f"unknown --ops {sorted(unknown)}; choose from {sorted(sweeps)}")
    for op in args.ops.split(","):
        sweeps[op](rows)
    print_tables(rows)
    if args.pick_ssd:
        pick_ssd(rows, args.pick_ssd)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
