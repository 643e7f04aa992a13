"""Every GLA kernel equals the token-by-token reference, forward and backward.

Runs on CPU: the PyTorch chunked path natively, the Triton kernels under ``TRITON_INTERPRET=1``
(set by conftest), fp32 and tiny shapes. Real shapes in bf16 are in ``tests/gpu``.
"""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
import torch.nn.functional as F
from launched_ops import decode_step_ops
from statex_hf.kernels import dispatch, launch, utils
from statex_hf.kernels.gla import chunk as gla_chunk
from statex_hf.kernels.gla import configs
from statex_hf.kernels.gla.chunk import chunk_gla
from statex_hf.kernels.gla.chunk_torch import chunk_gla_torch
from statex_hf.kernels.gla.fused_recurrent import fused_recurrent_gla
from statex_hf.kernels.gla.naive import gla_log_decay, naive_recurrent_gla
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


# --- The recurrent kernel from GLA's raw gate logits (logsigmoid / normalizer and the clamp at load) ---

GATE_SHAPES = {"one_token": (3, 1, 2, 20, 24), "few_tokens": (2, 5, 2, 20, 24), "one_token_tiled": (2, 1, 1, 80, 72)}


def gate_logits(B, T, H, K, dtype=torch.float32):
    # Wide logits: log decays from ~0 down to -9/16 (what a clamp of -0.1 cuts), and extremes.
    raw = torch.randn(B, T, H, K) * 6
    raw.view(-1)[:4] = torch.tensor([-100.0, -30.0, 30.0, 100.0])
    return raw.to(dtype)


