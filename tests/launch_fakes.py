"""A stand-in for a GPU with little shared memory, for the launch fallback tests (``kernels/launch.py``)."""

from __future__ import annotations

from triton.runtime.errors import OutOfResources


class SmallGPU:
    """Wraps a Triton kernel: a launch with more than one pipeline stage or a tile over ``max_tile`` raises
    ``OutOfResources`` (as Triton does before running a config that does not fit); others run the
    kernel. ``launches`` records the keyword arguments of the launches that ran."""

    def __init__(self, kernel, max_tile: int = 32):
        self.kernel, self.max_tile, self.launches = kernel, max_tile, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            tiles = [v for k, v in kwargs.items() if k.startswith("B") and k.isupper() and type(v) is int]
            if kwargs.get("num_stages", 3) > 1 or max(tiles, default=0) > self.max_tile:
                raise OutOfResources(300_000, 101_376, "shared memory")
            self.launches.append(kwargs)
            return self.kernel[grid](*args, **kwargs)

        return launch


def on_small_gpu(monkeypatch, module, *names: str, max_tile: int = 32) -> dict[str, SmallGPU]:
    """Replaces the kernels ``names`` of ``module`` by ``SmallGPU`` wrappers; returns them by name."""
    fakes = {name: SmallGPU(getattr(module, name), max_tile) for name in names}
    for name, fake in fakes.items():
        monkeypatch.setattr(module, name, fake)
    return fakes
