"""Depthwise causal conv1d for decode: a few new tokens against a cached window, the window updated in place.

The decode-step counterpart of ``causal_conv1d.py`` (fla and mamba_ssm call it ``causal_conv1d_update``),
with ``kernels/conv/naive.py``'s result for ``conv_state=state, output_final_state=True``. Over the
sequence ``s = [state | x]`` (the ``K - 1`` cached inputs, then the ``T`` new ones, in x's dtype):

    y_t       = act(bias + sum_j w_j s_{t + j})                    fp32, then cast to x's dtype
    state'_k  = s_{T + k}                                          k < K - 1, cast to the state's dtype

The sum is the torch path's, bit for bit: the same order, products rounded before they are added (no
fused multiply-adds, ``enable_fp_fusion=False``), and the activation is torch's silu formula with its
``expf`` and correctly rounded division (``kernels/activations/elementwise.py``). One launch per step,
and the state keeps its storage (a CUDA graph replays the step on fixed addresses). One program owns
``BD`` channels of one batch row: it alone reads and writes their window, so the in-place shift only
needs the program's own reads to finish before its writes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from statex_hf.kernels.activations.elementwise import silu
from statex_hf.kernels.conv.configs import conv_launch
from statex_hf.kernels.launch import LaunchConfig


@triton.jit
def _conv_update_kernel(x, w, bias, state, y, T, D, stride_xb, stride_xt, stride_sb, stride_sd, stride_sk,
                        K: tl.constexpr, KP: tl.constexpr, BD: tl.constexpr, HAS_BIAS: tl.constexpr,
                        SILU: tl.constexpr):  # fmt: skip
    bi = tl.program_id(0).to(tl.int64)
    ds = tl.program_id(1) * BD + tl.arange(0, BD)
    dmask = ds < D
    x_row = x + bi * stride_xb + ds
    state_row = state + bi * stride_sb + ds * stride_sd
    if HAS_BIAS:
        b = tl.load(bias + ds, mask=dmask, other=0.0).to(tl.float32)
    for t in range(T):
        acc = tl.zeros([BD], dtype=tl.float32)
        for j in tl.static_range(K):
            # s_{t + j}: a cached input while t + j < K - 1, else the new input t + j - (K - 1).
            i = t + j
            from_state = (tl.zeros([BD], dtype=tl.int32) + i) < K - 1
            cached = tl.load(state_row + i * stride_sk, mask=dmask & from_state, other=0.0)
            new = tl.load(x_row + (i - (K - 1)) * stride_xt, mask=dmask & ~from_state, other=0.0)
            s = tl.where(from_state, cached.to(x.dtype.element_ty), new)
            wj = tl.load(w + ds * K + j, mask=dmask, other=0.0).to(tl.float32)
            acc += s.to(tl.float32) * wj
        if HAS_BIAS:
            acc += b
        if SILU:
            acc = silu(acc)  # torch's formula, expf and correctly rounded division
        tl.store(y + (bi * T + t) * D + ds, acc.to(y.dtype.element_ty), mask=dmask)

    # The new window, s_T .. s_{T + K - 2}: read whole, then written over the old one.
    ks = tl.arange(0, KP)
    src = T + ks
    tile = dmask[:, None] & (ks < K - 1)[None, :]
    from_state = (src < K - 1)[None, :]
    cached = tl.load(state_row[:, None] + src[None, :] * stride_sk, mask=tile & from_state, other=0.0)
    new = tl.load(x_row[:, None] + (src - (K - 1))[None, :] * stride_xt, mask=tile & ~from_state, other=0.0)
    window = tl.where(from_state, cached.to(x.dtype.element_ty), new)
    # Threads of the program may hold copies of the same channel: every read of the old window (here
    # and for y above) must be done before any thread writes the new one.
    tl.debug_barrier()
    tl.store(state_row[:, None] + ks[None, :] * stride_sk, window.to(state.dtype.element_ty), mask=tile)


def causal_conv1d_update(
    x: torch.Tensor,
    weight: torch.Tensor,
    conv_state: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """Causal conv1d over ``T`` new inputs that continue ``conv_state``, which is updated in place.

    Args:
        x: ``[B, T, D]`` (any strides; T small: the program walks the tokens one by one).
        weight: ``[D, K]`` (``nn.Conv1d.weight`` squeezed).
        conv_state: ``[B, D, K - 1]``, the last ``K - 1`` inputs before ``x``, any float dtype and strides;
            overwritten with the last ``K - 1`` inputs of ``[conv_state | x]``.
        bias: ``[D]`` or ``None``.
        activation: ``"silu"``/``"swish"`` or ``None``.

    Returns:
        ``y`` ``[B, T, D]`` in x's dtype; ``conv_state`` holds the window for the next call.
    """
    if activation not in ("silu", "swish", None):
        raise ValueError(f"causal_conv1d_update: unsupported activation {activation!r}; use 'silu' or None")
    Bsz, T, D = x.shape
    K = weight.shape[-1]
    if tuple(weight.shape) != (D, K) or tuple(conv_state.shape) != (Bsz, D, K - 1):
        raise ValueError(
            f"causal_conv1d_update: x {tuple(x.shape)} and weight {tuple(weight.shape)} need a conv_state of shape "
            f"{(Bsz, D, K - 1)}, got {tuple(conv_state.shape)}"
        )
    if x.stride(-1) != 1:
        x = x.contiguous()
    weight = weight.contiguous()
    y = torch.empty(Bsz, T, D, device=x.device, dtype=x.dtype)

    def run(c: LaunchConfig) -> None:
        _conv_update_kernel[(Bsz, triton.cdiv(D, c.BD))](
            x, weight, bias if bias is not None else weight, conv_state, y, T, D, x.stride(0), x.stride(1),
            *conv_state.stride(), K=K, KP=max(1, triton.next_power_of_2(K - 1)), HAS_BIAS=bias is not None,
            SILU=activation is not None, enable_fp_fusion=False, **c.kwargs(),
        )  # fmt: skip

    conv_launch("update", run, operand=x)
    return y
