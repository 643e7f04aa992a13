"""Mamba2's gated RMSNorm in Triton, forward and backward: ``out = w * norm_per_group(x * silu(z))``.

Same contract as ``kernels/norm/naive.py`` (the reference). Rows are the flattened leading
dims of ``[..., D]``; D splits into groups of S = ``group_size`` channels, each normalized on its own.
One program owns a block of rows and one group; a group of up to a block's channels (``configs.py``)
sits in one block, a wider one is walked in chunks. The layer keeps only x, z, w and one rstd per (row, group);
the backward recomputes silu and the normalized values from them:

    sig  = sigmoid(z),  s = z sig                           (s = 1 without a gate)
    u    = x s
    rstd = (mean_S(u^2) + eps)^(-1/2)                       one per (row, group), saved
    n    = u rstd                                           fp32
    out  = w * round(n)                                     round = cast to x's dtype, before w (as transformers)

    dn   = dout w                                           (the rounding passes the gradient straight through)
    du   = rstd (dn - n mean_S(dn n))
    dx   = du s,   dz = du x sig (1 + z (1 - sig))
    dw   = sum_rows dout round(n)                           (per-program partials, summed in torch)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.norm.configs import norm_launch, row_programs


@triton.jit
def _gated(x_ptr, z_ptr, offs, mask, HAS_GATE: tl.constexpr):
    """fp32 ``u = x * silu(z)``, ``x``, ``z`` and ``sigmoid(z)`` at ``offs`` (z and sigmoid are 0 without a gate)."""
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_GATE:
        z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        sig = tl.sigmoid(z)
        u = x * z * sig
    else:
        z = tl.zeros_like(x)
        sig = z
        u = x
    return u, x, z, sig


@triton.jit
def _norm_fwd_kernel(x_ptr, z_ptr, w_ptr, out_ptr, rstd_ptr, M, D, S, eps, BM: tl.constexpr, BS: tl.constexpr,
                     NCHUNK: tl.constexpr, HAS_GATE: tl.constexpr):  # fmt: skip
    g = tl.program_id(1)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    rmask = rows < M
    base = rows.to(tl.int64)[:, None] * D + g * S  # int64: B * T * D passes 2^31 at long contexts
    if NCHUNK == 1:
        cols = tl.arange(0, BS)
        cmask = cols < S
        mask = rmask[:, None] & cmask[None, :]
        u, x, z, sig = _gated(x_ptr, z_ptr, base + cols[None, :], mask, HAS_GATE)
        rstd = 1.0 / tl.sqrt(tl.sum(u * u, axis=1) / S + eps)
        n = u * rstd[:, None]
        w = tl.load(w_ptr + g * S + cols, mask=cmask, other=0.0).to(tl.float32)
        # Round to x's dtype first, then multiply by w in fp32 and round once to the output dtype: the
        # reference's `weight * n.to(x.dtype)` (torch computes a bf16 * bf16 product in fp32 too).
        out = n.to(x_ptr.dtype.element_ty).to(tl.float32) * w[None, :]
        tl.store(out_ptr + base + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        # Wider than a block: one pass for the sum of squares, one to normalize (x and z read twice).
        ss = tl.zeros([BM], dtype=tl.float32)
        for c in range(NCHUNK):
            cols = c * BS + tl.arange(0, BS)
            mask = rmask[:, None] & (cols < S)[None, :]
            u, x, z, sig = _gated(x_ptr, z_ptr, base + cols[None, :], mask, HAS_GATE)
            ss += tl.sum(u * u, axis=1)
        rstd = 1.0 / tl.sqrt(ss / S + eps)
        for c in range(NCHUNK):
            cols = c * BS + tl.arange(0, BS)
            cmask = cols < S
            mask = rmask[:, None] & cmask[None, :]
            u, x, z, sig = _gated(x_ptr, z_ptr, base + cols[None, :], mask, HAS_GATE)
            n = u * rstd[:, None]
            w = tl.load(w_ptr + g * S + cols, mask=cmask, other=0.0).to(tl.float32)
            out = n.to(x_ptr.dtype.element_ty).to(tl.float32) * w[None, :]
            tl.store(out_ptr + base + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows * tl.num_programs(1) + g, rstd, mask=rmask)


@triton.jit
def _norm_bwd_tile(x_ptr, z_ptr, w_ptr, dy_ptr, base, rstd, cols, rmask, g, S, HAS_GATE: tl.constexpr):
    """One ``[BM, BS]`` tile: fp32 ``x``, ``z``, ``sigmoid(z)``, ``n``, ``dn = dout w`` and ``dout * round(n)``."""
    cmask = cols < S
    mask = rmask[:, None] & cmask[None, :]
    offs = base + cols[None, :]
    u, x, z, sig = _gated(x_ptr, z_ptr, offs, mask, HAS_GATE)
    n = u * rstd[:, None]
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + g * S + cols, mask=cmask, other=0.0).to(tl.float32)
    # dw sees the rounded n, as the forward multiplied w by it.
    dw_part = dy * n.to(x_ptr.dtype.element_ty).to(tl.float32)
    return x, z, sig, n, dy * w[None, :], dw_part, offs, mask


@triton.jit
def _norm_bwd_store(dx_ptr, dz_ptr, du, x, z, sig, offs, mask, HAS_GATE: tl.constexpr):
    if HAS_GATE:
        tl.store(dx_ptr + offs, (du * z * sig).to(dx_ptr.dtype.element_ty), mask=mask)
        dz = du * x * sig * (1.0 + z * (1.0 - sig))
        tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(dx_ptr + offs, du.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _norm_bwd_kernel(x_ptr, z_ptr, w_ptr, rstd_ptr, dy_ptr, dx_ptr, dz_ptr, dw_ptr, M, D, S, rows_per_program,
                     BM: tl.constexpr, BS: tl.constexpr, NCHUNK: tl.constexpr, HAS_GATE: tl.constexpr):  # fmt: skip
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
            x, z, sig, n, dn, dw_part, offs, mask = _norm_bwd_tile(
                x_ptr, z_ptr, w_ptr, dy_ptr, base, rstd, cols, rmask, g, S, HAS_GATE
            )
            dw_acc += tl.sum(dw_part, axis=0)
            du = rstd[:, None] * (dn - n * (tl.sum(dn * n, axis=1) / S)[:, None])
            _norm_bwd_store(dx_ptr, dz_ptr, du, x, z, sig, offs, mask, HAS_GATE)
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
                x, z, sig, n, dn, dw_part, offs, mask = _norm_bwd_tile(
                    x_ptr, z_ptr, w_ptr, dy_ptr, base, rstd, cols, rmask, g, S, HAS_GATE
                )
                dot += tl.sum(dn * n, axis=1)
            mean_dn_n = dot / S
            for c in range(NCHUNK):
                cols = c * BS + tl.arange(0, BS)
                x, z, sig, n, dn, dw_part, offs, mask = _norm_bwd_tile(
                    x_ptr, z_ptr, w_ptr, dy_ptr, base, rstd, cols, rmask, g, S, HAS_GATE
                )
                du = rstd[:, None] * (dn - n * mean_dn_n[:, None])
                _norm_bwd_store(dx_ptr, dz_ptr, du, x, z, sig, offs, mask, HAS_GATE)
                cmask = cols < S
                acc = tl.load(dw_row + cols, mask=cmask, other=0.0)
                tl.store(dw_row + cols, acc + tl.sum(dw_part, axis=0), mask=cmask)


class GatedRMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gate, weight, eps, group_size):
        shape = x.shape
        D = shape[-1]
        x2 = x.reshape(-1, D).contiguous()
        gate2 = gate.reshape(-1, D).contiguous() if gate is not None else None
        weight = weight.contiguous()
        M, G = x2.shape[0], D // group_size
        out = torch.empty(M, D, device=x.device, dtype=torch.promote_types(x.dtype, weight.dtype))
        rstd = torch.empty(M, G, device=x.device, dtype=torch.float32)

        def run(c: LaunchConfig) -> None:
            _norm_fwd_kernel[(triton.cdiv(M, c.BM), G)](
                x2, gate2 if gate2 is not None else x2, weight, out, rstd, M, D, group_size, eps,
                NCHUNK=triton.cdiv(group_size, c.BS), HAS_GATE=gate2 is not None, **c.kwargs(),
            )  # fmt: skip

        if M > 0:
            norm_launch("fwd", run, M, group_size, operand=x2)
        ctx.save_for_backward(x2, gate2, weight, rstd)
        ctx.shape, ctx.group_size = shape, group_size
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
            dw = torch.zeros(programs, D, device=x2.device, dtype=torch.float32)  # a part per program
            _norm_bwd_kernel[(programs, G)](
                x2, gate2 if gate2 is not None else x2, weight, rstd, dout, dx, dz if dz is not None else dx, dw,
                M, D, S, rows_per_program, NCHUNK=triton.cdiv(S, c.BS), HAS_GATE=gate2 is not None, **c.kwargs(),
            )  # fmt: skip
            dw_parts.append(dw)

        if M > 0:
            norm_launch("bwd", run, M, S, operand=x2)
        dz = dz.view(ctx.shape) if dz is not None else None
        return dx.view(ctx.shape), dz, dw_parts[-1].sum(0).to(weight.dtype), None, None


def gated_rmsnorm(
    x: torch.Tensor, gate: torch.Tensor | None, weight: torch.Tensor, eps: float, group_size: int
) -> torch.Tensor:
    """RMSNorm of ``x * silu(gate)`` (of ``x`` without a gate) over groups of ``group_size`` channels, times weight.

    x, gate ``[..., D]`` (bf16, fp16 or fp32), weight ``[D]``. Computed in fp32, cast to x's dtype before the
    weight; the result's dtype is torch's promotion of (x's dtype, weight's dtype), as ``naive_gated_rmsnorm``.
    """
    D = x.shape[-1]
    if group_size <= 0 or D % group_size:
        raise ValueError(f"gated_rmsnorm: group_size {group_size} does not divide the last dim {D}")
    if gate is not None and gate.shape != x.shape:
        raise ValueError(f"gated_rmsnorm: gate {tuple(gate.shape)} differs from x {tuple(x.shape)}")
    if weight.shape != (D,):
        raise ValueError(f"gated_rmsnorm: weight {tuple(weight.shape)} must be [{D}]")
    return GatedRMSNormFunction.apply(x, gate, weight, eps, group_size)
