"""A GLA block's residual add fused into the norm that reads its sum, on the GPU at GLA-1.3B's hidden size (run with
STATEX_GPU_TESTS=1 on a CUDA machine): the add + norm kernel is torch's add and the separate norm kernel on it, bit
for bit, eagerly and replayed in a CUDA graph; and a decode step of a model with 1.3B shapes computes the logits and
states of the unfused step bit for bit, eagerly and as generate's CUDA graphs (the same greedy tokens and scores).
"""

from __future__ import annotations

import pytest
import torch
from residual_norm_checks import assert_all_equal, decode_step
from statex_hf.kernels import dispatch
from statex_hf.kernels.dependent_launch import dependent_launches
from statex_hf.kernels.linear.gemv import gemv
from statex_hf.kernels.norm.add_rmsnorm import add_rmsnorm
from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm
from statex_hf.modeling.decode_graphs import decode_graphs_for

from statex_hf import StateXGLAConfig, StateXGLAForCausalLM

# At one row a block's norms and adds go into its sublayers' products (test_norms_in_products_gpu.py); here apart.
pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.usefixtures("norms_apart"),
]
DEVICE = "cuda"
HIDDEN = 2048  # GLA-1.3B
EPS = 1e-6
SHAPES = [(1, 1, HIDDEN), (16, 1, HIDDEN), (64, 1, HIDDEN), (2, 1000, HIDDEN)]
SHAPE_IDS = ["decode-1", "decode-16", "decode-64", "prefill-2x1000"]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def inputs(shape, dtype, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    residual = (8 * torch.randn(*shape, device=DEVICE, generator=g)).to(dtype)  # magnitudes apart: sums round
    update = torch.randn(*shape, device=DEVICE, generator=g).to(dtype)
    weight = (1.0 + 0.1 * torch.randn(shape[-1], device=DEVICE, generator=g)).to(dtype)
    return residual, update, weight


def unfused(residual, update, weight):
    summed = residual + update
    return summed, gated_rmsnorm(summed, None, weight, EPS, HIDDEN, norm_before_gate=True)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16", "fp32"])
@torch.no_grad()
def test_the_kernel_is_torchs_add_and_the_norm_kernel_bit_for_bit(shape, dtype):
    residual, update, weight = inputs(shape, dtype)
    want = unfused(residual, update, weight)
    for got in (
        add_rmsnorm(residual, update, weight, EPS),
        dispatch.one_launch_add_rmsnorm(residual, update, weight, EPS),
    ):
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype and torch.equal(g, w)


@torch.no_grad()
def test_the_kernel_replayed_in_a_cuda_graph_on_new_inputs():
    residual, update, weight = inputs((1, 1, HIDDEN), torch.bfloat16)
    static_residual, static_update = residual.clone(), update.clone()
    add_rmsnorm(static_residual, static_update, weight, EPS)  # compiled before the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = add_rmsnorm(static_residual, static_update, weight, EPS)
    for seed in (1, 2):
        new_residual, new_update, _ = inputs((1, 1, HIDDEN), torch.bfloat16, seed=seed)
        static_residual.copy_(new_residual)
        static_update.copy_(new_update)
        graph.replay()
        for g, w in zip(static_out, unfused(new_residual, new_update, weight), strict=True):
            assert torch.equal(g, w)


@torch.no_grad()
def test_with_dependent_launches_a_captured_chain_of_norms_gives_the_plain_launches_values():
    # gemv -> add + norm -> gemv -> norm: each kernel reads what the one before wrote (PDL where the GPU has it).
    residual, update, weight = inputs((1, 1, HIDDEN), torch.bfloat16)
    w = (torch.randn(HIDDEN, HIDDEN, device=DEVICE) / HIDDEN**0.5).to(torch.bfloat16)

    def chain(x):
        h, n = add_rmsnorm(residual, gemv(x, w), weight, EPS)
        return h, gated_rmsnorm(gemv(n, w), None, weight, EPS, HIDDEN, norm_before_gate=True)

    static_x = update.clone()
    with dependent_launches(torch.device(DEVICE)):
        chain(static_x)  # compiles the PDL variants first
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = chain(static_x)
    for seed in (1, 2, 3):
        x = inputs((1, 1, HIDDEN), torch.bfloat16, seed=seed)[1]
        want = chain(x)
        static_x.copy_(x)
        graph.replay()
        assert all(torch.equal(g, w) for g, w in zip(static_out, want, strict=True)), f"replay {seed}"


def build(dtype):
    # Two layers of GLA-1.3B's shapes, the second expanded (one head), and a small vocabulary.
    config = StateXGLAConfig(
        hidden_size=HIDDEN, num_heads=4, num_hidden_layers=2, vocab_size=512, statex_layers=[1], statex_num_heads=1,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return StateXGLAForCausalLM(config).to(DEVICE, dtype).eval()


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_a_decode_step_is_the_unfused_steps_bit_for_bit(monkeypatch, dtype, batch):
    model = build(dtype)
    ids = torch.randint(3, 512, (batch, 12), device=DEVICE)

    got = decode_step(model, ids)
    monkeypatch.setattr(dispatch, "one_launch_add_rmsnorm", lambda *args: None)
    assert_all_equal(got, decode_step(model, ids))


def test_generate_as_cuda_graphs_gives_the_unfused_tokens_and_scores(monkeypatch):
    model = build(torch.bfloat16)
    ids = torch.randint(3, 512, (1, 16), device=DEVICE)

    def generate():
        decode_graphs_for(model).clear()
        out = model.generate(
            ids, max_new_tokens=12, do_sample=False, eos_token_id=None, return_dict_in_generate=True,
            output_logits=True,
        )  # fmt: skip
        assert decode_graphs_for(model).last_capture_seconds is not None, "no decode step was captured"
        return out.sequences, torch.stack(out.logits)

    got = generate()
    monkeypatch.setattr(dispatch, "one_launch_add_rmsnorm", lambda *args: None)
    want = generate()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
