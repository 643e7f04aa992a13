"""SSD kernels == the token-by-token reference (forward, final state, every gradient).

The chunked PyTorch path runs natively; the Triton kernels run under the Triton interpreter (set in
conftest), fp32, tiny shapes. Shapes cover one and two groups, T not a multiple of the chunk, packed
documents, and an "expanded" state size that spans several N tiles.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from launched_ops import LaunchedOps
from statex_hf.kernels import dispatch, launch, utils
from statex_hf.kernels.ssd.chunk import chunk_ssd
from statex_hf.kernels.ssd.chunk_torch import chunk_ssd_torch
from statex_hf.kernels.ssd.naive import discretize_dt, naive_ssd
from statex_hf.kernels.ssd.ssd_chunk_cumsum import chunk_cumsum_bwd, chunk_cumsum_fwd
from statex_hf.kernels.ssd.state_update import ssd_state_update

GRAD_NAMES = ["x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state"]


def make_inputs(b, T, H, P, G, N, n_states=None):
    return {
        "x": torch.randn(b, T, H, P),
        "dt": torch.randn(b, T, H),
        "A": -torch.rand(H) - 0.5,
        "B": torch.randn(b, T, G, N),
        "C": torch.randn(b, T, G, N),
        "D": torch.randn(H),
        "dt_bias": torch.randn(H) * 0.5,
        "initial_state": torch.randn(n_states or b, H, P, N),
    }


def run_with_grads(fn, inputs, with_states, cu_seqlens=None, dt_args=(True, (0.0, 4.0)), **kw):
    """``dt_args``: ``(dt_softplus, dt_limit)``; ``inputs["dt_bias"]`` may be None."""
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if v is not None}
    y, final = fn(
        leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], leaves["D"], leaves.get("dt_bias"),
        *dt_args, leaves["initial_state"] if with_states else None, with_states, cu_seqlens, **kw,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(123)
    loss = (y * torch.randn(y.shape, generator=gen)).sum()
    if with_states:
        loss = loss + (final * torch.randn(final.shape, generator=gen)).sum()
    loss.backward()
    grads = {k: leaves[k].grad for k in GRAD_NAMES if k in leaves and (with_states or k != "initial_state")}
    return y, final, grads


def assert_close(name, got, want, rtol):
    assert got is not None, f"{name}: missing"
    err = (got.float() - want.float()).abs().max().item()
    scale = want.float().abs().max().item() + 1e-6
    assert err <= rtol * scale, f"{name}: max abs err {err:.3e} vs max |ref| {scale:.3e}"


def check_against_naive(fn, inputs, with_states, cu_seqlens=None, rtol=2e-4, dt_args=(True, (0.0, 4.0)), **kw):
    y_ref, f_ref, g_ref = run_with_grads(naive_ssd, inputs, with_states, cu_seqlens, dt_args)
    y, f, g = run_with_grads(fn, inputs, with_states, cu_seqlens, dt_args, **kw)
    assert_close("y", y, y_ref, rtol)
    if with_states:
        assert_close("final_state", f, f_ref, rtol)
    for k in g_ref:
        assert_close(f"d{k}", g[k], g_ref[k], rtol)


# (b, T, H, P, G, N): T is never a multiple of the chunk; the last shape is an "expanded" state.
TORCH_SHAPES = [(2, 37, 4, 8, 1, 16), (2, 37, 4, 8, 2, 16), (1, 45, 4, 8, 2, 64)]


@pytest.mark.parametrize("shape", TORCH_SHAPES, ids=lambda s: "b{}T{}H{}P{}G{}N{}".format(*s))
@pytest.mark.parametrize("with_states", [False, True], ids=["no_state", "states"])
def test_chunk_torch_matches_naive(shape, with_states):
    check_against_naive(chunk_ssd_torch, make_inputs(*shape), with_states, chunk_size=16)


@pytest.mark.parametrize("with_states", [False, True], ids=["no_state", "states"])
def test_chunk_torch_packed_documents_match_naive(with_states):
    cu = torch.tensor([0, 7, 30, 41])
    check_against_naive(chunk_ssd_torch, make_inputs(1, 41, 4, 8, 2, 32, n_states=3), with_states, cu, chunk_size=16)


def test_chunk_torch_packed_batch_equals_separate_documents():
    inputs = make_inputs(1, 30, 2, 4, 1, 8)
    args = [inputs[k] for k in ["x", "dt", "A", "B", "C", "D", "dt_bias"]]
    y, _ = chunk_ssd_torch(*args, True, cu_seqlens=torch.tensor([0, 11, 30]), chunk_size=16)
    x, dt, A, B, C, D, bias = args
    y0, _ = chunk_ssd_torch(x[:, :11], dt[:, :11], A, B[:, :11], C[:, :11], D, bias, True, chunk_size=16)
    y1, _ = chunk_ssd_torch(x[:, 11:], dt[:, 11:], A, B[:, 11:], C[:, 11:], D, bias, True, chunk_size=16)
    torch.testing.assert_close(y, torch.cat([y0, y1], dim=1))


# Triton under the interpreter, which is slow: few cases, each chosen for what it covers.
TRITON_CASES = [
    # shape, with_states, cu_seqlens
    ((2, 37, 4, 8, 2, 16), True, None),  # groups, initial/final state, T % chunk != 0
    ((1, 40, 2, 12, 1, 96), False, None),  # P not a power of two, N over two tiles ("expanded")
    ((1, 40, 4, 8, 1, 32), False, [0, 5, 23, 40]),  # packed documents: in-kernel resets
    ((1, 40, 4, 8, 2, 32), True, [0, 5, 23, 40]),  # packed documents with per-document states
    ((1, 37, 16, 4, 8, 16), True, None),  # Mamba-Codestral's 8 groups (two heads per group here)
]


@pytest.mark.parametrize(
    "shape,with_states,cu", TRITON_CASES, ids=["groups_states", "expanded_N", "packed", "packed_states", "eight_groups"]
)
def test_triton_chunk_matches_naive(shape, with_states, cu):
    cu_seqlens = torch.tensor(cu) if cu is not None else None
    n = len(cu) - 1 if cu is not None else None
    check_against_naive(chunk_ssd, make_inputs(*shape, n_states=n), with_states, cu_seqlens, chunk_size=16)


@pytest.mark.parametrize("max_bytes", [None, 0], ids=["states-kept", "states-recomputed"])
def test_activation_checkpointing_gives_the_same_outputs_and_grads(monkeypatch, max_bytes):
    # Non-reentrant checkpointing recomputes the forward inside the backward and requires it to save the
    # very same tensors as the first time: whether the states are kept must not depend on that context.
    if max_bytes is not None:
        monkeypatch.setattr(utils, "KEEP_STATES_MAX_BYTES", max_bytes)
    inputs = make_inputs(2, 37, 4, 8, 2, 16)

    def checkpointed(*args, **kw):
        return torch.utils.checkpoint.checkpoint(chunk_ssd, *args, use_reentrant=False, **kw)

    y, final, plain = run_with_grads(chunk_ssd, inputs, True, None, chunk_size=16)
    y_ckpt, final_ckpt, got = run_with_grads(checkpointed, inputs, True, None, chunk_size=16)
    torch.testing.assert_close(y_ckpt, y, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(final_ckpt, final, rtol=1e-6, atol=1e-6)
    for k in plain:
        torch.testing.assert_close(got[k], plain[k], rtol=1e-6, atol=1e-6, msg=f"d{k}")


def test_triton_backward_recomputes_the_states_it_did_not_keep(monkeypatch):
    # Small inputs keep the forward's chunk states for the backward; above KEEP_STATES_MAX_BYTES the
    # backward recomputes them (with the initial state): the gradients must not change.
    inputs = make_inputs(2, 37, 4, 8, 2, 16)
    _, _, kept = run_with_grads(chunk_ssd, inputs, True, None, chunk_size=16)
    monkeypatch.setattr(utils, "KEEP_STATES_MAX_BYTES", 0)
    _, _, recomputed = run_with_grads(chunk_ssd, inputs, True, None, chunk_size=16)
    for k in kept:
        torch.testing.assert_close(recomputed[k], kept[k], rtol=1e-6, atol=1e-6, msg=f"d{k}")


def test_triton_chunk_of_128_spans_several_inner_blocks():
    # Chunk 128 > the 64-row inner blocks: exercises the causal block loops and the skipped upper blocks;
    # with two batches, two groups and N over two tiles, every index the flat backward grids decode varies.
    check_against_naive(chunk_ssd, make_inputs(2, 150, 2, 8, 2, 80), True, chunk_size=128)


# ----- The step sizes: the raw dt to dtp and the in-chunk log-decay, and back, one kernel each way -----

# (dt_softplus, with dt_bias, dt_limit): both clamps active, each activation alone, and the defaults.
DT_CASES = [(True, True, (0.5, 1.5)), (False, True, (0.2, 1.0)), (True, False, (0.0, float("inf"))),
            (False, False, (0.0, float("inf")))]  # fmt: skip
DT_IDS = ["softplus-bias-clamped", "bias-clamped", "softplus", "raw"]


def raw_dt_view(b, T, H, dtype=torch.float32):
    """``dt`` ``[b, T, H]`` as the model's in_proj split leaves it: a strided slice of a wider row."""
    return (torch.randn(b, T, H + 9) * 2).to(dtype)[..., 4 : 4 + H]


