"""Launch configurations of the SwiGLU and residual-add kernels (the table ``kernels/launch.py`` launches from).

One program of either owns ``BLOCK`` consecutive elements; there is no loop to pipeline, so one stage. Not tuned:
at decode sizes (a few thousand elements per layer) the kernel's time is its launch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from statex_hf.kernels import launch
from statex_hf.kernels.launch import LaunchConfig

TABLES: dict[str, dict[str, LaunchConfig]] = {
    "default": {"swiglu": LaunchConfig.of(4, 1, BLOCK=1024), "residual_add": LaunchConfig.of(4, 1, BLOCK=1024)},
}
SAFE = LaunchConfig.of(1, 1, BLOCK=128)


def activation_launch(kernel: str, run: Callable[[LaunchConfig], None], operand: torch.Tensor) -> None:
    """Launches ``run(config)`` with ``kernel``'s config (``launch.OVERRIDES`` first), falling back to
    ``SAFE`` (``launch.launch``) on a GPU it does not fit."""
    name = f"activations.{kernel}"
    config = launch.OVERRIDES.get(name) or launch.device_table(TABLES, operand.device)[kernel]
    launch.launch(name, run, config, SAFE, operand)
