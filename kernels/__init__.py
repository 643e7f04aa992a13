"""Token-mixer kernels for StateX models: plain-PyTorch references and Triton fast paths.

Installed as ``statex_hf.kernels``. One folder per op (``gla``, ``ssd``, ``conv``, ``norm``), named
as fla names its files:

- ``naive.py``: the plain-PyTorch reference, the definition of correct (and the CPU path where no
  faster PyTorch path exists);
- ``*_torch.py``: any other PyTorch path (``chunk_torch.py``, the chunked CPU path);
- every other file is Triton: ``chunk.py`` (training), ``fused_recurrent.py`` / ``state_update.py`` /
  ``causal_conv1d_update.py`` (decode), one file per stage that ``chunk.py`` composes, the op's own
  name where it has one kernel (``causal_conv1d.py``, ``gated_rmsnorm.py``), and ``configs.py``, the
  op's launch table.

Shared across ops: ``dispatch.py`` (the one place that picks an implementation per call),
``launch.py`` (how a config is launched, with the fallback for a GPU it does not fit) and
``utils.py`` (host-side helpers).
"""
