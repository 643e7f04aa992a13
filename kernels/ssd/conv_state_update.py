"""Mamba2 decode in one launch: the conv window's step (``kernels/conv/causal_conv1d_update.py``) and the selective
state update (``kernels/ssd/state_update.py``) for one token.

Over the in_proj slice ``xBC = [x | B | C]`` (``H * P + 2 * G * N`` channels) and the cached window of the
``K - 1`` inputs before it:

    xBC'  = act(conv_bias + sum_j w_j s_j),  s = [window | xBC]     fp32, rounded to xBC's dtype
    window <- s_1 .. s_{K-1}                                        in place, the window's dtype
    state  = exp(dt A) state + dt x' B'^T,   y = state C' + D x'   (``state_update.py``, in place)

Each op is the two kernels' own, in their order, rounded where they round (the conv output is stored in xBC's
dtype between them, so it is rounded here too), and the kernel compiles without fused multiply-adds as the conv
kernel does (``state_update.py`` too, so the two paths are one computation): the result is theirs bit for bit.

Programs are tiled as the state update's, over (batch row, head, ``BP`` rows of P). A program convolves its own
``BP`` x channels and, for each ``BN`` tile of the state, the B and C channels of its head's group: every program
of a group computes the group's B and C again (``2 N K`` products and ``2 N`` SiLUs each), so no program waits for
another; that work grows with the batch beside the state traffic (``dispatch.ONE_LAUNCH_CONV_SSD_MAX_ROWS``).

The windows are updated in place, and every program of a group reads the group's B and C windows: the new
window of such a channel may only be written once all of them have read the old one. Each program takes a
ticket (an atomic count per batch row and group, the "last block" pattern) once its reads are done; the one that
draws the last ticket writes the group's B and C windows and sets the count back to zero for the next launch.
With the mixer's gated norm (``norm_gate``, ``norm_weight``), the group's last program normalizes the group's y
too, once every program of the group has stored its y before its ticket (the ticket's release makes those
stores visible to it): one launch fewer per layer, whose own wait for this kernel's end, then its loads, cost a
B = 1 step more than that program's tail does. With ``gate_squares`` the norm is left to
``out_proj``'s product (``kernels/linear/row_norm.py``): each program stores its y and the sum of its channels'
``(y * silu(z))^2``, its share of the group's sum of squares, after its ticket, and the last program's tail is the
windows alone. An x channel is read by its own program only, which writes its window itself, after its reads.

In the decode graphs the kernel takes programmatic dependent launch (``kernels/dependent_launch.py``): it waits for
the kernel before it (in_proj) before it reads in_proj's output or takes a ticket, so every earlier launch, and the
reset of its tickets, has finished. Before that wait it reads only what no kernel of a step writes before it: the
weights, and its own layer's state and conv windows, which only this layer's launch writes, a step earlier.

At one sequence a program has little work, and its time is the chain of memory round trips it waits on, one after
another; the order of its loads and stores shortens that chain (no arithmetic moves, so the bits stay the two
kernels'). Every load of the first state tile's step is issued before any math (the state tile, the x, B and C
taps and weights, dt), so their latencies overlap; a later tile is loaded, with its B and C taps, one iteration
ahead. The group's new B and C windows, where one ``BW`` block holds them, are read with the rest by every program
(in case it draws the last ticket) and written from those reads after the ticket, not read again; otherwise the
last program reads them after its ticket, block by block. The ticket comes before the last state tile, y and the x
window are stored: its release would otherwise wait until those writes are done.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from statex_hf.kernels.activations.elementwise import silu
from statex_hf.kernels.dependent_launch import pdl_kwargs, wait_for_predecessor
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.norm.gated_rmsnorm import normalize_group, one_program_chunks, output_dtype
from statex_hf.kernels.ssd.configs import ssd_config, ssd_launch
from statex_hf.kernels.ssd.state_update import _step_and_decay
from statex_hf.kernels.tickets import zeroed_tickets


@triton.jit
def _conv_taps(xBC_row, w, conv_bias, window_row, stride_wd, stride_wk, ch, mask, BLOCK: tl.constexpr,
               K: tl.constexpr, HAS_CONV_BIAS: tl.constexpr):  # fmt: skip
    """What channels ``ch``'s conv output takes from before the new input: the fp32 sum over the window's ``K - 1``
    cached taps (read in xBC's dtype, as the conv kernel reads them), the new input's weight and the bias (zeros
    without). Nothing here is in_proj's output: under PDL it is read before the kernel waits (module docstring)."""
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j in tl.static_range(K - 1):
        s = tl.load(window_row + ch * stride_wd + j * stride_wk, mask=mask, other=0.0)
        s = s.to(xBC_row.dtype.element_ty)
        acc += s.to(tl.float32) * tl.load(w + ch * K + j, mask=mask, other=0.0).to(tl.float32)
    last_w = tl.load(w + ch * K + (K - 1), mask=mask, other=0.0).to(tl.float32)
    bias = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_CONV_BIAS:
        bias = tl.load(conv_bias + ch, mask=mask, other=0.0).to(tl.float32)
    return acc, last_w, bias


@triton.jit
def _conv_output(taps, xBC_row, ch, mask, HAS_CONV_BIAS: tl.constexpr, SILU: tl.constexpr):
    """Channels ``ch``'s conv output for the new input from their ``_conv_taps``, as ``_conv_update_kernel``
    computes and stores it (the sum in fp32 from the window's first input on, then bias and activation, rounded to
    xBC's dtype), back in fp32."""
    acc, last_w, bias = taps
    acc += tl.load(xBC_row + ch, mask=mask, other=0.0).to(tl.float32) * last_w
    if HAS_CONV_BIAS:
        acc += bias
    if SILU:
        acc = silu(acc)
    return acc.to(xBC_row.dtype.element_ty).to(tl.float32)


@triton.jit
def _conv_step(xBC_row, w, conv_bias, window_row, stride_wd, stride_wk, ch, mask, BLOCK: tl.constexpr,
               K: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, SILU: tl.constexpr):  # fmt: skip
    """Channels ``ch``'s conv output for the new input (``_conv_taps`` then ``_conv_output``), in fp32."""
    taps = _conv_taps(xBC_row, w, conv_bias, window_row, stride_wd, stride_wk, ch, mask, BLOCK, K, HAS_CONV_BIAS)
    return _conv_output(taps, xBC_row, ch, mask, HAS_CONV_BIAS, SILU)


@triton.jit
def _next_window(xBC_row, window_row, stride_wd, stride_wk, ch, mask, K: tl.constexpr, KP: tl.constexpr):
    """Channels ``ch``'s window after the new input, ``[BLOCK, KP]`` (slot ``k`` holds ``s_{k + 1}``), read in
    xBC's dtype as the conv kernel reads it."""
    ks = tl.arange(0, KP)
    from_window = (ks + 1 < K - 1)[None, :]
    tile = mask[:, None] & (ks < K - 1)[None, :]
    cached = tl.load(window_row + ch[:, None] * stride_wd + (ks + 1)[None, :] * stride_wk, mask=tile & from_window,
                     other=0.0)  # fmt: skip
    new = tl.load(xBC_row + ch, mask=mask, other=0.0)
    return tl.where(from_window, cached.to(xBC_row.dtype.element_ty), new[:, None])


@triton.jit
def _store_window(window_row, stride_wd, stride_wk, ch, mask, window, K: tl.constexpr, KP: tl.constexpr):
    ks = tl.arange(0, KP)
    tile = mask[:, None] & (ks < K - 1)[None, :]
    ptrs = window_row + ch[:, None] * stride_wd + ks[None, :] * stride_wk
    tl.store(ptrs, window.to(window_row.dtype.element_ty), mask=tile)


@triton.jit
def _conv_state_update_kernel(
    xBC,
    conv_w,
    conv_bias,
    conv_state,
    state,
    dt,
    A,
    D,
    dt_bias,
    y,
    tickets,
    z,
    norm_w,
    normed,
    stride_z_b,
    norm_eps,
    H,
    G,
    P,
    N,
    dt_min,
    dt_max,
    stride_xBC_b,
    stride_dt_b,
    stride_dt_h,
    stride_w_b,
    stride_wd,
    stride_wk,
    K: tl.constexpr,
    KP: tl.constexpr,
    BP: tl.constexpr,
    BN: tl.constexpr,
    BW: tl.constexpr,
    WINDOWS_AT_ONCE: tl.constexpr,
    HAS_CONV_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    A_IS_LOG: tl.constexpr,
    USE_PDL: tl.constexpr,
    GATED_NORM: tl.constexpr = False,
    NORM_BS: tl.constexpr = 1,
    NORM_NCHUNK: tl.constexpr = 1,
    squares=None,
    GATE_SQUARES: tl.constexpr = False,
):
    pid = tl.program_id(0).to(tl.int64)
    h = pid % H
    bi = pid // H
    g = h // (H // G)
    xBC_row = xBC + bi * stride_xBC_b
    window_row = conv_state + bi * stride_w_b
    b_channels = H * P + g * N  # the group's B channels in xBC; its C channels follow all G groups' B
    c_channels = H * P + G * N + g * N
    ps = tl.program_id(1) * BP + tl.arange(0, BP)
    pmask = ps < P
    x_channels = h * P + ps
    rows = state + (bi * H + h) * P * N + ps[:, None] * N

    # Every load the first state tile needs depends on nothing but the inputs: all are issued before any math, so
    # their round trips overlap (the state tile's, the B / C and x convolutions', dt's) instead of following one
    # another. Each later tile is loaded, with its B and C, one iteration ahead (masked off past N). Under PDL the
    # loads of what no kernel of the step writes before this one (the layer's own state tile and conv windows,
    # written only by this layer's launch a step earlier, and the weights) come before the wait, and overlap
    # in_proj's tail; in_proj's output (xBC, dt) and the tickets after it.
    ns = tl.arange(0, BN)
    s = tl.load(rows + ns[None, :], mask=pmask[:, None] & (ns < N)[None, :], other=0.0)
    b_taps = _conv_taps(xBC_row, conv_w, conv_bias, window_row, stride_wd, stride_wk, b_channels + ns, ns < N, BN, K,
                        HAS_CONV_BIAS)  # fmt: skip
    c_taps = _conv_taps(xBC_row, conv_w, conv_bias, window_row, stride_wd, stride_wk, c_channels + ns, ns < N, BN, K,
                        HAS_CONV_BIAS)  # fmt: skip
    x_taps = _conv_taps(xBC_row, conv_w, conv_bias, window_row, stride_wd, stride_wk, x_channels, pmask, BP, K,
                        HAS_CONV_BIAS)  # fmt: skip
    wait_for_predecessor(USE_PDL)
    if GATE_SQUARES:  # z comes with xBC (in_proj's output): its load joins theirs
        zv = tl.load(z + bi * stride_z_b + x_channels, mask=pmask, other=0.0).to(tl.float32)
    bv = _conv_output(b_taps, xBC_row, b_channels + ns, ns < N, HAS_CONV_BIAS, SILU)
    cv = _conv_output(c_taps, xBC_row, c_channels + ns, ns < N, HAS_CONV_BIAS, SILU)
    xv = _conv_output(x_taps, xBC_row, x_channels, pmask, HAS_CONV_BIAS, SILU)
    x_window = _next_window(xBC_row, window_row, stride_wd, stride_wk, x_channels, pmask, K, KP)
    ws = tl.arange(0, BW)
    if WINDOWS_AT_ONCE:  # the group's new B and C windows in one block: read now by every program, in case it is last
        b_window = _next_window(xBC_row, window_row, stride_wd, stride_wk, b_channels + ws, ws < N, K, KP)
        c_window = _next_window(xBC_row, window_row, stride_wd, stride_wk, c_channels + ws, ws < N, K, KP)

    # From here to y: state_update.py's kernel (the same tiles and sums), with x, B and C convolved here.
    d, decay = _step_and_decay(dt + bi * stride_dt_b + h * stride_dt_h, dt_bias + h, A + h, dt_min, dt_max,
                               HAS_BIAS, SOFTPLUS, A_IS_LOG)  # fmt: skip
    acc = tl.zeros([BP], dtype=tl.float32)
    new = tl.zeros([BP, BN], dtype=tl.float32)
    for n0 in range(0, N, BN):
        ns = n0 + tl.arange(0, BN)
        ahead = ns + BN
        s_ahead = tl.load(rows + ahead[None, :], mask=pmask[:, None] & (ahead < N)[None, :], other=0.0)
        bv_ahead = _conv_step(xBC_row, conv_w, conv_bias, window_row, stride_wd, stride_wk, b_channels + ahead,
                              ahead < N, BN, K, HAS_CONV_BIAS, SILU)  # fmt: skip
        cv_ahead = _conv_step(xBC_row, conv_w, conv_bias, window_row, stride_wd, stride_wk, c_channels + ahead,
                              ahead < N, BN, K, HAS_CONV_BIAS, SILU)  # fmt: skip
        # The tile before is stored now and the last one after the ticket, whose release would wait for the write.
        behind = ns - BN
        tl.store(rows + behind[None, :], new, mask=pmask[:, None] & (behind >= 0)[None, :])
        new = s * decay + (d * xv)[:, None] * bv[None, :]
        acc += tl.sum(new * cv[None, :], axis=1)
        s, bv, cv = s_ahead, bv_ahead, cv_ahead
    if HAS_D:
        acc += tl.load(D + h).to(tl.float32) * xv

    # Every read of a window by any thread of this program is done before the ticket tells the group's last
    # program that this one has read (and before this program's own first window write: threads may hold copies
    # of one channel). Nothing is stored yet, so the ticket's release waits for no write; but y, where the group's
    # last program normalizes it (GATED_NORM), which the release then makes visible to that program.
    if GATED_NORM:
        tl.store(y + (bi * H + h) * P + ps, acc.to(y.dtype.element_ty), mask=pmask)
    tl.debug_barrier()
    ticket = tl.atomic_add(tickets + bi * G + g, 1, sem="acq_rel", scope="gpu")
    ns = (N - 1) // BN * BN + tl.arange(0, BN)
    tl.store(rows + ns[None, :], new, mask=pmask[:, None] & (ns < N)[None, :])
    if not GATED_NORM:
        tl.store(y + (bi * H + h) * P + ps, acc.to(y.dtype.element_ty), mask=pmask)
    if GATE_SQUARES:  # this program's share of its group's sum of squares: gated_rmsnorm._gate's u of y as stored
        yv = acc.to(y.dtype.element_ty).to(tl.float32)
        u = tl.where(pmask, yv * zv * tl.sigmoid(zv), 0.0)
        share = (h % (H // G)) * tl.num_programs(1) + tl.program_id(1)
        tl.store(squares + (bi * G + g) * (H // G) * tl.num_programs(1) + share, tl.sum(u * u, axis=0))
    _store_window(window_row, stride_wd, stride_wk, x_channels, pmask, x_window, K, KP)
    if ticket == (H // G) * tl.num_programs(1) - 1:
        # Every program of the group has read the old B and C windows: write the new ones, then reset the count.
        if WINDOWS_AT_ONCE:
            _store_window(window_row, stride_wd, stride_wk, b_channels + ws, ws < N, b_window, K, KP)
            _store_window(window_row, stride_wd, stride_wk, c_channels + ws, ws < N, c_window, K, KP)
        else:
            for n0 in range(0, N, BW):
                ns = n0 + tl.arange(0, BW)
                nmask = ns < N
                b_window = _next_window(xBC_row, window_row, stride_wd, stride_wk, b_channels + ns, nmask, K, KP)
                c_window = _next_window(xBC_row, window_row, stride_wd, stride_wk, c_channels + ns, nmask, K, KP)
                tl.debug_barrier()
                _store_window(window_row, stride_wd, stride_wk, b_channels + ns, nmask, b_window, K, KP)
                _store_window(window_row, stride_wd, stride_wk, c_channels + ns, nmask, c_window, K, KP)
        if GATED_NORM:  # every program of the group has stored its y: the group's norm, in place of its own launch
            S = (H // G) * P
            normalize_group(y + bi * H * P + g * S, z + bi * stride_z_b + g * S, norm_w + g * S,
                            normed + bi * H * P + g * S, S, norm_eps, NORM_BS, NORM_NCHUNK)  # fmt: skip
        tl.atomic_xchg(tickets + bi * G + g, 0, sem="relaxed", scope="gpu")


def conv_state_update(
    xBC: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_state: torch.Tensor,
    state: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor | None,
    n_groups: int,
    conv_bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    A_log: torch.Tensor | None = None,
    *,
    norm_gate: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    gate_squares: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One Mamba2 decode step, ``conv_state`` and ``state`` updated in place: ``causal_conv1d_update`` of the
    token's ``[x | B | C]`` followed by ``ssd_state_update`` of its pieces, in one launch and bit for bit.

    With ``norm_gate`` (z, ``[b, H * P]``, unit-stride channels) and ``norm_weight`` (``[H * P]``), y goes on
    through the mixer's gated norm in the same launch: Mamba2's ``w * round(norm(y * silu(z)))`` over each of the
    G groups of heads (``norm/gated_rmsnorm.py``'s order and roundings; its sums may be taken in another order),
    computed by the group's last program once every program of the group has stored its y.

    With ``norm_gate`` and ``gate_squares`` (no weight), the norm is the caller's to apply (``out_proj``'s one-row
    product: ``kernels/linear/row_norm.py``): returns ``(y, squares)``, ``squares`` ``[b, G, Q]`` fp32, the sums of
    ``(y * silu(z))^2`` over each program's channels of the group (y as returned), which add up to the group's.

    Args:
        xBC: ``[b, H * P + 2 * G * N]``, the channels unit-stride (a slice of in_proj's output, not copied).
        conv_weight: ``[H * P + 2 * G * N, K]`` (``nn.Conv1d.weight`` squeezed), contiguous.
        conv_state: ``[b, H * P + 2 * G * N, K - 1]``, any float dtype and strides (updated in place).
        state: ``[b, H, P, N]`` fp32, contiguous (updated in place).
        dt: ``[b, H]`` raw (bias, softplus, ``dt_limit`` applied here), any strides.
        A: ``[H]``, or ``None`` with ``A_log`` (``A = -exp(A_log)`` taken in the kernel).
        n_groups: G, the groups of B and C.
        conv_bias: ``[H * P + 2 * G * N]`` or ``None``; activation: ``"silu"``/``"swish"`` or ``None``.
        D, dt_bias: ``[H]`` or ``None``.

    Returns:
        ``y`` ``[b, H, P]`` in xBC's dtype; with the norm, the normalized y ``[b, H * P]`` in the gated norm's
        output dtype (y's and the weight's promoted).
    """
    b, H, P, N = state.shape
    G = n_groups
    conv_dim, K = conv_weight.shape
    if activation not in ("silu", "swish", None):
        raise ValueError(f"conv_state_update: unsupported activation {activation!r}; use 'silu' or None")
    if state.dtype != torch.float32 or not state.is_contiguous():
        raise ValueError("conv_state_update: the state must be a contiguous fp32 tensor (it is updated in place)")
    if H % G:
        raise ValueError(f"conv_state_update: the {G} groups of B/C must divide the {H} heads")
    if conv_dim != H * P + 2 * G * N or tuple(xBC.shape) != (b, conv_dim) or xBC.stride(-1) != 1:
        raise ValueError(
            f"conv_state_update: xBC must be [{b}, {H * P + 2 * G * N}] with unit-stride channels for a state "
            f"{tuple(state.shape)} and {G} groups, and the conv weight [{H * P + 2 * G * N}, K]; got xBC "
            f"{tuple(xBC.shape)} (strides {xBC.stride()}) and weight {tuple(conv_weight.shape)}"
        )
    if tuple(conv_state.shape) != (b, conv_dim, K - 1):
        raise ValueError(
            f"conv_state_update: the conv state must be {(b, conv_dim, K - 1)}, got {tuple(conv_state.shape)}"
        )
    if (A is None) == (A_log is None):
        raise ValueError("conv_state_update: give exactly one of A and A_log")
    A_in = A if A is not None else A_log
    if gate_squares and (norm_gate is None or norm_weight is not None):
        raise ValueError("conv_state_update: gate_squares takes norm_gate (z) and no norm_weight (the caller's norm)")
    if not gate_squares and (norm_gate is None) != (norm_weight is None):
        raise ValueError("conv_state_update: the gated norm takes both norm_gate (z) and norm_weight")
    gated_norm = norm_gate is not None and not gate_squares
    if norm_gate is not None and (
        tuple(norm_gate.shape) != (b, H * P)
        or norm_gate.stride(-1) != 1
        or (gated_norm and tuple(norm_weight.shape) != (H * P,))
    ):
        raise ValueError(
            f"conv_state_update: the gated norm needs z [{b}, {H * P}] with unit-stride channels and a weight "
            f"[{H * P}]; got z {tuple(norm_gate.shape)} (strides {norm_gate.stride()}), "
            f"weight {None if norm_weight is None else tuple(norm_weight.shape)}"
        )
    conv_weight = conv_weight.contiguous()
    y = torch.empty(b, H, P, device=xBC.device, dtype=xBC.dtype)
    normed = None
    if gated_norm:
        norm_weight = norm_weight.contiguous()
        normed = torch.empty(b, H * P, device=xBC.device, dtype=output_dtype(xBC.dtype, norm_weight, False))
    norm_bs, norm_nchunk = one_program_chunks(H // G * P)
    squares = None

    def run(c: LaunchConfig) -> None:
        nonlocal squares
        if gate_squares:  # one partial sum per program of a group: as many as the launched config's P tiles give
            squares = torch.empty(b, G, H // G * triton.cdiv(P, c.BP), device=xBC.device, dtype=torch.float32)
        tickets = zeroed_tickets(xBC.device, b * G)
        unused = A_in  # a pointer for the absent optional tensors (their loads are compiled out)
        _conv_state_update_kernel[(b * H, triton.cdiv(P, c.BP))](
            xBC, conv_weight, conv_bias if conv_bias is not None else unused, conv_state, state, dt, A_in,
            D if D is not None else unused, dt_bias if dt_bias is not None else unused, y, tickets,
            norm_gate if norm_gate is not None else y, norm_weight if gated_norm else y, normed if gated_norm else y,
            norm_gate.stride(0) if norm_gate is not None else 0, float(norm_eps), H, G, P, N,
            float(dt_limit[0]), float(dt_limit[1]), xBC.stride(0), *dt.stride(), *conv_state.stride(), K=K,
            KP=max(1, triton.next_power_of_2(K - 1)), WINDOWS_AT_ONCE=N <= c.BW, HAS_CONV_BIAS=conv_bias is not None,
            SILU=activation is not None, HAS_D=D is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
            A_IS_LOG=A is None, GATED_NORM=gated_norm, NORM_BS=norm_bs, NORM_NCHUNK=norm_nchunk,
            squares=squares if gate_squares else y, GATE_SQUARES=gate_squares,
            enable_fp_fusion=False, **c.kwargs(), **pdl_kwargs(),
        )  # fmt: skip

    ssd_launch("conv_state_update", run, ssd_config("conv_state_update", 0, P, N, device=state.device), operand=xBC)
    if gate_squares:
        return y, squares
    return normed if gated_norm else y
