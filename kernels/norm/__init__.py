"""Gated RMSNorm (Mamba2's ``norm(y * silu(z))`` per group, GLA's ``norm(x) * w * silu(g)``): the PyTorch
reference and a Triton kernel."""

from statex_hf.kernels.norm.naive import naive_gated_rmsnorm

__all__ = ["naive_gated_rmsnorm"]
