"""Gated RMSNorm in Triton, forward and backward, in its two orders (``norm_before_gate``):

- Mamba2 (False): ``out = w * round(norm_per_group(x * silu(z)))``, gate first, rounded before the weight;
- GLA (True):     ``out = round(norm_per_group(x) * w * silu(z))``, gate after, fp32 all through.

Same contract as ``kernels/norm/naive.py`` (the reference). Rows are the flattened leading
dims of ``[..., D]``; D splits into groups of S = ``group_size`` channels, each normalized on its own
(GLA's norms use one group, the whole row). The gate z and the weight w are optional (s = 1, w = 1).
One program owns a block of rows and one group; a group of up to a block's channels (``configs.py``)
sits in one block, a wider one is walked in chunks. The layer keeps only x, z, w and one rstd per (row, group);
the backward recomputes silu and the normalized values from them. ``round`` is a cast to x's dtype;
it passes the gradient straight through.

Mamba2, gate first::

    sig  = sigmoid(z),  s = z sig
    u    = x s
    rstd = (mean_S(u^2) + eps)^(-1/2)                       one per (row, group), saved
    n    = u rstd                                           fp32
    out  = w * round(n)                                     round before w (as transformers)

    dn   = dout w
    du   = rstd (dn - n mean_S(dn n))
    dx   = du s,   dz = du x sig (1 + z (1 - sig))
    dw   = sum_rows dout round(n)                           (per-program partials, summed in torch)

GLA, norm first (the gate multiplies the normalized, weighted row)::

    rstd = (mean_S(x^2) + eps)^(-1/2)
    n    = x rstd
    out  = round(n w s)                                     one rounding, at the end

    dn   = dout w s                                         d out / d n
    dx   = rstd (dn - n mean_S(dn n))                       the RMSNorm backward of n = x rstd
    ds   = dout n w,   dz = ds sig (1 + z (1 - sig))        d silu(z) / dz = sig (1 + z (1 - sig))
    dw   = sum_rows dout n s
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from statex_hf.kernels.activations.elementwise import INTERPRETED
from statex_hf.kernels.dependent_launch import pdl_kwargs, wait_for_predecessor
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.norm.configs import norm_launch, row_programs
from statex_hf.kernels.utils import needs_grad

if INTERPRETED:

    @triton.jit
    def _round_to(x, DTYPE: tl.constexpr):
        """fp32 ``x`` rounded to ``DTYPE`` and back. The interpreter truncates fp32 -> bf16 casts, where torch
        and the GPU round to nearest even: here that rounding is done on the bits (NaN kept as it is)."""
        if DTYPE == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
        else:
            return x.to(DTYPE).to(tl.float32)

else:

    @triton.jit
    def _round_to(x, DTYPE: tl.constexpr):
        """fp32 ``x`` rounded to ``DTYPE`` (to nearest even, as torch's cast) and back."""
        return x.to(DTYPE).to(tl.float32)


@triton.jit
def _load(x_ptr, z_ptr, x_offs, z_offs, mask, HAS_GATE: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr):
    """fp32 ``u`` (the values normalized: ``x * silu(z)`` gate first, ``x`` norm first), ``x``, ``z`` and
    ``sigmoid(z)`` at ``x_offs`` / ``z_offs`` (z and sigmoid are 0 without a gate)."""
    x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)
    return _gate(x, z_ptr, z_offs, mask, HAS_GATE, NORM_BEFORE_GATE, False, tl.float32)


@triton.jit
def _residual_sum(x_ptr, r_ptr, x_offs, r_offs, mask, HAS_UPDATE: tl.constexpr, SUM_DTYPE: tl.constexpr):
    """fp32 ``x`` at ``x_offs``; with ``HAS_UPDATE`` the residual sum ``round(x + r)`` instead, r loaded at
    ``r_offs`` and ``round`` the cast to ``SUM_DTYPE`` (torch's add of the two tensors: fp32 sum, one rounding)."""
    x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_UPDATE:
        x = _round_to(x + tl.load(r_ptr + r_offs, mask=mask, other=0.0).to(tl.float32), SUM_DTYPE)
    return x


