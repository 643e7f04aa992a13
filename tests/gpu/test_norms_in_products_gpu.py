"""A block's norms in the one-row products' prologue and its residual adds in their epilogue
(``kernels/linear/row_norm.py``) on the GPU at the 1.3B models' shapes, bf16 (STATEX_GPU_TESTS=1): the products
against the norm kernel and the plain kernels run one after the other, eagerly and as CUDA-graph replays on new
inputs; the add bit for bit; a decode step against the step with its norms apart; generate's tokens in its CUDA
graphs against eager decoding."""

from __future__ import annotations

import math

import pytest
import torch
from residual_norm_checks import decode_step, greedy_with_logits, mamba2_of_1_3b_shapes
from statex_hf.kernels.linear.gemv import gemv
from statex_hf.kernels.linear.gemv_group import gemv_group, gemv_swiglu
from statex_hf.kernels.linear.row_norm import RowNorm
from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm
from statex_hf.modeling.decode_graphs import decode_graphs_for
from statex_hf.modeling.gla import modeling_statex_gla
from statex_hf.modeling.mamba2 import modeling_statex_mamba2

from statex_hf import StateXGLAConfig, StateXGLAForCausalLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEV = "cuda"
BF16 = torch.bfloat16
K = 2048
GROUP = (1024, 1024, 2048, 16, 2048)  # GLA's q, k, v, the gate's low-rank down, g
MLP = 5632
IN_PROJ = 2 * 4096 + 2 * 128 + 64  # Mamba2-1.3B's z, xBC and dt


def randn(*shape, seed=0, scale=None):
    g = torch.Generator(device=DEV).manual_seed(seed)
    return (torch.randn(*shape, device=DEV, generator=g) * (scale or 1 / math.sqrt(shape[-1]))).to(BF16)


def assert_as_apart(got, want):
    """Close: the norm apart rounds its output to bf16 before the products, the prologue does not (``row_norm.py``),
    and the difference is that rounding carried through a sum of 2048 products."""
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@torch.no_grad()
@pytest.mark.parametrize("form", ["gla", "mamba2"])
def test_the_prologue_is_the_norm_kernel_then_the_products_eagerly_and_in_a_graph(form):
    gla = form == "gla"
    x = randn(1, 1, K, scale=3.0).to(BF16 if gla else torch.float32)
    norm = RowNorm((1 + 0.1 * randn(K, scale=1.0).float()).to(BF16), 1e-5, gla, None if gla else BF16)
    weights = [randn(n, K, seed=i + 1) for i, n in enumerate(GROUP if gla else (IN_PROJ,))]
    gate, up = randn(MLP, K, seed=10), randn(MLP, K, seed=11)

    def run(x):
        products = gemv_group(x, weights, norm) if gla else [gemv(x, weights[0], norm=norm)]
        return [*products, gemv_swiglu(x, gate, up, norm)]

    def apart(x):
        normed = gated_rmsnorm(x, None, norm.weight, norm.eps, K, norm.norm_before_gate, norm.input_dtype)
        return [*(gemv(normed, w) for w in weights), gemv_swiglu(normed, gate, up)]

    for got, want in zip(run(x), apart(x), strict=True):
        assert_as_apart(got, want)
    static_x = x.clone()
    eager = run(static_x)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = run(static_x)
    for seed in (20, 21):
        static_x.copy_(randn(1, 1, K, seed=seed, scale=3.0))
        graph.replay()
        torch.cuda.synchronize()
        eager = run(static_x)
        assert all(torch.equal(s, e) for s, e in zip(static, eager, strict=True))


@torch.no_grad()
@pytest.mark.parametrize("residual_dtype", [BF16, torch.float32])
@pytest.mark.parametrize("k", [2048, 4096, 5632])  # o_proj, Mamba2's out_proj, GLA's down_proj
def test_the_epilogue_is_the_product_then_torchs_add_bit_for_bit(residual_dtype, k):
    x, w = randn(1, 1, k), randn(K, k, seed=1)
    residual = randn(1, 1, K, seed=2, scale=5.0).to(residual_dtype)
    assert torch.equal(gemv(x, w, residual=residual), residual + gemv(x, w))


