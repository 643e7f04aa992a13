"""``y = x @ W.T + b`` for the few rows of a decode step: a Triton matrix-vector kernel that streams the weight
at the memory bandwidth (``gemv.py``), its launch table (``configs.py``) and the PyTorch reference
(``naive.py``), several products of one x in one launch (``gemv_group.py``), and a block's norm and residual
add inside the products that read and end its sublayers (``row_norm.py``). Forward only; the models
call them through ``dispatch.linear`` / ``one_launch_products`` / ``one_launch_swiglu`` for one-row no-grad
bf16 / fp16 CUDA products (a B = 1 decode step), where ``benchmarks/bench_gemv.py`` measured the GEMV ahead of
cuBLAS, and with ``dispatch.GROUPED_MAX_ROWS`` raised for the grouped launches of a few more rows."""

from statex_hf.kernels.linear.naive import naive_linear

__all__ = ["naive_linear"]
