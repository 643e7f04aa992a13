"""Several products of the same x in one launch: ``[x @ W_i.T for each i]`` (a decode step's projections of one
hidden state), and ``silu(x @ Wg.T) * (x @ Wu.T)`` (an MLP's gate and up products with its SwiGLU).

In a CUDA-graph decode step every kernel costs the replay about as much again as a few-microsecond product
takes itself (``benchmarks/README.md``, "generate"), and GLA's mixer takes five products of one input, its
MLP two and a SwiGLU. Here one grid covers the row blocks of all the weights: the group's programs are laid
end to end, program ``p`` serving weight ``i`` from its first block ``S_i`` on (a chain of comparisons against
the ``S_i``, unrolled at compile time). Each program's sum is ``gemv.py``'s (``_one_row_dot``, the same loads and
order, no split of K; the SwiGLU kernel sums its two weights in one loop of it, each as alone) in the tiles its
products take (``configs.group_config``), so every output is the separate GEMV's bit for bit wherever that GEMV
takes the same tiles and does not split K either (``configs.split_k``: every one-row product of the 1.3B models'
groups, whose inputs have K = 2048; a weight of few rows at a longer K splits there, and a group whose products
would take different tiles takes the narrow ones, so those sum in another order and agree to rounding, not bit for
bit: ``dispatch.one_launch_products`` runs such a group apart); the SwiGLU epilogue rounds where
torch and ``kernels/activations/swiglu.py`` round (each product to the weights' dtype, then ``silu``, then the
product). With a block's norm (``row_norm.py``) x is the residual stream, normalized as it is loaded.

**More rows** (a batch's decode step, ``dispatch.GROUPED_MAX_ROWS``): a second grid axis over blocks of ``BM`` rows of
x, each program summing as the plain GEMV's many-row loop does (``gemv._row_block_dot``: on the tensor cores from
``BM = 16``) in the table's tiles for those rows (``configs.group_config``); the library's separate products there
are cuBLAS's, so these agree with them to rounding. One-row tiles (``BM = 1``: the ``SAFE`` fallback) run a program
per row. The norm prologue is one row's alone.

No bias, weights contiguous and of x's dtype (with a norm, of its output's); forward only (decode runs under
``torch.no_grad``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from statex_hf.kernels import launch
from statex_hf.kernels.activations.elementwise import silu
from statex_hf.kernels.dependent_launch import pdl_kwargs, wait_for_predecessor
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.linear.configs import SAFE, group_config
from statex_hf.kernels.linear.gemv import _one_row_dot, _row_block_dot, dot_precision, norm_constants
from statex_hf.kernels.linear.row_norm import RowNorm
from statex_hf.kernels.utils import needs_grad

MAX_GROUP = 6  # the kernel's weight slots (GLA's mixer uses five: q, k, v, g and the gate's low-rank down)


@triton.jit
def _pick(pid, start, first, w, w_i, y, y_i, n, n_i):
    """Weight ``i``'s pointers, size and first block where program ``pid`` is past that first block."""
    past = pid >= first
    return tl.where(past, first, start), tl.where(past, w_i, w), tl.where(past, y_i, y), tl.where(past, n_i, n)


@triton.jit
def _row_block(M, BM: tl.constexpr):
    """The rows of x of this program's block (grid axis 1) and their mask."""
    rows_m = tl.program_id(1) * BM + tl.arange(0, BM)
    return rows_m, rows_m < M


