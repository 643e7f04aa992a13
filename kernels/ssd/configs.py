"""Launch configurations of the SSD kernels (the table ``kernels/launch.py`` launches from).

Each entry gives a kernel's largest tiles, by the names of its ``tl.constexpr`` arguments, and its
warps and pipeline stages; ``ssd_config`` shrinks the tiles to the problem. A tile spans one
dimension (``_SPANS``): the chunk's tokens (``BT``, ``BS``, ``BM``, ``BLK``, ``BL``: at most the
chunk size), the head dimension P (``BP``), the state size N (``BN``, ``BK``; ``BW``, the B and C window block of
``conv_state_update``) or the number of heads
(``BH``, the dt kernels' block of heads). Tiles that must cover the whole head dimension are not tunable
and not listed. The table comes from the sweep on an H200 and was measured faster than the previous
(H100-swept) one on an H100 as well, at 16K and 64K for both N (benchmarks/README.md): both GPUs run it
(Hopper, 132 SMs, the same shared memory); ``TABLES`` takes a per-GPU entry where they part. The dt
kernels' entries (``cumsum``, ``cumsum_bwd``) are not tuned yet.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from statex_hf.kernels import launch
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.utils import pow2

TABLES: dict[str, dict[str, LaunchConfig]] = {
    "default": {
        "bmm": LaunchConfig.of(4, 2, BM=64, BK=64),
        "state_fwd": LaunchConfig.of(8, 3, BL=64, BP=64, BN=64),
        "state_bwd": LaunchConfig.of(4, 2, BL=256, BP=64, BN=64),
        "scan_fwd": LaunchConfig.of(8, 3, BT=128, BS=32, BP=64, BN=64),
        "scan_bwd_dx": LaunchConfig.of(4, 3, BS=64, BT=64, BN=64),
        "dcb": LaunchConfig.of(4, 2, BLK=32),
        "dc": LaunchConfig.of(4, 2, BT=128, BS=64, BN=64),
        "db": LaunchConfig.of(4, 2, BS=64, BT=64, BN=64),
        "state_update": LaunchConfig.of(4, 2, BP=16, BN=128),
        # The state update with the conv step (conv_state_update.py): the state update's tiles, so that the two
        # paths sum alike, and BW channels per block of the group's last program as it writes the B / C windows.
        "conv_state_update": LaunchConfig.of(4, 2, BP=16, BN=128, BW=128),
        "cumsum": LaunchConfig.of(4, 1, BH=8),
        "cumsum_bwd": LaunchConfig.of(8, 1, BH=8),
    },
}
_SPANS = {"BT": "L", "BS": "L", "BM": "L", "BLK": "L", "BL": "L", "BP": "P", "BN": "N", "BK": "N", "BW": "N", "BH": "H"}
# The scan kernels hold a [rows, P] fp32 accumulator: below 8K elements their table's warps would idle.
_ACCUMULATOR = {"scan_fwd": "BT", "scan_bwd_dx": "BS"}
# The state kernels run one program per (sequence, head, state tile) for the whole sequence: their
# P tile halves (down to 16) until there are this many programs, about one per SM: the sweep found the
# whole tile faster at 128 programs (one Mamba2-1.3B layer, N = 128, B = 1) than half of it at 256.
MIN_STATE_PROGRAMS = 128
_STATE_KERNELS = {"state_fwd", "state_bwd"}
_DECODE_KERNELS = {"state_update", "conv_state_update"}
# Small tiles in one stage: a few KiB of shared memory, which any GPU Triton supports has.
_SAFE_TILE, _SAFE_WARPS = 32, 4


def ssd_config(
    kernel: str,
    L: int,
    P: int,
    N: int,
    batch_heads: int = 1,
    device: torch.device | None = None,
    heads: int = 1,
) -> LaunchConfig:
    """``kernel``'s config for chunks of ``L`` tokens, heads of ``P`` and a state of ``N``;
    ``batch_heads`` (batch x heads) sizes the state kernels' grid, ``heads`` the dt kernels' head block."""
    name = f"ssd.{kernel}"
    if name in launch.OVERRIDES:
        return launch.OVERRIDES[name]
    device = device or torch.device("cpu")
    config = launch.device_table(TABLES, device)[kernel]
    if kernel in _DECODE_KERNELS:
        # One token: a program streams [BP, N] rows of the state; P tiles go down to 4 rows, and
        # narrow ones take twice the N tile (the same registers). The one launch takes the state update's N tile
        # whatever its own P tile: its sums over N are then the state update's.
        BP = min(pow2(P, lo=4), config.BP)
        config = config.with_(BP=BP, BN=min(pow2(N), config.BN * (2 if BP <= 8 else 1)))
        if kernel == "conv_state_update":
            config = config.with_(BN=ssd_config("state_update", L, P, N, device=device).BN, BW=min(pow2(N), config.BW))
        return config
    dims = {"L": L, "P": pow2(P), "N": pow2(N), "H": pow2(heads, lo=1)}
    config = config.with_(**{tile: min(size, dims[_SPANS[tile]]) for tile, size in config.tiles})
    if kernel in _STATE_KERNELS:
        while config.BP > 16 and batch_heads * -(-P // config.BP) * -(-N // config.BN) < MIN_STATE_PROGRAMS:
            config = config.with_(BP=config.BP // 2)
    if kernel in _ACCUMULATOR and getattr(config, _ACCUMULATOR[kernel]) * dict(config.tiles).get("BP", pow2(P)) < 8192:
        config = config.with_(num_warps=4)
    return config


def ssd_launch(kernel: str, run: Callable[[LaunchConfig], None], config: LaunchConfig, operand: torch.Tensor) -> None:
    """Launches ``run(config)`` (``config`` from ``ssd_config``), falling back to 32-wide tiles in one stage
    (``launch.launch``) on a GPU it does not fit."""
    safe = config.with_(
        num_warps=_SAFE_WARPS, num_stages=1, **{tile: min(size, _SAFE_TILE) for tile, size in config.tiles}
    )
    launch.launch(f"ssd.{kernel}", run, config, safe, operand)
