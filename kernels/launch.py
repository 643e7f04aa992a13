"""How every Triton kernel is launched: a config from its op's table, and a rule for a GPU it does not fit.

Each op keeps its launch configurations (tiles, warps, pipeline stages) in one table, its folder's
``configs.py``, instead of constants spread over the launchers, so that
``benchmarks/sweep_launch_configs.py`` can try a grid of configs per kernel (through ``OVERRIDES``)
and the tuned values land in one place. No autotuning at run time: the first call compiles one
config per kernel. A table may hold entries per GPU (``device_table``); the rest comes from its
``"default"`` entry, tuned on a Hopper GPU (an H100, or for the SSD kernels an H200; each table's
docstring says which).

On a GPU with less shared memory than the tuned one, a config may not fit: Triton raises
``OutOfResources`` before the kernel runs, and ``launch`` retries it with one pipeline stage, then
with the op's small safe config, warns, and launches the first that fits from then on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from statex_hf.kernels.utils import on_device_of
from triton.runtime.errors import OutOfResources


@dataclass(frozen=True)
class LaunchConfig:
    """The tile sizes of one kernel (by the names of its ``tl.constexpr`` arguments) and Triton's
    ``num_warps`` / ``num_stages``. Tiles read as attributes: ``config.BK``."""

    tiles: tuple[tuple[str, int], ...]
    num_warps: int
    num_stages: int

    @classmethod
    def of(cls, num_warps: int, num_stages: int, **tiles: int) -> LaunchConfig:
        return cls(tuple(tiles.items()), num_warps, num_stages)

    def __getattr__(self, name: str) -> int:
        for tile, size in self.__dict__.get("tiles", ()):
            if tile == name:
                return size
        raise AttributeError(name)

    def with_(self, num_warps: int | None = None, num_stages: int | None = None, **tiles: int) -> LaunchConfig:
        """This config with some tiles, warps or stages changed (a tile it does not have is an error)."""
        unknown = set(tiles) - {name for name, _ in self.tiles}
        if unknown:
            raise ValueError(f"{self} has no tile {sorted(unknown)}")
        return replace(
            self,
            tiles=tuple((name, tiles.get(name, size)) for name, size in self.tiles),
            num_warps=self.num_warps if num_warps is None else num_warps,
            num_stages=self.num_stages if num_stages is None else num_stages,
        )

    def kwargs(self) -> dict[str, int]:
        """The launch's keyword arguments: ``kernel[grid](..., **config.kwargs())``."""
        return {**dict(self.tiles), "num_warps": self.num_warps, "num_stages": self.num_stages}

    def __repr__(self) -> str:
        tiles = ", ".join(f"{name}={size}" for name, size in self.tiles)
        return f"LaunchConfig({tiles + ', ' if tiles else ''}num_warps={self.num_warps}, num_stages={self.num_stages})"


# Kernel name ("op.kernel") -> the config to launch instead of the table's, with no fallback while set:
# for the launch-config sweep, which times exactly the config it asked for or learns it does not fit.
OVERRIDES: dict[str, LaunchConfig] = {}
# (kernel, config, device, dtype) whose config did not fit the GPU -> the config launched instead.
_REPLACED: dict[tuple, LaunchConfig] = {}
_DEVICE_NAMES: dict[int, str] = {}


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` (cached), ``""`` off CUDA."""
    if device.type != "cuda":
        return ""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _DEVICE_NAMES:
        _DEVICE_NAMES[index] = torch.cuda.get_device_name(index)
    return _DEVICE_NAMES[index]


def device_table(tables: Mapping[str, Mapping[str, Any]], device: torch.device) -> dict[str, Any]:
    """An op's table for ``device``: its ``"default"`` entries, updated with those of the first other key
    that the GPU's name contains (``"H200"`` matches ``"NVIDIA H200"``)."""
    table = dict(tables["default"])
    name = device_name(device)
    for key, entries in tables.items():
        if key != "default" and key in name:
            table.update(entries)
            break
    return table


def launch(
    kernel: str,
    run: Callable[[LaunchConfig], None],
    config: LaunchConfig,
    safe: LaunchConfig,
    operand: torch.Tensor,
) -> None:
    """Calls ``run(config)``. When ``config`` needs more shared memory than the GPU has, retries with one
    pipeline stage, then with ``safe``, warns, and launches the first that fits from then on for that
    config on that device and dtype (``operand``, an input of the kernel, gives them). A config in
    ``OVERRIDES`` (the caller's table already returned it) runs as it is. It runs on ``operand``'s GPU
    (``utils.on_device_of``), whichever is current."""
    with on_device_of(operand):
        _launch(kernel, run, config, safe, operand)


def _launch(
    kernel: str, run: Callable[[LaunchConfig], None], config: LaunchConfig, safe: LaunchConfig, operand: torch.Tensor
) -> None:
    if kernel in OVERRIDES:
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
    for candidate in dict.fromkeys(c for c in (config.with_(num_stages=1), safe) if c != config):
        try:
            run(candidate)
        except OutOfResources:
            continue
        _REPLACED[key] = candidate
        warnings.warn(
            f"Triton kernel {kernel}: {config} does not fit this GPU ({too_large}); launching {candidate}, "
            "which is slower",
            stacklevel=2,
        )
        return
    raise too_large
