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

**A block's norm and residual add** (``row_norm.py``). At one row the kernel can take the RMSNorm that precedes
the product (``norm``: x is the residual stream, normalized as it is loaded) and the residual add that follows it
(``residual``: the new stream is stored instead of y), so a pre-norm block needs no norm or add kernel of its own.

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
from statex_hf.kernels.linear.row_norm import RowNorm
from statex_hf.kernels.norm.gated_rmsnorm import TRITON_DTYPES, _round_to
from statex_hf.kernels.utils import needs_grad


def norm_constants(norm: RowNorm | None, x_dtype: torch.dtype) -> dict:
    """The one-row kernels' norm constants (``_one_row_dot``'s ``NORM`` and the norm's casts) for an x of
    ``x_dtype``; ``norm`` None turns the prologue off."""
    if norm is None:
        return dict(NORM=False, ROUND_X=False, X_DTYPE=tl.float32, NORM_BEFORE_GATE=True, N_DTYPE=tl.float32)
    input_dtype = norm.input_dtype or x_dtype
    return dict(
        NORM=True,
        ROUND_X=input_dtype != x_dtype,
        X_DTYPE=TRITON_DTYPES[input_dtype],
        NORM_BEFORE_GATE=norm.norm_before_gate,
        N_DTYPE=TRITON_DTYPES[norm.normed_dtype(x_dtype)],
    )


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s precision for products of ``dtype`` (from 5 rows on): fp32 as ``F.linear`` computes it (no TF32)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def gated_constants(norm: RowNorm | None) -> dict:
    """``_gemv_kernel``'s constants of Mamba2's gated norm (``GATED``, ``NQ``: its partial sums padded to a power of
    two) for ``norm``; off without a gate."""
    if norm is None or norm.gate is None:
        return dict(GATED=False, NQ=1)
    return dict(GATED=True, NQ=triton.next_power_of_2(norm.squares.numel()))


@triton.jit
def _row_rstd(row, K, eps, BK: tl.constexpr, ROUND_X: tl.constexpr, X_DTYPE: tl.constexpr):
    """``(mean_K(u^2) + eps)^(-1/2)`` of the row at ``row`` (pointers to its first ``BK`` columns), ``u`` its fp32
    values, rounded to ``X_DTYPE`` first with ``ROUND_X`` (``row_norm.py``)."""
    cols = tl.arange(0, BK)
    squares = tl.zeros([BK], dtype=tl.float32)
    for step in range(tl.cdiv(K, BK)):
        u = tl.load(row + step * BK, mask=step * BK + cols < K, other=0.0).to(tl.float32)
        if ROUND_X:
            u = _round_to(u, X_DTYPE)
        squares += u * u
    return 1.0 / tl.sqrt(tl.sum(squares, axis=0) / K + eps)


