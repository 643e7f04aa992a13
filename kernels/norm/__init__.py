"""Gated RMSNorm (Mamba2's ``norm(y * silu(z))`` per group): the PyTorch reference and a Triton kernel."""
