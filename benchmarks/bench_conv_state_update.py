"""The Mamba2 one-launch decode step (``kernels/ssd/conv_state_update.py``) over a whole model, on one GPU.

StateX Mamba2-1.3B's 48 layers at B = 1 (H 64, P 64, G 1, K 4, bf16; 44 layers with N = 128, 4 StateX layers with
N = 512), each with its own state, window and in_proj row, so that no layer finds its state in L2 as one layer run
again would: the step's 48 launches captured as one CUDA graph (``triton.testing.do_bench_cudagraph``, under PDL as
the decode graphs launch them, and without). GB/s counts the fp32 states read and written once.

Rows: this tree's kernel with its table's config (``*``) and with every config of ``--configs``; the two kernels it
replaces (conv update, state update: 96 launches); with ``--baseline PATH``, another tree's
``conv_state_update.py`` (say main's, copied aside) with ``--baseline-config``, the same run's baseline. Each kernel
and config is first checked bit for bit against the two kernels (y, window, state over three steps, both N); a
config that differs is marked, not timed. ``--batches 16,64`` adds 8-layer steps at those batches (N = 128), where
the model runs the two kernels (``dispatch.ONE_LAUNCH_CONV_SSD_MAX_ROWS``).

    python -P benchmarks/bench_conv_state_update.py --baseline /tmp/main_conv_state_update.py --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
from pathlib import Path

import torch
import triton
from statex_hf.kernels import launch
from statex_hf.kernels.conv.causal_conv1d_update import causal_conv1d_update
from statex_hf.kernels.dependent_launch import dependent_launches
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.ssd import conv_state_update as ours
from statex_hf.kernels.ssd.configs import ssd_config
from statex_hf.kernels.ssd.state_update import ssd_state_update

H, P, G, K = 64, 64, 1, 4
DEVICE = torch.device("cuda")
# (warps, stages, BP, BN, BW): BN stays the state update's (its sums are the two kernels' only on its N tiles).
CONFIGS = "4,2,8,128,128 8,2,16,128,128 8,2,32,128,128 4,2,4,128,128 4,2,16,128,512"


class Layer:
    """One layer's parameters, caches and token (xBC and dt: slices of one bf16 in_proj row per sequence)."""

    def __init__(self, b: int, N: int, seed: int) -> None:
        g = torch.Generator(device=DEVICE).manual_seed(seed)

        def randn(*shape, scale=1.0):
            return torch.randn(*shape, device=DEVICE, generator=g) * scale

        self.b, self.N, conv_dim = b, N, H * P + 2 * G * N
        self.weight = randn(conv_dim, K, scale=0.5).bfloat16()
        self.conv_bias = randn(conv_dim, scale=0.1).bfloat16()
        self.window = randn(b, conv_dim, K - 1).bfloat16()
        self.state = randn(b, H, P, N, scale=0.1)
        self.A_log = torch.log(torch.arange(1, H + 1, device=DEVICE, dtype=torch.float32)).bfloat16()
        self.D = torch.ones(H, device=DEVICE, dtype=torch.bfloat16)
        self.dt_bias = (torch.rand(H, device=DEVICE, generator=g) - 2.0).bfloat16()
        row = randn(b, H * P + conv_dim + H, scale=0.5).bfloat16()
        _, self.xBC, self.dt = row.split([H * P, conv_dim, H], dim=-1)

    def clone(self) -> Layer:
        other = object.__new__(Layer)
        other.__dict__ = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()}
        return other

    def one_launch(self, module=ours) -> torch.Tensor:
        caches = (self.window, self.state)
        return module.conv_state_update(self.xBC, self.weight, *caches, self.dt, None, G, self.conv_bias, "silu",
                                        self.D, self.dt_bias, True, A_log=self.A_log)  # fmt: skip

    def two_kernels(self) -> torch.Tensor:
        xBC = causal_conv1d_update(self.xBC[:, None], self.weight, self.window, self.conv_bias, "silu")[:, 0]
        x, B, C = xBC.split([H * P, G * self.N, G * self.N], dim=-1)
        return ssd_state_update(self.state, x.view(self.b, H, P), self.dt, None, B.view(self.b, G, self.N),
                                C.view(self.b, G, self.N), self.D, self.dt_bias, True, A_log=self.A_log)  # fmt: skip


