"""Depthwise causal conv1d (+ bias, SiLU) in Triton, forward and backward, with document resets.

Same contract as ``kernels/conv/naive.py`` for training and prefill (no incoming
``conv_state``). One program owns a ``[BT, BD]`` tile of ``[B, T, D]``. The backward recomputes
the pre-activation it needs instead of storing it, so the layer keeps nothing but its input:

    pre_t  = bias + sum_j w_j x_{t - lag_j}                    lag_j = K - 1 - j, same document only
    dpre_t = dy_t * silu'(pre_t)
    dx_t   = sum_j w_j dpre_{t + lag_j}                        (pre recomputed at t + lag: K x K loads, cached)
    dw_j   = sum_t dpre_t x_{t - lag_j},   dbias = sum_t dpre_t  (per-tile partials, summed in torch)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from statex_hf.kernels.conv.configs import conv_launch
from statex_hf.kernels.launch import LaunchConfig


@triton.jit
def _pre_activation(x, w_ptr, bias_ptr, seq, bi, u, ds, T, D, K: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
                    HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr):  # fmt: skip
    """fp32 pre-activation at positions ``u`` ``[BT]`` and channels ``ds`` ``[BD]``."""
    dmask = ds < D
    acc = tl.zeros([BT, BD], dtype=tl.float32)
    if HAS_SEQ:
        su = tl.load(seq + bi * T + u, mask=u < T, other=-1)
    for j in tl.static_range(K):
        lag = K - 1 - j
        src = u - lag
        ok = (src >= 0) & (u < T)
        if HAS_SEQ:
            ok = ok & (tl.load(seq + bi * T + src, mask=ok, other=-2) == su)
        xv = tl.load(x + (bi * T + src[:, None]) * D + ds[None, :], mask=ok[:, None] & dmask[None, :], other=0.0)
        wj = tl.load(w_ptr + ds * K + j, mask=dmask, other=0.0).to(tl.float32)
        acc += xv.to(tl.float32) * wj[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + ds, mask=dmask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _conv_fwd_kernel(x, w, bias, seq, y, T, D, K: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr):  # fmt: skip
    bi = tl.program_id(0).to(tl.int64)
    ts = tl.program_id(1) * BT + tl.arange(0, BT)
    ds = tl.program_id(2) * BD + tl.arange(0, BD)
    pre = _pre_activation(x, w, bias, seq, bi, ts, ds, T, D, K, BT, BD, HAS_BIAS, HAS_SEQ)
    if SILU:
        pre = pre * tl.sigmoid(pre)
    mask = (ts[:, None] < T) & (ds[None, :] < D)
    tl.store(y + (bi * T + ts[:, None]) * D + ds[None, :], pre.to(y.dtype.element_ty), mask=mask)


@triton.jit
def _conv_bwd_kernel(x, w, bias, seq, dy, dx, dw, dbias, T, D, K: tl.constexpr, BT: tl.constexpr,
                     BD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, SILU: tl.constexpr):  # fmt: skip
    bi = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(1)
    ts = pid_t * BT + tl.arange(0, BT)
    ds = tl.program_id(2) * BD + tl.arange(0, BD)
    dmask = ds < D
    if HAS_SEQ:
        st = tl.load(seq + bi * T + ts, mask=ts < T, other=-1)
    dx_acc = tl.zeros([BT, BD], dtype=tl.float32)
    for m in tl.static_range(K):
        # Output position u = t + m reads x_t through tap j = K - 1 - m.
        u = ts + m
        valid = u < T
        if HAS_SEQ:
            valid = valid & (tl.load(seq + bi * T + u, mask=valid, other=-2) == st)
        g = tl.load(dy + (bi * T + u[:, None]) * D + ds[None, :], mask=valid[:, None] & dmask[None, :], other=0.0)
        g = g.to(tl.float32)
        if SILU:
            pre = _pre_activation(x, w, bias, seq, bi, u, ds, T, D, K, BT, BD, HAS_BIAS, HAS_SEQ)
            sig = tl.sigmoid(pre)
            g = g * sig * (1.0 + pre * (1.0 - sig))
        if m == 0:
            # dw and dbias from this tile's own outputs (u = t).
            if HAS_BIAS:
                tl.store(dbias + (bi * tl.num_programs(1) + pid_t) * D + ds, tl.sum(g, axis=0), mask=dmask)
            for j in tl.static_range(K):
                lag = K - 1 - j
                src = ts - lag
                ok = (src >= 0) & (ts < T)
                if HAS_SEQ:
                    ok = ok & (tl.load(seq + bi * T + src, mask=ok, other=-2) == st)
                xv = tl.load(
                    x + (bi * T + src[:, None]) * D + ds[None, :], mask=ok[:, None] & dmask[None, :], other=0.0
                )
                part = tl.sum(g * xv.to(tl.float32), axis=0)
                tl.store(dw + ((bi * tl.num_programs(1) + pid_t) * D + ds) * K + j, part, mask=dmask)
        wm = tl.load(w + ds * K + (K - 1 - m), mask=dmask, other=0.0).to(tl.float32)
        dx_acc += g * wm[None, :]
    mask = (ts[:, None] < T) & dmask[None, :]
    tl.store(dx + (bi * T + ts[:, None]) * D + ds[None, :], dx_acc.to(dx.dtype.element_ty), mask=mask)


class CausalConv1dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, seq, silu):
        Bsz, T, D = x.shape
        K = weight.shape[1]
        y = torch.empty_like(x)

        def run(c: LaunchConfig) -> None:
            _conv_fwd_kernel[(Bsz, triton.cdiv(T, c.BT), triton.cdiv(D, c.BD))](
                x, weight, bias if bias is not None else weight, seq if seq is not None else x, y, T, D,
                K=K, HAS_BIAS=bias is not None, HAS_SEQ=seq is not None, SILU=silu, **c.kwargs(),
            )  # fmt: skip

        conv_launch("fwd", run, operand=x)
        ctx.save_for_backward(x, weight, bias, seq)
        ctx.silu = silu
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, seq = ctx.saved_tensors
        Bsz, T, D = x.shape
        K = weight.shape[1]
        dx = torch.empty_like(x)
        dy = dy.contiguous()
        parts: list[tuple[torch.Tensor, torch.Tensor | None]] = []

        def run(c: LaunchConfig) -> None:
            nt = triton.cdiv(T, c.BT)
            # dw and dbias: one part per block of tokens, summed below.
            dw = torch.empty(Bsz, nt, D, K, device=x.device, dtype=torch.float32)
            db = torch.empty(Bsz, nt, D, device=x.device, dtype=torch.float32) if bias is not None else None
            _conv_bwd_kernel[(Bsz, nt, triton.cdiv(D, c.BD))](
                x, weight, bias if bias is not None else weight, seq if seq is not None else x, dy, dx, dw,
                db if db is not None else dw, T, D,
                K=K, HAS_BIAS=bias is not None, HAS_SEQ=seq is not None, SILU=ctx.silu, **c.kwargs(),
            )  # fmt: skip
            parts.append((dw, db))

        conv_launch("bwd", run, operand=x)
        dw, db = parts[-1]
        dw = dw.sum(dim=(0, 1)).to(weight.dtype)
        db = db.sum(dim=(0, 1)).to(bias.dtype) if bias is not None else None
        return dx, dw, db, None, None


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Depthwise causal conv1d: x ``[B, T, D]``, weight ``[D, K]``, bias ``[D]``; resets at ``cu_seqlens``.

    Returns ``y`` ``[B, T, D]`` (x's dtype) and, with ``output_final_state``, the last ``K - 1`` inputs
    ``[B, D, K - 1]`` for decode (one sequence per batch row).
    """
    if activation not in ("silu", "swish", None):
        raise ValueError(f"causal_conv1d: unsupported activation {activation!r}; use 'silu' or None")
    Bsz, T, D = x.shape
    K = weight.shape[-1]
    seq = None
    if cu_seqlens is not None:
        if Bsz != 1:
            raise ValueError(f"causal_conv1d: cu_seqlens needs a packed batch of size 1, got batch {Bsz}")
        if output_final_state and cu_seqlens.numel() > 2:
            raise ValueError("causal_conv1d: a final conv state is defined for one sequence, not a packed batch")
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        seq = torch.repeat_interleave(
            torch.arange(len(lengths), device=x.device, dtype=torch.int32), lengths, output_size=T
        ).contiguous()
    y = CausalConv1dFunction.apply(x.contiguous(), weight.contiguous(), bias, seq, activation is not None)
    final = None
    if output_final_state:
        hist = x[:, -(K - 1) :] if K > 1 else x[:, :0]
        if hist.shape[1] < K - 1:  # shorter than the window: zeros before it, as the torch path
            hist = torch.cat([hist.new_zeros(Bsz, K - 1 - hist.shape[1], D), hist], dim=1)
        final = hist.transpose(1, 2).contiguous()
    return y, final
