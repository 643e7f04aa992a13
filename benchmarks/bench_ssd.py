"""Mamba2 SSD on one GPU: ours (Triton) vs mamba_ssm's Triton ``mamba_chunk_scan_combined`` vs
transformers' PyTorch ``mamba2_chunk_scan``, one Mamba2-1.3B layer (H=64, P=64, G=1, bf16, B=1),
N = 128 and 512, T = 4K / 16K / 64K; then the decode step at B = 1 / 16 / 64, the conv1d, and the
gated RMSNorm that ends the mixer (PyTorch reference, our Triton kernel, mamba_ssm's).

Each (implementation, N) runs in a fresh process with an empty Triton cache, so "first call" is
compile + autotune + run, and an out-of-memory stays in its own process. One table at the end.
``--peer-warm-procs K`` compiles mamba_ssm's autotuning configs first in K processes at once (each a
share of every kernel's configs) into one Triton cache that its timing processes then use: the same
autotuning, minutes sooner, but no cold first call for the peer. ``--profile-ts`` adds a kernel-by-kernel
profile (``torch.profiler``) of each implementation's forward and forward+backward.

    python benchmarks/bench_ssd.py                     # everything (mamba_ssm from MAMBA_SSM_SRC)
    python benchmarks/bench_ssd.py --impls ours --ns 512
    python benchmarks/bench_ssd.py --impls ours,ours_recompute   # chunk states kept for the backward vs recomputed
    python benchmarks/bench_ssd.py --impls ours,mamba_ssm --peer-warm-procs 12 --profile-ts 16384,65536
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its siblings, under python -P too
from gpu_specs import describe, hbm_tbps  # noqa: E402

H, P, G = 64, 64, 1
CHUNK = 256
NORM_D = H * P  # Mamba2-1.3B's intermediate size (4096): the gated RMSNorm's width, one group


def load_mamba_ssm():
    """mamba_ssm's Triton SSD without its package __init__ (which imports CUDA extensions)."""
    src = os.environ.get("MAMBA_SSM_SRC")
    if not src:
        raise RuntimeError("set MAMBA_SSM_SRC to the extracted mamba_ssm sdist folder")
    for name, path in [("mamba_ssm", "mamba_ssm"), ("mamba_ssm.ops", "mamba_ssm/ops")]:
        mod = types.ModuleType(name)
        mod.__path__ = [os.path.join(src, path)]
        sys.modules[name] = mod
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined, selective_state_update


def mamba_ssm_gated_norm():
    """mamba_ssm's fused gated RMSNorm, in our call signature (Mamba2 gates before the norm)."""
    load_mamba_ssm()
    from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn

    return lambda x, gate, weight, eps, group_size: rmsnorm_fn(
        x, weight, None, z=gate, eps=eps, group_size=group_size, norm_before_gate=False
    )


def make_inputs(T, N, dtype, device="cuda"):
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    return {
        "x": torch.randn(1, T, H, P, device=device, generator=g).to(dtype),
        "dt": (torch.randn(1, T, H, device=device, generator=g) * 0.5 - 1).to(dtype),
        "A": -torch.exp(torch.rand(H, device=device, generator=g) * 2.5),
        "B": (torch.randn(1, T, G, N, device=device, generator=g) * N**-0.5).to(dtype),
        "C": torch.randn(1, T, G, N, device=device, generator=g).to(dtype),
        "D": torch.randn(H, device=device, generator=g),
        "dt_bias": torch.randn(H, device=device, generator=g) * 0.5,
    }


def use_configs(path):
    """Launches our SSD kernels with the configs in ``path`` (``sweep_launch_configs.py --pick-ssd``)."""
    from statex_hf.kernels import launch
    from statex_hf.kernels.launch import LaunchConfig

    with open(path) as f:
        picks = json.load(f)
    for kernel, c in picks.items():
        launch.OVERRIDES[f"ssd.{kernel}"] = LaunchConfig.of(c["num_warps"], c["num_stages"], **c["tiles"])
    return picks