@pytest.mark.parametrize("clamp_min", [None, -0.1], ids=["no_clamp", "clamp"])
@pytest.mark.parametrize("shape", GATE_SHAPES.values(), ids=GATE_SHAPES.keys())
def test_fused_recurrent_from_gate_logits_equals_the_torch_log_decay(shape, clamp_min):
    B, T, H, K, V = shape
    q, k, v, _, h0 = make_inputs(*shape)
    raw = gate_logits(B, T, H, K)
    gk = gla_log_decay(raw, 16, clamp_min)
    with torch.no_grad():
        o, ht = fused_recurrent_gla(q, k, v, raw, None, h0, True, gate_logit_normalizer=16, gate_clamp_min=clamp_min)
        o_kernel, ht_kernel = fused_recurrent_gla(q, k, v, gk, None, h0, True)
    o_ref, ht_ref = naive_recurrent_gla(q, k, v, gk, None, h0, True)
    # Against the kernel fed torch's log decay: equal up to the last bit of numpy's exp (the interpreter's).
    torch.testing.assert_close(o, o_kernel, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ht, ht_kernel, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(o, o_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ht, ht_ref, atol=1e-4, rtol=1e-4)


def test_fused_recurrent_from_bf16_gate_logits_rounds_where_torch_does():
    # In bf16 torch rounds logsigmoid's result, then the quotient, to bf16: the kernel's log decay is those
    # bf16 numbers (up to one bf16 step here: the interpreter truncates where the GPU rounds to nearest).
    B, T, H, K, V = 2, 1, 2, 16, 16
    q, k, v, _, h0 = make_inputs(B, T, H, K, V)
    q, k, v = (x.bfloat16() for x in (q, k, v))
    raw = gate_logits(B, T, H, K, torch.bfloat16)
    gk = gla_log_decay(raw, 16)
    assert gk.dtype == torch.bfloat16
    with torch.no_grad():
        o, ht = fused_recurrent_gla(q, k, v, raw, None, h0, True, gate_logit_normalizer=16)
    o_ref, ht_ref = naive_recurrent_gla(q, k, v, gk, None, h0, True)
    torch.testing.assert_close(ht, ht_ref, atol=2e-2, rtol=2**-7)
    torch.testing.assert_close(o.float(), o_ref.float(), atol=5e-2, rtol=2**-6)


def test_a_gate_clamp_without_gate_logits_is_one_clear_error():
    q, k, v, gk, h0 = make_inputs(1, 1, 1, 16, 16)
    with pytest.raises(ValueError, match="gate_clamp_min applies to gate logits"):
        fused_recurrent_gla(q, k, v, gk, None, h0, gate_clamp_min=-1.0)
    with pytest.raises(ValueError, match="gate_clamp_min applies to gate logits"):
        dispatch.gla(q, k, v, gk, initial_state=h0, gate_clamp_min=-1.0)


@pytest.mark.parametrize("T", [1, 3, 40])
def test_dispatch_on_cpu_from_gate_logits_is_the_torch_path_bit_for_bit_with_gradients(T):
    # CPU (and training): gla_log_decay's torch ops, then the same path as before: nothing moves.
    q, k, v, _, h0 = make_inputs(2, T, 2, 16, 16)
    raw = gate_logits(2, T, 2, 16)
    got = outputs_and_grads(
        functools.partial(dispatch.gla, gate_logit_normalizer=16, gate_clamp_min=-0.2), q, k, v, raw, h0
    )
    want = outputs_and_grads(
        lambda q, k, v, g, s, h, f, c: dispatch.gla(q, k, v, gla_log_decay(g, 16, -0.2), s, h, f, c), q, k, v, raw, h0
    )
    for name in want:
        assert torch.equal(got[name], want[name]), name


def record_gla_as_on_gpu(monkeypatch) -> list[tuple[int, float | None]]:
    """``dispatch`` as on a GPU (every tensor counts as CUDA), the kernels under the interpreter. Returns the
    recurrent kernel's calls: (tokens, the ``gate_logit_normalizer`` it got) each."""
    from statex_hf.kernels.gla import fused_recurrent

    monkeypatch.setattr(dispatch, "use_triton", lambda *tensors: True)
    calls, real = [], fused_recurrent.fused_recurrent_gla
    signature = inspect.signature(real)

    def recorded(*args, **kwargs):
        bound = signature.bind(*args, **kwargs).arguments
        calls.append((bound["q"].shape[1], bound.get("gate_logit_normalizer")))
        return real(*args, **kwargs)

    monkeypatch.setattr(fused_recurrent, "fused_recurrent_gla", recorded)
    return calls


@pytest.fixture
def gla_as_on_gpu(monkeypatch):
    return record_gla_as_on_gpu(monkeypatch)


def test_dispatch_sends_gate_logits_to_the_recurrent_kernel_and_preprocesses_them_for_the_chunked_one(gla_as_on_gpu):
    q, k, v, _, h0 = make_inputs(2, 3, 1, 16, 16)
    raw = gate_logits(2, 3, 1, 16)
    gk = gla_log_decay(raw, 16, -0.3)
    with torch.no_grad():
        o, _ = dispatch.gla(q, k, v, raw, initial_state=h0, gate_logit_normalizer=16, gate_clamp_min=-0.3)
    assert gla_as_on_gpu == [(3, 16)]
    torch.testing.assert_close(o, naive_recurrent_gla(q, k, v, gk, None, h0)[0], atol=1e-4, rtol=1e-4)
    # With gradients: the chunked kernel, on the log decay computed by torch (whose backward reaches the logits).
    got = outputs_and_grads(
        functools.partial(dispatch.gla, gate_logit_normalizer=16, gate_clamp_min=-0.3), q, k, v, raw, h0
    )
    want = outputs_and_grads(
        lambda q, k, v, g, s, h, f, c: naive_recurrent_gla(q, k, v, gla_log_decay(g, 16, -0.3), s, h, f, c),
        q, k, v, raw, h0,
    )  # fmt: skip
    assert len(gla_as_on_gpu) == 1
    assert_all_close(got, want, atol=1e-4)


@pytest.mark.parametrize("clamp_min", [None, -0.5], ids=["no_clamp", "clamp"])
def test_a_decode_step_on_the_gpu_path_runs_no_gate_or_swiglu_kernels(gla_as_on_gpu, monkeypatch, clamp_min):
    # The decode step's gate (logsigmoid, division, clamp) runs inside the recurrent kernel and the MLP's
    # silu(gate) * up is one kernel: none of those torch ops is left in a step.
    from tiny_models import VOCAB, build, returned_cache

    model = build("gla", num_hidden_layers=2, clamp_min=clamp_min, statex_layers=[0], statex_num_heads=1)
    ids = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad():
        cache = returned_cache(model(ids, use_cache=True))  # `cache` from transformers 5.24 on
    ops = decode_step_ops(monkeypatch, model, ids[:, -1:], cache).ops
    elementwise = {"log_sigmoid_forward", "log_sigmoid", "div", "clamp_min", "silu", "mul"}
    assert not elementwise & set(ops), sorted(elementwise & set(ops))
    assert gla_as_on_gpu[-2:] == [(1, 16), (1, 16)]  # both layers' steps took the logits


@pytest.mark.parametrize("fields", [{}, {"clamp_min": -0.05, "use_short_conv": True}], ids=["default", "clamp_conv"])
def test_generate_with_gate_and_swiglu_fused_equals_the_torch_path(monkeypatch, fields):
    # The whole model as on a GPU (prefill and decode on the kernels) against the torch path, on a
    # left-padded batch: the padded prompt takes gla_log_decay's torch ops and the mask (the kernel gets the
    # log decay), the decode steps hand the raw logits to the kernel.
    from statex_hf.kernels.activations import swiglu as swiglu_module
    from tiny_models import VOCAB, build

    model = build("gla", statex_layers=[1], statex_num_heads=1, **fields)
    prompt = torch.randint(3, VOCAB, (2, 6))
    mask = torch.ones_like(prompt)
    mask[0, :2] = 0
    prompt[0, :2] = 0

    def generate():
        out = model.generate(
            prompt, attention_mask=mask, max_new_tokens=4, do_sample=False, eos_token_id=None,
            return_dict_in_generate=True, output_logits=True,
        )  # fmt: skip
        return out.sequences, torch.stack(out.logits)

    ids_ref, logits_ref = generate()
    calls = record_gla_as_on_gpu(monkeypatch)
    swiglus, real_swiglu = [], swiglu_module.swiglu
    monkeypatch.setattr(swiglu_module, "swiglu", lambda g, u: swiglus.append(g.shape[1]) or real_swiglu(g, u))
    ids, logits = generate()
    layers = model.config.num_hidden_layers
    assert calls == [(6, None)] * layers + [(1, 16)] * 3 * layers  # padded prompt: log decay; steps: logits
    assert swiglus == [6] * layers + [1] * 3 * layers
    assert torch.equal(ids, ids_ref)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-4, atol=1e-4)
