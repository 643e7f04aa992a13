"""Launch configurations of the GEMV kernel (the table ``kernels/launch.py`` launches from).

A config has four tiles: ``BM`` rows of x, ``BN`` rows of W and ``BK`` columns of both per program and
step, and ``SPLIT_K``, the number of programs that share one ``[BM, BN]`` block of y along K (more than one
costs a second launch, ``gemv.py``). The table holds one entry per bucket of M (the rows of x; at one row, two
entries, picked by the product's rows and norm: ``one_row_bucket``): up to 4
rows the kernel multiplies on the CUDA cores with an fp32 accumulator of ``BM * BN * BK`` elements (``[BN, BK]`` at
one row), 32 registers a thread in the table's buckets; from 5 rows on it uses ``tl.dot`` (tensor cores need 16
rows: fewer are padded, which costs registers but no memory traffic).

``SPLIT_K`` is not in the table but derived from the shape (``pick``; ``m1_wide`` never splits): the grid should
fill every SM ``WAVES`` times over, since a matrix-vector product is bound by how many bytes are in flight; a weight
too short for that at the table's ``BN`` is split along K while each split keeps at least ``MIN_STEPS`` steps of
``BK`` (a pipeline of fewer steps never fills). ``m1`` is the config of ``benchmarks/bench_gemv.py``'s one-row
candidates whose time summed over a decode step's products was the least on the H100, for StateX GLA-1.3B (the
grouped and SwiGLU launches included, which take these tiles too) and within 1% of the least for Mamba2-1.3B:
2-row strips of W in 1024-column steps, 2 warps (one row's loop loads a step ahead by itself, so one stage:
``gemv._one_row_dot``); with it the rule never splits those shapes, as the measurement preferred. It serves
every one-row product but the wide ones below; the grouped and SwiGLU kernels sum in the plain GEMV's tiles to give
its bits (a group whose products would take different entries runs apart: ``dispatch.one_launch_products``).
``m1_wide`` (8-row strips, 8 warps; never split) serves the one-row products whose grid at its 8 rows a
program still fills every SM ``WIDE_MIN_WAVES`` times over, and those with a gated norm (``one_row_bucket``): at 1.3B
shapes Mamba2's in_proj, out_proj and the heads. The gated norm's prologue (the step's partial sums of squares added
up) is paid once a program, so fewer, wider programs pay it less often. A graph-replay sweep of the whole step
(``benchmarks/sweep_decode_tiles.py``, H100) found 8-row tiles faster for Mamba2's products and slower for GLA's
narrower ones (its SwiGLU GEMV among them), and a split of out_proj at 8 rows slower than none. The other buckets are
untuned, and the models send those products to cuBLAS (``dispatch.GEMV_MAX_ROWS``), which was as fast or faster at
most shapes at 16 and 64 rows; with ``dispatch.GROUPED_MAX_ROWS`` raised the grouped and SwiGLU launches take them at
those rows (``group_config``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import triton
from statex_hf.kernels import launch
from statex_hf.kernels.launch import LaunchConfig

TABLES: dict[str, dict[str, LaunchConfig]] = {
    "default": {
        "m1": LaunchConfig.of(2, 1, BM=1, BN=2, BK=1024, SPLIT_K=1),
        "m1_wide": LaunchConfig.of(8, 1, BM=1, BN=8, BK=1024, SPLIT_K=1),
        "m2": LaunchConfig.of(4, 4, BM=2, BN=8, BK=256, SPLIT_K=1),
        "m4": LaunchConfig.of(4, 4, BM=4, BN=8, BK=128, SPLIT_K=1),
        "m16": LaunchConfig.of(4, 4, BM=16, BN=32, BK=128, SPLIT_K=1),
        "m64": LaunchConfig.of(4, 3, BM=64, BN=64, BK=64, SPLIT_K=1),
    },
}
# Fits any GPU and any M (one row of x per program, a grid axis over the rows): slow, never wrong.
SAFE = LaunchConfig.of(4, 1, BM=1, BN=16, BK=32, SPLIT_K=1)
WAVES = 2
WIDE_MIN_WAVES = 8  # a one-row product takes ``m1_wide`` where its grid at that BN is at least this many waves,
WIDE_GATED_NORM = True  # or where it has a gated norm
MIN_STEPS = 2
H100_SMS = 132  # the SM count assumed off CUDA, so CPU runs pick what an H100 would


def one_row_bucket(n: int, table: Mapping[str, LaunchConfig], sms: int, gated_norm: bool = False) -> str:
    """The table entry for one row of x and ``n`` rows of W: ``"m1_wide"`` where its programs still fill the GPU's
    ``sms`` multiprocessors ``WIDE_MIN_WAVES`` times over, or x is normalized with a gate, else ``"m1"``."""
    fills = triton.cdiv(n, table["m1_wide"].BN) >= WIDE_MIN_WAVES * sms
    return "m1_wide" if fills or (gated_norm and WIDE_GATED_NORM) else "m1"


def bucket(m: int, n: int, table: Mapping[str, LaunchConfig], sms: int, gated_norm: bool = False) -> str:
    """The table entry for ``m`` rows of x and ``n`` rows of W (``gated_norm``: x normalized with a gate)."""
    if m <= 1:
        return one_row_bucket(n, table, sms, gated_norm)
    return "m2" if m <= 2 else "m4" if m <= 4 else "m16" if m <= 16 else "m64"


def multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return H100_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def split_k(config: LaunchConfig, m: int, n: int, k: int, sms: int) -> int:
    """The number of K splits (a power of two) that brings the grid to ``WAVES * sms`` programs, or as close
    as ``MIN_STEPS`` steps of ``BK`` per split allow."""
    programs = triton.cdiv(n, config.BN) * triton.cdiv(m, config.BM)
    splits = 1
    while programs * splits < WAVES * sms and triton.cdiv(k, config.BK * splits * 2) >= MIN_STEPS:
        splits *= 2
    return splits


def pick(m: int, n: int, k: int, device: torch.device, gated_norm: bool = False) -> LaunchConfig:
    """The table's config for an ``[m, k] x [n, k]^T`` product on ``device`` (``gated_norm``: of x normalized with a
    gate), its ``SPLIT_K`` set by ``split_k``; ``m1_wide`` never splits."""
    table, sms = launch.device_table(TABLES, device), multiprocessors(device)
    entry = bucket(m, n, table, sms, gated_norm)
    config = table[entry]
    return config.with_(SPLIT_K=1 if entry == "m1_wide" else split_k(config, m, n, k, sms))


def one_row_buckets(ns: Sequence[int], device: torch.device) -> set[str]:
    """The one-row entries that products of ``ns`` rows of W each take on ``device`` (one entry: one launch of
    the grouped GEMV sums them as the separate GEMVs do)."""
    table, sms = launch.device_table(TABLES, device), multiprocessors(device)
    return {one_row_bucket(n, table, sms) for n in ns}


def one_row_config(ns: Sequence[int], device: torch.device) -> LaunchConfig:
    """The tiles of one launch of one-row products of ``ns`` rows of W (the grouped and SwiGLU GEMVs): their common
    entry, or ``"m1"`` where they differ; K never split."""
    buckets = one_row_buckets(ns, device)
    entry = buckets.pop() if len(buckets) == 1 else "m1"
    return launch.device_table(TABLES, device)[entry].with_(SPLIT_K=1)


def group_config(m: int, ns: Sequence[int], device: torch.device) -> LaunchConfig:
    """The tiles of one launch of ``m`` rows of x with weights of ``ns`` rows (the grouped and SwiGLU GEMVs): at one
    row ``one_row_config``'s, at more the table's entry for ``m`` rows (``bucket``: tensor cores from 5 rows on, the
    plain GEMV's tiles at those rows); K never split."""
    if m <= 1:
        return one_row_config(ns, device)
    table, sms = launch.device_table(TABLES, device), multiprocessors(device)
    return table[bucket(m, max(ns, default=0), table, sms)].with_(SPLIT_K=1)


def gemv_launch(
    run: Callable[[LaunchConfig], None], m: int, n: int, k: int, operand: torch.Tensor, gated_norm: bool = False
) -> None:
    """Launches ``run(config)`` with ``launch.OVERRIDES["linear.gemv"]`` or else ``pick``'s config, falling back
    to ``SAFE`` (``launch.launch``) on a GPU it does not fit."""
    name = "linear.gemv"
    config = launch.OVERRIDES.get(name) or pick(m, n, k, operand.device, gated_norm)
    launch.launch(name, run, config, SAFE, operand)