@triton.jit
def _gate(x, z_ptr, z_offs, mask, HAS_GATE: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, ROUND_X: tl.constexpr,
          X_DTYPE: tl.constexpr):  # fmt: skip
    """``_load``'s values from an fp32 ``x`` already loaded. ``ROUND_X``: x is first rounded to ``X_DTYPE``
    (``x.to(X_DTYPE)`` in torch)."""
    if ROUND_X:
        x = _round_to(x, X_DTYPE)
    if HAS_GATE:
        z = tl.load(z_ptr + z_offs, mask=mask, other=0.0).to(tl.float32)
        sig = tl.sigmoid(z)
        if NORM_BEFORE_GATE:
            u = x
        else:
            u = x * z * sig
    else:
        z = tl.zeros_like(x)
        sig = z
        u = x
    return u, x, z, sig


@triton.jit
def _weight(w_ptr, g, S, cols, cmask, HAS_WEIGHT: tl.constexpr):
    """fp32 weight of group ``g`` at ``cols`` (1 without a weight)."""
    if HAS_WEIGHT:
        w = tl.load(w_ptr + g * S + cols, mask=cmask, other=0.0).to(tl.float32)
    else:
        w = tl.where(cmask, 1.0, 0.0)
    return w


@triton.jit
def _output(n, w, z, sig, X_DTYPE: tl.constexpr, HAS_GATE: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr):
    """fp32 output tile before its one cast to the output dtype."""
    if NORM_BEFORE_GATE:
        out = n * w[None, :]
        if HAS_GATE:
            out = out * (z * sig)
    else:
        # Round to x's dtype first, then multiply by w in fp32 and round once to the output dtype: the
        # reference's `weight * n.to(x.dtype)` (torch computes a bf16 * bf16 product in fp32 too).
        out = n.to(X_DTYPE).to(tl.float32) * w[None, :]
    return out


