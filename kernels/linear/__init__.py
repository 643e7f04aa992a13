"""``y = x @ W.T + b`` for the few rows of a decode step: a Triton matrix-vector kernel that streams the weight
at the memory bandwidth (``gemv.py``), its launch table (``configs.py``) and the PyTorch reference
(``naive.py``). Forward only; the models call it through ``dispatch.linear`` for one-row no-grad CUDA
products (a B = 1 decode step), where ``benchmarks/bench_gemv.py`` measured it ahead of cuBLAS."""

from statex_hf.kernels.linear.naive import naive_linear

__all__ = ["naive_linear"]
