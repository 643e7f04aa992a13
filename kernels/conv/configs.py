"""Launch configurations of the causal conv1d kernels (the table ``kernels/launch.py`` launches from).

``BT`` tokens by ``BD`` channels per program. The backward holds about five live ``[BT, BD]`` fp32
tiles (pre-activation, sigmoid, dy, dx, x): smaller tiles and more warps keep them in registers
(benchmarks/README.md). No pipelined loops, so the stages are Triton's default.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from statex_hf.kernels import launch
from statex_hf.kernels.launch import LaunchConfig

TABLES: dict[str, dict[str, LaunchConfig]] = {
    "default": {
        "fwd": LaunchConfig.of(4, 3, BT=64, BD=128),
        "bwd": LaunchConfig.of(8, 3, BT=32, BD=128),
    },
}
SAFE = LaunchConfig.of(4, 1, BT=32, BD=32)


def conv_launch(kernel: str, run: Callable[[LaunchConfig], None], operand: torch.Tensor) -> None:
    """Launches ``run(config)`` with ``kernel``'s config (``launch.OVERRIDES`` first), falling back to
    ``SAFE`` (``launch.launch``) on a GPU it does not fit."""
    name = f"conv.{kernel}"
    config = launch.OVERRIDES.get(name) or launch.device_table(TABLES, operand.device)[kernel]
    launch.launch(name, run, config, SAFE, operand)
