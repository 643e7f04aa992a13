"""Launch configurations of the chunked GLA kernels: tile sizes, warps and pipeline stages.

One table instead of constants spread over the launchers, so ``benchmarks/sweep_launch_configs.py``
can try a grid of configs per kernel (through ``OVERRIDES``) and the tuned values land here. No
autotuning at run time: the first call compiles one config per kernel (issue 4's first-call target).
"""

from __future__ import annotations

from typing import NamedTuple

import triton


class LaunchConfig(NamedTuple):
    BK: int  # key-dimension tile (state rows); kernels without one ignore it
    BV: int  # value-dimension tile (state columns); kernels without one ignore it
    num_warps: int
    num_stages: int


DEFAULTS: dict[str, LaunchConfig] = {
    "cumsum": LaunchConfig(64, 64, 4, 3),
    "fwd_h": LaunchConfig(64, 64, 4, 2),
    "bwd_dh": LaunchConfig(64, 64, 4, 2),
    "fwd_A": LaunchConfig(64, 64, 4, 1),
    "bwd_intra": LaunchConfig(64, 64, 4, 1),
    "fwd_o": LaunchConfig(64, 64, 4, 2),
    "bwd_dA": LaunchConfig(64, 64, 4, 2),
    "bwd_dv": LaunchConfig(64, 64, 4, 2),
    "bwd_dqk": LaunchConfig(64, 64, 4, 2),
}
# Replaces a kernel's default while set; for the launch-config sweep only.
OVERRIDES: dict[str, LaunchConfig] = {}
# Kernels whose tiles have a row per token of the chunk: chunks above 64 tokens take at least 8 warps.
_CHUNK_ROW_KERNELS = {"fwd_o", "bwd_dA", "bwd_dv", "bwd_dqk"}


def launch_config(kernel: str, K: int, V: int, chunk_size: int) -> LaunchConfig:
    """The config of ``kernel`` for heads of ``K x V``: tiles shrink to small heads (down to 16)
    instead of wasting lanes on masked columns."""
    config = OVERRIDES.get(kernel, DEFAULTS[kernel])
    return LaunchConfig(
        BK=min(config.BK, max(16, triton.next_power_of_2(K))),
        BV=min(config.BV, max(16, triton.next_power_of_2(V))),
        num_warps=max(8, config.num_warps) if chunk_size > 64 and kernel in _CHUNK_ROW_KERNELS else config.num_warps,
        num_stages=config.num_stages,
    )
