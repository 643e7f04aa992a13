"""Recurrent gated linear attention in Triton, for decoding: a few tokens per call, state in, state out.

Forward only (``generate`` needs no gradient; training goes through ``chunk_gla``). A decode step
is bound by reading and writing the fp32 state once, so both kernels do exactly that:

- one token (``T = 1``): a program owns a ``BV``-wide column slice of one head's state and walks
  the key dimension in ``[BK, BV]`` tiles, accumulating ``o`` as it goes;
- a few tokens: a program holds a ``[K, BV]`` slice in registers for all the call's tokens, so
  ``o_t`` needs no cross-program reduction; ``BV`` shrinks as ``K`` grows (8K fp32 values).

Both take either the log decay ``gk`` or, with ``gate_logit_normalizer``, GLA's raw gate logits, and then
compute the log decay as they load it, with the torch path's math and roundings (``round``: a cast to
``gk``'s dtype, as each torch op rounds its result)::

    gk = round(max(round(round(logsigmoid(logits)) * round_fp32(1 / normalizer)), clamp_min))

(torch on CUDA divides by a scalar as a product with its fp32 reciprocal; clamp optional), which saves a
decode step two or three elementwise kernels per layer.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from statex_hf.kernels.activations.elementwise import logsigmoid
from statex_hf.kernels.dependent_launch import pdl_kwargs, wait_for_predecessor
from statex_hf.kernels.utils import needs_grad, num_sms, on_device_of


@triton.jit
def log_decay(g, gate_scale, gate_clamp_min, GATE_LOGITS: tl.constexpr, HAS_CLAMP: tl.constexpr):
    """fp32 log decay from ``g`` as loaded (in ``gk``'s dtype): ``g`` itself, or from gate logits
    ``max(round(round(logsigmoid(g)) * gate_scale), gate_clamp_min)``, rounding where torch's ops do."""
    if GATE_LOGITS:
        d = logsigmoid(g.to(tl.float32)).to(g.dtype).to(tl.float32)
        d = (d * gate_scale).to(g.dtype).to(tl.float32)
        if HAS_CLAMP:
            d = tl.maximum(d, gate_clamp_min).to(g.dtype).to(tl.float32)
        return d
    return g.to(tl.float32)


@triton.jit
def fused_recurrent_gla_fwd_kernel(
    q,
    k,
    v,
    gk,
    o,
    h0,
    ht,
    cu_seqlens,
    scale,
    gate_scale,
    gate_clamp_min,
    T,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    GATE_LOGITS: tl.constexpr,
    HAS_CLAMP: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + p_kv, mask=m_kv, other=0.0).to(tl.float32)
    for t in range(bos, eos):
        p_k = (t * H + i_h) * K + o_k
        p_v = (t * H + i_h) * V + o_v
        b_q = tl.load(q + p_k, mask=m_k, other=0.0).to(tl.float32) * scale
        b_k = tl.load(k + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_g = log_decay(tl.load(gk + p_k, mask=m_k, other=0.0), gate_scale, gate_clamp_min, GATE_LOGITS, HAS_CLAMP)
        b_v = tl.load(v + p_v, mask=m_v, other=0.0).to(tl.float32)
        b_h = b_h * tl.exp(b_g)[:, None] + b_k[:, None] * b_v[None, :]
        b_o = tl.sum(b_h * b_q[:, None], axis=0)
        tl.store(o + p_v, b_o.to(o.dtype.element_ty), mask=m_v)
    if STORE_FINAL_STATE:
        tl.store(ht + p_kv, b_h, mask=m_kv)


@triton.jit
def fused_recurrent_gla_step_kernel(
    q,
    k,
    v,
    gk,
    o,
    h0,
    ht,
    scale,
    gate_scale,
    gate_clamp_min,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    STAGES: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr,
    GATE_LOGITS: tl.constexpr,
    HAS_CLAMP: tl.constexpr,
    USE_PDL: tl.constexpr,
    PREFETCH_STATE: tl.constexpr = False,
):
    """One token per sequence: walk the key dimension in ``[BK, BV]`` tiles, each read and written once.

    ``STAGES > 1`` lets Triton's pipeliner copy the next ``STAGES - 1`` state tiles to shared memory while
    this one is updated (``1``: the plain loop), so a program that walks several tiles (few programs, small
    batches) has more than one DRAM round trip in flight. Later tiles are other rows of the program's own
    columns, so ``ht`` may be ``h0``. ``o`` sums the tiles' parts in key order at any ``STAGES``; a
    different ``BK`` may change its last bits.

    ``PREFETCH_STATE`` (one key tile, and a state to read): the tile is loaded before the kernel waits for its
    predecessor under PDL, overlapping it. It is the layer's own state, which only this layer's launch a step
    earlier writes (``kernels/dependent_launch.py``); q, k, v and the gate, the projections just computed, after.
    """
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    if PREFETCH_STATE:
        o_k = tl.arange(0, BK)
        p_kv = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
        b_h0_first = tl.load(h0 + p_kv, mask=(o_k < K)[:, None] & m_v[None, :], other=0.0)
    wait_for_predecessor(USE_PDL)
    # With T = 1 the token of sequence n, head h sits at row n * H + h: the program's own index.
    b_v = tl.load(v + i_nh.to(tl.int64) * V + o_v, mask=m_v, other=0.0).to(tl.float32)
    b_o = tl.zeros([BV], dtype=tl.float32)
    for i_k in tl.range(0, tl.cdiv(K, BK), num_stages=STAGES):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        p_k = i_nh.to(tl.int64) * K + o_k
        p_kv = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        b_q = tl.load(q + p_k, mask=m_k, other=0.0).to(tl.float32) * scale
        b_k = tl.load(k + p_k, mask=m_k, other=0.0).to(tl.float32)
        b_g = log_decay(tl.load(gk + p_k, mask=m_k, other=0.0), gate_scale, gate_clamp_min, GATE_LOGITS, HAS_CLAMP)
        if PREFETCH_STATE:  # the only tile: loaded before the wait
            b_h0 = b_h0_first.to(tl.float32)
        elif USE_INITIAL_STATE:  # issued before the update, which waits for k's load
            b_h0 = tl.load(h0 + p_kv, mask=m_kv, other=0.0).to(tl.float32)
        b_h = b_k[:, None] * b_v[None, :]
        if USE_INITIAL_STATE:
            b_h += b_h0 * tl.exp(b_g)[:, None]
        if STORE_FINAL_STATE:  # stored before o's reduction over the tile, which need not wait for it
            tl.store(ht + p_kv, b_h, mask=m_kv)
        b_o += tl.sum(b_h * b_q[:, None], axis=0)
    tl.store(o + i_nh.to(tl.int64) * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)


@functools.lru_cache
def fp32_reciprocal(x: float) -> float:
    """``1 / x`` rounded to fp32: torch on CUDA divides a tensor by a scalar as a product with it."""
    return (torch.tensor(1.0, dtype=torch.float32) / x).item()


class StepConfig(NamedTuple):
    """Launch settings of the one-token kernel: key tile, value slice, warps, and the pipeline depth of
    the state's loads (``stages``: Triton's ``tl.range`` loads later tiles to shared memory ahead)."""

    BK: int
    BV: int
    num_warps: int
    stages: int = 1


# Small batches: a key tile of up to this many rows; a slice of more is walked in pipelined tiles of it.
SMALL_BATCH_BK = 256


def step_config(N: int, H: int, K: int, V: int, device: torch.device) -> StepConfig:
    """The one-token kernel's launch settings for N sequences of H heads with a [K, V] state."""
    # 64-wide rows (256 contiguous bytes) keep the state stream at full bandwidth; narrower slices
    # only when there are too few to give every SM two programs (small batches).
    BK, BV = min(64, max(16, triton.next_power_of_2(K))), min(64, max(16, triton.next_power_of_2(V)))
    while BV > 16 and N * H * triton.cdiv(V, BV) < 2 * num_sms(device):
        BV //= 2
    if N * H * triton.cdiv(V, BV) >= 2 * num_sms(device):
        return StepConfig(BK, BV, 4)
    # Still about one program an SM: its walk over 64-row tiles is a chain of DRAM round trips, one a
    # tile. A slice of at most SMALL_BATCH_BK rows loads at once (one round trip, as many warps as
    # its [K, 16] tile fills); a longer one is walked in tiles of that many rows, the next two loading
    # while one is updated.
    BK = min(max(16, triton.next_power_of_2(K)), SMALL_BATCH_BK)
    if K <= BK:
        return StepConfig(BK, BV, max(4, min(16, BK * BV // 256)))
    return StepConfig(BK, BV, 4, stages=3)


def fused_recurrent_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    final_state: torch.Tensor | None = None,
    gate_logit_normalizer: float | None = None,
    gate_clamp_min: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Gated linear attention token by token on CUDA tensors (Triton); forward only, for decoding.

    Args:
        q, k, gk: ``[B, T, H, K]``; ``gk`` is the log of the per-key-channel decay (``<= 0``).
        v: ``[B, T, H, V]``.
        scale: query scale, ``K ** -0.5`` when ``None``.
        initial_state: ``[N, H, K, V]`` (``N = B``, or the number of sequences with ``cu_seqlens``).
        output_final_state: return the state after the last token of each sequence (fp32).
        cu_seqlens: ``[N + 1]`` cumulative lengths of a packed batch (``B == 1``).
        final_state: where to write the final state (``[N, H, K, V]`` fp32, contiguous); it may be
            ``initial_state`` itself, updated in place (each program reads its slice of the state
            before it writes it), so a decode step reads and writes the state once, with no copy.
        gate_logit_normalizer: when given, ``gk`` holds GLA's raw gate logits and the kernel uses the log
            decay ``logsigmoid(gk) / gate_logit_normalizer``, as fla's GLA layer computes it before its
            kernels (one torch kernel fewer per op, and no ``gk``-sized tensor written and read back).
        gate_clamp_min: with ``gate_logit_normalizer``, the log decay's lower clamp (``clamp_min``), or ``None``.

    Returns:
        ``o`` ``[B, T, H, V]`` in ``v``'s dtype, and the final state ``[N, H, K, V]`` (fp32) or ``None``.

    No gradient: use :func:`statex_hf.kernels.gla.chunk.chunk_gla` for training. Meant for small
    ``T`` (decode steps, short prompts); the cost grows linearly in ``T`` with no parallelism over it.
    """
    if needs_grad(q, k, v, gk):
        raise RuntimeError(
            "fused_recurrent_gla has no backward (it is the decode kernel); use chunk_gla when gradients are needed"
        )
    B, T, H, K = q.shape
    V = v.shape[-1]
    if cu_seqlens is not None and B != 1:
        raise ValueError(f"fused_recurrent_gla: cu_seqlens needs a packed batch of size 1, got B={B}")
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    scale = K**-0.5 if scale is None else scale
    if gate_clamp_min is not None and gate_logit_normalizer is None:
        raise ValueError("fused_recurrent_gla: gate_clamp_min applies to gate logits; pass gate_logit_normalizer too")
    gate_scale = 1.0 if gate_logit_normalizer is None else fp32_reciprocal(gate_logit_normalizer)
    q, k, v, gk = (x.contiguous() for x in (q, k, v, gk))
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    o = torch.empty_like(v)
    if final_state is not None:
        if final_state.shape != (N, H, K, V) or final_state.dtype != torch.float32 or not final_state.is_contiguous():
            raise ValueError(f"fused_recurrent_gla: final_state must be a contiguous fp32 [{N}, {H}, {K}, {V}] tensor")
        output_final_state = True
    ht = final_state if final_state is not None else None
    if ht is None and output_final_state:
        ht = q.new_empty(N, H, K, V, dtype=torch.float32)
    clamp_min = 0.0 if gate_clamp_min is None else gate_clamp_min
    # What the one-token and the multi-token kernels take alike.
    shape_and_flags = dict(H=H, K=K, V=V, USE_INITIAL_STATE=initial_state is not None,
                           STORE_FINAL_STATE=output_final_state, GATE_LOGITS=gate_logit_normalizer is not None,
                           HAS_CLAMP=gate_clamp_min is not None)  # fmt: skip
    with on_device_of(q):  # Triton launches on the current GPU: make it q's
        if T == 1 and cu_seqlens is None:
            BK, BV, num_warps, stages = step_config(N, H, K, V, q.device)
            fused_recurrent_gla_step_kernel[(triton.cdiv(V, BV), N * H)](
                q,
                k,
                v,
                gk,
                o,
                initial_state,
                ht,
                scale,
                gate_scale,
                clamp_min,
                BK=BK,
                BV=BV,
                STAGES=stages,
                PREFETCH_STATE=initial_state is not None and K <= BK,
                num_warps=num_warps,
                **shape_and_flags,
                **pdl_kwargs(),
            )
            return o, ht
        BK = max(16, triton.next_power_of_2(K))
        BV = min(max(8192 // BK, 8), max(8, triton.next_power_of_2(V)))
        grid = (triton.cdiv(V, BV), N * H)
        fused_recurrent_gla_fwd_kernel[grid](
            q,
            k,
            v,
            gk,
            o,
            initial_state,
            ht,
            cu_seqlens,
            scale,
            gate_scale,
            clamp_min,
            T,
            BK=BK,
            BV=BV,
            IS_VARLEN=cu_seqlens is not None,
            num_warps=4 if BK * BV <= 4096 else 8,
            **shape_and_flags,
        )
        return o, ht