@triton.jit
def _norm_fwd_kernel(x_ptr, z_ptr, w_ptr, out_ptr, rstd_ptr, r_ptr, h_ptr, M, D, S, stride_x, stride_z, eps,
                     BM: tl.constexpr, BS: tl.constexpr, NCHUNK: tl.constexpr, HAS_GATE: tl.constexpr,
                     HAS_WEIGHT: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, ROUND_X: tl.constexpr,
                     X_DTYPE: tl.constexpr, HAS_UPDATE: tl.constexpr = False,
                     SUM_DTYPE: tl.constexpr = tl.float32, USE_PDL: tl.constexpr = False):  # fmt: skip
    wait_for_predecessor(USE_PDL)  # a decode graph's launch (kernels/dependent_launch.py): before any load
    # x and z rows are read through their own strides (a slice of a wider projection needs no copy); the
    # output is written contiguous. HAS_UPDATE (``add_rmsnorm.py``): the row normalized is the residual sum
    # round(x + r) (r contiguous), which is written to h as well: the add before a norm in the same pass.
    g = tl.program_id(1)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    rmask = rows < M
    rows64 = rows.to(tl.int64)[:, None]  # int64: B * T * D passes 2^31 at long contexts
    base = rows64 * D + g * S
    x_base = rows64 * stride_x + g * S
    z_base = rows64 * stride_z + g * S
    if NCHUNK == 1:
        cols = tl.arange(0, BS)
        cmask = cols < S
        mask = rmask[:, None] & cmask[None, :]
        x = _residual_sum(x_ptr, r_ptr, x_base + cols[None, :], base + cols[None, :], mask, HAS_UPDATE, SUM_DTYPE)
        if HAS_UPDATE:
            tl.store(h_ptr + base + cols[None, :], x.to(h_ptr.dtype.element_ty), mask=mask)
        u, x, z, sig = _gate(x, z_ptr, z_base + cols[None, :], mask, HAS_GATE, NORM_BEFORE_GATE, ROUND_X, X_DTYPE)
        rstd = 1.0 / tl.sqrt(tl.sum(u * u, axis=1) / S + eps)
        w = _weight(w_ptr, g, S, cols, cmask, HAS_WEIGHT)
        out = _output(u * rstd[:, None], w, z, sig, X_DTYPE, HAS_GATE, NORM_BEFORE_GATE)
        tl.store(out_ptr + base + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        # Wider than a block: one pass for the sum of squares (and h), one to normalize (x, r and z read twice).
        ss = tl.zeros([BM], dtype=tl.float32)
        for c in range(NCHUNK):
            cols = c * BS + tl.arange(0, BS)
            mask = rmask[:, None] & (cols < S)[None, :]
            x = _residual_sum(x_ptr, r_ptr, x_base + cols[None, :], base + cols[None, :], mask, HAS_UPDATE, SUM_DTYPE)
            if HAS_UPDATE:
                tl.store(h_ptr + base + cols[None, :], x.to(h_ptr.dtype.element_ty), mask=mask)
            u, x, z, sig = _gate(x, z_ptr, z_base + cols[None, :], mask, HAS_GATE, NORM_BEFORE_GATE, ROUND_X,
                                 X_DTYPE)  # fmt: skip
            ss += tl.sum(u * u, axis=1)
        rstd = 1.0 / tl.sqrt(ss / S + eps)
        for c in range(NCHUNK):
            cols = c * BS + tl.arange(0, BS)
            cmask = cols < S
            mask = rmask[:, None] & cmask[None, :]
            x = _residual_sum(x_ptr, r_ptr, x_base + cols[None, :], base + cols[None, :], mask, HAS_UPDATE, SUM_DTYPE)
            u, x, z, sig = _gate(x, z_ptr, z_base + cols[None, :], mask, HAS_GATE, NORM_BEFORE_GATE, ROUND_X,
                                 X_DTYPE)  # fmt: skip
            w = _weight(w_ptr, g, S, cols, cmask, HAS_WEIGHT)
            out = _output(u * rstd[:, None], w, z, sig, X_DTYPE, HAS_GATE, NORM_BEFORE_GATE)
            tl.store(out_ptr + base + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows * tl.num_programs(1) + g, rstd, mask=rmask)


@triton.jit
def _norm_bwd_tile(x_ptr, z_ptr, w_ptr, dy_ptr, base, rstd, cols, rmask, g, S, HAS_GATE: tl.constexpr,
                   HAS_WEIGHT: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr):  # fmt: skip
    """One ``[BM, BS]`` tile: fp32 ``x``, ``z``, ``sigmoid(z)``, ``n``, ``dn`` (d out / d n times dout), ``ds``
    (norm first: d out / d silu(z) times dout) and the dw partial."""
    cmask = cols < S
    mask = rmask[:, None] & cmask[None, :]
    offs = base + cols[None, :]
    u, x, z, sig = _load(x_ptr, z_ptr, offs, offs, mask, HAS_GATE, NORM_BEFORE_GATE)
    n = u * rstd[:, None]
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    w = _weight(w_ptr, g, S, cols, cmask, HAS_WEIGHT)
    if NORM_BEFORE_GATE:
        if HAS_GATE:
            dys = dy * (z * sig)
        else:
            dys = dy
        dn = dys * w[None, :]
        ds = dy * n * w[None, :]
        dw_part = dys * n
    else:
        dn = dy * w[None, :]
        ds = dn  # unused: the gate's gradient comes from du
        # dw sees the rounded n, as the forward multiplied w by it.
        dw_part = dy * n.to(x_ptr.dtype.element_ty).to(tl.float32)
    return x, z, sig, n, dn, ds, dw_part, offs, mask


@triton.jit
def _norm_bwd_store(dx_ptr, dz_ptr, du, ds, x, z, sig, offs, mask, HAS_GATE: tl.constexpr,
                    NORM_BEFORE_GATE: tl.constexpr):  # fmt: skip
    if HAS_GATE:
        dsilu = sig * (1.0 + z * (1.0 - sig))
        if NORM_BEFORE_GATE:
            dx = du
            dz = ds * dsilu
        else:
            dx = du * z * sig
            dz = du * x * dsilu
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(dx_ptr + offs, du.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _norm_bwd_kernel(x_ptr, z_ptr, w_ptr, rstd_ptr, dy_ptr, dx_ptr, dz_ptr, dw_ptr, M, D, S, rows_per_program,
                     BM: tl.constexpr, BS: tl.constexpr, NCHUNK: tl.constexpr, HAS_GATE: tl.constexpr,
                     HAS_WEIGHT: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr):  # fmt: skip
    # A program walks `rows_per_program` rows in blocks of BM so that its dw partial covers many rows:
    # one partial per row block would be a full fp32 copy of the input when BM = 1.
    pid = tl.program_id(0)
    g = tl.program_id(1)
    n_groups = tl.num_programs(1)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    dw_row = dw_ptr + pid.to(tl.int64) * D + g * S
    if NCHUNK == 1:
        cols = tl.arange(0, BS)
        dw_acc = tl.zeros([BS], dtype=tl.float32)
        for r0 in range(row_start, row_end, BM):
            rows = r0 + tl.arange(0, BM)
            rmask = rows < row_end
            rstd = tl.load(rstd_ptr + rows * n_groups + g, mask=rmask, other=0.0)
            base = rows.to(tl.int64)[:, None] * D + g * S
            x, z, sig, n, dn, ds, dw_part, offs, mask = _norm_bwd_tile(
                x_ptr, z_ptr, w_ptr, dy_ptr, base, rstd, cols, rmask, g, S, HAS_GATE, HAS_WEIGHT, NORM_BEFORE_GATE
            )
            dw_acc += tl.sum(dw_part, axis=0)
            du = rstd[:, None] * (dn - n * (tl.sum(dn * n, axis=1) / S)[:, None])
            _norm_bwd_store(dx_ptr, dz_ptr, du, ds, x, z, sig, offs, mask, HAS_GATE, NORM_BEFORE_GATE)
        if HAS_WEIGHT:
            tl.store(dw_row + cols, dw_acc, mask=cols < S)
    else:
        # Wider than a block: mean(dn n) over the group first, then dx, dz; the dw partial (zeroed by
        # the caller) is read, added to and written per chunk, since the group does not fit in registers.
        for r0 in range(row_start, row_end, BM):
            rows = r0 + tl.arange(0, BM)
            rmask = rows < row_end
            rstd = tl.load(rstd_ptr + rows * n_groups + g, mask=rmask, other=0.0)
            base = rows.to(tl.int64)[:, None] * D + g * S
            dot = tl.zeros([BM], dtype=tl.float32)
            for c in range(NCHUNK):
                cols = c * BS + tl.arange(0, BS)
                x, z, sig, n, dn, ds, dw_part, offs, mask = _norm_bwd_tile(
                    x_ptr, z_ptr, w_ptr, dy_ptr, base, rstd, cols, rmask, g, S, HAS_GATE, HAS_WEIGHT, NORM_BEFORE_GATE
                )
                dot += tl.sum(dn * n, axis=1)
            mean_dn_n = dot / S
            for c in range(NCHUNK):
                cols = c * BS + tl.arange(0, BS)
                x, z, sig, n, dn, ds, dw_part, offs, mask = _norm_bwd_tile(
                    x_ptr, z_ptr, w_ptr, dy_ptr, base, rstd, cols, rmask, g, S, HAS_GATE, HAS_WEIGHT, NORM_BEFORE_GATE
                )
                du = rstd[:, None] * (dn - n * mean_dn_n[:, None])
                _norm_bwd_store(dx_ptr, dz_ptr, du, ds, x, z, sig, offs, mask, HAS_GATE, NORM_BEFORE_GATE)
                if HAS_WEIGHT:
                    cmask = cols < S
                    acc = tl.load(dw_row + cols, mask=cmask, other=0.0)
                    tl.store(dw_row + cols, acc + tl.sum(dw_part, axis=0), mask=cmask)


@triton.jit
def normalize_group(x_ptr, z_ptr, w_ptr, out_ptr, S, eps, BS: tl.constexpr, NCHUNK: tl.constexpr):
    """One group's gated norm, gate first (Mamba2's ``w * round(norm(x * silu(z)))``), by one program of another
    kernel (the last of the programs that wrote x, in the ticket pattern: ``kernels/tickets.py``): the ``S`` channels
    of x (read past L1, where the other programs' stores are visible) and of the gate z, the group's weight, its
    output stored at ``out_ptr``; this kernel's order and roundings, its helpers, on ``[1, BS]`` tiles, walked in
    ``NCHUNK`` chunks: one pass where one chunk holds the group (``one_program_chunks``), else a sum of squares
    first, as ``_norm_fwd_kernel`` walks a group wider than its block."""
    cols = tl.arange(0, BS)[None, :]
    if NCHUNK == 1:
        mask = cols < S
        x = tl.load(x_ptr + cols, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
        u, x, z, sig = _gate(x, z_ptr, cols, mask, True, False, False, tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(u * u, axis=1) / S + eps)
        w = _weight(w_ptr, 0, S, tl.arange(0, BS), tl.arange(0, BS) < S, True)
        out = _output(u * rstd[:, None], w, z, sig, x_ptr.dtype.element_ty, True, False)
        tl.store(out_ptr + cols, out.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        ss = tl.zeros([1], dtype=tl.float32)
        for c in range(NCHUNK):
            mask = c * BS + cols < S
            x = tl.load(x_ptr + c * BS + cols, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
            u, x, z, sig = _gate(x, z_ptr, c * BS + cols, mask, True, False, False, tl.float32)
            ss += tl.sum(u * u, axis=1)
        rstd = 1.0 / tl.sqrt(ss / S + eps)
        for c in range(NCHUNK):
            chunk = c * BS + tl.arange(0, BS)
            mask = chunk[None, :] < S
            x = tl.load(x_ptr + chunk[None, :], mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
            u, x, z, sig = _gate(x, z_ptr, chunk[None, :], mask, True, False, False, tl.float32)
            w = _weight(w_ptr, 0, S, chunk, chunk < S, True)
            out = _output(u * rstd[:, None], w, z, sig, x_ptr.dtype.element_ty, True, False)
            tl.store(out_ptr + chunk[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


# ``normalize_group``'s chunk: the widest group one program normalizes in one pass (Mamba2-1.3B's 4096 channels; a
# wider group is walked twice, a sum of squares first).
ONE_PROGRAM_CHUNK = 4096


def one_program_chunks(S: int) -> tuple[int, int]:
    """``normalize_group``'s ``BS`` and ``NCHUNK`` for a group of ``S`` channels."""
    BS = min(triton.next_power_of_2(S), ONE_PROGRAM_CHUNK)
    return BS, triton.cdiv(S, BS)


TRITON_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def output_dtype(x_dtype: torch.dtype, weight: torch.Tensor | None, norm_before_gate: bool) -> torch.dtype:
    """Norm first (GLA) rounds once to x's dtype; gate first (Mamba2) multiplies the rounded values by the
    weight, which gives torch's promotion of the two dtypes."""
    if norm_before_gate or weight is None:
        return x_dtype
    return torch.promote_types(x_dtype, weight.dtype)


def _rows(t: torch.Tensor | None, D: int, contiguous: bool) -> torch.Tensor | None:
    """``t`` as ``[rows, D]``: a view where its rows can be walked by one stride over a unit-stride last dim
    (a slice of a wider projection), else a contiguous copy; always contiguous with ``contiguous``."""
    if t is None:
        return None
    rows = t.reshape(-1, D)
    return rows.contiguous() if contiguous or rows.stride(-1) != 1 else rows


class GatedRMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gate, weight, eps, group_size, norm_before_gate, saves_for_grad=True, input_dtype=None):
        # input_dtype (forward only: the caller casts x itself when a gradient is needed): x as x.to(input_dtype).
        input_dtype = x.dtype if input_dtype is None else input_dtype
        shape = x.shape
        D = shape[-1]
        # Strided rows are read in place; the backward wants contiguous copies, made here when it may run.
        x2, gate2 = _rows(x, D, saves_for_grad), _rows(gate, D, saves_for_grad)
        weight = weight.contiguous() if weight is not None else None
        M, G = x2.shape[0], D // group_size
        out = torch.empty(M, D, device=x.device, dtype=output_dtype(input_dtype, weight, norm_before_gate))
        rstd = torch.empty(M, G, device=x.device, dtype=torch.float32)

        def run(c: LaunchConfig) -> None:
            _norm_fwd_kernel[(triton.cdiv(M, c.BM), G)](
                x2, gate2 if gate2 is not None else x2, weight if weight is not None else x2, out, rstd, x2, x2,
                M, D, group_size, x2.stride(0), gate2.stride(0) if gate2 is not None else 0, eps,
                NCHUNK=triton.cdiv(group_size, c.BS), HAS_GATE=gate2 is not None, HAS_WEIGHT=weight is not None,
                NORM_BEFORE_GATE=norm_before_gate, ROUND_X=input_dtype != x.dtype, X_DTYPE=TRITON_DTYPES[input_dtype],
                **c.kwargs(), **pdl_kwargs(),
            )  # fmt: skip

        if M > 0:
            norm_launch("fwd", run, M, group_size, operand=x2)
        ctx.save_for_backward(x2, gate2, weight, rstd)
        ctx.shape, ctx.group_size, ctx.norm_before_gate = shape, group_size, norm_before_gate
        return out.view(shape)

    @staticmethod
    def backward(ctx, dout):
        x2, gate2, weight, rstd = ctx.saved_tensors
        M, D = x2.shape
        S = ctx.group_size
        G = D // S
        dout = dout.reshape(M, D).contiguous()
        dx = torch.empty_like(x2)
        dz = torch.empty_like(gate2) if gate2 is not None else None
        dw_parts = [torch.zeros(0, D, device=x2.device, dtype=torch.float32)]

        def run(c: LaunchConfig) -> None:
            programs, rows_per_program = row_programs(M, c.BM, G, x2.device)
            # A part per program (none without a weight: the kernel writes no dw then).
            dw = torch.zeros(programs if weight is not None else 0, D, device=x2.device, dtype=torch.float32)
            _norm_bwd_kernel[(programs, G)](
                x2, gate2 if gate2 is not None else x2, weight if weight is not None else x2, rstd, dout, dx,
                dz if dz is not None else dx, dw if weight is not None else dx, M, D, S, rows_per_program,
                NCHUNK=triton.cdiv(S, c.BS), HAS_GATE=gate2 is not None, HAS_WEIGHT=weight is not None,
                NORM_BEFORE_GATE=ctx.norm_before_gate, **c.kwargs(),
            )  # fmt: skip
            dw_parts.append(dw)

        if M > 0:
            norm_launch("bwd", run, M, S, operand=x2)
        dz = dz.view(ctx.shape) if dz is not None else None
        dw = dw_parts[-1].sum(0).to(weight.dtype) if weight is not None else None
        return dx.view(ctx.shape), dz, dw, None, None, None, None, None


def gated_rmsnorm(
    x: torch.Tensor,
    gate: torch.Tensor | None,
    weight: torch.Tensor | None,
    eps: float,
    group_size: int,
    norm_before_gate: bool = False,
    input_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """RMSNorm over groups of ``group_size`` channels with an optional swish gate and weight.

    ``norm_before_gate=False`` (Mamba2): ``weight * round(norm(x * silu(gate)))``, the result's dtype torch's
    promotion of (x's dtype, weight's dtype). ``norm_before_gate=True`` (GLA): ``round(norm(x) * weight *
    silu(gate))``, in x's dtype. x, gate ``[..., D]`` (bf16, fp16 or fp32), weight ``[D]``; computed in fp32,
    ``round`` is the cast to x's dtype; as ``naive_gated_rmsnorm``. Without a gradient to keep for, x and gate
    rows with a unit-stride last dim are read through their strides (no copies); the output is contiguous.

    ``input_dtype``: the norm of ``x.to(input_dtype)``, bit for bit, in that dtype's output dtype. Without a
    gradient to keep for, the kernel rounds x to it as it loads it (an fp32 residual stream into a bf16 norm
    takes no cast kernel); with one, x is cast first, on the autograd path.
    """
    D = x.shape[-1]
    if group_size <= 0 or D % group_size:
        raise ValueError(f"gated_rmsnorm: group_size {group_size} does not divide the last dim {D}")
    if gate is not None and gate.shape != x.shape:
        raise ValueError(f"gated_rmsnorm: gate {tuple(gate.shape)} differs from x {tuple(x.shape)}")
    if weight is not None and weight.shape != (D,):
        raise ValueError(f"gated_rmsnorm: weight {tuple(weight.shape)} must be [{D}]")
    if input_dtype is not None and input_dtype not in TRITON_DTYPES:
        raise ValueError(f"gated_rmsnorm: input_dtype {input_dtype} is not one of bf16, fp16, fp32")
    grad = needs_grad(x, gate, weight)
    if grad and input_dtype is not None:
        x, input_dtype = x.to(input_dtype), None
    return GatedRMSNormFunction.apply(x, gate, weight, eps, group_size, norm_before_gate, grad, input_dtype)
