"""Launch configurations of the chunked GLA kernels (the table ``kernels/launch.py`` launches from).

Picked by ``benchmarks/sweep_launch_configs.py --ops gla`` on an H100 at both GLA-1.3B head shapes
(the table and the H200 checks are in benchmarks/README.md); the H200 has the same SMs and shared
memory, and no entry of its own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from statex_hf.kernels import launch
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.utils import pow2

# Per-chunk kernels take 64 x 128 state tiles and three pipeline stages where that helps; the
# intra-chunk kernels keep their 16-row sub-blocks' config (the forward's: 32-wide key tiles, 2 warps,
# 2 stages). Each kernel lists only the tiles it has: BK over the key dimension, BV over the value one.
TABLES: dict[str, dict[str, LaunchConfig]] = {
    "default": {
        "cumsum": LaunchConfig.of(2, 3, BK=32),
        "fwd_h": LaunchConfig.of(8, 3, BK=64, BV=128),
        "bwd_dh": LaunchConfig.of(8, 3, BK=64, BV=128),
        "fwd_A": LaunchConfig.of(2, 2, BK=32),
        "bwd_intra": LaunchConfig.of(4, 1, BK=64),
        "fwd_o": LaunchConfig.of(4, 3, BK=64, BV=128),
        "bwd_dA": LaunchConfig.of(4, 3, BV=128),
        "bwd_dv": LaunchConfig.of(4, 3, BK=64, BV=128),
        "bwd_dqk": LaunchConfig.of(4, 2, BK=64, BV=128),
    },
}
DEFAULTS = TABLES["default"]
# The state kernels (fwd_h, bwd_dh) run one program per state tile and sequence for the whole
# sequence: when the large tiles would leave SMs idle (fewer programs than MIN_STATE_PROGRAMS, about
# an H100's 132 SMs), they take these small ones (GLA-1.3B's 4 heads at B = 1: 64 programs of 64 x 128
# against 512 of 32 x 32; its StateX head runs 256 of 64 x 128).
SMALL_STATE_TILES = LaunchConfig.of(8, 3, BK=32, BV=32)
MIN_STATE_PROGRAMS = 128
_STATE_KERNELS = {"fwd_h", "bwd_dh"}
# Kernels whose tiles have a row per token of the chunk: chunks above 64 tokens take at least 8 warps.
_CHUNK_ROW_KERNELS = {"fwd_o", "bwd_dA", "bwd_dv", "bwd_dqk"}
# Small tiles in one stage: a few KiB of shared memory, which any GPU Triton supports has.
SAFE = LaunchConfig.of(4, 1, BK=32, BV=32)


def _sized(kernel: str, config: LaunchConfig, K: int, V: int, chunk_size: int) -> LaunchConfig:
    """Tiles shrunk to small heads (down to 16) instead of wasting lanes on masked columns."""
    sizes = {"BK": K, "BV": V}
    tiles = {name: min(size, pow2(sizes[name])) for name, size in config.tiles}
    warps = max(8, config.num_warps) if chunk_size > 64 and kernel in _CHUNK_ROW_KERNELS else config.num_warps
    return config.with_(num_warps=warps, **tiles)


def gla_config(
    kernel: str, K: int, V: int, chunk_size: int, num_states: int = 1, device: torch.device | None = None
) -> LaunchConfig:
    """``kernel``'s config for heads of ``K x V`` (``launch.OVERRIDES`` first, then the table and its
    rule for the state kernels); ``num_states`` (sequences x heads) sizes the state kernels' grid."""
    name = f"gla.{kernel}"
    if name in launch.OVERRIDES:
        return _sized(kernel, launch.OVERRIDES[name], K, V, chunk_size)
    config = launch.device_table(TABLES, device or torch.device("cpu"))[kernel]
    if kernel in _STATE_KERNELS:
        tiles = -(-K // min(config.BK, pow2(K))) * -(-V // min(config.BV, pow2(V)))
        if num_states * tiles < MIN_STATE_PROGRAMS:
            config = SMALL_STATE_TILES
    return _sized(kernel, config, K, V, chunk_size)


def gla_launch(
    kernel: str,
    run: Callable[[LaunchConfig], None],
    K: int,
    V: int,
    chunk_size: int,
    operand: torch.Tensor,
    num_states: int = 1,
) -> None:
    """Launches ``run(config)`` with ``kernel``'s config, falling back to ``SAFE`` tiles (``launch.launch``)
    on a GPU it does not fit."""
    config = gla_config(kernel, K, V, chunk_size, num_states, operand.device)
    safe = LaunchConfig.of(SAFE.num_warps, SAFE.num_stages, **{tile: getattr(SAFE, tile) for tile, _ in config.tiles})
    launch.launch(f"gla.{kernel}", run, config, _sized(kernel, safe, K, V, chunk_size), operand)
