"""Launch configurations of the gated RMSNorm kernels (the table ``kernels/launch.py`` launches from).

A program owns ``BM`` rows by ``BS`` channels of one group (a group wider than ``BS`` is walked in
chunks). The table gives the largest tiles and warps; ``norm_config`` sizes them to the rows and the
group: about ``TILE`` elements per tile, so narrow groups take several rows per program, and a warp
per ``ELEMENTS_PER_WARP`` elements. The backward runs ``WAVES`` programs per SM, each walking many
rows, so that its per-program dw partials (``[programs, D]`` fp32) stay small. Tile, warps and waves
from ``benchmarks/sweep_launch_configs.py --ops norm`` on an H100 (benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from statex_hf.kernels import launch
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.utils import num_sms, pow2

# BS: the widest group held in one block (fp32 registers; Mamba2-1.3B's 4096 fits, as does 8192).
TABLES: dict[str, dict[str, LaunchConfig]] = {
    "default": {
        "fwd": LaunchConfig.of(16, 3, BM=64, BS=8192),
        "bwd": LaunchConfig.of(16, 3, BM=64, BS=8192),
    },
}
TILE = 8192
ELEMENTS_PER_WARP = 512
WAVES = 8
SAFE = LaunchConfig.of(4, 1, BM=1, BS=1024)


def norm_config(kernel: str, M: int, S: int, device: torch.device) -> LaunchConfig:
    """``kernel``'s config (``launch.OVERRIDES`` first) for ``M`` rows and groups of ``S`` channels."""
    name = f"norm.{kernel}"
    if name in launch.OVERRIDES:
        return launch.OVERRIDES[name]
    config = launch.device_table(TABLES, device)[kernel]
    BS = min(pow2(S, lo=1), config.BS)
    BM = max(1, min(config.BM, TILE // BS, pow2(M, lo=1)))
    return config.with_(BM=BM, BS=BS, num_warps=min(config.num_warps, max(1, BM * BS // ELEMENTS_PER_WARP)))


def row_programs(M: int, BM: int, n_groups: int, device: torch.device) -> tuple[int, int]:
    """(programs along rows, rows per program) for the backward: ``WAVES`` programs per SM, no more. On
    CPU (the interpreter) two programs, so that the tests see partials summed."""
    blocks = -(-M // BM)
    target = max(1, -(-WAVES * num_sms(device) // n_groups)) if device.type == "cuda" else 2
    rows_per_program = -(-blocks // min(blocks, target)) * BM
    return -(-M // rows_per_program), rows_per_program


def norm_launch(
    kernel: str, run: Callable[[LaunchConfig], None], M: int, S: int, operand: torch.Tensor, name: str | None = None
) -> None:
    """Launches ``run(config)``, falling back to ``SAFE`` (``launch.launch``) on a GPU it does not fit. ``name``:
    the launch's name where it is not ``norm.{kernel}`` (the residual add + norm takes the forward's config, so
    that its rows are summed in the same order, under a name of its own)."""
    config = norm_config(kernel, M, S, operand.device)
    launch.launch(name or f"norm.{kernel}", run, config, SAFE.with_(BS=min(SAFE.BS, config.BS)), operand)