def configs_rel_err(run, T, N):
    """Largest relative error of y and every gradient, the configs in use against the tables' defaults."""
    import torch
    from statex_hf.kernels import launch

    inputs = make_inputs(T, N, torch.bfloat16)
    dy = torch.randn(1, T, H, P, device="cuda", dtype=torch.bfloat16)
    results = []
    for overrides in (dict(launch.OVERRIDES), {}):
        saved, launch.OVERRIDES = launch.OVERRIDES, overrides
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        y = run(leaves)
        y.backward(dy)
        results.append([y, *(v.grad for v in leaves.values())])
        launch.OVERRIDES = saved
    return max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(*results))


def scan_fn(impl):
    if impl in ("ours", "ours_recompute"):
        from statex_hf.kernels import utils
        from statex_hf.kernels.ssd.chunk import chunk_ssd

        if impl == "ours_recompute":  # the backward recomputes the chunk states at every T (as mamba_ssm)
            utils.KEEP_STATES_MAX_BYTES = 0

        def run(i):
            return chunk_ssd(i["x"], i["dt"], i["A"], i["B"], i["C"], i["D"], i["dt_bias"], True, chunk_size=CHUNK)[0]

    elif impl == "mamba_ssm":
        combined, _ = load_mamba_ssm()

        def run(i):
            return combined(
                i["x"], i["dt"], i["A"], i["B"], i["C"], CHUNK, D=i["D"], dt_bias=i["dt_bias"], dt_softplus=True
            )

    else:
        from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan

        def run(i):
            return mamba2_chunk_scan(
                i["x"], i["dt"], i["A"], i["B"], i["C"], CHUNK, D=i["D"], dt_bias=i["dt_bias"], dt_softplus=True
            )

    return run


