"""``y = x @ W.T + b`` for the few rows of a decode step: a Triton matrix-vector kernel that streams the weight
at the memory bandwidth (``gemv.py``), its launch table (``configs.py``) and the PyTorch reference
(``naive.py``). Forward only, and not wired into the models: ``benchmarks/bench_gemv.py`` decides."""

from statex_hf.kernels.linear.naive import naive_linear

__all__ = ["naive_linear"]
