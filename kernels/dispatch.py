"""The one place that picks an implementation for each token-mixer call.

Decided per call from the tensors (device, shape, grad), never at import: CUDA tensors go to the
Triton kernels, everything else to the PyTorch paths. ``STATEX_FORCE_TORCH=1`` forces PyTorch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from statex_hf.kernels.activations.naive import naive_swiglu
from statex_hf.kernels.conv.naive import naive_causal_conv1d
from statex_hf.kernels.gla.chunk_torch import chunk_gla_torch
from statex_hf.kernels.gla.naive import gla_log_decay, naive_recurrent_gla
from statex_hf.kernels.linear.row_norm import RowNorm
from statex_hf.kernels.norm.naive import naive_gated_rmsnorm
from statex_hf.kernels.ssd.naive import naive_ssd
from statex_hf.kernels.utils import needs_grad


def use_triton(*tensors: torch.Tensor) -> bool:
    """Triton kernels run on CUDA tensors unless ``STATEX_FORCE_TORCH=1``."""
    if os.environ.get("STATEX_FORCE_TORCH", "0") == "1":
        return False
    return all(t.is_cuda for t in tensors)


# Up to this many tokens a no-grad GLA call on CUDA runs token by token (one pass over the state)
# rather than chunked (several kernels and per-chunk states).
GLA_RECURRENT_MAX_T = 64
# Up to this many tokens after a conv state, a no-grad conv on CUDA runs as the decode kernel, whose
# program walks the tokens one by one; longer inputs (a prompt continuing a cache) take the PyTorch path.
CONV_UPDATE_MAX_T = 64
# Up to this many rows of x, a no-grad bf16 / fp16 linear on CUDA runs as the Triton GEMV
# (``kernels/linear/gemv.py``): at one row (a B = 1 decode step) ``benchmarks/bench_gemv.py`` measured it ahead
# of cuBLAS at every decode shape of the 1.3B models; at 16 and 64 rows cuBLAS was as fast or faster at most
# shapes (not the heads: ``benchmarks/README.md``), and the table's buckets above one row are untuned.
GEMV_MAX_ROWS = 1
# Up to this many rows of x (a decode step's batch; also a no-grad forward of that many tokens in all, a short
# prompt), no-grad bf16 / fp16 products on CUDA of one input that a one-row step takes in one launch (GLA's mixer's
# five projections; its MLP's gate and up products with the SwiGLU) take one launch at more rows too
# (``kernels/linear/gemv_group.py``, on the tensor cores from 5 rows on), where they are otherwise a cuBLAS call each
# (and a SwiGLU kernel). 1: one row alone. Off until a GPU has timed it at B = 16 and 64
# (``bench_generate.py --grouped-rows 64`` beside the same run's baseline).
GROUPED_MAX_ROWS = 1
# Up to this many sequences a Mamba2 decode step runs its conv and state update as one kernel
# (``one_launch_conv_ssd``). It saves a launch per layer, which is much of a B = 1 step; but each of its programs
# convolves its group's whole B and C again (the two-kernel path convolves them once), work that grows with the
# batch beside the state traffic: at B = 64 the one launch was slower than the two (benchmarks/README.md, generate).
ONE_LAUNCH_CONV_SSD_MAX_ROWS = 1
# On, a Mamba2 block's one-row step leaves its mixer's gated norm (one group) to out_proj's product, which computes
# it as it loads y from the partial sums of squares the one launch stores (``kernels/linear/row_norm.py``); off, the
# group's last program of the one launch normalizes y. On: the replayed B = 1 step of Mamba2-1.3B took 1.46 ms
# against 1.51 off, twice each in one run on an H100 (benchmarks/README.md, eighteenth session;
# ``bench_generate.py --norm-in-step`` is the same-run baseline).
GATED_NORM_IN_OUT_PROJ = True
# On, a causal LM's one-row decode step leaves its final norm to the head's GEMV, which computes it as it loads the
# residual stream and stores the fp32 logits itself: one launch where the norm, Mamba2's cast of its fp32 output to
# the head's dtype, the head and the logits' ``.float()`` were three or four (``StateXRecurrentForCausalLM``). Off
# until a GPU has run and timed it: built without one (twenty-sixth session; compiled for sm90 on CPU,
# ``tests/test_gemv_kernel.py``); ``bench_generate.py --final-norm-in-head`` turns it on beside the same run's baseline.
FINAL_NORM_IN_HEAD = False


def gla(
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
    """Gated linear attention; shapes as in ``kernels/gla/naive.py`` (state ``[N, H, K, V]``, fp32).

    CUDA: the Triton recurrent kernel for short inputs that need no gradient (decode steps, short
    prompts: state read and written once), else the Triton chunked kernel. CPU (or
    ``STATEX_FORCE_TORCH=1``): the token loop for one or two tokens, else the chunked PyTorch path.
    ``final_state``: a tensor to return the final state in (it may be ``initial_state``: a cached state
    updated in place); the recurrent kernel writes it directly, the other paths copy into it.
    ``gate_logit_normalizer``: ``gk`` holds GLA's raw gate logits, and the log decay is
    ``gla_log_decay(gk, gate_logit_normalizer, gate_clamp_min)``: the recurrent kernel computes it as it
    loads ``gk`` (no elementwise kernels before it), every other path first runs that function's torch ops.
    """
    T = q.shape[1]
    final = output_final_state or final_state is not None
    if use_triton(q, k, v, gk):
        if T <= GLA_RECURRENT_MAX_T and not needs_grad(q, k, v, gk, initial_state):
            from statex_hf.kernels.gla.fused_recurrent import fused_recurrent_gla

            return fused_recurrent_gla(
                q, k, v, gk, scale, initial_state, final, cu_seqlens, final_state, gate_logit_normalizer, gate_clamp_min
            )
    if gate_logit_normalizer is not None:
        gk = gla_log_decay(gk, gate_logit_normalizer, gate_clamp_min)
    elif gate_clamp_min is not None:
        raise ValueError("dispatch.gla: gate_clamp_min applies to gate logits; pass gate_logit_normalizer too")
    args = (q, k, v, gk, scale, initial_state, final, cu_seqlens)
    if use_triton(q, k, v, gk):
        from statex_hf.kernels.gla.chunk import chunk_gla

        o, ht = chunk_gla(*args)
    elif T <= 2:
        o, ht = naive_recurrent_gla(*args)
    else:
        o, ht = chunk_gla_torch(*args)
    if final_state is not None:
        final_state.copy_(ht)
        ht = final_state
    return o, ht


def _plain_tensors(tensors: list[torch.Tensor]) -> bool:
    """No tensor subclass among ``tensors`` (torchao's quantized weights, a DTensor): a kernel that reads their raw
    memory would read something else than the values they stand for."""
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors)


def _takes_gemv(
    x: torch.Tensor,
    *weights: torch.Tensor,
    bias: torch.Tensor | None = None,
    product_dtype: torch.dtype | None = None,
    max_rows: int | None = None,
) -> bool:
    """Whether ``x``'s products with ``weights`` run as the Triton GEMV: CUDA, no gradient, at most
    ``GEMV_MAX_ROWS`` rows of x (or ``max_rows``), bf16 or fp16 in one dtype, weights contiguous along K, outside
    ``torch.compile``, plain tensors (the GEMV reads raw memory: a subclass such as torchao's quantized weights or a
    DTensor computes its own ``F.linear``). ``product_dtype``: the dtype of what the weights multiply where that is
    not x's own (a norm's output on x, ``kernels/linear/row_norm.py``)."""
    tensors = [t for t in (x, *weights, bias) if t is not None]
    dtype = x.dtype if product_dtype is None else product_dtype
    return (
        not torch.compiler.is_compiling()
        and _plain_tensors(tensors)
        and use_triton(*tensors)
        and not needs_grad(*tensors)
        and x.dim() >= 1
        and math.prod(x.shape[:-1]) <= (GEMV_MAX_ROWS if max_rows is None else max_rows)
        and dtype in (torch.bfloat16, torch.float16)
        and {t.dtype for t in tensors if t is not x} | {dtype} == {dtype}
        and all(w.dim() == 2 and w.stride(-1) == 1 for w in weights)
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: the Triton GEMV where ``_takes_gemv`` (fp32 sums, one rounding; the same bits
    in a CUDA graph as eagerly). Otherwise (training, prefill, CPU, fp32, ``STATEX_FORCE_TORCH=1``, a compiled
    graph, which picks its own kernel) ``F.linear``."""
    if _takes_gemv(x, weight, bias=bias):
        from statex_hf.kernels.linear.gemv import gemv

        return gemv(x, weight, bias)
    return F.linear(x, weight, bias)