@triton.jit
def _gemv_group_kernel(x, M, K, w0, w1, w2, w3, w4, w5, y0, y1, y2, y3, y4, y5, N0, N1, N2, N3, N4, N5,
                       S1, S2, S3, S4, S5, norm_w, eps, G: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                       BK: tl.constexpr, PRECISION: tl.constexpr, USE_PDL: tl.constexpr, NORM: tl.constexpr,
                       ROUND_X: tl.constexpr, X_DTYPE: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr,
                       N_DTYPE: tl.constexpr):  # fmt: skip
    tl.static_assert(BM == 1 or not NORM, "the norm prologue is one row's (_one_row_dot)")
    pid = tl.program_id(0)
    start, w, y, n = 0, w0, y0, N0
    if G > 1:
        start, w, y, n = _pick(pid, start, S1, w, w1, y, y1, n, N1)
    if G > 2:
        start, w, y, n = _pick(pid, start, S2, w, w2, y, y2, n, N2)
    if G > 3:
        start, w, y, n = _pick(pid, start, S3, w, w3, y, y3, n, N3)
    if G > 4:
        start, w, y, n = _pick(pid, start, S4, w, w4, y, y4, n, N4)
    if G > 5:
        start, w, y, n = _pick(pid, start, S5, w, w5, y, y5, n, N5)
    rows_n = (pid - start) * BN + tl.arange(0, BN)
    cols = tl.arange(0, BK)
    n_mask = rows_n < n
    w_tile = w + rows_n[:, None].to(tl.int64) * K + cols[None, :]
    if BM == 1:  # a program per row of x (grid axis 1); waits under PDL
        row = tl.program_id(1).to(tl.int64)
        total = _one_row_dot(x + row * K + cols, w_tile, w_tile, n_mask, 0, K, K, norm_w, eps, K, x, BN, BK, False,
                             USE_PDL, NORM, False, ROUND_X, X_DTYPE, NORM_BEFORE_GATE, N_DTYPE, False)[0]  # fmt: skip
        tl.store(y + row * n + rows_n, total.to(y.dtype.element_ty), mask=n_mask)
    else:
        rows_m, m_mask = _row_block(M, BM)
        wait_for_predecessor(USE_PDL)
        x_tile = x + rows_m[:, None].to(tl.int64) * K + cols[None, :]
        total = _row_block_dot(x_tile, w_tile, m_mask, n_mask, 0, K, K, BM, BN, BK, PRECISION)
        block = rows_m[:, None].to(tl.int64) * n + rows_n[None, :]
        tl.store(y + block, total.to(y.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _swiglu_epilogue(gate, up, dtype: tl.constexpr):
    """``silu(round(gate)) * round(up)`` rounded as torch and the SwiGLU kernel round, from fp32 sums."""
    s = silu(gate.to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    return (s * up.to(dtype).to(tl.float32)).to(dtype)


@triton.jit
def _gemv_swiglu_kernel(x, wg, wu, out, M, N, K, norm_w, eps, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                        PRECISION: tl.constexpr, USE_PDL: tl.constexpr, NORM: tl.constexpr, ROUND_X: tl.constexpr,
                        X_DTYPE: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, N_DTYPE: tl.constexpr):  # fmt: skip
    tl.static_assert(BM == 1 or not NORM, "the norm prologue is one row's (_one_row_dot)")
    rows_n = tl.program_id(0) * BN + tl.arange(0, BN)
    cols = tl.arange(0, BK)
    n_mask = rows_n < N
    rows = rows_n[:, None].to(tl.int64) * K + cols[None, :]
    dtype = out.dtype.element_ty
    if BM == 1:  # a program per row of x (grid axis 1); waits under PDL
        row = tl.program_id(1).to(tl.int64)
        gate, up, _ = _one_row_dot(x + row * K + cols, wg + rows, wu + rows, n_mask, 0, K, K, norm_w, eps, K, x, BN,
                                   BK, True, USE_PDL, NORM, False, ROUND_X, X_DTYPE, NORM_BEFORE_GATE, N_DTYPE,
                                   False)  # fmt: skip
        tl.store(out + row * N + rows_n, _swiglu_epilogue(gate, up, dtype), mask=n_mask)
    else:  # the two products one after the other, each streaming its weight through the pipeline
        rows_m, m_mask = _row_block(M, BM)
        wait_for_predecessor(USE_PDL)
        x_tile = x + rows_m[:, None].to(tl.int64) * K + cols[None, :]
        gate = _row_block_dot(x_tile, wg + rows, m_mask, n_mask, 0, K, K, BM, BN, BK, PRECISION)
        up = _row_block_dot(x_tile, wu + rows, m_mask, n_mask, 0, K, K, BM, BN, BK, PRECISION)
        block = rows_m[:, None].to(tl.int64) * N + rows_n[None, :]
        tl.store(out + block, _swiglu_epilogue(gate, up, dtype), mask=m_mask[:, None] & n_mask[None, :])


def _check(x: torch.Tensor, weights: Sequence[torch.Tensor], norm: RowNorm | None) -> tuple[torch.Tensor, dict]:
    """x as ``[M, K]`` contiguous rows, and the kernels' norm arguments (``norm_w``, ``eps`` and the constants)."""
    if x.dim() == 0:
        raise ValueError("gemv_group: x is a scalar; give it as [..., K]")
    K = x.shape[-1]
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"gemv_group: x's dtype {x.dtype} is not one of bf16, fp16, fp32")
    rows = math.prod(x.shape[:-1])
    if norm is not None and rows != 1:
        raise ValueError(f"gemv_group: a norm takes one row of x (a decode step at batch 1), not {rows}")
    if norm is not None and norm.gate is not None:
        raise ValueError("gemv_group: a gated norm is gemv's alone (Mamba2's out_proj); pass a norm without a gate")
    if norm is not None and not norm.applies(x):
        raise ValueError(f"gemv_group: the norm's weight {tuple(norm.weight.shape)} must be [K] = [{K}], contiguous")
    dtype = x.dtype if norm is None else norm.normed_dtype(x.dtype)
    for w in weights:
        if w.dim() != 2 or w.shape[1] != K or w.dtype != dtype or not w.is_contiguous():
            raise ValueError(
                f"gemv_group: weight {tuple(w.shape)} {w.dtype} must be [N, {K}], contiguous, in {dtype} (x's dtype, "
                "or its norm's output's)"
            )
    if needs_grad(x, *weights, *([] if norm is None else [norm.weight])):
        raise RuntimeError("gemv_group has no backward (a decode kernel): call it under torch.no_grad()")
    norm_w, eps = (x, 0.0) if norm is None else (norm.weight, norm.eps)
    return x.reshape(rows, K).contiguous(), dict(norm_w=norm_w, eps=eps, **norm_constants(norm, x.dtype))


def _tiles(name: str, m: int, ns: Sequence[int], device: torch.device) -> LaunchConfig:
    """The launch's tiles: ``launch.OVERRIDES[name]`` or the table's (``configs.group_config``)."""
    return launch.OVERRIDES.get(name) or group_config(m, ns, device)


def gemv_group(x: torch.Tensor, weights: Sequence[torch.Tensor], norm: RowNorm | None = None) -> list[torch.Tensor]:
    """``[F.linear(x, w) for w in weights]`` in one launch; at one row equal to ``gemv``'s results where ``gemv``
    takes the same tiles and does not split K (module docstring), at more rows to rounding.

    Args:
        x: ``[..., K]``, the rows of a decode step (one at batch 1; meant for up to 64).
        weights: 1 to ``MAX_GROUP`` weights ``[N_i, K]``, contiguous, in x's dtype (bf16, fp16 or fp32), or with
            ``norm`` in its output's.
        norm: one row of x only: the products of ``norm``'s output on x, computed as x is loaded (``row_norm.py``).

    Returns:
        One tensor ``[..., N_i]`` per weight, in the weights' dtype.
    """
    if not 1 <= len(weights) <= MAX_GROUP:
        raise ValueError(f"gemv_group: {len(weights)} weights; give 1 to {MAX_GROUP}")
    rows, norm_args = _check(x, weights, norm)
    lead, (M, K) = x.shape[:-1], rows.shape
    ys = [torch.empty(M, w.shape[0], device=x.device, dtype=weights[0].dtype) for w in weights]
    if K == 0 or M == 0:
        return [y.zero_().reshape(*lead, y.shape[1]) for y in ys]
    ns = [w.shape[0] for w in weights]

    def run(c: LaunchConfig) -> None:
        blocks = [triton.cdiv(n, c.BN) for n in ns]
        firsts = [sum(blocks[:i]) for i in range(1, MAX_GROUP)]
        slots = MAX_GROUP - len(weights)  # unused slots repeat the last weight: never selected (G guards them)
        w_args = [*weights, *[weights[-1]] * slots]
        y_args = [*ys, *[ys[-1]] * slots]
        n_args = [w.shape[0] for w in w_args]
        if sum(blocks):
            _gemv_group_kernel[(sum(blocks), triton.cdiv(M, c.BM))](
                rows, M, K, *w_args, *y_args, *n_args, *firsts, **norm_args, G=len(weights), BM=c.BM, BN=c.BN,
                BK=c.BK, PRECISION=dot_precision(x.dtype), num_warps=c.num_warps, num_stages=c.num_stages,
                **pdl_kwargs(),
            )  # fmt: skip

    config = _tiles("linear.gemv_group", M, ns, x.device)
    launch.launch("linear.gemv_group", run, config, SAFE, rows)
    return [y.reshape(*lead, -1) for y in ys]


def gemv_swiglu(
    x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor, norm: RowNorm | None = None
) -> torch.Tensor:
    """``silu(F.linear(x, gate_weight)) * F.linear(x, up_weight)`` in one launch: at one row the GEMVs' products (bit
    for bit where ``gemv`` does not split K), at more rows the products to rounding; the SwiGLU kernel's roundings.

    Args:
        x: ``[..., K]``, the rows of a decode step (one at batch 1; meant for up to 64).
        gate_weight, up_weight: ``[N, K]`` each, contiguous, in x's dtype (bf16, fp16 or fp32), or with ``norm`` in
            its output's.
        norm: one row of x only: the products of ``norm``'s output on x, computed as x is loaded (``row_norm.py``).

    Returns:
        ``[..., N]`` in the weights' dtype.
    """
    if gate_weight.shape != up_weight.shape:
        raise ValueError(f"gemv_swiglu: gate {tuple(gate_weight.shape)} and up {tuple(up_weight.shape)} differ")
    rows, norm_args = _check(x, (gate_weight, up_weight), norm)
    lead, (M, K), N = x.shape[:-1], rows.shape, gate_weight.shape[0]
    out = torch.empty(M, N, device=x.device, dtype=gate_weight.dtype)

    def run(c: LaunchConfig) -> None:
        _gemv_swiglu_kernel[(triton.cdiv(N, c.BN), triton.cdiv(M, c.BM))](
            rows, gate_weight, up_weight, out, M, N, K, **norm_args, BM=c.BM, BN=c.BN, BK=c.BK,
            PRECISION=dot_precision(x.dtype), num_warps=c.num_warps, num_stages=c.num_stages, **pdl_kwargs(),
        )  # fmt: skip

    if N and K and M:
        launch.launch("linear.gemv_swiglu", run, _tiles("linear.gemv_swiglu", M, [N], x.device), SAFE, rows)
    else:
        out.zero_()  # K = 0: both products are 0, and silu(0) * 0 = 0
    return out.reshape(*lead, N)
