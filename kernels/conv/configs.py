"""Launch configurations of the causal conv1d kernels (the table ``kernels/launch.py`` launches from).

``BT`` tokens by ``BD`` channels per program. The backward holds about five live ``[BT, BD]`` fp32
tiles (pre-activation, sigmoid, dy, dx, x): smaller tiles and more warps keep them in registers
(benchmarks/README.md). No pipelined loops, so the stages are Triton's default.

The decode step (``update``) has no token tile: ``BD`` channels of one batch row per program, one
channel per thread, one stage (no loop to pipeline). Not tuned yet: a step moves a few kilobytes per
layer, so its time is the launch itself.
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
        "update": LaunchConfig.of(4, 1, BD=128),
    },
}
SAFE = LaunchConfig.of(4, 1, BT=32, BD=32)
SAFE_UPDATE = LaunchConfig.of(1, 1, BD=32)  # the decode kernel takes no token tile


def conv_launch(kernel: str, run: Callable[[LaunchConfig], None], operand: torch.Tensor) -> None:
    """Launches ``run(config)`` with ``kernel``'s config (``launch.OVERRIDES`` first), falling back to
    ``SAFE`` (``SAFE_UPDATE`` for the decode kernel; ``launch.launch``) on a GPU it does not fit."""
    name = f"conv.{kernel}"
    config = launch.OVERRIDES.get(name) or launch.device_table(TABLES, operand.device)[kernel]
    launch.launch(name, run, config, SAFE_UPDATE if kernel == "update" else SAFE, operand)