def torch_dt_glue(dt, A, dt_bias, softplus, limit, L):
    """The PyTorch ops the kernel replaces: discretize, transpose and pad to ``[b, H, Tp]``, cumsum of dt*A."""
    b, T, H = dt.shape
    nc = -(-T // L)
    dtp = F.pad(discretize_dt(dt, dt_bias, softplus, limit).transpose(1, 2), (0, nc * L - T))
    return dtp, (dtp * A.float()[None, :, None]).view(b, H, nc, L).cumsum(-1).view(b, H, nc * L)


def assert_limits_clamp(dt, dt_bias, softplus, limit):
    """The case's finite dt_limit does clamp some steps at each end (else it would test nothing)."""
    if limit[1] == float("inf"):
        return
    s = discretize_dt(dt, dt_bias, softplus, (-float("inf"), float("inf")))
    assert (s < limit[0]).any() and (s > limit[1]).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("softplus,with_bias,limit", DT_CASES, ids=DT_IDS)
def test_dt_kernel_gives_the_torch_glue_values(softplus, with_bias, limit, dtype):
    b, T, H, L = 2, 37, 5, 16  # T not a multiple of the chunk; heads not a power of two
    dt, A, dt_bias = raw_dt_view(b, T, H, dtype), -torch.rand(H) - 0.5, torch.randn(H) if with_bias else None
    assert not dt.is_contiguous()
    assert_limits_clamp(dt, dt_bias, softplus, limit)
    dtp, Acs, kept = chunk_cumsum_fwd(dt, A, dt_bias, softplus, limit, L, keep_dt=True)
    dtp_ref, Acs_ref = torch_dt_glue(dt, A, dt_bias, softplus, limit, L)
    torch.testing.assert_close(dtp, dtp_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(Acs, Acs_ref, rtol=1e-5, atol=1e-5)
    assert kept.dtype == dt.dtype and torch.equal(kept, dt)  # the backward's compact copy
    assert (dtp[..., T:] == 0).all() and (Acs[..., T:] == Acs[..., T - 1 : T]).all()  # padding adds nothing


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("softplus,with_bias,limit", DT_CASES, ids=DT_IDS)
def test_dt_kernel_backward_is_autograd_of_the_torch_glue(softplus, with_bias, limit, dtype):
    # The decay gradient's pieces as the stage kernels leave them, several parts each (K = 3, 2, 4, 2):
    # summed, scanned and taken back through clamp, softplus and bias in one kernel.
    b, T, H, L = 2, 37, 5, 16
    nc = -(-T // L)
    dt, A, dt_bias = raw_dt_view(b, T, H, dtype), -torch.rand(H) - 0.5, torch.randn(H) if with_bias else None
    ddt, xdx_state = torch.randn(b, H, nc * L), torch.randn(b, H, nc * L)
    dyy_intra, xdx_intra, dyy_inter = (
        torch.randn(b, H, nc * L, 3),
        torch.randn(b, H, nc * L, 3),
        torch.randn(b, H, nc * L, 2),
    )
    r, dD_parts = torch.randn(b, H, nc, 4), torch.randn(b, nc, H, 2)
    got = chunk_cumsum_bwd(dt, A, dt_bias, softplus, limit, ddt, dyy_intra, xdx_intra, dyy_inter, xdx_state, r,
                           dD_parts, L)  # fmt: skip
    # The reference: the old glue in PyTorch, its autograd for the raw dt and the bias.
    dacs = (dyy_intra.sum(-1) - xdx_intra.sum(-1) + dyy_inter.sum(-1)).view(b, H, nc, L)
    writes = xdx_state.view(b, H, nc, L)
    da = dacs.flip(-1).cumsum(-1).flip(-1) + (writes.cumsum(-1) - writes) + r.sum(-1)[..., None]
    da = da.view(b, H, nc * L)
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (dt, dt_bias)]
    dtp, _ = torch_dt_glue(leaves[0], A, leaves[1], softplus, limit, L)
    (dtp * (ddt + A[None, :, None] * da)).sum().backward()
    want = [leaves[0].grad, (dtp.detach() * da).sum((0, 2)), leaves[1].grad if with_bias else None,
            dD_parts.sum((0, 1, 3))]  # fmt: skip
    for name, g, w in zip(["ddt", "dA", "ddt_bias", "dD"], got, want, strict=True):
        if w is None:
            assert g is None, name
            continue
        assert g.dtype == w.dtype, name
        tol = {"rtol": 1e-5, "atol": 1e-5} if g.dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
        torch.testing.assert_close(g, w, **tol, msg=name)
    assert (got[0] == 0).any() == (limit[1] != float("inf") or not softplus)  # clamped steps take no gradient


@pytest.mark.parametrize("softplus,with_bias,limit", DT_CASES, ids=DT_IDS)
def test_triton_chunk_takes_every_dt_discretization(softplus, with_bias, limit):
    # Gradients of dt, dt_bias and A (and the rest) through the whole chunk_ssd against the token loop.
    inputs = make_inputs(2, 37, 4, 8, 2, 16)
    inputs["dt_bias"] = inputs["dt_bias"] if with_bias else None
    assert_limits_clamp(inputs["dt"], inputs["dt_bias"], softplus, limit)
    check_against_naive(chunk_ssd, inputs, True, dt_args=(softplus, limit), chunk_size=16)


def test_triton_chunk_packed_documents_with_clamped_steps():
    cu = [0, 5, 23, 40]
    inputs = make_inputs(1, 40, 4, 8, 1, 32, n_states=len(cu) - 1)
    assert_limits_clamp(inputs["dt"], inputs["dt_bias"], True, (0.5, 1.5))
    for with_states in (False, True):  # seq_idx in the kernels; one document at a time
        check_against_naive(chunk_ssd, inputs, with_states, torch.tensor(cu), dt_args=(True, (0.5, 1.5)), chunk_size=16)


def test_the_dt_glue_is_one_launch_each_way(monkeypatch):
    # Issue 21: before, the forward ran discretize_dt, the transpose and pad, and the cumsum of dt*A as
    # 6 PyTorch kernels (add, softplus, clamp, constant_pad_nd, mul, cumsum) beside its 3 Triton ones,
    # and the backward 28 (the decay gradient's partial sums and scans, dA, and discretize_dt's autograd).
    b, T, H, P, G, N = 1, 40, 4, 8, 1, 16
    dt = raw_dt_view(b, T, H).requires_grad_()  # a slice of in_proj's output, read where it is
    inputs = {k: v.requires_grad_() for k, v in make_inputs(b, T, H, P, G, N).items() if k != "initial_state"}
    args = [inputs["x"], dt, inputs["A"], inputs["B"], inputs["C"], inputs["D"], inputs["dt_bias"], True, (0.0, 4.0)]
    with LaunchedOps(monkeypatch) as forward:
        y, _ = chunk_ssd(*args, chunk_size=16)
    assert forward.triton == ["ssd.cumsum", "ssd.bmm", "ssd.state_fwd", "ssd.scan_fwd"]
    assert forward.ops == []
    dy = torch.randn_like(y)
    with LaunchedOps(monkeypatch) as backward:
        y.backward(dy)
    stages = ["ssd.dcb", "ssd.dc", "ssd.state_bwd", "ssd.db", "ssd.scan_bwd_dx"]
    assert backward.triton == ["ssd.cumsum", *stages, "ssd.cumsum_bwd"]
    # dcb's two kinds of per-tile parts and dc's, each summed as soon as it is made (memory: chunk.py), then
    # dA, d dt_bias and dD from their per-chunk parts in one reduction.
    assert backward.ops == ["sum", "sum", "sum", "sum"]
    # The strided raw dt gives what a contiguous copy does.
    y_copy, _ = chunk_ssd(*[a.detach() if torch.is_tensor(a) else a for a in args[:1]], dt.detach().contiguous(),
                          *[a.detach() if torch.is_tensor(a) else a for a in args[2:]], chunk_size=16)  # fmt: skip
    torch.testing.assert_close(y.detach(), y_copy, rtol=0, atol=0)


def test_the_backward_keeps_a_compact_dt_not_the_in_proj_row():
    # dt is a slice of the in_proj output, whose row is over 100 times wider at Mamba2-1.3B and which nothing
    # else keeps (the conv and the gated norm copy their slices): saving the slice would keep all of it.
    b, T, H, P, G, N = 1, 40, 4, 8, 1, 16
    row = torch.randn(b, T, 200).requires_grad_()
    inputs = make_inputs(b, T, H, P, G, N)
    args = [inputs[k] for k in ("x", "dt", "A", "B", "C", "D", "dt_bias")]
    args[1] = row[..., 100 : 100 + H]
    y, _ = chunk_ssd(*args, True, (0.0, 4.0), chunk_size=16)
    saved = [t for t in y.grad_fn.saved_tensors if t is not None]
    assert all(t.untyped_storage().data_ptr() != row.untyped_storage().data_ptr() for t in saved)
    assert max(t.untyped_storage().nbytes() for t in saved if t.shape == (b, T, H)) <= b * H * 48 * 4  # [b, H, Tp]
    y.sum().backward()
    assert row.grad[..., 100 : 100 + H].abs().sum() > 0 and (row.grad[..., :100] == 0).all()


@pytest.mark.parametrize("G", [1, 2, 8])
def test_triton_state_update_matches_one_naive_step(G):
    b, H, P, N = 3, 16, 8, 40
    inputs = make_inputs(b, 1, H, P, G, N)
    x, dt, A, B, C, D, bias, h0 = (inputs[k] for k in ["x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state"])
    y_ref, f_ref = naive_ssd(x, dt, A, B, C, D, bias, True, (0.0, 4.0), h0, True)
    state = h0.clone()
    y = ssd_state_update(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, bias, True, (0.0, 4.0))
    torch.testing.assert_close(y, y_ref[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, f_ref, rtol=1e-5, atol=1e-5)


def test_dispatch_on_cpu_uses_torch_paths_and_matches_naive():
    inputs = make_inputs(1, 20, 2, 4, 1, 8)
    args = [inputs[k] for k in ["x", "dt", "A", "B", "C", "D", "dt_bias"]]
    for T in (3, 20):  # token loop, chunked
        sliced = [a[:, :T] if a.dim() > 1 else a for a in args]
        y, f = dispatch.ssd(*sliced, True, initial_state=inputs["initial_state"], output_final_state=True)
        y_ref, f_ref = naive_ssd(*sliced, True, initial_state=inputs["initial_state"], output_final_state=True)
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(f, f_ref, rtol=1e-4, atol=1e-4)
    state = inputs["initial_state"].clone()
    x, dt, A, B, C, D, bias = args
    y = dispatch.ssd_state_update(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, bias, True)
    y_ref, f_ref = naive_ssd(
        *[a[:, :1] if a.dim() > 1 else a for a in args],
        True,
        initial_state=inputs["initial_state"],
        output_final_state=True,
    )
    torch.testing.assert_close(y, y_ref[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state, f_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("packed", [False, True], ids=["batch", "packed"])
def test_triton_conv1d_matches_torch_conv1d_fwd_and_grads(packed):
    from statex_hf.kernels.conv.causal_conv1d import causal_conv1d
    from statex_hf.kernels.conv.naive import naive_causal_conv1d

    cu = torch.tensor([0, 20, 21, 50, 70]) if packed else None
    x, w, bias = torch.randn(1 if packed else 2, 70, 96), torch.randn(96, 4), torch.randn(96)
    results = []
    for fn in (naive_causal_conv1d, causal_conv1d):
        leaves = [t.clone().requires_grad_() for t in (x, w, bias)]
        if fn is naive_causal_conv1d:
            y, final = fn(*leaves, "silu", None, not packed, cu)
        else:
            y, final = fn(*leaves, "silu", not packed, cu)
        (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(5))).sum().backward()
        results.append([y, final, *(t.grad for t in leaves)])
    for name, got, want in zip(["y", "final", "dx", "dw", "dbias"], results[1], results[0]):
        if want is None:
            assert got is None, name
            continue
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4, msg=name)


@pytest.mark.parametrize("with_states", [False, True], ids=["no_state", "states"])
def test_state_passes_in_sub_chunk_steps_match_naive(monkeypatch, with_states):
    # The state kernels walk a chunk of 64 in steps of 16 tokens: documents start inside a step, at a
    # step's start and at a chunk's start (5, 16, 64), and one is shorter than a step.
    steps = {f"ssd.{k}": launch.LaunchConfig.of(4, 2, BL=16, BP=16, BN=16) for k in ("state_fwd", "state_bwd")}
    monkeypatch.setattr(launch, "OVERRIDES", steps)
    cu = [0, 5, 16, 64, 70, 150]
    inputs = make_inputs(1, 150, 2, 8, 1, 40, n_states=len(cu) - 1)
    check_against_naive(chunk_ssd, inputs, with_states, torch.tensor(cu), chunk_size=64)
    check_against_naive(chunk_ssd, make_inputs(2, 150, 2, 8, 2, 40), with_states, chunk_size=64)


def test_every_ssd_kernel_falls_back_to_small_tiles_on_a_gpu_they_do_not_fit(monkeypatch):
    # A GPU with room for 32-wide tiles in one stage only: each launcher retries its config with one
    # stage, then its small one, warns once per kernel, and the results stay exact. Chunk 128 and
    # N = 80: every tuned tile is larger than 32. The dt kernels' configs (one stage, 8 heads) fit any GPU:
    # given two stages here, they take the same fallback.
    from launch_fakes import on_small_gpu
    from statex_hf.kernels.ssd import (
        configs,
        ssd_bmm,
        ssd_chunk_bc_bwd,
        ssd_chunk_cumsum,
        ssd_chunk_scan,
        ssd_chunk_state,
        state_update,
    )

    monkeypatch.setattr(launch, "_REPLACED", {})
    for kernel in ("cumsum", "cumsum_bwd"):
        monkeypatch.setitem(configs.TABLES["default"], kernel, configs.TABLES["default"][kernel].with_(num_stages=2))
    fakes = {
        **on_small_gpu(monkeypatch, ssd_chunk_cumsum, "_chunk_cumsum_fwd_kernel", "_chunk_cumsum_bwd_kernel"),
        **on_small_gpu(monkeypatch, ssd_bmm, "_bmm_chunk_kernel"),
        **on_small_gpu(monkeypatch, ssd_chunk_state, "_chunk_state_fwd_kernel", "_chunk_state_bwd_kernel"),
        **on_small_gpu(monkeypatch, ssd_chunk_scan, "_chunk_scan_fwd_kernel", "_chunk_scan_bwd_dx_kernel"),
        **on_small_gpu(monkeypatch, ssd_chunk_bc_bwd, "_chunk_dcb_kernel", "_chunk_dc_kernel", "_chunk_db_kernel"),
    }
    with pytest.warns(UserWarning, match="does not fit") as warned:
        check_against_naive(chunk_ssd, make_inputs(1, 150, 2, 8, 1, 80), True, chunk_size=128)
    assert len({str(w.message).split(":")[0] for w in warned}) == len(fakes)
    assert all(fake.launches for fake in fakes.values())

    on_small_gpu(monkeypatch, state_update, "_state_update_kernel")
    inputs = make_inputs(2, 1, 4, 8, 1, 256)
    x, dt, A, B, C, D, bias, h0 = (inputs[k] for k in [*GRAD_NAMES])
    y_ref, f_ref = naive_ssd(x, dt, A, B, C, D, bias, True, initial_state=h0, output_final_state=True)
    state = h0.clone()
    with pytest.warns(UserWarning, match="state_update.*does not fit"):
        y = ssd_state_update(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, bias, True)
    torch.testing.assert_close(y, y_ref[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, f_ref, rtol=1e-5, atol=1e-5)


def test_the_conv_kernels_fall_back_to_small_tiles_on_a_gpu_they_do_not_fit(monkeypatch):
    from launch_fakes import on_small_gpu
    from statex_hf.kernels.conv import causal_conv1d as conv
    from statex_hf.kernels.conv.naive import naive_causal_conv1d

    monkeypatch.setattr(launch, "_REPLACED", {})
    fakes = on_small_gpu(monkeypatch, conv, "_conv_fwd_kernel", "_conv_bwd_kernel")
    x, w, bias, dy = torch.randn(1, 70, 96), torch.randn(96, 4), torch.randn(96), torch.randn(1, 70, 96)
    leaves = {name: [t.clone().requires_grad_() for t in (x, w, bias)] for name in ("naive", "triton")}
    y_ref, _ = naive_causal_conv1d(*leaves["naive"], "silu")
    y_ref.backward(dy)
    with pytest.warns(UserWarning, match="does not fit"):
        y, _ = conv.causal_conv1d(*leaves["triton"], "silu")
        y.backward(dy)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-4)
    for got, want in zip(leaves["triton"], leaves["naive"]):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-4)
    assert all(fake.launches for fake in fakes.values())


def test_a_gpu_with_its_own_table_entry_gets_it_and_others_the_default(monkeypatch):
    from statex_hf.kernels.ssd import configs

    tuned = launch.LaunchConfig.of(4, 2, BT=64, BS=32, BP=64, BN=64)
    monkeypatch.setitem(configs.TABLES, "H200", {"scan_fwd": tuned})
    on = {name: None for name in ("NVIDIA H200", "NVIDIA H100 80GB HBM3")}
    for name in on:
        monkeypatch.setattr(launch, "device_name", lambda device, name=name: name)
        on[name] = configs.ssd_config("scan_fwd", 256, 64, 512, device=torch.device("cpu"))
    assert on["NVIDIA H200"] == tuned
    assert on["NVIDIA H100 80GB HBM3"] == configs.TABLES["default"]["scan_fwd"]
    # Entries it does not name come from the default table.
    assert configs.ssd_config("dc", 256, 64, 512) == configs.TABLES["default"]["dc"]


def test_the_state_kernels_keep_their_whole_p_tile_at_one_program_an_sm_and_halve_it_below():
    from statex_hf.kernels.ssd import configs

    full = configs.TABLES["default"]["state_bwd"]
    # One Mamba2-1.3B layer at N = 128, B = 1: 64 heads x 2 state tiles = 128 programs at the full P tile.
    assert configs.ssd_config("state_bwd", 256, 64, 128, batch_heads=64) == full
    assert configs.ssd_config("state_bwd", 256, 64, 128, batch_heads=32).BP == full.BP // 2


# ----- The decode step as a model takes it: A_log, and slices of the in_proj / conv outputs -----


def model_slices(b, H, P, G, N, extra=5):
    """x ``[b, H, P]``, B, C ``[b, G, N]`` and dt ``[b, H]`` as views into one ``[b, width]`` row per sequence
    (the layout of Mamba2's in_proj / conv outputs): strided over the batch, unit-stride inside a row."""
    sizes = [H * P, G * N, G * N, H, extra]
    x, B, C, dt, _ = torch.randn(b, sum(sizes)).split(sizes, dim=-1)
    return x.view(b, H, P), dt, B.view(b, G, N), C.view(b, G, N)


@pytest.mark.parametrize("G", [1, 2])
def test_triton_state_update_takes_A_log_and_strided_slices(G):
    b, H, P, N = 3, 4, 8, 40
    x, dt, B, C = model_slices(b, H, P, G, N)
    assert not any(t.is_contiguous() for t in (x, dt, B, C))
    A_log, D, bias, h0 = torch.rand(H) * 2, torch.randn(H), torch.randn(H) * 0.5, torch.randn(b, H, P, N)
    A = -torch.exp(A_log.float())
    before = [t.clone() for t in (x, dt, B, C)]
    contiguous = [t.contiguous()[:, None] for t in (x, dt, B, C)]
    y_ref, f_ref = naive_ssd(contiguous[0], contiguous[1], A, *contiguous[2:], D, bias, True, (0.0, 4.0), h0, True)
    state = h0.clone()
    y = ssd_state_update(state, x, dt, None, B, C, D, bias, True, (0.0, 4.0), A_log=A_log)
    assert y.is_contiguous()
    torch.testing.assert_close(y, y_ref[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, f_ref, rtol=1e-5, atol=1e-5)
    # The same kernel on contiguous copies with A given: A_log changes only where A comes from.
    state_A = h0.clone()
    y_A = ssd_state_update(state_A, *(t[:, 0] for t in contiguous[:2]), A, *(t[:, 0] for t in contiguous[2:]), D,
                           bias, True, (0.0, 4.0))  # fmt: skip
    torch.testing.assert_close(y, y_A, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state, state_A, rtol=1e-6, atol=1e-6)
    for got, want in zip((x, dt, B, C), before):
        assert torch.equal(got, want)


@pytest.mark.parametrize("fn", ["ssd", "ssd_state_update"])
def test_A_and_A_log_are_one_or_the_other(fn):
    inputs = make_inputs(1, 1, 2, 4, 1, 8)
    x, dt, A, B, C = (inputs[k] for k in ["x", "dt", "A", "B", "C"])
    h0 = inputs["initial_state"]
    call = {
        "ssd": lambda **a: dispatch.ssd(x, dt, B=B, C=C, initial_state=h0, **a),
        "ssd_state_update": lambda **a: dispatch.ssd_state_update(h0, x[:, 0], dt[:, 0], B=B[:, 0], C=C[:, 0], **a),
    }[fn]
    for both_or_neither in ({"A": A, "A_log": A}, {"A": None}):
        with pytest.raises(ValueError, match="exactly one of A and A_log"):
            call(**both_or_neither)


@pytest.mark.parametrize("T", [1, 3, 20], ids=["decode", "token_loop", "chunked"])
def test_dispatch_with_A_log_on_cpu_is_the_A_path_bit_for_bit(T):
    # CPU (and training) unchanged: A_log only moves where -exp(A_log.float()) is taken on the torch paths.
    inputs = make_inputs(2, T, 4, 8, 2, 16)
    A_log = torch.rand(4) * 2
    args = [inputs[k] for k in ["x", "dt", "B", "C", "D", "dt_bias"]]
    outs = []
    for A, log in ((-torch.exp(A_log.float()), None), (None, A_log)):
        leaves = [t.clone().requires_grad_() for t in args]
        log_leaf = log.clone().requires_grad_() if log is not None else None
        A_leaf = A.clone().requires_grad_() if A is not None else None
        x, dt, B, C, D, bias = leaves
        state = inputs["initial_state"].clone()
        y, f = dispatch.ssd(x, dt, A_leaf, B, C, D, bias, True, (0.0, 4.0), state, True, A_log=log_leaf)
        (y.square().sum() + f.square().sum()).backward()
        grad_A = A_leaf.grad if A is not None else log_leaf.grad / log.exp().neg()  # dA_log = dA * A
        outs.append([y, f, *(t.grad for t in leaves), grad_A])
    for got, want in zip(outs[1], outs[0], strict=True):
        if got is outs[1][-1]:  # the chain rule through exp rounds once more
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(got, want)


@pytest.mark.parametrize("one_launch_rows", [2, 1], ids=["one-launch", "above-its-rows"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_mamba2_decode_step_launches_the_projections_and_two_kernels(
    monkeypatch, on_cuda_dispatch, dtype, one_launch_rows
):
    # Issue 20: per layer per step, A = -exp(A_log.float()) took two or three kernels, and at B > 1 x, dt, B, C
    # and the norm's gate z (slices of in_proj's output) were each copied. Now the mixer's step is its two
    # matmuls and one kernel for the conv, the state update and the gated norm (kernels/ssd/conv_state_update.py;
    # above dispatch.ONE_LAUNCH_CONV_SSD_MAX_ROWS sequences the conv, the state update and the norm, three), and
    # computes what the torch path does.
    monkeypatch.setattr(dispatch, "ONE_LAUNCH_CONV_SSD_MAX_ROWS", one_launch_rows)
    from tiny_models import build, returned_cache

    model = build("mamba2", statex_layers=[1]).to(dtype)
    prompt = torch.randint(3, 64, (2, 6))
    mixers = [layer.mixer for layer in model.backbone.layers]
    steps = {}
    for path in ("torch", "kernels"):
        with torch.no_grad(), monkeypatch.context() as m:
            m.setattr(dispatch, "use_triton", lambda *tensors: False)
            cache = returned_cache(model(prompt[:, :-1], use_cache=True))  # the same prefill for both
        hidden = torch.randn(2, 1, model.config.hidden_size, generator=torch.Generator().manual_seed(0)).to(dtype)
        with torch.no_grad(), monkeypatch.context() as m:
            if path == "torch":
                m.setattr(dispatch, "use_triton", lambda *tensors: False)
            counted = LaunchedOps(m)
            outs = []
            for mixer in mixers:
                with counted:
                    outs.append(mixer(hidden, None, cache))
        states = [cache.layers[i].recurrent_states[0].clone() for i in range(len(mixers))]
        steps[path] = (outs, states, counted)
    per_layer = steps["kernels"][2]
    assert per_layer.ops == ["mm", "mm"] * len(mixers), per_layer.ops
    mixer = ["ssd.conv_state_update"] if one_launch_rows >= 2 else ["conv.update", "ssd.state_update", "norm.fwd"]
    assert per_layer.triton == mixer * len(mixers), per_layer.triton
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for got, want in zip(steps["kernels"][0] + steps["kernels"][1], steps["torch"][0] + steps["torch"][1]):
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("trainable", ["D", "dt_bias"])
def test_a_one_token_step_that_trains_only_D_or_dt_bias_keeps_their_gradient(on_cuda_dispatch, trainable):
    # The decode kernel has no backward: a step whose only trainable input is D (or dt_bias) must not take it.
    torch.manual_seed(0)
    b, H, P, N = 2, 4, 8, 16
    x, dt, B, C = torch.randn(b, 1, H, P), torch.randn(b, 1, H), torch.randn(b, 1, 1, N), torch.randn(b, 1, 1, N)
    params = {"D": torch.randn(H), "dt_bias": torch.randn(H) * 0.5}
    params[trainable].requires_grad_(True)
    state = torch.randn(b, H, P, N)
    y, _ = dispatch.ssd(x, dt, None, B, C, params["D"], params["dt_bias"], True, (0.0, 4.0), state.clone(), True,
                        A_log=torch.rand(H))  # fmt: skip
    y.sum().backward()
    assert params[trainable].grad is not None and params[trainable].grad.abs().sum() > 0
