"""Elementwise activations fused into one kernel: SwiGLU (``silu(gate) * up``), and torch's own formulas for
``exp``, ``log1p``, ``silu`` and ``logsigmoid`` as Triton functions that other kernels inline."""

from statex_hf.kernels.activations.naive import naive_swiglu

__all__ = ["naive_swiglu"]