@triton.jit
def _normed(xs, w, rstd, ROUND_X: tl.constexpr, X_DTYPE: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr,
            N_DTYPE: tl.constexpr):  # fmt: skip
    """The norm's output at loaded values ``xs`` with their fp32 weights ``w``, rounded to ``N_DTYPE`` as the norm
    kernel stores it (its casts: ``gated_rmsnorm._gate`` / ``_output``), back in fp32."""
    u = xs.to(tl.float32)
    if ROUND_X:
        u = _round_to(u, X_DTYPE)
    n = u * rstd
    if NORM_BEFORE_GATE:
        out = n * w
    else:
        out = n.to(X_DTYPE).to(tl.float32) * w
    return out.to(N_DTYPE).to(tl.float32)


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
def _one_row_dot(x_row, w_tile, v_tile, n_mask, k_start, k_end, split_len, norm_w, eps, K, early,
                 BN: tl.constexpr, BK: tl.constexpr, PAIR: tl.constexpr, USE_PDL: tl.constexpr,
                 NORM: tl.constexpr, ROW_PASS: tl.constexpr, ROUND_X: tl.constexpr, X_DTYPE: tl.constexpr,
                 NORM_BEFORE_GATE: tl.constexpr, N_DTYPE: tl.constexpr, EARLY: tl.constexpr,
                 gate_row=None, partials=None, Q=1, GATED: tl.constexpr = False, NQ: tl.constexpr = 1):  # fmt: skip
    """The fp32 sums ``x[k_start:k_end] . W[rows_n, k_start:k_end]`` of one program, ``[BN]``, for one row of x; with
    ``PAIR``, the same sums of a second weight ``V`` too (``(w_sums, v_sums, early_values)``; without, ``v_sums`` is
    zeros). ``early`` (``EARLY``): ``[BN]`` pointers the caller's epilogue reads (the residual it adds), loaded right
    after the wait with the first x, so that read is not one more round trip after the products; else zeros.

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
    following it: at one or two steps a program, much of a launch's streaming.

    ``NORM``: x is a block's residual stream, multiplied as its RMSNorm's output (``row_norm.py``). A program that
    walks the whole row sums its squares in the same loop and scales its sums by ``rstd`` at the end (no pass of
    its own before the products: it would be one more round trip for every program); one that walks a share of it
    (``ROW_PASS``: a split of K) first sums the whole row's squares, then normalizes each step's x as the norm
    kernel rounds it.

    ``GATED`` (with ``NORM``): Mamba2's gated norm, gate first (``row_norm.py``): ``gate_row`` points at z as
    ``x_row`` at x, ``partials`` at the ``Q`` partial sums of the row's squares, added up right after the wait; each
    step's x is then gated and normalized as the norm kernel rounds it (``_normed``), whatever the split."""
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
    early_values = tl.zeros([BN], dtype=tl.float32)
    if EARLY:
        early_values = tl.load(early, mask=n_mask, other=0.0).to(tl.float32)
    rstd = 1.0
    nws = xs
    squares = tl.zeros([BK], dtype=tl.float32)
    zs = xs
    if NORM:
        if GATED:  # the sum of squares the kernel that wrote x left in partial sums: one load, beside x's
            qs = tl.arange(0, NQ)
            rstd = 1.0 / tl.sqrt(tl.sum(tl.load(partials + qs, mask=qs < Q, other=0.0), axis=0) / K + eps)
            zs = tl.load(gate_row, mask=k_mask, other=0.0)
        elif ROW_PASS:
            rstd = _row_rstd(x_row - k_start, K, eps, BK, ROUND_X, X_DTYPE)
        nws = tl.load(norm_w + k_start + cols, mask=k_mask, other=0.0)
    for step in range(tl.cdiv(split_len, BK)):
        ahead = (step + 1) * BK
        k_mask = k_start + ahead + cols < k_end
        tile_mask = n_mask[:, None] & k_mask[None, :]
        xs_ahead = tl.load(x_row + ahead, mask=k_mask, other=0.0)
        ws_ahead = tl.load(w_tile + ahead, mask=tile_mask, other=0.0, eviction_policy="evict_first")
        xf = xs.to(tl.float32)
        nws_ahead = nws
        zs_ahead = zs
        if NORM:
            nws_ahead = tl.load(norm_w + k_start + ahead + cols, mask=k_mask, other=0.0)
            if GATED:  # gated_rmsnorm._gate's u, then the norm's roundings
                zs_ahead = tl.load(gate_row + ahead, mask=k_mask, other=0.0)
                zf = zs.to(tl.float32)
                u = xf * zf * tl.sigmoid(zf)
                xf = _normed(u, nws.to(tl.float32), rstd, False, X_DTYPE, False, N_DTYPE)
            elif ROW_PASS:
                xf = _normed(xs, nws.to(tl.float32), rstd, ROUND_X, X_DTYPE, NORM_BEFORE_GATE, N_DTYPE)
            else:  # u * w now, times rstd once the row's squares are summed
                if ROUND_X:
                    xf = _round_to(xf, X_DTYPE)
                squares += xf * xf
                xf = xf * nws.to(tl.float32)
        vs_ahead = vs
        if PAIR:
            vs_ahead = tl.load(v_tile + ahead, mask=tile_mask, other=0.0, eviction_policy="evict_first")
            acc_v += xf[None, :] * vs.to(tl.float32)
        acc_w += xf[None, :] * ws.to(tl.float32)
        xs, ws, vs, nws, zs = xs_ahead, ws_ahead, vs_ahead, nws_ahead, zs_ahead
    w_sums, v_sums = tl.sum(acc_w, axis=1), tl.sum(acc_v, axis=1)
    if NORM and not ROW_PASS and not GATED:
        rstd = 1.0 / tl.sqrt(tl.sum(squares, axis=0) / K + eps)
        w_sums, v_sums = w_sums * rstd, v_sums * rstd
    return w_sums, v_sums, early_values


@triton.jit
def _add_residual(total, r, Y_DTYPE: tl.constexpr, H_DTYPE: tl.constexpr):
    """``round(r + round(y))`` for fp32 sums ``total`` and residual values ``r`` (``row_norm.py``'s epilogue): y
    rounded to ``Y_DTYPE`` as the product is stored, then torch's add to the residual stream (an fp32 sum, one
    rounding)."""
    return _round_to(r + total.to(Y_DTYPE).to(tl.float32), H_DTYPE)