def gla_of_1_3b_shapes(layers=2):
    config = StateXGLAConfig(
        hidden_size=K, num_heads=4, num_hidden_layers=layers, vocab_size=512, statex_layers=[1], statex_num_heads=1,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return StateXGLAForCausalLM(config).to(DEV, BF16).eval()


MODELS = {"gla": gla_of_1_3b_shapes, "mamba2": lambda layers=2: mamba2_of_1_3b_shapes(DEV, BF16, layers)}


@pytest.mark.parametrize("family", MODELS)
def test_a_decode_step_is_the_step_with_its_norms_apart_to_rounding(monkeypatch, family):
    model = MODELS[family]()
    ids = torch.randint(3, 512, (1, 12), device=DEV)
    got = decode_step(model, ids)
    for module in (modeling_statex_gla, modeling_statex_mamba2):
        monkeypatch.setattr(module, "norms_go_into_products", lambda *args: False)
    want = decode_step(model, ids)
    # The norm's output unrounded against rounded to bf16, carried through two 2048-wide layers of random weights:
    # on an H100 the logits differed by up to 0.1, a few of Mamba2's two million state values by up to 1. Each
    # tensor as a whole is within 2% of the other (a norm without its weight, or without rstd, is far off).
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and (g.float() - w.float()).norm() <= 2e-2 * w.float().norm()


@pytest.mark.parametrize("family", MODELS)
def test_generate_as_cuda_graphs_gives_the_eager_tokens_and_scores(family):
    model = MODELS[family](layers=3)
    ids = torch.randint(3, 512, (1, 16), device=DEV)

    got = greedy_with_logits(model, ids)
    assert decode_graphs_for(model).last_capture_seconds is not None, "no decode step was captured"
    eager = greedy_with_logits(model, ids, disable_compile=True)
    assert torch.equal(got[0], eager[0]) and torch.equal(got[1], eager[1])


def test_mamba2s_mixer_norm_in_out_proj_decodes_as_in_its_step_and_its_graphs_give_the_eager_tokens(monkeypatch):
    # dispatch.GATED_NORM_IN_OUT_PROJ (on by default since the eighteenth session): the one launch leaves each group's
    # sum of squares in partial sums, out_proj's product normalizes y as it loads it. The step is the step with the
    # norm in the one launch to rounding (the sum of squares is added in another order), and generate's CUDA graphs
    # give eager decoding's tokens and scores.
    assert_switched_on_decodes_as_off_and_graphs_as_eager(monkeypatch, "mamba2", "GATED_NORM_IN_OUT_PROJ")


def assert_switched_on_decodes_as_off_and_graphs_as_eager(monkeypatch, family, switch, values=(False, True), batch=1):
    """With ``dispatch.<switch>`` on (``values``: off, on), a decode step of ``batch`` sequences of the 1.3B-shaped
    model is the step with it off to rounding (2% of each tensor), and generate's CUDA graphs give eager decoding's
    tokens and scores."""
    from statex_hf.kernels import dispatch

    model = MODELS[family](layers=3)
    ids = torch.randint(3, 512, (batch, 16), device=DEV)
    monkeypatch.setattr(dispatch, switch, values[0])
    want = decode_step(model, ids)
    monkeypatch.setattr(dispatch, switch, values[1])
    got = decode_step(model, ids)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and (g.float() - w.float()).norm() <= 2e-2 * w.float().norm()
    graphed = greedy_with_logits(model, ids)
    eager = greedy_with_logits(model, ids, disable_compile=True)
    assert torch.equal(graphed[0], eager[0]) and torch.equal(graphed[1], eager[1])


@torch.no_grad()
@pytest.mark.parametrize("form,vocab", [("gla", 32000), ("mamba2", 50288)])
def test_the_final_norm_and_the_fp32_logits_in_the_heads_launch_at_the_vocab_sizes(form, vocab):
    # dispatch.FINAL_NORM_IN_HEAD (off by default; built without a GPU, twenty-sixth session). GLA's final norm reads
    # the bf16 stream; Mamba2's the fp32 stream as it is, its fp32 output cast to the head's bf16.
    gla = form == "gla"
    x = randn(1, 1, K, scale=3.0).to(BF16 if gla else torch.float32)
    weight = (1 + 0.1 * randn(K, scale=1.0).float()).to(BF16)
    norm = RowNorm(weight, 1e-5) if gla else RowNorm(weight, 1e-5, False, output_dtype=BF16)
    head = randn(vocab, K, seed=3)
    normed = gated_rmsnorm(x, None, weight, 1e-5, K, norm.norm_before_gate).to(BF16)
    assert torch.equal(gemv(normed, head, out_dtype=torch.float32), gemv(normed, head).float())
    got = gemv(x, head, norm=norm, out_dtype=torch.float32)
    assert got.dtype == torch.float32
    assert_as_apart(got, gemv(normed, head).float())
    static_x = x.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = gemv(static_x, head, norm=norm, out_dtype=torch.float32)
    for seed in (20, 21):
        static_x.copy_(randn(1, 1, K, seed=seed, scale=3.0))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static, gemv(static_x, head, norm=norm, out_dtype=torch.float32))


@pytest.mark.parametrize("family", MODELS)
def test_the_final_norm_in_the_head_decodes_as_apart_and_its_graphs_give_the_eager_tokens(monkeypatch, family):
    assert_switched_on_decodes_as_off_and_graphs_as_eager(monkeypatch, family, "FINAL_NORM_IN_HEAD")


@pytest.mark.parametrize("batch", [4, 16, 64])
def test_a_batchs_grouped_launches_decode_as_apart_and_their_graphs_give_the_eager_tokens(monkeypatch, batch):
    # dispatch.GROUPED_MAX_ROWS (1 by default; built without a GPU, twenty-seventh session): GLA's five projections in
    # one launch and its MLP's gate, up and SwiGLU in another at a batch's rows, where off they are cuBLAS's products.
    assert_switched_on_decodes_as_off_and_graphs_as_eager(monkeypatch, "gla", "GROUPED_MAX_ROWS", (1, 64), batch)
