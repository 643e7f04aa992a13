"""What a piece of code launches on a GPU, counted on CPU: the aten ops that run a kernel, and the Triton
launches (whose kernels the interpreter runs; its own tensor traffic is not counted)."""

from __future__ import annotations

import torch
from statex_hf.kernels import launch
from torch.utils._python_dispatch import TorchDispatchMode
from triton.runtime.interpreter import InterpretedFunction


class LaunchedOps(TorchDispatchMode):
    """``ops``: the aten ops run inside it that may launch a kernel (not views, not allocations), outside
    Triton launches; ``triton``: the Triton kernels launched through ``kernels/launch.py`` (by their names there);
    ``kernels``: everything launched, in order: those ops and names, and the Triton kernels launched directly
    (by their function's name)."""

    NO_KERNEL = {"empty", "empty_like", "empty_strided", "detach", "alias", "promote_types", "_unsafe_view"}
    COPIES = {"clone", "copy_", "_to_copy"}

    def __init__(self, monkeypatch) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.triton: list[str] = []
        self.kernels: list[str] = []
        self.paused = False
        real, real_run = launch.launch, InterpretedFunction.run

        def counted(kernel, *args):
            self.triton.append(kernel)
            self.kernels.append(kernel)
            self.paused = True
            try:
                real(kernel, *args)
            finally:
                self.paused = False

        def run(interpreted, *args, **kwargs):
            if self.paused or kwargs.get("warmup"):
                return real_run(interpreted, *args, **kwargs)
            self.kernels.append(interpreted.fn.__name__)
            self.paused = True
            try:
                return real_run(interpreted, *args, **kwargs)
            finally:
                self.paused = False

        monkeypatch.setattr(launch, "launch", counted)
        monkeypatch.setattr(InterpretedFunction, "run", run)

    @property
    def copies(self) -> list[str]:
        return [op for op in self.ops if op in self.COPIES]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.paused and not func.is_view and name not in self.NO_KERNEL:
            self.ops.append(name)
            self.kernels.append(name)
        return func(*args, **(kwargs or {}))


def decode_step_ops(monkeypatch, model: torch.nn.Module, step: torch.Tensor, cache) -> LaunchedOps:
    """The ops one decode step (``step`` ids after ``cache``) launches."""
    with torch.no_grad(), LaunchedOps(monkeypatch) as seen:
        model(step, cache=cache, use_cache=True, logits_to_keep=1)
    return seen