def _one_launch_applies(
    x: torch.Tensor,
    *weights: torch.Tensor,
    norm: RowNorm | None = None,
    residual: torch.Tensor | None = None,
    residual_dtype: torch.dtype | None = None,
) -> bool:
    """Whether the fused one-row kernels (``kernels/linear/gemv_group.py``, ``gemv.py`` with a norm or a residual)
    serve these products: each would take the GEMV (on the norm's output where ``norm`` is given), x is exactly one
    row (an empty batch is ``F.linear``'s), every weight contiguous (rows indexed by K); a norm the prologue
    computes (``RowNorm.applies``); a residual ``[..., N]`` of one device, contiguous, that ``residual_dtype``
    holds exactly."""
    if norm is not None and not norm.applies(x):
        return False
    norm_tensors = () if norm is None else (norm.weight, norm.gate, norm.squares)
    extra = [t for t in (*norm_tensors, residual) if t is not None]
    if residual is not None:
        residual_dtype = residual.dtype if residual_dtype is None else residual_dtype
        if not (
            residual.shape == (*x.shape[:-1], weights[0].shape[0])
            and residual.is_contiguous()
            and torch.promote_types(residual.dtype, residual_dtype) == residual_dtype
            and {residual.dtype, residual_dtype} <= {torch.float32, torch.bfloat16, torch.float16}
        ):
            return False
    return (
        _takes_gemv(x, *weights, product_dtype=None if norm is None else norm.normed_dtype(x.dtype))
        and _plain_tensors(extra)
        and use_triton(*extra, *weights)
        and not needs_grad(*extra)
        and math.prod(x.shape[:-1]) == 1
        and _one_device_contiguous(x, weights, extra)
    )


