"""Token-mixer kernels for StateX models: plain-PyTorch references and Triton fast paths.

Installed as ``statex_hf.kernels``; one folder per op (``gla``, ``ssd``, ``conv``), each with a
``naive.py`` reference that defines correctness.
"""
