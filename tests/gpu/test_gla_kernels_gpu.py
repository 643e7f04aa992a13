"""GLA Triton kernels on a CUDA device, bf16, at the real head shapes (run with STATEX_GPU_TESTS=1).

References: the fp32 PyTorch paths (``naive.py``; ``chunk_torch.py`` where the token loop would hold
too many states for autograd) and, as a second reference nobody here wrote, flash-linear-attention's
``chunk_gla`` / ``fused_recurrent_gla`` when installed. The error measure is relative (norm of the
difference over norm of the reference); fla's own bf16 error is printed beside ours.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from statex_hf.kernels import dispatch
from statex_hf.kernels.gla.chunk import chunk_gla
from statex_hf.kernels.gla.chunk_torch import chunk_gla_torch
from statex_hf.kernels.gla.fused_recurrent import fused_recurrent_gla
from statex_hf.kernels.gla.naive import naive_recurrent_gla

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# GLA-1.3B's layer (4 heads of 256 x 512) and its StateX layer (one head of 1024 x 2048).
SHAPES = {"unexpanded_h4": (4, 256, 512), "statex_h1": (1, 1024, 2048)}
BF16_TOL = 1e-2  # relative error of a bf16 kernel against the fp32 reference
# The gate gradient is a suffix sum of differences (q dq - k dk): cancellation amplifies bf16 rounding.
TOL = {"dgk": 3e-2}


@pytest.fixture(autouse=True, scope="module")
def fla_autotune_first_config_only():
    """fla is a correctness reference here, not a timing: skip its minutes of autotuning (first config)."""
    from triton.runtime import autotuner

    original = autotuner.Autotuner.prune_configs
    autotuner.Autotuner.prune_configs = lambda self, kwargs: self.configs[:1]
    yield
    autotuner.Autotuner.prune_configs = original


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12)).item()


def make_inputs(B, T, H, K, V, n_states=None, dtype=torch.bfloat16):
    dev = "cuda"
    q = torch.randn(B, T, H, K, device=dev)
    k = torch.randn(B, T, H, K, device=dev) * K**-0.5
    v = torch.randn(B, T, H, V, device=dev)
    gk = F.logsigmoid(torch.randn(B, T, H, K, device=dev)) / 16  # GLA's gate (gate_logit_normalizer 16)
    h0 = torch.randn(n_states or B, H, K, V, device=dev) * 0.1
    return [x.to(dtype) for x in (q, k, v, gk)] + [h0]


def run(fn, q, k, v, gk, h0, cu_seqlens=None, upcast=False):
    leaves = [(x.float() if upcast else x).detach().clone().requires_grad_() for x in (q, k, v, gk, h0)]
    o, ht = fn(*leaves[:4], None, leaves[4], True, cu_seqlens)
    gen = torch.Generator(device="cuda").manual_seed(1)
    do = torch.randn(o.shape, device="cuda", generator=gen)
    dht = torch.randn(ht.shape, device="cuda", generator=gen)
    grads = torch.autograd.grad((o.float() * do).sum() + (ht * dht).sum(), leaves)
    return dict(zip(["o", "ht", "dq", "dk", "dv", "dgk", "dh0"], [o, ht, *grads]))


def fla_chunk_gla():
    try:
        from fla.ops.gla import chunk_gla as fla_chunk
    except ImportError:
        return None
    return lambda q, k, v, g, scale, h0, final, cu: fla_chunk(
        q, k, v, g, scale=scale, initial_state=h0, output_final_state=final, cu_seqlens=cu
    )


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_chunk_bf16_equals_fp32_reference_and_fla(shape):
    H, K, V = shape
    inputs = make_inputs(2, 1000, H, K, V)  # 1000: a last chunk that is not full
    ours = run(chunk_gla, *inputs)
    ref = run(chunk_gla_torch, *inputs, upcast=True)
    errors = {name: rel_err(ours[name], ref[name]) for name in ref}
    print("ours vs fp32:", {n: f"{e:.1e}" for n, e in errors.items()})
    fla = fla_chunk_gla()
    if fla is not None:
        theirs = run(fla, *inputs)
        fla_errors = {name: rel_err(theirs[name], ref[name]) for name in ref}
        print("fla vs fp32: ", {n: f"{e:.1e}" for n, e in fla_errors.items()})
        for name in ref:
            assert errors[name] <= max(2 * fla_errors[name], BF16_TOL / 4), name
    for name, err in errors.items():
        assert err < TOL.get(name, BF16_TOL), (name, err)


def test_config_without_enough_shared_memory_falls_back_and_stays_correct(monkeypatch):
    # The state pass with fp32 128 x 128 tiles in 8 pipeline stages (its loop over the chunks buffers
    # k and v tiles, 64 KiB a stage) needs about 512 KiB of shared memory, more than any GPU has: the
    # launch must fall back to a smaller config (as a tuned one would on a smaller GPU) and still be right.
    # This small head takes SMALL_STATE_TILES in both state passes, so the backward's falls back too.
    from statex_hf.kernels import launch
    from statex_hf.kernels.gla import configs

    too_large = launch.LaunchConfig.of(4, 8, BK=128, BV=128)
    monkeypatch.setitem(configs.DEFAULTS, "fwd_h", too_large)
    monkeypatch.setattr(configs, "SMALL_STATE_TILES", too_large)
    monkeypatch.setattr(launch, "_REPLACED", {})
    inputs = make_inputs(1, 300, 1, 256, 256, dtype=torch.float32)
    with pytest.warns(UserWarning, match="fwd_h.*does not fit"):
        ours = run(chunk_gla, *inputs)
    ref = run(naive_recurrent_gla, *inputs)
    assert {key[0] for key in launch._REPLACED} == {"gla.fwd_h", "gla.bwd_dh"}
    for name in ref:
        assert rel_err(ours[name], ref[name]) < 1e-3, name


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_chunk_packed_batch_equals_naive_per_document(shape):
    H, K, V = shape
    cu_seqlens = torch.tensor([0, 100, 163, 164, 300], device="cuda")
    inputs = make_inputs(1, 300, H, K, V, n_states=4)
    ours = run(chunk_gla, *inputs, cu_seqlens=cu_seqlens)
    ref = run(naive_recurrent_gla, *inputs, cu_seqlens=cu_seqlens, upcast=True)
    for name in ref:
        assert rel_err(ours[name], ref[name]) < TOL.get(name, BF16_TOL), name


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("B, T", [(1, 1), (64, 1), (4, 3)])
def test_decode_equals_naive_and_fla(shape, B, T):
    H, K, V = shape
    q, k, v, gk, h0 = make_inputs(B, T, H, K, V)
    with torch.no_grad():
        o, ht = fused_recurrent_gla(q, k, v, gk, None, h0, True)
        o_ref, ht_ref = naive_recurrent_gla(q.float(), k.float(), v.float(), gk.float(), None, h0, True)
        assert rel_err(o, o_ref) < BF16_TOL and rel_err(ht, ht_ref) < 1e-4
        try:
            from fla.ops.gla import fused_recurrent_gla as fla_recurrent
        except ImportError:
            return
        o_fla, ht_fla = fla_recurrent(q, k, v, gk=gk, initial_state=h0, output_final_state=True)
        assert rel_err(o, o_fla) < BF16_TOL and rel_err(ht, ht_fla) < 1e-3


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_one_token_configs_of_a_batch_of_one_agree_and_update_in_place(shape, monkeypatch):
    # The small-batch configs as the sweep compares them, state updated in place (a decode step's cache):
    # each equals the reference, and pipelining the tiles' loads leaves o and the state bit for bit as they
    # are without it (it moves loads, not arithmetic).
    from statex_hf.kernels.gla import fused_recurrent
    from statex_hf.kernels.gla.fused_recurrent import StepConfig

    H, K, V = shape
    q, k, v, gk, h0 = make_inputs(1, 1, H, K, V)
    o_ref, ht_ref = naive_recurrent_gla(q.float(), k.float(), v.float(), gk.float(), None, h0, True)
    with torch.no_grad():
        for BK in (64, 256, 1024)[: 1 + (K >= 256) + (K >= 1024)]:
            runs = []
            for stages in (1, 3)[: 1 + (K > BK)]:
                config = StepConfig(BK, 16, 8, stages)
                monkeypatch.setattr(fused_recurrent, "step_config", lambda *args, config=config: config)
                state = h0.clone()
                o, _ = fused_recurrent_gla(q, k, v, gk, None, state, final_state=state)
                assert rel_err(o, o_ref) < BF16_TOL and rel_err(state, ht_ref) < 1e-4, config
                runs.append((o, state))
            assert all(torch.equal(o, runs[0][0]) and torch.equal(s, runs[0][1]) for o, s in runs), BK


def test_dispatch_picks_recurrent_for_decode_and_chunk_for_training():
    q, k, v, gk, h0 = make_inputs(2, 5, 1, 64, 64)
    with torch.no_grad():
        o_decode, _ = dispatch.gla(q, k, v, gk, initial_state=h0)
        torch.testing.assert_close(o_decode, fused_recurrent_gla(q, k, v, gk, None, h0)[0])
    q.requires_grad_()
    o_train, _ = dispatch.gla(q, k, v, gk, initial_state=h0)
    assert o_train.grad_fn is not None and "ChunkGLA" in type(o_train.grad_fn).__name__


def test_statex_gla_model_with_kernels_matches_torch_path(monkeypatch):
    from statex_hf import StateXGLAConfig, StateXGLAForCausalLM

    config = StateXGLAConfig(
        hidden_size=256, num_heads=4, num_hidden_layers=2, vocab_size=128, statex_layers=[0], statex_num_heads=1
    )
    torch.manual_seed(0)
    model = StateXGLAForCausalLM(config).cuda().eval()
    ids = torch.randint(3, 128, (2, 200), device="cuda")

    def logits_loss_grads(force_torch: bool):
        monkeypatch.setenv("STATEX_FORCE_TORCH", "1" if force_torch else "0")
        model.zero_grad()
        out = model(ids, labels=ids)
        out.loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        with torch.no_grad():
            tokens = model.generate(ids[:, :50], max_new_tokens=20, do_sample=False)
        return out.logits.detach(), out.loss.detach(), grads, tokens

    logits_k, loss_k, grads_k, tokens_k = logits_loss_grads(False)
    logits_t, loss_t, grads_t, tokens_t = logits_loss_grads(True)
    torch.testing.assert_close(logits_k, logits_t, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(loss_k, loss_t, atol=1e-4, rtol=1e-4)
    for name in grads_t:
        assert rel_err(grads_k[name], grads_t[name]) < 1e-3, name
    assert torch.equal(tokens_k, tokens_t)


# --- Fused decode ops: the gate inside the recurrent kernel, SwiGLU as one kernel ---


def bits_differ(got: torch.Tensor, want: torch.Tensor) -> int:
    """How many elements of two tensors of one dtype differ at all (0: bit for bit)."""
    return int((got != want).sum().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("clamp_min", [None, -0.1], ids=["no_clamp", "clamp"])
@pytest.mark.parametrize("B, T", [(1, 1), (64, 1), (4, 3)])
def test_decode_from_gate_logits_equals_torch_log_decay_on_the_gpu(B, T, clamp_min, dtype):
    # GLA-1.3B's layer shape. The kernel computes torch's CUDA formula with libdevice exp/log1p and rounds to
    # the inputs' dtype where torch's ops do: its log decay is torch's (printed: elements not bit for bit, expected 0).
    from statex_hf.kernels.gla.naive import gla_log_decay

    H, K, V = SHAPES["unexpanded_h4"]
    q, k, v, _, h0 = make_inputs(B, T, H, K, V, dtype=dtype)
    raw = (torch.randn(B, T, H, K, device="cuda") * 6).to(dtype)
    gk = gla_log_decay(raw, 16, clamp_min)
    with torch.no_grad():
        o, ht = fused_recurrent_gla(q, k, v, raw, None, h0, True, gate_logit_normalizer=16, gate_clamp_min=clamp_min)
        o_ref, ht_ref = fused_recurrent_gla(q, k, v, gk, None, h0, True)
    print(f"from the kernel fed torch's log decay, differing: o {bits_differ(o, o_ref)} of {o.numel()}, "
          f"state {bits_differ(ht, ht_ref)} of {ht.numel()}")  # fmt: skip
    # A rare last-bit difference (a bf16 rounding tie flipped) would move a few elements; a wrong formula, scale
    # or rounding moves them all.
    assert rel_err(ht, ht_ref) < 1e-6 and rel_err(o, o_ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("rows", [1, 64, 3000])
def test_swiglu_equals_torch_on_the_gpu(rows, dtype):
    # GLA-1.3B's MLP width; logits as wide as a trained MLP's, extremes included. Two roundings as torch's
    # silu-then-mul: torch's result but for a rare last bit (printed; expected 0 with libdevice exp and div_rn).
    from statex_hf.kernels.activations.swiglu import swiglu

    gate = torch.randn(rows, 5632, device="cuda") * 6
    gate[0, :6] = torch.tensor([-1000.0, -100.0, -20.0, 0.0, 20.0, 100.0])
    gate, up = gate.to(dtype), torch.randn(rows, 5632, device="cuda").to(dtype)
    out, want = swiglu(gate, up), torch.nn.functional.silu(gate) * up
    differing = bits_differ(out, want)
    print(f"swiglu {dtype}: {differing} of {out.numel()} elements differ from torch's")
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out, want, rtol=4 * eps, atol=eps * 1e-3)  # a few last bits at most
    # Bit for bit but for rare rounding ties (numpy's exp under the CPU interpreter differs in ~15% of them).
    assert differing <= 1e-3 * out.numel()


def test_decode_step_kernels_replay_in_a_cuda_graph():
    # The decode path's two fused ops under capture (generate replays steps as CUDA graphs): no host sync,
    # fixed addresses, and the replay equals an eager call on new inputs copied into the captured ones.
    from statex_hf.kernels.activations.swiglu import swiglu

    H, K, V = SHAPES["unexpanded_h4"]
    q, k, v, _, h0 = make_inputs(2, 1, H, K, V)
    raw = torch.randn(2, 1, H, K, device="cuda").bfloat16()
    gate, up = torch.randn(2, 1, 5632, device="cuda").bfloat16(), torch.randn(2, 1, 5632, device="cuda").bfloat16()
    state = h0.clone()

    def step():
        o, _ = dispatch.gla(q, k, v, raw, initial_state=state, final_state=state, gate_logit_normalizer=16)
        return o, swiglu(gate, up)

    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()  # compile outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            o_graph, s_graph = step()
        for x in (q, k, v, raw, gate, up):
            x.copy_(torch.randn_like(x, dtype=torch.float32))
        state.copy_(h0)
        graph.replay()
        state_graph = state.clone()
        state.copy_(h0)
        o_eager, s_eager = step()
    assert torch.equal(o_graph, o_eager) and torch.equal(s_graph, s_eager) and torch.equal(state_graph, state)
