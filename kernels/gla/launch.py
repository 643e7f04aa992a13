"""Launch configurations of the chunked GLA kernels: tile sizes, warps and pipeline stages.

One table instead of constants spread over the launchers, so ``benchmarks/sweep_launch_configs.py``
can try a grid of configs per kernel (through ``OVERRIDES``) and the tuned values land here. No
autotuning at run time: the first call compiles one config per kernel (issue 4's first-call target).
The table is tuned on an H100; on a GPU with less shared memory, a config that does not fit is
replaced by a smaller one (``launch``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
import triton
from triton.runtime.errors import OutOfResources


class LaunchConfig(NamedTuple):
    BK: int  # key-dimension tile (state rows); kernels without one ignore it
    BV: int  # value-dimension tile (state columns); kernels without one ignore it
    num_warps: int
    num_stages: int


# Picked by the sweep on an H100 at both GLA-1.3B head shapes (B = 1, T = 16K, bf16; the table is in
# benchmarks/README.md): per-chunk kernels take 64 x 128 tiles and three pipeline stages where that
# helps; the intra-chunk kernels keep their 16-row sub-blocks' config, except the forward's, whose
# 16 x 16 blocks were timed alone on an H200 at T = 64K (12 configs: 32-wide key tiles, 2 warps and
# 2 stages fastest at both shapes within 3%).
DEFAULTS: dict[str, LaunchConfig] = {
    "cumsum": LaunchConfig(32, 64, 2, 3),
    "fwd_h": LaunchConfig(64, 128, 8, 3),
    "bwd_dh": LaunchConfig(64, 128, 8, 3),
    "fwd_A": LaunchConfig(32, 64, 2, 2),
    "bwd_intra": LaunchConfig(64, 64, 4, 1),
    "fwd_o": LaunchConfig(64, 128, 4, 3),
    "bwd_dA": LaunchConfig(64, 128, 4, 3),
    "bwd_dv": LaunchConfig(64, 128, 4, 3),
    "bwd_dqk": LaunchConfig(64, 128, 4, 2),
}
# The state kernels (fwd_h, bwd_dh) run one program per state tile and sequence for the whole
# sequence: when the large tiles would leave SMs idle (fewer programs than MIN_STATE_PROGRAMS, about
# the H100's 132 SMs), they take these small ones. GLA-1.3B's 4 heads at B = 1: 64 programs of 64 x 128
# (0.36 ms at 16K) against 512 of 32 x 32 (0.27 ms); its StateX head: 256 of 64 x 128 (0.48 ms).
SMALL_STATE_TILES = LaunchConfig(32, 32, 8, 3)
MIN_STATE_PROGRAMS = 128
_STATE_KERNELS = {"fwd_h", "bwd_dh"}
# Replaces a kernel's default while set, with no fallback; for the launch-config sweep only.
OVERRIDES: dict[str, LaunchConfig] = {}
# Kernels whose tiles have a row per token of the chunk: chunks above 64 tokens take at least 8 warps.
_CHUNK_ROW_KERNELS = {"fwd_o", "bwd_dA", "bwd_dv", "bwd_dqk"}


# Small tiles in one stage: a few KiB of shared memory, which any GPU Triton supports has.
SAFE = LaunchConfig(32, 32, 4, 1)
# (kernel, config, device, dtype) whose config did not fit the GPU -> the config launched instead.
_REPLACED: dict[tuple, LaunchConfig] = {}


def _fit(size: int, n: int) -> int:
    return min(size, max(16, triton.next_power_of_2(n)))


def launch_config(kernel: str, K: int, V: int, chunk_size: int, num_states: int = 1) -> LaunchConfig:
    """The config of ``kernel`` for heads of ``K x V`` (0 for a dimension the kernel does not tile);
    ``num_states`` (sequences x heads) sizes the state kernels' grid. Tiles shrink to small heads (down
    to 16) instead of wasting lanes on masked columns."""
    config = OVERRIDES.get(kernel, DEFAULTS[kernel])
    if kernel in _STATE_KERNELS and kernel not in OVERRIDES:
        tiles = triton.cdiv(K, _fit(config.BK, K)) * triton.cdiv(V, _fit(config.BV, V))
        if num_states * tiles < MIN_STATE_PROGRAMS:
            config = SMALL_STATE_TILES
    return _sized(kernel, config, K, V, chunk_size)


def _sized(kernel: str, config: LaunchConfig, K: int, V: int, chunk_size: int) -> LaunchConfig:
    warps = config.num_warps
    if chunk_size > 64 and kernel in _CHUNK_ROW_KERNELS:
        warps = max(8, warps)
    return LaunchConfig(_fit(config.BK, K), _fit(config.BV, V), warps, config.num_stages)


def launch(
    kernel: str,
    run: Callable[[LaunchConfig], None],
    K: int,
    V: int,
    chunk_size: int,
    operand: torch.Tensor,
    num_states: int = 1,
) -> None:
    """Calls ``run(config)`` with ``kernel``'s config (``launch_config``). When that config needs more
    shared memory than the GPU has (Triton raises ``OutOfResources`` before the kernel runs), retries
    with one pipeline stage, then with ``SAFE``, warns, and launches the first that fits from then on
    for that config on that device and dtype (``operand``, an input of the kernel, gives them)."""
    config = launch_config(kernel, K, V, chunk_size, num_states)
    if kernel in OVERRIDES:  # the sweep times exactly the config it asked for, or learns it does not fit
        run(config)
        return
    key = (kernel, config, operand.device, operand.dtype)
    if key in _REPLACED:
        run(_REPLACED[key])
        return
    try:
        run(config)
        return
    except OutOfResources as error:
        too_large = error
    smaller = [config._replace(num_stages=1), _sized(kernel, SAFE, K, V, chunk_size)]
    for candidate in dict.fromkeys(c for c in smaller if c != config):
        try:
            run(candidate)
        except OutOfResources:
            continue
        _REPLACED[key] = candidate
        warnings.warn(
            f"GLA kernel {kernel}: {config} does not fit this GPU ({too_large}); launching {candidate}, "
            "which is slower",
            stacklevel=2,
        )
        return
    raise too_large