def measure_scan(run, T, N, rec, with_first):
    import torch
    import triton

    inputs = make_inputs(T, N, torch.bfloat16)
    leaves = {k: v.requires_grad_() for k, v in inputs.items()}
    dy = torch.randn(1, T, H, P, device="cuda", dtype=torch.bfloat16)

    def fwd():
        with torch.no_grad():
            return run(leaves)

    def fwd_bwd():
        run(leaves).backward(dy)

    if with_first:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fwd_bwd()
        torch.cuda.synchronize()
        rec["first_s"] = time.perf_counter() - t0
    for v in leaves.values():
        v.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fwd_bwd()
    torch.cuda.synchronize()
    rec["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    rec["act_gb"] = (torch.cuda.max_memory_allocated() - base) / 1e9
    rec["inputs_gb"] = base / 1e9
    for v in leaves.values():
        v.grad = None
    rec["fwd_ms"] = triton.testing.do_bench(fwd, warmup=25, rep=200, return_mode="median")
    rec["fwdbwd_ms"] = triton.testing.do_bench(
        fwd_bwd, warmup=25, rep=300, grad_to_none=list(leaves.values()), return_mode="median"
    )


def child_scan(impl, N, Ts, profile_Ts=(), warm_cache=False, configs=None):
    """One process: first call at the first T, then fwd ms, fwd+bwd ms, peak GB per T, then the kernel
    profiles at ``profile_Ts`` (JSON lines). ``warm_cache``: the Triton cache was filled beforehand;
    ``configs``: ours runs with these launch configs (checked against the defaults' results)."""
    import torch

    run = scan_fn(impl)
    picks = use_configs(configs) if configs and impl.startswith("ours") else None
    for k, T in enumerate(Ts):
        rec = {"impl": impl, "N": N, "T": T}
        if k == 0 and warm_cache:
            rec["first_cache"] = "warm"
        if k == 0 and picks:
            rec["configs"] = picks
        try:
            measure_scan(run, T, N, rec, with_first=k == 0)
        except torch.OutOfMemoryError as e:
            rec["oom"] = str(e).split(".")[0][:120]
        print("RESULT " + json.dumps(rec), flush=True)
        torch.cuda.empty_cache()
        if "oom" in rec:
            break  # longer sequences only need more
    if picks:
        err = configs_rel_err(run, Ts[0], N)
        print("RESULT " + json.dumps({"impl": impl, "N": N, "configs_vs_defaults_rel_err": err}), flush=True)
    for T in profile_Ts:
        profile_scan(run, impl, N, T)
        torch.cuda.empty_cache()


def profile_scan(run, impl, N, T):
    import torch
    from torch.profiler import ProfilerActivity, profile

    leaves = {k: v.requires_grad_() for k, v in make_inputs(T, N, torch.bfloat16).items()}
    dy = torch.randn(1, T, H, P, device="cuda", dtype=torch.bfloat16)

    def fwd():
        with torch.no_grad():
            run(leaves)

    def fwd_bwd():
        run(leaves).backward(dy)

    for phase, call in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        call()  # compiled and autotuned before the profile
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                call()
            torch.cuda.synchronize()
        kernels = sorted(
            ((e.key, e.self_device_time_total / 3e3, e.count // 3) for e in prof.key_averages()), key=lambda k: -k[1]
        )
        kernels = [k for k in kernels if k[1] > 0]
        rec = {"profile": phase, "impl": impl, "N": N, "T": T, "total_ms": sum(k[1] for k in kernels)}
        print("RESULT " + json.dumps({**rec, "kernels": kernels}), flush=True)
        for v in leaves.values():
            v.grad = None


def child_warm_peer(part, parts, Ns, Ts):
    """Compiles this process's share (every ``parts``-th config, from ``part``) of each of mamba_ssm's
    autotuned kernels, forward and backward, at every N, into the shared Triton cache."""
    import torch
    from triton.runtime import autotuner

    prune = autotuner.Autotuner.prune_configs

    def share(self, kwargs):
        configs = prune(self, kwargs)
        return configs[part % len(configs) :: parts]

    autotuner.Autotuner.prune_configs = share
    run = scan_fn("mamba_ssm")
    for N in Ns:
        inputs = make_inputs(Ts[0], N, torch.bfloat16)
        leaves = {k: v.requires_grad_() for k, v in inputs.items()}
        run(leaves).backward(torch.randn(1, Ts[0], H, P, device="cuda", dtype=torch.bfloat16))
    torch.cuda.synchronize()


def warm_peer(procs, Ns, cache):
    """Fills ``cache`` with mamba_ssm's compiled autotuning configs, in ``procs`` processes at once."""
    env = dict(os.environ, TRITON_CACHE_DIR=cache, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    cmd = [sys.executable, __file__, "--child", "warm-peer", "--ns", ",".join(map(str, Ns)), "--ts", "4096"]
    running = [subprocess.Popen([*cmd, "--part", str(i), str(procs)], env=env) for i in range(procs)]
    failed = sum(p.wait() != 0 for p in running)
    print(f"mamba_ssm's configs compiled by {procs} processes in {time.perf_counter() - t0:.0f} s"
          f"{f'; {failed} failed' if failed else ''}", flush=True)  # fmt: skip


def decode_step(impl, b, N):
    """A zero-argument decode step at batch b (one token per sequence), state updated in place."""
    import torch

    i = make_inputs(b, N, torch.bfloat16)  # T plays the batch
    x, dt, B, C = i["x"][0], i["dt"][0], i["B"][0], i["C"][0]
    state = torch.randn(b, H, P, N, device="cuda")
    if impl == "ours":
        from statex_hf.kernels.ssd.state_update import ssd_state_update

        return lambda: ssd_state_update(state, x, dt, i["A"], B, C, i["D"], i["dt_bias"], True)
    _, mamba_upd = load_mamba_ssm()
    # mamba_ssm's kernel takes A, dt, D, dt_bias per head *and* channel: stride-0 views.
    A_full = i["A"][:, None, None].expand(H, P, N)
    dt_full = dt[:, :, None].expand(b, H, P)
    D_full = i["D"][:, None].expand(H, P)
    bias_full = i["dt_bias"][:, None].expand(H, P)
    return lambda: mamba_upd(state, x, dt_full, A_full, B, C, D_full, dt_bias=bias_full, dt_softplus=True)


def child_decode(impl, N, batches):
    import triton

    for b in batches:
        step = decode_step(impl, b, N)
        step()
        ms = triton.testing.do_bench(step, warmup=25, rep=200, return_mode="median")
        gbps = b * H * P * N * 4 * 2 / (ms * 1e-3) / 1e9
        print("RESULT " + json.dumps({"impl": impl, "N": N, "b": b, "us": ms * 1e3, "gbps": gbps}), flush=True)


def measure_op(run, leaves, dy, rec):
    """fwd ms, fwd+bwd ms and act GB of ``run()`` (one output, backward from ``dy``) into ``rec``.

    A first fwd+bwd compiles and allocates the grads, so act GB is what one call adds on top of them."""
    import torch
    import triton

    def fwd():
        with torch.no_grad():
            return run()

    def fwd_bwd():
        run().backward(dy)

    fwd_bwd()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fwd_bwd()
    torch.cuda.synchronize()
    rec["act_gb"] = (torch.cuda.max_memory_allocated() - base) / 1e9
    rec["fwdbwd_ms"] = triton.testing.do_bench(fwd_bwd, grad_to_none=leaves, return_mode="median")
    rec["fwd_ms"] = triton.testing.do_bench(fwd, return_mode="median")


def measure_conv(fn, T, D, rec):
    import torch

    x = torch.randn(1, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(D, 4, device="cuda", requires_grad=True)
    bias = torch.randn(D, device="cuda", requires_grad=True)
    measure_op(lambda: fn(x, w, bias, "silu")[0], [x, w, bias], torch.randn_like(x), rec)


def measure_norm(fn, T, D, rec):
    import torch

    x = torch.randn(1, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    gate = torch.randn(1, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = torch.ones(D, device="cuda", dtype=torch.bfloat16, requires_grad=True)  # a bf16 model's norm weight
    measure_op(lambda: fn(x, gate, weight, 1e-5, D), [x, gate, weight], torch.randn_like(x), rec)


def child_op(op, measure, impls, D, Ts):
    """One record per (impl, T): ``measure(fn, T, D, rec)``, an out-of-memory recorded as such."""
    import torch

    for name, fn in impls:
        for T in Ts:
            rec = {"op": op, "impl": name, "T": T, "D": D}
            try:
                measure(fn, T, D, rec)
            except torch.OutOfMemoryError:
                rec["oom"] = "OOM"
            print("RESULT " + json.dumps(rec), flush=True)
            torch.cuda.empty_cache()


def child_conv(Ts):
    """conv1d over [x | B | C] at N = 512: the torch path vs the Triton kernel (what dispatch picks on CUDA)."""
    from statex_hf.kernels.conv.causal_conv1d import causal_conv1d
    from statex_hf.kernels.conv.naive import naive_causal_conv1d

    def triton_conv(x, w, bias, activation):
        return causal_conv1d(x, w, bias, activation)

    child_op("conv", measure_conv, [("torch", naive_causal_conv1d), ("triton", triton_conv)], H * P + 2 * G * 512, Ts)


def child_norm(Ts):
    """Gated RMSNorm at D = 4096, one group: the PyTorch reference (the CPU path), our Triton kernel (what
    dispatch picks on CUDA) and, with MAMBA_SSM_SRC set, mamba_ssm's fused one."""
    from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm
    from statex_hf.kernels.norm.naive import naive_gated_rmsnorm

    impls = [("torch", naive_gated_rmsnorm), ("triton", gated_rmsnorm)]
    if os.environ.get("MAMBA_SSM_SRC"):
        impls.append(("mamba_ssm", mamba_ssm_gated_norm()))
    child_op("norm", measure_norm, impls, NORM_D, Ts)


def spawn(args, timeout, cache=None):
    """Runs a child (``--child ...``) in its own process, in a fresh Triton cache unless ``cache`` names one."""
    cache = cache or tempfile.mkdtemp(prefix="triton-cache-")
    env = dict(os.environ, TRITON_CACHE_DIR=cache, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, __file__, *args]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        text, err = out.stdout, out.stderr
    except subprocess.TimeoutExpired as e:
        text = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = f"timed out after {timeout} s"
    recs = [json.loads(line[7:]) for line in text.splitlines() if line.startswith("RESULT ")]
    if not recs or err.strip().endswith(("Error", "error")) or "Traceback" in err:
        tail = err.strip().splitlines()[-3:] if err.strip() else []
        print(f"[{' '.join(args)}] {' | '.join(tail)}", file=sys.stderr)
        recs.append({"error": " ".join(args), "why": (tail[-1] if tail else err)[:160]})
    return recs


def fmt(v, nd=1):
    return "-" if v is None else f"{v:.{nd}f}"


def print_op_table(recs, op, title):
    print(f"\n{title}")
    print(f"{'impl':<10} {'T':>6} {'fwd ms':>8} {'fwd+bwd ms':>11} {'act GB':>7}")
    for r in recs:
        if r.get("op") != op:
            continue
        if "oom" in r:
            print(f"{r['impl']:<10} {r['T']:>6} {'OOM':>8}")
            continue
        ms = f"{fmt(r['fwd_ms'], 2):>8} {fmt(r['fwdbwd_ms'], 2):>11}"
        print(f"{r['impl']:<10} {r['T']:>6} {ms} {fmt(r['act_gb'], 2):>7}")


def print_profiles(recs, top=8):
    """Per (N, T, phase): each implementation's kernels, longest first (the rest summed in one line)."""
    profiles = [r for r in recs if "profile" in r]
    for key in dict.fromkeys((r["N"], r["T"], r["profile"]) for r in profiles):
        print(f"\nKernels, N = {key[0]}, T = {key[1]}, {key[2]} (CUDA ms per call, calls)")
        for r in (r for r in profiles if (r["N"], r["T"], r["profile"]) == key):
            print(f"  {r['impl']}: {r['total_ms']:.2f} ms in all")
            for name, ms, count in r["kernels"][:top]:
                print(f"    {ms:7.3f}  x{count:<3} {name[:90]}")
            rest = r["kernels"][top:]
            if rest:
                print(f"    {sum(k[1] for k in rest):7.3f}  the other {len(rest)} kernels")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--impls", default="ours,mamba_ssm,hf")
    ap.add_argument("--ns", default="128,512")
    ap.add_argument("--peer-ns", default=None, help="the Ns at which mamba_ssm and hf run (default: --ns)")
    ap.add_argument("--ts", default="4096,16384,65536")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--timeout", type=int, default=240)
    ap.add_argument("--json", default=None, help="also write all records here")
    ap.add_argument("--peer-warm-procs", type=int, default=0, help="compile mamba_ssm's configs in K processes first")
    ap.add_argument("--peer-cache", default=None, help="mamba_ssm's Triton cache (kept, reused); default: a fresh one")
    ap.add_argument("--warm-only", action="store_true", help="only fill the peer's cache (--peer-warm-procs)")
    ap.add_argument("--profile-ts", default="", help="also profile each implementation kernel by kernel at these T")
    ap.add_argument("--skip", default="", help="parts to leave out: decode, conv, norm")
    ap.add_argument("--decode-impls", default="ours,mamba_ssm", help="the implementations whose decode step runs")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--impl", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--part", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--warm-cache", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--configs", default=None, help="ours with these launch configs (sweep_launch_configs --pick-ssd)")
    a = ap.parse_args()
    Ts = [int(t) for t in a.ts.split(",")]
    profile_Ts = [int(t) for t in a.profile_ts.split(",") if t]
    if a.child == "scan":
        return child_scan(a.impl, a.n, Ts, profile_Ts, a.warm_cache, a.configs)
    if a.child == "warm-peer":
        return child_warm_peer(*a.part, [int(n) for n in a.ns.split(",")], Ts)
    if a.child == "decode":
        return child_decode(a.impl, a.n, [int(b) for b in a.batches.split(",")])
    if a.child == "conv":
        return child_conv(Ts)
    if a.child == "norm":
        return child_norm(Ts)

    impls = a.impls.split(",")
    ns = [int(n) for n in a.ns.split(",")]
    skip = set(a.skip.split(",")) - {""}
    recs = []

    def measure(args, cache=None):
        # Each record is printed and saved as it arrives: a run cut short keeps what it measured.
        new = spawn(args, a.timeout, cache)
        for r in new:
            print("RECORD", json.dumps(r), flush=True)
        recs.extend(new)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(recs, f, indent=1)

    peer_ns = ns if a.peer_ns is None else [int(n) for n in a.peer_ns.split(",")]
    peer_cache = a.peer_cache
    if a.peer_warm_procs:
        peer_cache = peer_cache or tempfile.mkdtemp(prefix="triton-cache-peer-")
        warm_peer(a.peer_warm_procs, peer_ns, peer_cache)
        if a.warm_only:
            return
    for impl in impls:
        for n in ns:
            if impl in ("mamba_ssm", "hf") and n not in peer_ns:
                continue
            base = ["--ts", a.ts, "--n", str(n), "--impl", impl]
            cache = peer_cache if impl == "mamba_ssm" else None
            profile = ["--profile-ts", a.profile_ts] if impl in ("ours", "mamba_ssm") else []
            configs = ["--configs", a.configs] if a.configs and impl.startswith("ours") else []
            measure(["--child", "scan", *base, *profile, *configs, *(["--warm-cache"] if cache else [])], cache)
            if impl in a.decode_impls.split(",") and "decode" not in skip:
                measure(["--child", "decode", *base, "--batches", a.batches], cache)
    if "conv" not in skip:
        measure(["--child", "conv", "--ts", a.ts])
    if "norm" not in skip:
        measure(["--child", "norm", "--ts", a.ts])

    print(f"\nMamba2 SSD, one Mamba2-1.3B layer (H={H}, P={P}, G={G}), bf16, B=1, chunk {CHUNK}, "
          f"{describe()}; fwd/fwd+bwd = median ms; peak = max allocated during fwd+bwd "
          "(inputs + dy included); act = peak minus what was allocated before the call")  # fmt: skip
    print(
        f"{'impl':<10} {'N':>4} {'T':>6} {'fwd ms':>8} {'fwd+bwd ms':>11} {'peak GB':>8} {'act GB':>7} {'first s':>8}"
    )
    scans = [r for r in recs if "T" in r and "D" not in r and "profile" not in r]
    for r in recs:
        if "configs" in r:
            print(f"{r['impl']} N = {r['N']}: launch configs {json.dumps(r['configs'])}")
        if "configs_vs_defaults_rel_err" in r:
            print(f"{r['impl']} N = {r['N']}: those configs against the tables' defaults, largest relative error "
                  f"of y and the gradients {r['configs_vs_defaults_rel_err']:.1e}")  # fmt: skip
    for r in scans:
        if "oom" in r:
            print(f"{r['impl']:<10} {r['N']:>4} {r['T']:>6} {'OOM':>8} {'OOM':>11} {'-':>8} {'-':>7} {'-':>8}")
            continue
        print(
            f"{r['impl']:<10} {r['N']:>4} {r['T']:>6} {fmt(r.get('fwd_ms'), 2):>8} {fmt(r.get('fwdbwd_ms'), 2):>11} "
            f"{fmt(r.get('peak_gb'), 2):>8} {fmt(r.get('act_gb'), 2):>7} {fmt(r.get('first_s')):>8}"
            f"{' (Triton cache filled beforehand)' if r.get('first_cache') else ''}"
        )
    print(f"\nDecode step (selective state update), H={H}, P={P}, fp32 state; GB/s counts state read + write; "
          f"% of this GPU's {hbm_tbps():.2f} TB/s")  # fmt: skip
    print(f"{'impl':<10} {'N':>4} {'B':>4} {'us':>8} {'GB/s':>7} {'%HBM':>5}")
    for r in recs:
        if "us" in r:
            pct = r["gbps"] / (hbm_tbps() * 1e3) * 100
            print(f"{r['impl']:<10} {r['N']:>4} {r['b']:>4} {r['us']:>8.1f} {r['gbps']:>7.0f} {pct:>5.0f}")
    print_profiles(recs)
    print_op_table(recs, "conv", f"conv1d over [x | B | C] (D = {H * P + 2 * G * 512}, K = 4, SiLU), bf16, B=1")
    print_op_table(recs, "norm", f"gated RMSNorm norm(y * silu(z)) * w (D = {NORM_D}, one group), bf16, B=1")
    for r in recs:
        if "error" in r:
            print(f"error in [{r['error']}]: {r['why']}")


if __name__ == "__main__":
    main()