def model_layers(b: int, layers: int, statex_every: int) -> list[Layer]:
    """``layers`` layers, every ``statex_every``-th (from 0) with N = 512, the rest N = 128."""
    return [Layer(b, 512 if statex_every and i % statex_every == 0 else 128, seed=i) for i in range(layers)]


def bit_for_bit(step, b: int) -> bool:
    """Whether ``step(layer)`` equals the two kernels bit for bit (y, window, state) over three steps, both N."""
    for N in (128, 512):
        one = Layer(b, N, seed=1000 + N)
        two = one.clone()
        for _ in range(3):
            if not torch.equal(step(one), two.two_kernels()):
                return False
            if not (torch.equal(one.window, two.window) and torch.equal(one.state, two.state)):
                return False
    return True


def time_step(step, layers: list[Layer], pdl: bool) -> float:
    """Microseconds of one replay of the graph of ``step`` over every layer."""

    def run():
        for layer in layers:
            step(layer)

    with dependent_launches(DEVICE) if pdl else contextlib.nullcontext():
        run()  # compiles (and allocates the tickets) outside the capture
        torch.cuda.synchronize()
        return triton.testing.do_bench_cudagraph(run, rep=200, return_mode="median") * 1e3


def load_baseline(path: str):
    spec = importlib.util.spec_from_file_location("baseline_conv_state_update", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_config(text: str) -> LaunchConfig:
    warps, stages, BP, BN, BW = (int(v) for v in text.split(","))
    return LaunchConfig.of(warps, stages, BP=BP, BN=BN, BW=BW)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", help="another tree's conv_state_update.py, timed as the same-run baseline")
    ap.add_argument("--baseline-config", default="4,2,16,128,128", help="its config: warps,stages,BP,BN,BW")
    ap.add_argument("--configs", default=CONFIGS, help="this tree's kernel's configs to sweep (space-separated)")
    ap.add_argument("--batches", default="", help="batches of 8-layer steps (N = 128) to add, say 16,64")
    ap.add_argument("--json", help="write the rows here too")
    a = ap.parse_args()

    print(f"GPU: {torch.cuda.get_device_name()}", flush=True)
    rows = []

    def measure(name, step, b, layers, config=None):
        key = "ssd.conv_state_update"
        try:
            if config is not None:
                launch.OVERRIDES[key] = config
            same = bit_for_bit(step, b)
            row = {"impl": name, "b": b, "layers": len(layers), "bit_for_bit": same}
            if same:
                nbytes = sum(2 * layer.state.numel() * 4 for layer in layers)
                for pdl in (True, False):
                    us = time_step(step, layers, pdl)
                    row[f"us{'_pdl' if pdl else ''}"] = us
                    row[f"gbps{'_pdl' if pdl else ''}"] = nbytes / (us * 1e-6) / 1e9
        finally:
            launch.OVERRIDES.pop(key, None)
        rows.append(row)
        print(json.dumps(row), flush=True)

    baseline = load_baseline(a.baseline) if a.baseline else None
    steps = [(1, model_layers(1, 48, 12))]
    steps += [(b, model_layers(b, 8, 0)) for b in (int(v) for v in a.batches.split(",") if v)]
    for b, layers in steps:
        table = ssd_config("conv_state_update", 0, P, 128, device=DEVICE)
        measure(f"ours* {table}", Layer.one_launch, b, layers)
        if baseline is not None:
            config = parse_config(a.baseline_config)
            measure(f"baseline {config}", lambda layer: layer.one_launch(baseline), b, layers, config)
        measure("two kernels", Layer.two_kernels, b, layers)
        if b == 1:
            for text in a.configs.split():
                config = parse_config(text)
                measure(f"ours {config}", Layer.one_launch, b, layers, config)
        del layers
        torch.cuda.empty_cache()

    print("\n| impl | B | layers | us (PDL) | GB/s (PDL) | us | GB/s |\n|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if not r["bit_for_bit"]:
            print(f"| {r['impl']} | {r['b']} | {r['layers']} | not bit for bit with the two kernels | | | |")
            continue
        print(f"| {r['impl']} | {r['b']} | {r['layers']} | {r['us_pdl']:.1f} | {r['gbps_pdl']:.0f} | {r['us']:.1f} | "
              f"{r['gbps']:.0f} |")  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