def _grouped_rows_apply(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """Whether products of several rows of x (2 to ``GROUPED_MAX_ROWS``; the GEMV on, ``GEMV_MAX_ROWS``) run as one
    launch of the grouped kernels: ``_takes_gemv``'s conditions but the rows, on one device, every weight contiguous.
    The switches, then ``_takes_gemv`` (compiling and gradients first), are read before x's shape: a compiled or
    training forward guards on none of it."""
    return (
        GROUPED_MAX_ROWS > 1
        and GEMV_MAX_ROWS >= 1
        and _takes_gemv(x, *weights, max_rows=GROUPED_MAX_ROWS)
        and math.prod(x.shape[:-1]) > 1
        and _one_device_contiguous(x, weights)
    )


def _one_device_contiguous(
    x: torch.Tensor, weights: Sequence[torch.Tensor], extra: Sequence[torch.Tensor] = ()
) -> bool:
    """x, ``weights`` and ``extra`` on one device, every weight contiguous (a fused launch indexes rows by K)."""
    return len({t.device for t in (x, *extra, *weights)}) == 1 and all(w.is_contiguous() for w in weights)


def one_launch_products(
    x: torch.Tensor, weights: list[torch.Tensor], norm: RowNorm | None = None
) -> list[torch.Tensor] | None:
    """``[F.linear(x, w) for w in weights]`` as one launch of the grouped GEMV (``kernels/linear/gemv_group.py``)
    where the weights are contiguous (at most ``MAX_GROUP``) and either x is one row and each product would take the
    GEMV in the same tiles (``configs.one_row_buckets``: each product ``linear``'s GEMV bit for bit where that does
    not split K), or x has 2 to ``GROUPED_MAX_ROWS`` rows (``_grouped_rows_apply``; cuBLAS's products to rounding);
    ``None`` otherwise, and the caller runs its modules. ``norm`` (one row): the products of ``norm``'s output on x,
    the norm computed in the same launch."""
    rows = norm is None and _grouped_rows_apply(x, *weights)
    gated = norm is not None and norm.gate is not None  # a gated norm is the plain GEMV's alone
    if not rows and (gated or not _one_launch_applies(x, *weights, norm=norm)):
        return None  # decided before the import: a compiled graph or a CPU run never reaches it
    from statex_hf.kernels.linear.configs import one_row_buckets
    from statex_hf.kernels.linear.gemv_group import MAX_GROUP, gemv_group

    if len(weights) > MAX_GROUP:
        return None
    if not rows and len(one_row_buckets([w.shape[0] for w in weights], x.device)) > 1:
        return None  # products of other tiles would sum in another order than their separate GEMVs
    return gemv_group(x, weights, norm)


def one_launch_swiglu(
    x: torch.Tensor, gate_weight: torch.Tensor, up_weight: torch.Tensor, norm: RowNorm | None = None
) -> torch.Tensor | None:
    """``silu(F.linear(x, gate_weight)) * F.linear(x, up_weight)`` as one launch (``gemv_group.gemv_swiglu``) where x
    is one row and both products would take the GEMV (the two GEMVs and the SwiGLU kernel bit for bit where neither
    splits K), or x has 2 to ``GROUPED_MAX_ROWS`` rows (``_grouped_rows_apply``; cuBLAS's products to rounding);
    ``None`` otherwise. ``norm`` (one row): of ``norm``'s output on x, computed in the same launch."""
    gated = norm is not None and norm.gate is not None  # a gated norm is the plain GEMV's alone
    rows = norm is None and _grouped_rows_apply(x, gate_weight, up_weight)
    if gate_weight.shape == up_weight.shape and (
        rows or (not gated and _one_launch_applies(x, gate_weight, up_weight, norm=norm))
    ):
        from statex_hf.kernels.linear.gemv_group import gemv_swiglu

        return gemv_swiglu(x, gate_weight, up_weight, norm)
    return None


def one_launch_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    norm: RowNorm | None = None,
    residual: torch.Tensor | None = None,
    residual_dtype: torch.dtype | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor | None:
    """``F.linear(norm(x), weight)``, with ``residual`` ``residual.to(residual_dtype)`` plus that (torch's add), as
    one launch of the one-row GEMV (``kernels/linear/row_norm.py``: the norm computed as x is loaded, the add as y is
    stored) where x is one row and the product would take the GEMV; ``None`` otherwise. ``out_dtype`` fp32 (no
    residual): the product's ``.float()``, stored so by the same launch."""
    if not _one_launch_applies(x, weight, norm=norm, residual=residual, residual_dtype=residual_dtype):
        return None
    from statex_hf.kernels.linear.gemv import gemv

    return gemv(x, weight, None, norm, residual, residual_dtype, out_dtype)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``F.silu(gate) * up`` (an MLP's SwiGLU). CUDA, no gradient, one shape and dtype: one Triton kernel
    with torch's two roundings (``kernels/activations/swiglu.py``), where torch runs two. Otherwise (training,
    CPU, ``STATEX_FORCE_TORCH=1``) torch's two ops."""
    if use_triton(gate, up) and not needs_grad(gate, up) and gate.shape == up.shape and gate.dtype == up.dtype:
        from statex_hf.kernels.activations.swiglu import swiglu as triton_swiglu

        return triton_swiglu(gate, up)
    return naive_swiglu(gate, up)


def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor | None,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    chunk_size: int = 256,
    state_in_place: bool = False,
    A_log: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mamba2 SSD scan; shapes as in ``kernels/ssd/naive.py`` (state ``[n, H, P, N]``, fp32).

    Give ``A`` (``[H]``, negative) or, as a model does, ``A=None`` and ``A_log=`` its parameter
    (``A = -exp(A_log)`` in fp32): a decode step then hands ``A_log`` to the decode kernel, which takes
    the exponential itself (no kernels per step for A); every other path computes
    ``-torch.exp(A_log.float())`` here, on the autograd path, as the model did.

    A decode step (one token, a state, no gradient) -> ``ssd_state_update`` (the Triton kernel on
    CUDA, one token step in PyTorch elsewhere). With ``state_in_place`` the step updates
    ``initial_state`` itself when it is a contiguous fp32 tensor (a model's cache: one read and one
    write of the state, and the cache keeps its storage, as CUDA graphs need) and returns it as the
    final state; otherwise ``initial_state`` is left as it was. Longer inputs: on CUDA the Triton
    chunked scan; on CPU the chunked PyTorch scan, or the token loop for a handful of tokens.
    """
    if (A is None) == (A_log is None):
        raise ValueError("ssd: give exactly one of A and A_log")
    T = x.shape[1]
    grad = needs_grad(x, dt, A, A_log, B, C, D, dt_bias, initial_state)
    if T == 1 and cu_seqlens is None and initial_state is not None and not grad:
        state = initial_state.float().contiguous()
        if state is initial_state and not state_in_place:
            state = state.clone()
        y = ssd_state_update(
            state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, dt_bias, dt_softplus, dt_limit, A_log=A_log
        )
        return y[:, None], (state if output_final_state else None)
    if A is None:
        A = -torch.exp(A_log.float())
    args = (x, dt, A, B, C, D, dt_bias, dt_softplus, dt_limit, initial_state, output_final_state, cu_seqlens)
    if use_triton(x, B, C):
        from statex_hf.kernels.ssd.chunk import chunk_ssd

        # Short inputs get a short chunk (less padding); the kernels need a power of two >= 16.
        L = min(max(16, 1 << (max(chunk_size, 16).bit_length() - 1)), max(16, 1 << (T - 1).bit_length()))
        return chunk_ssd(*args, chunk_size=L)
    if T <= 4:
        return naive_ssd(*args)
    from statex_hf.kernels.ssd.chunk_torch import chunk_ssd_torch

    return chunk_ssd_torch(*args, chunk_size=min(chunk_size, 64))


def ssd_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor | None,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    A_log: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode step, ``state`` ``[b, H, P, N]`` fp32 updated in place; x ``[b, H, P]``, dt ``[b, H]``,
    B/C ``[b, G, N]`` (any strides); ``A`` ``[H]``, or ``A=None`` and ``A_log`` (``A = -exp(A_log)``, taken
    in the Triton kernel, in PyTorch elsewhere); returns y ``[b, H, P]``."""
    if (A is None) == (A_log is None):
        raise ValueError("ssd_state_update: give exactly one of A and A_log")
    if use_triton(state, x, B, C):
        from statex_hf.kernels.ssd.state_update import ssd_state_update as triton_state_update

        return triton_state_update(state, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_limit, A_log=A_log)
    if A is None:
        A = -torch.exp(A_log.float())
    y, final = naive_ssd(
        x[:, None], dt[:, None], A, B[:, None], C[:, None], D, dt_bias, dt_softplus, dt_limit, state, True
    )
    state.copy_(final)
    return y[:, 0]


def one_launch_conv_ssd(
    xBC: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    activation: str | None,
    conv_state: torch.Tensor,
    dt: torch.Tensor,
    A_log: torch.Tensor,
    n_groups: int,
    state: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    norm_gate: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    gate_squares: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
    """A Mamba2 layer's one-token step from its caches in one launch (``kernels/ssd/conv_state_update.py``):
    ``causal_conv1d(xBC, ..., conv_state, True)`` then ``ssd`` of the convolved ``[x | B | C]`` from ``state`` with
    ``state_in_place``, bit for bit (both caches updated in place). xBC ``[b, 1, H * P + 2 * G * N]`` (channels
    unit-stride), dt ``[b, 1, H]``, state ``[b, H, P, N]`` fp32 contiguous; returns y ``[b, 1, H, P]``. Where the two
    calls would run the conv update and state-update kernels (CUDA, one token, no gradient, the state fp32 and
    contiguous), for at most ``ONE_LAUNCH_CONV_SSD_MAX_ROWS`` sequences, outside ``torch.compile`` (a compiled step
    keeps the two calls it had, as traced before), with a contiguous conv weight (under PDL the kernel reads it
    before waiting for the kernel before it, which must not be a copy of it: ``kernels/dependent_launch.py``);
    ``None`` otherwise, and the caller makes the two calls.

    With ``norm_gate`` (z ``[b, 1, H * P]``) and ``norm_weight`` ``[H * P]``: the mixer's gated norm of y too, per
    group of B and C (``gated_rmsnorm(y, z, norm_weight, norm_eps, H * P // G)``), in the same launch; returns
    that ``[b, 1, H * P]``. With ``norm_gate`` and ``gate_squares`` (no weight), the norm is the caller's: returns
    ``(y [b, 1, H * P], squares)``, the partial sums of its squares that ``out_proj``'s product takes
    (``conv_state_update``, ``kernels/linear/row_norm.py``)."""
    gated = norm_gate is not None
    if not (
        not torch.compiler.is_compiling()
        and xBC.shape[1] == 1
        and xBC.shape[0] <= ONE_LAUNCH_CONV_SSD_MAX_ROWS
        and activation in ("silu", "swish", None)
        and use_triton(xBC, conv_weight, conv_state, state, *(t for t in (norm_gate, norm_weight) if t is not None))
        and not needs_grad(xBC, conv_weight, conv_bias, conv_state, dt, A_log, D, dt_bias, state, norm_gate)
        and not needs_grad(norm_weight)
        and state.dtype == torch.float32
        and state.is_contiguous()
        and xBC.stride(-1) == 1
        and conv_weight.is_contiguous()
        and (not gated or norm_gate.stride(-1) == 1)
    ):
        return None  # decided before the import: a CPU run never imports Triton code on this path
    from statex_hf.kernels.ssd.conv_state_update import conv_state_update

    y = conv_state_update(
        xBC[:, 0], conv_weight, conv_state, state, dt[:, 0], None, n_groups, conv_bias, activation, D, dt_bias,
        dt_softplus, dt_limit, A_log=A_log, norm_gate=norm_gate[:, 0] if gated else None, norm_weight=norm_weight,
        norm_eps=norm_eps, gate_squares=gate_squares,
    )  # fmt: skip
    if gate_squares:
        y, squares = y
        return y.reshape(y.shape[0], 1, -1), squares
    return y[:, None]


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    conv_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Depthwise causal conv1d; shapes as in ``kernels/conv/naive.py``.

    CUDA without an incoming ``conv_state`` (training, prefill): the Triton kernel, which keeps only
    its input for the backward. CUDA decode steps (a ``conv_state`` and ``output_final_state``, at most
    ``CONV_UPDATE_MAX_T`` tokens, no gradient, no ``cu_seqlens``): the Triton update kernel, one launch
    that shifts the new inputs into ``conv_state`` IN PLACE and returns that very tensor as the final
    state (a model's cache: it keeps its storage, as CUDA graphs need, and nothing is copied back).
    Everything else (CPU, longer inputs after a state, gradients): the PyTorch path, which leaves
    ``conv_state`` as it was and returns a new window.
    """
    if activation in ("silu", "swish", None) and use_triton(x, weight):
        if conv_state is None:
            from statex_hf.kernels.conv.causal_conv1d import causal_conv1d as triton_causal_conv1d

            return triton_causal_conv1d(x, weight, bias, activation, output_final_state, cu_seqlens)
        if (
            output_final_state
            and cu_seqlens is None
            and x.shape[1] <= CONV_UPDATE_MAX_T
            and use_triton(conv_state)
            and not needs_grad(x, weight, bias, conv_state)
        ):
            from statex_hf.kernels.conv.causal_conv1d_update import causal_conv1d_update

            return causal_conv1d_update(x, weight, conv_state, bias, activation), conv_state
    return naive_causal_conv1d(x, weight, bias, activation, conv_state, output_final_state, cu_seqlens)


def gated_rmsnorm(
    x: torch.Tensor,
    gate: torch.Tensor | None,
    weight: torch.Tensor | None,
    eps: float,
    group_size: int,
    norm_before_gate: bool = False,
    input_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """RMSNorm per group with an optional swish gate and weight, as in ``kernels/norm/naive.py``: Mamba2's
    ``weight * norm(x * silu(gate))`` or, ``norm_before_gate``, GLA's ``norm(x) * weight * silu(gate)``.
    CUDA: one Triton pass each way, which keeps only x, gate and one fp32 value per (row, group) for the
    backward; the PyTorch path runs several kernels and keeps several fp32 copies of x.
    ``input_dtype``: the norm of ``x.to(input_dtype)``; on CUDA without a gradient the kernel rounds x as it
    loads it (no cast kernel), everywhere else the cast runs first, as the caller's own cast would."""
    if use_triton(*(t for t in (x, gate, weight) if t is not None)):
        from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm as triton_gated_rmsnorm

        return triton_gated_rmsnorm(x, gate, weight, eps, group_size, norm_before_gate, input_dtype)
    if input_dtype is not None:
        x = x.to(input_dtype)
    return naive_gated_rmsnorm(x, gate, weight, eps, group_size, norm_before_gate)


def one_launch_add_rmsnorm(
    residual: torch.Tensor,
    update: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    norm_before_gate: bool = True,
    input_dtype: torch.dtype | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``h = residual.to(dtype) + update`` and the norm of it, ``gated_rmsnorm(h, None, weight, eps, D,
    norm_before_gate, input_dtype)`` (GLA's: the defaults; Mamba2's: gate first, an fp32 ``dtype`` and the next
    block's ``input_dtype``), as one Triton pass (``kernels/norm/add_rmsnorm.py``: torch's sum and the norm kernel's
    output on it, bit for bit but for the one form its docstring names) on the no-grad CUDA path: no gradient,
    outside ``torch.compile``, plain contiguous tensors of one shape and device (no copy kernel first), a ``dtype``
    that holds the residual exactly. ``None`` otherwise, and the caller adds with torch."""
    tensors = [t for t in (residual, update, weight) if t is not None]
    floats = {torch.float32, torch.bfloat16, torch.float16}
    dtype = residual.dtype if dtype is None else dtype
    if not (
        not torch.compiler.is_compiling()
        and _plain_tensors(tensors)
        and use_triton(*tensors)
        and not needs_grad(*tensors)
        and residual.shape == update.shape
        and residual.dim() >= 1
        and all(t.is_contiguous() for t in tensors)
        and len({t.device for t in tensors}) == 1
        and {residual.dtype, update.dtype, dtype, input_dtype or dtype} <= floats
        and torch.promote_types(residual.dtype, dtype) == dtype  # residual.to(dtype) is exact
        and (weight is None or weight.shape == residual.shape[-1:])
    ):
        return None  # decided before the import: a compiled graph or a CPU run never reaches it
    from statex_hf.kernels.norm.add_rmsnorm import add_rmsnorm

    return add_rmsnorm(residual, update, weight, eps, norm_before_gate, input_dtype, dtype)


def residual_add(residual: torch.Tensor, update: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``residual.to(dtype) + update`` (a block's residual connection; ``dtype`` None keeps residual's).

    CUDA, no gradient, one shape, contiguous, dtypes that differ (an fp32 residual stream and a bf16 or fp16
    layer output): one vectorized Triton kernel with torch's result (``kernels/activations/residual_add.py``),
    where torch runs its mixed-dtype add (not vectorized) and, for a cast residual, a cast kernel first.
    Otherwise (training, CPU, ``STATEX_FORCE_TORCH=1``, one dtype) torch's ops."""
    dtype = residual.dtype if dtype is None else dtype
    if (
        use_triton(residual, update)
        and not needs_grad(residual, update)
        and residual.shape == update.shape
        and residual.is_contiguous()
        and update.is_contiguous()
        and len({residual.dtype, update.dtype, dtype}) > 1
        and {residual.dtype, update.dtype, dtype} <= {torch.float32, torch.bfloat16, torch.float16}
        and torch.promote_types(residual.dtype, dtype) == dtype  # residual.to(dtype) is exact
    ):
        from statex_hf.kernels.activations.residual_add import residual_add as triton_residual_add

        return triton_residual_add(residual, update, dtype)
    return residual.to(dtype) + update
