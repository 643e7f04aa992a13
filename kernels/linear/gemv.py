"""``y = x @ W.T + b`` for the few rows of a decode step (matrix-vector products), as a Triton kernel.

At one to a few dozen rows of x, ``nn.Linear`` reads its whole weight for a handful of multiply-adds per
element: the product is bound by HBM bandwidth, and the only question is how close to it the weight
streams. One program owns ``BN`` rows of W (output features) and ``BM`` rows of x; it walks K in steps of
``BK`` columns, each step one ``[BN, BK]`` tile of W loaded along K (contiguous in ``nn.Linear``'s
row-major weight, so the loads are wide and coalesced). In fp32 (``naive.py``'s reference, in another order)::

    y[m, n] = round(b[n] + sum_k x[m, k] W[n, k])

One row of x (``BM = 1``, a B = 1 decode step, ``_one_row_dot``) accumulates elementwise in a ``[BN, BK]`` fp32
tile in the layout the weight tile is loaded in, and loads each step's tiles one step ahead (a program's time
is its DRAM round trips, and Triton pipelines no load that feeds no ``tl.dot``: ``num_stages`` does nothing
there). Two to 4 rows accumulate elementwise in a ``[BM, BN, BK]`` fp32 tile; from 5 rows on, ``tl.dot`` on
the tensor cores into ``[BM, BN]``, with ``num_stages`` steps in flight (Triton's software pipelining;
``configs.py`` picks by M). Each way the sum over K is taken once at the end (no reduction inside the loop).
A grid axis over blocks of ``BM`` rows takes any M (each block reads W once more).

**Split-K, reduced in a second pass.** A weight with few rows (GLA's q / k at N = 1024) gives too few
programs of ``BN`` rows to keep every SM streaming. ``SPLIT_K`` programs then share a block of y, each over
its own range of K, and write fp32 partial sums ``[SPLIT_K, M, N]``; a second kernel adds them in a fixed
order with the bias and rounds once. Chosen over ``tl.atomic_add`` into a zeroed fp32 buffer because
atomics make the sum's order, and so the rounded result, change from call to call (a CUDA-graph decode
must give eager decoding's tokens), and because they would cost more launches: zeroing the buffer, the
product, and a cast to x's dtype with the bias (three), where the second pass costs two. Without a split
the product is one launch and writes y (with the bias) itself. A graph step pays each launch, so
``configs.split_k`` splits only weights too short to fill the GPU.

Forward only: decode runs under ``torch.no_grad``; a call that would need a gradient is an error.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from statex_hf.kernels.dependent_launch import pdl_kwargs, wait_for_predecessor
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.linear.configs import gemv_launch
from statex_hf.kernels.utils import needs_grad


@triton.jit
def _row_block_dot(x_tile, w_tile, m_mask, n_mask, k_start, k_end, split_len,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """The fp32 sums ``x[rows_m, k_start:k_end] @ W[rows_n, k_start:k_end].T`` of one program, ``[BM, BN]``, for
    two or more rows of x (one row: ``_one_row_dot``).

    ``x_tile`` / ``w_tile`` point at the first ``BK`` columns of the program's rows."""
    cols = tl.arange(0, BK)
    if BM >= 16:
        acc = tl.zeros([BM, BN], dtype=tl.float32)
    else:
        acc = tl.zeros([BM, BN, BK], dtype=tl.float32)
    for step in range(tl.cdiv(split_len, BK)):
        k_mask = k_start + step * BK + cols < k_end
        xs = tl.load(x_tile + step * BK, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        ws = tl.load(w_tile + step * BK, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        if BM >= 16:
            acc += tl.dot(xs, tl.trans(ws), input_precision=PRECISION)
        else:
            acc += xs.to(tl.float32)[:, None, :] * ws.to(tl.float32)[None, :, :]
    if BM >= 16:
        total = acc
    else:
        total = tl.sum(acc, axis=2)
    return total


@triton.jit
def _one_row_dot(x_row, w_tile, v_tile, n_mask, k_start, k_end, split_len,
                 BN: tl.constexpr, BK: tl.constexpr, PAIR: tl.constexpr, USE_PDL: tl.constexpr):  # fmt: skip
    """The fp32 sums ``x[k_start:k_end] . W[rows_n, k_start:k_end]`` of one program, ``[BN]``, for one row of x; with
    ``PAIR``, the same sums of a second weight ``V`` too (``(w_sums, v_sums)``; without, ``v_sums`` is zeros).

    ``x_row`` points at the first ``BK`` columns of the row, ``w_tile`` / ``v_tile`` at the first ``BK`` columns of
    the program's rows of W / V. Each step's tiles are loaded one step ahead, before the step before is summed:
    Triton does not pipeline loads that feed no ``tl.dot`` (``num_stages`` does nothing here), and a program that
    waited on each step's load before asking for the next would pay one DRAM round trip per step. The last step's
    look-ahead is masked off whole (no memory traffic). The products accumulate elementwise in a ``[BN, BK]`` fp32
    tile in the layout the weight is loaded in (no shared-memory shuffle per step), summed over K once at the end.
    Weights are read once per call, so their loads ask L2 to evict them first; x is read by every program.
    A weight's sums do not depend on ``PAIR`` (the same loads, products and order): ``gemv_group.py``'s SwiGLU
    kernel sums its gate and up weights in one loop and matches this kernel's separate products bit for bit.

    Under PDL this is where the calling kernel waits for its predecessor (``kernels/dependent_launch.py``): after the
    first weight tiles are asked for, before x is. No kernel of a decode step writes a stored weight (one made in the
    step runs without PDL: ``DecodeLinear``), so the first step's weight read overlaps the kernel before instead of
    following it: at one or two steps a program, much of a launch's streaming."""
    cols = tl.arange(0, BK)
    acc_w = tl.zeros([BN, BK], dtype=tl.float32)
    acc_v = tl.zeros([BN, BK], dtype=tl.float32)
    k_mask = k_start + cols < k_end
    tile_mask = n_mask[:, None] & k_mask[None, :]
    ws = tl.load(w_tile, mask=tile_mask, other=0.0, eviction_policy="evict_first")
    vs = ws
    if PAIR:
        vs = tl.load(v_tile, mask=tile_mask, other=0.0, eviction_policy="evict_first")
    wait_for_predecessor(USE_PDL)
    xs = tl.load(x_row, mask=k_mask, other=0.0)
    for step in range(tl.cdiv(split_len, BK)):
        ahead = (step + 1) * BK
        k_mask = k_start + ahead + cols < k_end
        tile_mask = n_mask[:, None] & k_mask[None, :]
        xs_ahead = tl.load(x_row + ahead, mask=k_mask, other=0.0)
        ws_ahead = tl.load(w_tile + ahead, mask=tile_mask, other=0.0, eviction_policy="evict_first")
        vs_ahead = vs
        if PAIR:
            vs_ahead = tl.load(v_tile + ahead, mask=tile_mask, other=0.0, eviction_policy="evict_first")
            acc_v += xs.to(tl.float32)[None, :] * vs.to(tl.float32)
        acc_w += xs.to(tl.float32)[None, :] * ws.to(tl.float32)
        xs, ws, vs = xs_ahead, ws_ahead, vs_ahead
    return tl.sum(acc_w, axis=1), tl.sum(acc_v, axis=1)


@triton.jit
def _gemv_kernel(x, w, bias, out, M, N, K, stride_xm, stride_wn,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT_K: tl.constexpr,
                 HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, USE_PDL: tl.constexpr):  # fmt: skip
    if BM != 1:  # one row waits in `_one_row_dot`, after its first weight load
        wait_for_predecessor(USE_PDL)
    pid_n, pid_s, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows_m = pid_m * BM + tl.arange(0, BM)
    rows_n = pid_n * BN + tl.arange(0, BN)
    cols = tl.arange(0, BK)
    m_mask, n_mask = rows_m < M, rows_n < N
    # This program's range of K: the split's share rounded up to whole steps, the last one cut at K.
    split_len = tl.cdiv(tl.cdiv(K, SPLIT_K), BK) * BK
    k_start = pid_s * split_len
    k_end = tl.minimum(k_start + split_len, K)
    w_tile = w + rows_n[:, None].to(tl.int64) * stride_wn + (k_start + cols)[None, :]
    if BM == 1:
        x_row = x + pid_m.to(tl.int64) * stride_xm + k_start + cols
        sums = _one_row_dot(x_row, w_tile, w_tile, n_mask, k_start, k_end, split_len, BN, BK, False, USE_PDL)[0]
        total = sums[None, :]
    else:
        x_tile = x + rows_m[:, None].to(tl.int64) * stride_xm + (k_start + cols)[None, :]
        total = _row_block_dot(x_tile, w_tile, m_mask, n_mask, k_start, k_end, split_len, BM, BN, BK, PRECISION)
    block = rows_m[:, None].to(tl.int64) * N + rows_n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            total += tl.load(bias + rows_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out + block, total.to(out.dtype.element_ty), mask=mask)
    else:
        tl.store(out + pid_s.to(tl.int64) * M * N + block, total, mask=mask)


@triton.jit
def _split_k_sum_kernel(partials, bias, y, MN, N, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                        BLOCK: tl.constexpr, USE_PDL: tl.constexpr):  # fmt: skip
    wait_for_predecessor(USE_PDL)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):  # always this order: the same bits on every call
        total += tl.load(partials + s * MN + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        total += tl.load(bias + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(y + offs, total.to(y.dtype.element_ty), mask=mask)


SUM_BLOCK = 1024  # elements of y per program of the second pass


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with fp32 accumulation, for a few rows of x; no gradient.

    Args:
        x: ``[..., K]`` (leading dimensions flattened to M rows; meant for M of 1 to 64). Rows may have any
            stride; x is copied only when its last dimension is not contiguous.
        weight: ``[N, K]``, ``nn.Linear.weight``, in x's dtype (bf16, fp16 or fp32). A weight not
            contiguous along K is copied on every call (correct, but it defeats the purpose).
        bias: ``[N]`` in x's dtype, or ``None``.

    Returns:
        ``[..., N]`` in x's dtype, a new contiguous tensor.
    """
    if x.dim() == 0 or weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"gemv: x {tuple(x.shape)} and weight {tuple(weight.shape)} do not multiply; "
            "weight must be [N, K] with K = x.shape[-1]"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"gemv: bias {tuple(bias.shape)} must be [N] = [{weight.shape[0]}]")
    dtypes = {t.dtype for t in (x, weight, bias) if t is not None}
    if len(dtypes) > 1 or x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"gemv: x, weight and bias need one dtype of bf16, fp16, fp32; got {sorted(map(str, dtypes))}")
    if needs_grad(x, weight, bias):
        raise RuntimeError("gemv has no backward (a decode kernel): call it under torch.no_grad() or use F.linear")
    N, K = weight.shape
    lead = x.shape[:-1]
    x2 = x.reshape(math.prod(lead), K)
    if K > 0 and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    M = x2.shape[0]
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    if M == 0 or N == 0:
        return y.reshape(*lead, N)
    if K == 0:
        return y.copy_(bias.expand(M, N) if bias is not None else torch.zeros_like(y)).reshape(*lead, N)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"  # fp32 as F.linear computes it (no TF32)
    has_bias = bias is not None

    def run(c: LaunchConfig) -> None:
        out = y if c.SPLIT_K == 1 else torch.empty(c.SPLIT_K, M, N, device=x.device, dtype=torch.float32)
        grid = (triton.cdiv(N, c.BN), c.SPLIT_K, triton.cdiv(M, c.BM))
        _gemv_kernel[grid](
            x2, weight, bias if has_bias else weight, out, M, N, K, x2.stride(0), weight.stride(0),
            HAS_BIAS=has_bias, PRECISION=precision, **c.kwargs(), **pdl_kwargs(),
        )  # fmt: skip
        if c.SPLIT_K > 1:
            _split_k_sum_kernel[(triton.cdiv(M * N, SUM_BLOCK),)](
                out, bias if has_bias else weight, y, M * N, N, SPLIT_K=c.SPLIT_K, HAS_BIAS=has_bias, BLOCK=SUM_BLOCK,
                **pdl_kwargs(),
            )  # fmt: skip

    gemv_launch(run, M, N, K, operand=x2)
    return y.reshape(*lead, N)
