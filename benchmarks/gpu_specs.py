"""The GPU's peak numbers, for the benchmarks' "% of peak" columns: never one GPU's constants.

HBM bandwidth comes from the device itself (Triton's ``get_dram_gbps``: memory clock x bus width x 2,
the datasheet figure: 3.35 TB/s on an H100 SXM, 4.8 on an H200). Dense bf16 tensor-core throughput
is not reported by the driver, so it comes from a table keyed by the device name (NVIDIA's
datasheets), or is unknown.
"""

from __future__ import annotations

import torch

# Dense (no sparsity) bf16 tensor-core TFLOP/s, by a substring of torch.cuda.get_device_name().
BF16_TFLOPS = {"H100 80GB HBM3": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H200": 989.0, "A100": 312.0}


def hbm_tbps(device: int | None = None) -> float:
    """Peak HBM bandwidth of the GPU, TB/s, from its memory clock and bus width."""
    from triton.testing import get_dram_gbps

    return get_dram_gbps(torch.cuda.current_device() if device is None else device) / 1e3


def bf16_tflops(device: int | None = None) -> float | None:
    """Dense bf16 tensor-core peak of the GPU, TFLOP/s, or None for a GPU not in ``BF16_TFLOPS``."""
    name = torch.cuda.get_device_name(device)
    return next((tflops for key, tflops in BF16_TFLOPS.items() if key in name), None)


def describe(device: int | None = None) -> str:
    """One line naming the GPU and its peaks, for a table's title."""
    tflops = bf16_tflops(device)
    peak = f", {tflops:.0f} bf16 TFLOP/s dense" if tflops else ""
    return f"{torch.cuda.get_device_name(device)} ({hbm_tbps(device):.2f} TB/s HBM{peak})"
