"""Every GLA kernel equals the token-by-token reference, forward and backward.

Runs on CPU: the PyTorch chunked path natively, the Triton kernels under ``TRITON_INTERPRET=1``
(set by conftest), fp32 and tiny shapes. Real shapes in bf16 are in ``tests/gpu``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from statex_hf.kernels import dispatch, launch, utils
from statex_hf.kernels.gla import chunk as gla_chunk
from statex_hf.kernels.gla import configs
from statex_hf.kernels.gla.chunk import chunk_gla
from statex_hf.kernels.gla.chunk_torch import chunk_gla_torch
from statex_hf.kernels.gla.fused_recurrent import fused_recurrent_gla
from statex_hf.kernels.gla.naive import naive_recurrent_gla
from triton.runtime.errors import OutOfResources

# The interpreter evaluates both sides of tl.where in numpy: exp() of the masked-out branch overflows
# (by design: that is the branch the kernels mask away) and numpy warns.
pytestmark = pytest.mark.filterwarnings(
    "ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning"
)


def make_inputs(B, T, H, K, V, n_states=None, gate_scale=3.0, with_state=True):
    q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
    v = torch.randn(B, T, H, V)
    # logsigmoid of wide logits: decays from ~1 down to e^-10 per step, the range that overflows
    # any kernel that splits exp(g_i - g_j) into exp(g_i) * exp(-g_j).
    gk = F.logsigmoid(torch.randn(B, T, H, K) * gate_scale)
    h0 = torch.randn(n_states or B, H, K, V) if with_state else None
    return q, k, v, gk, h0


def outputs_and_grads(fn, q, k, v, gk, h0, cu_seqlens=None):
    leaves = [x.clone().requires_grad_() for x in (q, k, v, gk)]
    if h0 is not None:
        leaves.append(h0.clone().requires_grad_())
    o, ht = fn(*leaves[:4], None, leaves[4] if h0 is not None else None, True, cu_seqlens)
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(o.shape, generator=gen)
    dht = torch.randn(ht.shape, generator=gen)
    grads = torch.autograd.grad((o * do).sum() + (ht * dht).sum(), leaves)
    return {"o": o, "final_state": ht, **dict(zip(["dq", "dk", "dv", "dgk", "dh0"], grads))}


def assert_all_close(got, want, atol, rtol=1e-4):
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


# Unexpanded (4 heads) and merged (1 head, 4x the state) tiny shapes, like GLA-1.3B and its StateX layer.
TORCH_SHAPES = {"unexpanded_h4": (2, 75, 4, 16, 32), "merged_h1": (2, 75, 1, 64, 128)}


@pytest.mark.parametrize("shape", TORCH_SHAPES.values(), ids=TORCH_SHAPES.keys())
def test_chunk_torch_equals_naive_with_states_and_all_grads(shape):
    inputs = make_inputs(*shape)
    got = outputs_and_grads(chunk_gla_torch, *inputs)
    want = outputs_and_grads(naive_recurrent_gla, *inputs)
    assert_all_close(got, want, atol=1e-4)


@pytest.mark.parametrize("shape", TORCH_SHAPES.values(), ids=TORCH_SHAPES.keys())
def test_chunk_torch_packed_batch_equals_naive_per_document(shape):
    _, _, H, K, V = shape
    cu_seqlens = torch.tensor([0, 7, 50, 51, 90])
    inputs = make_inputs(1, 90, H, K, V, n_states=4)
    got = outputs_and_grads(chunk_gla_torch, *inputs, cu_seqlens=cu_seqlens)
    want = outputs_and_grads(naive_recurrent_gla, *inputs, cu_seqlens=cu_seqlens)
    assert_all_close(got, want, atol=1e-4)


def test_chunk_torch_without_states_matches_naive():
    q, k, v, gk, _ = make_inputs(1, 40, 2, 16, 16, with_state=False)
    o, ht = chunk_gla_torch(q, k, v, gk)
    assert ht is None
    torch.testing.assert_close(o, naive_recurrent_gla(q, k, v, gk)[0], atol=1e-4, rtol=1e-4)


# Triton under the interpreter: a padded head (K, V not powers of two, one tile) and a tiled head
# (K, V span two 64-wide tiles) with a packed batch whose documents end mid-chunk and mid-sub-block.
def test_triton_chunk_equals_naive_with_states_and_all_grads():
    inputs = make_inputs(2, 70, 2, 20, 24)
    got = outputs_and_grads(chunk_gla, *inputs)
    want = outputs_and_grads(naive_recurrent_gla, *inputs)
    assert_all_close(got, want, atol=2e-4)


@pytest.mark.parametrize("state_tiles", ["small", "large"])
def test_triton_chunk_tiled_head_packed_batch_equals_naive(monkeypatch, state_tiles):
    # Several tiles of the head in both directions for every kernel (K = 80, V = 136 against 64 x 128
    # tiles), with either state tile config: this tiny grid alone takes the small one (32 x 32, 3 x 5
    # tiles); "large" forces the one the StateX head runs with (64 x 128, 2 x 2 tiles).
    if state_tiles == "large":
        large = {f"gla.{name}": configs.DEFAULTS[name] for name in ("fwd_h", "bwd_dh")}
        monkeypatch.setattr(launch, "OVERRIDES", large)
    cu_seqlens = torch.tensor([0, 9, 75, 100])
    inputs = make_inputs(1, 100, 1, 80, 136, n_states=3, gate_scale=10.0)
    got = outputs_and_grads(chunk_gla, *inputs, cu_seqlens=cu_seqlens)
    want = outputs_and_grads(naive_recurrent_gla, *inputs, cu_seqlens=cu_seqlens)
    assert_all_close(got, want, atol=2e-4)


def test_state_kernels_take_small_tiles_only_when_large_ones_leave_sms_idle():
    # GLA-1.3B's 4 heads at B = 1 would run 64 programs of 64 x 128; its StateX head runs 256.
    assert configs.gla_config("fwd_h", 256, 512, 64, num_states=4) == configs.SMALL_STATE_TILES
    assert configs.gla_config("bwd_dh", 256, 512, 64, num_states=16 * 4) == configs.DEFAULTS["bwd_dh"]
    assert configs.gla_config("fwd_h", 1024, 2048, 64, num_states=1) == configs.DEFAULTS["fwd_h"]
    # Small heads shrink the tiles rather than mask most of them away.
    small = configs.gla_config("fwd_o", 20, 24, 64)
    assert (small.BK, small.BV) == (32, 32)


def test_a_config_too_large_for_the_gpu_is_replaced_by_the_first_smaller_one_that_fits(monkeypatch):
    # Triton raises OutOfResources when a config needs more shared memory than the GPU has (the table
    # is tuned on an H100): the launch retries with one stage, then SAFE, warns, and remembers the choice.
    monkeypatch.setattr(launch, "_REPLACED", {})
    tried = []

    def run(config):  # a GPU on which only 32-wide tiles in one stage fit
        tried.append(config)
        if config.BK > 32 or config.num_stages > 1:
            raise OutOfResources(300_000, 101_376, "shared memory")

    operand = torch.empty(1)
    tuned = configs.gla_config("bwd_dqk", 256, 512, 64)
    with pytest.warns(UserWarning, match="bwd_dqk.*does not fit"):
        configs.gla_launch("bwd_dqk", run, 256, 512, 64, operand=operand)
    configs.gla_launch("bwd_dqk", run, 256, 512, 64, operand=operand)
    assert tried == [tuned, tuned.with_(num_stages=1), configs.SAFE, configs.SAFE]
    # The 4-head state tiles (32 x 32, 3 stages) only need one stage less.
    tried.clear()
    with pytest.warns(UserWarning, match="fwd_h"):
        configs.gla_launch("fwd_h", run, 256, 512, 64, operand=operand, num_states=4)
    assert tried == [configs.SMALL_STATE_TILES, configs.SMALL_STATE_TILES.with_(num_stages=1)]
    # Nothing fits: the GPU's error, not a silent wrong launch; a sweep's override is never replaced.
    with pytest.raises(OutOfResources):
        configs.gla_launch("fwd_o", lambda config: run(config.with_(num_stages=2)), 256, 512, 64, operand=operand)
    monkeypatch.setattr(launch, "OVERRIDES", {"gla.fwd_o": configs.DEFAULTS["fwd_o"]})
    with pytest.raises(OutOfResources):
        configs.gla_launch("fwd_o", run, 256, 512, 64, operand=operand)


@pytest.mark.parametrize("kernel", ["bwd_dA", "fwd_A"])
def test_the_fallback_of_a_kernel_with_one_tile_has_only_that_tile(monkeypatch, kernel):
    # bwd_dA tiles only V, fwd_A only K: their small config must not pass the other (an unknown
    # keyword for the kernel).
    monkeypatch.setattr(launch, "_REPLACED", {})
    tried = []

    def run(config):
        tried.append(config)
        if config.num_stages > 1 or config.num_warps > 4:
            raise OutOfResources(300_000, 101_376, "shared memory")

    with pytest.warns(UserWarning, match=kernel):
        configs.gla_launch(kernel, run, 256, 512, 64, operand=torch.empty(1))
    assert [name for name, _ in tried[-1].tiles] == [name for name, _ in configs.DEFAULTS[kernel].tiles]


def test_triton_backward_recomputes_the_states_it_did_not_keep(monkeypatch):
    # Small inputs keep the forward's per-chunk states for the backward; above KEEP_STATES_MAX_BYTES the
    # backward recomputes them (from the initial state, per document): the gradients must not change.
    state_passes = []
    fwd_h = gla_chunk.chunk_gla_fwd_h
    monkeypatch.setattr(gla_chunk, "chunk_gla_fwd_h", lambda *a, **kw: state_passes.append(1) or fwd_h(*a, **kw))
    cu_seqlens = torch.tensor([0, 9, 75, 100])
    inputs = make_inputs(1, 100, 2, 20, 24, n_states=3)
    kept = outputs_and_grads(chunk_gla, *inputs, cu_seqlens=cu_seqlens)
    assert len(state_passes) == 1  # the forward's pass only
    monkeypatch.setattr(utils, "KEEP_STATES_MAX_BYTES", 0)
    recomputed = outputs_and_grads(chunk_gla, *inputs, cu_seqlens=cu_seqlens)
    assert len(state_passes) == 3  # this call made two: forward and backward
    assert_all_close(recomputed, kept, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("max_bytes", [None, 0], ids=["states-kept", "states-recomputed"])
def test_activation_checkpointing_gives_the_same_outputs_and_grads(monkeypatch, max_bytes):
    # Non-reentrant checkpointing recomputes the forward inside the backward and requires it to save the
    # very same tensors as the first time: whether the states are kept must not depend on that context.
    if max_bytes is not None:
        monkeypatch.setattr(utils, "KEEP_STATES_MAX_BYTES", max_bytes)
    inputs = make_inputs(2, 70, 2, 20, 24)
    plain = outputs_and_grads(chunk_gla, *inputs)

    def checkpointed(*args):
        return torch.utils.checkpoint.checkpoint(chunk_gla, *args, use_reentrant=False)

    assert_all_close(outputs_and_grads(checkpointed, *inputs), plain, atol=1e-6, rtol=1e-6)


def test_triton_chunk_without_states_matches_naive():
    q, k, v, gk, _ = make_inputs(1, 33, 1, 16, 16, with_state=False)
    o, ht = chunk_gla(q, k, v, gk)
    assert ht is None
    torch.testing.assert_close(o, naive_recurrent_gla(q, k, v, gk)[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "shape, cu_seqlens",
    [((3, 4, 2, 20, 24), None), ((1, 9, 1, 80, 40), [0, 1, 4, 9]), ((5, 1, 2, 80, 72), None)],
    ids=["batched_few_tokens", "packed_prompts", "one_token_tiled_head"],
)
def test_fused_recurrent_equals_naive_forward(shape, cu_seqlens):
    cu = None if cu_seqlens is None else torch.tensor(cu_seqlens)
    q, k, v, gk, h0 = make_inputs(*shape, n_states=None if cu is None else len(cu_seqlens) - 1)
    with torch.no_grad():
        o, ht = fused_recurrent_gla(q, k, v, gk, None, h0, True, cu)
    o_ref, ht_ref = naive_recurrent_gla(q, k, v, gk, None, h0, True, cu)
    torch.testing.assert_close(o, o_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ht, ht_ref, atol=1e-4, rtol=1e-4)


def test_fused_recurrent_one_token_without_state_matches_naive():
    q, k, v, gk, _ = make_inputs(2, 1, 2, 16, 16, with_state=False)
    with torch.no_grad():
        o, ht = fused_recurrent_gla(q, k, v, gk, None, None, True)
    o_ref, ht_ref = naive_recurrent_gla(q, k, v, gk, None, None, True)
    torch.testing.assert_close(o, o_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ht, ht_ref, atol=1e-4, rtol=1e-4)


def test_fused_recurrent_refuses_gradients():
    q, k, v, gk, _ = make_inputs(1, 2, 1, 16, 16, with_state=False)
    with pytest.raises(RuntimeError, match="chunk_gla"):
        fused_recurrent_gla(q.requires_grad_(), k, v, gk)


@pytest.mark.parametrize("T", [1, 3, 40])
def test_dispatch_on_cpu_equals_naive_with_gradients(T):
    q, k, v, gk, h0 = make_inputs(2, T, 2, 16, 16)
    got = outputs_and_grads(dispatch.gla, q, k, v, gk, h0)
    want = outputs_and_grads(naive_recurrent_gla, q, k, v, gk, h0)
    assert_all_close(got, want, atol=1e-4)