@triton.jit
def _gemv_kernel(x, w, bias, out, M, N, K, stride_xm, stride_wn, norm_w, eps, residual, gate, squares, Q,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT_K: tl.constexpr,
                 HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, USE_PDL: tl.constexpr,
                 NORM: tl.constexpr = False, ROUND_X: tl.constexpr = False, X_DTYPE: tl.constexpr = tl.float32,
                 NORM_BEFORE_GATE: tl.constexpr = True, N_DTYPE: tl.constexpr = tl.float32,
                 HAS_RESIDUAL: tl.constexpr = False, Y_DTYPE: tl.constexpr = tl.float32,
                 GATED: tl.constexpr = False, NQ: tl.constexpr = 1):  # fmt: skip
    # NORM / HAS_RESIDUAL (one row only: ``gemv``): the norm prologue and the residual add (``row_norm.py``); with
    # the add, ``out`` is the new residual stream (no split) and the product itself is not stored. GATED: the norm
    # is Mamba2's gated one, z at ``gate``, its sum of squares in ``Q`` partial sums at ``squares``.
    if BM != 1:  # one row waits in `_one_row_dot`, after its first weight load
        wait_for_predecessor(USE_PDL)
    tl.static_assert(BM == 1 or not NORM, "the norm prologue is one row's (_one_row_dot)")
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
    block = rows_m[:, None].to(tl.int64) * N + rows_n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if BM == 1:
        x_row = x + pid_m.to(tl.int64) * stride_xm + k_start + cols
        r_row = residual + pid_m.to(tl.int64) * N + rows_n
        sums, _, r = _one_row_dot(x_row, w_tile, w_tile, n_mask, k_start, k_end, split_len, norm_w, eps, K, r_row, BN,
                                  BK, False, USE_PDL, NORM, SPLIT_K > 1, ROUND_X, X_DTYPE, NORM_BEFORE_GATE, N_DTYPE,
                                  HAS_RESIDUAL and SPLIT_K == 1, gate + k_start + cols, squares, Q, GATED,
                                  NQ)  # fmt: skip
        total = sums[None, :]
        r = r[None, :]
    else:
        x_tile = x + rows_m[:, None].to(tl.int64) * stride_xm + (k_start + cols)[None, :]
        total = _row_block_dot(x_tile, w_tile, m_mask, n_mask, k_start, k_end, split_len, BM, BN, BK, PRECISION)
        r = tl.zeros([BM, BN], dtype=tl.float32)
        if HAS_RESIDUAL and SPLIT_K == 1:
            r = tl.load(residual + block, mask=mask, other=0.0).to(tl.float32)
    if SPLIT_K == 1:
        if HAS_BIAS:
            total += tl.load(bias + rows_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        if HAS_RESIDUAL:
            total = _add_residual(total, r, Y_DTYPE, out.dtype.element_ty)
        else:  # y in the weight's dtype, stored as out's (fp32 logits: the product's .float())
            total = total.to(Y_DTYPE)
        tl.store(out + block, total.to(out.dtype.element_ty), mask=mask)
    else:
        tl.store(out + pid_s.to(tl.int64) * M * N + block, total, mask=mask)


@triton.jit
def _split_k_sum_kernel(partials, bias, y, MN, N, residual, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                        BLOCK: tl.constexpr, USE_PDL: tl.constexpr, HAS_RESIDUAL: tl.constexpr = False,
                        Y_DTYPE: tl.constexpr = tl.float32):  # fmt: skip
    wait_for_predecessor(USE_PDL)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):  # always this order: the same bits on every call
        total += tl.load(partials + s * MN + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        total += tl.load(bias + offs % N, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(residual + offs, mask=mask, other=0.0).to(tl.float32)
        total = _add_residual(total, r, Y_DTYPE, y.dtype.element_ty)
    else:
        total = total.to(Y_DTYPE)
    tl.store(y + offs, total.to(y.dtype.element_ty), mask=mask)


SUM_BLOCK = 1024  # elements of y per program of the second pass


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    norm: RowNorm | None = None,
    residual: torch.Tensor | None = None,
    residual_dtype: torch.dtype | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with fp32 accumulation, for a few rows of x; no gradient.

    Args:
        x: ``[..., K]`` (leading dimensions flattened to M rows; meant for M of 1 to 64). Rows may have any
            stride; x is copied only when its last dimension is not contiguous.
        weight: ``[N, K]``, ``nn.Linear.weight``, in x's dtype (bf16, fp16 or fp32), or with ``norm`` in the norm
            output's. A weight not contiguous along K is copied on every call (correct, but it defeats the purpose).
        bias: ``[N]`` in weight's dtype, or ``None``.
        norm: one row of x only: the product of ``norm``'s output on x (a block's residual stream, or with a gate
            Mamba2's y), the norm computed as the row is loaded (``row_norm.py``).
        residual: one row only, ``[..., N]`` contiguous: return ``residual.to(residual_dtype) + y`` (torch's add
            and dtype; ``residual_dtype`` holds residual exactly, default its own) instead of y.
        out_dtype: without ``residual``, ``torch.float32``: y as ``.float()`` makes it (a causal LM head's fp32
            logits, rounded to weight's dtype first), stored by the same launch.

    Returns:
        ``[..., N]`` in weight's dtype (with ``residual`` the add's, with ``out_dtype`` that), a new contiguous
        tensor.
    """
    if x.dim() == 0 or weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"gemv: x {tuple(x.shape)} and weight {tuple(weight.shape)} do not multiply; "
            "weight must be [N, K] with K = x.shape[-1]"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"gemv: bias {tuple(bias.shape)} must be [N] = [{weight.shape[0]}]")
    operand_dtype = x.dtype if norm is None else norm.normed_dtype(x.dtype)
    dtypes = {operand_dtype, *(t.dtype for t in (weight, bias) if t is not None)}
    if len(dtypes) > 1 or x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"gemv: x, weight and bias need one dtype of bf16, fp16, fp32; got {sorted(map(str, dtypes))}")
    if needs_grad(x, weight, bias, residual, *([] if norm is None else [norm.weight])):
        raise RuntimeError("gemv has no backward (a decode kernel): call it under torch.no_grad() or use F.linear")
    N, K = weight.shape
    lead = x.shape[:-1]
    x2 = x.reshape(math.prod(lead), K)
    M = x2.shape[0]
    if (norm is not None or residual is not None) and M != 1:
        raise ValueError(f"gemv: a norm or a residual takes one row of x, not {M}")
    if norm is not None and not norm.applies(x):
        raise ValueError(f"gemv: the norm's weight {tuple(norm.weight.shape)} must be [K] = [{K}], contiguous")
    if residual is not None:
        residual_dtype = residual.dtype if residual_dtype is None else residual_dtype
        if residual.shape != (*lead, N) or not residual.is_contiguous():
            raise ValueError(f"gemv: residual {tuple(residual.shape)} must be [..., N] = {(*lead, N)}, contiguous")
        if torch.promote_types(residual.dtype, residual_dtype) != residual_dtype:
            raise ValueError(f"gemv: residual_dtype {residual_dtype} does not hold the residual's {residual.dtype}")
    if out_dtype not in (None, weight.dtype, torch.float32) or (out_dtype is not None and residual is not None):
        raise ValueError(f"gemv: out_dtype {out_dtype} is the weight's dtype or fp32, without a residual")
    if K > 0 and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    if residual is not None:
        out_dtype = torch.promote_types(residual_dtype, weight.dtype)
    y = torch.empty(M, N, device=x.device, dtype=out_dtype or weight.dtype)
    if M == 0 or N == 0:
        return y.reshape(*lead, N)
    if K == 0:
        zeros = bias.expand(M, N) if bias is not None else torch.zeros(M, N, device=x.device, dtype=weight.dtype)
        summed = zeros if residual is None else residual.reshape(M, N).to(residual_dtype) + zeros
        return y.copy_(summed).reshape(*lead, N)
    precision = dot_precision(x.dtype)
    has_bias = bias is not None
    fused = norm_constants(norm, x.dtype) | gated_constants(norm)
    ends = dict(HAS_RESIDUAL=residual is not None, Y_DTYPE=TRITON_DTYPES[weight.dtype])
    norm_args = (weight, 0.0) if norm is None else (norm.weight, norm.eps)
    residual_arg = weight if residual is None else residual
    gated = fused["GATED"]
    gate_args = (norm.gate.reshape(M, K), norm.squares, norm.squares.numel()) if gated else (weight, weight, 1)

    def run(c: LaunchConfig) -> None:
        out = y if c.SPLIT_K == 1 else torch.empty(c.SPLIT_K, M, N, device=x.device, dtype=torch.float32)
        grid = (triton.cdiv(N, c.BN), c.SPLIT_K, triton.cdiv(M, c.BM))
        _gemv_kernel[grid](
            x2, weight, bias if has_bias else weight, out, M, N, K, x2.stride(0), weight.stride(0), *norm_args,
            residual_arg, *gate_args, HAS_BIAS=has_bias, PRECISION=precision, **fused,
            **(ends if c.SPLIT_K == 1 else {}), **c.kwargs(), **pdl_kwargs(),
        )  # fmt: skip
        if c.SPLIT_K > 1:
            _split_k_sum_kernel[(triton.cdiv(M * N, SUM_BLOCK),)](
                out, bias if has_bias else weight, y, M * N, N, residual_arg, SPLIT_K=c.SPLIT_K, HAS_BIAS=has_bias,
                BLOCK=SUM_BLOCK, **ends, **pdl_kwargs(),
            )  # fmt: skip

    gemv_launch(run, M, N, K, operand=x2, gated_norm=gated)
    return y.reshape(*lead, N)
