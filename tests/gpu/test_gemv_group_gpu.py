"""The grouped GEMV and the SwiGLU GEMV on the GPU at StateX GLA-1.3B's decode shapes, bf16 (STATEX_GPU_TESTS=1):
each output is the separate GEMV's bit for bit (the same summing code, ``gemv._one_row_dot``), the SwiGLU the
GEMVs' products through the SwiGLU kernel, eagerly and as CUDA-graph replays on new inputs; at a batch's rows (on
the tensor cores from 5) the fp32 products to bf16 rounding, and graph replays eager's bits."""

from __future__ import annotations

import math

import pytest
import torch
from statex_hf.kernels.activations.swiglu import swiglu
from statex_hf.kernels.linear import configs
from statex_hf.kernels.linear.gemv import gemv
from statex_hf.kernels.linear.gemv_group import gemv_group, gemv_swiglu

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEV = "cuda"
K = 2048
GROUP = (1024, 1024, 2048, 16, 2048)  # q, k, v, the gate's low-rank down, g
MLP = 5632


def randn(*shape, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    return (torch.randn(*shape, device=DEV, generator=g) / math.sqrt(shape[-1])).to(torch.bfloat16)


@torch.no_grad()
def test_group_and_swiglu_equal_the_separate_kernels_eagerly_and_in_a_graph():
    weights = [randn(n, K, seed=i + 1) for i, n in enumerate(GROUP)]
    gate, up = randn(MLP, K, seed=10), randn(MLP, K, seed=11)
    x = randn(1, 1, K)
    for y, w in zip(gemv_group(x, weights), weights):
        assert torch.equal(y, gemv(x, w))
    assert torch.equal(gemv_swiglu(x, gate, up), swiglu(gemv(x, gate), gemv(x, up)))

    static_x = x.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_ys = gemv_group(static_x, weights)
        static_s = gemv_swiglu(static_x, gate, up)
    for seed in range(20, 23):
        static_x.copy_(randn(1, 1, K, seed=seed))
        graph.replay()
        torch.cuda.synchronize()
        for y, w in zip(static_ys, weights):
            assert torch.equal(y, gemv(static_x, w))
        assert torch.equal(static_s, swiglu(gemv(static_x, gate), gemv(static_x, up)))


@torch.no_grad()
def test_a_group_of_wide_products_takes_the_wide_tiles_and_equals_the_separate_kernels():
    # configs.one_row_bucket: products whose 8-row programs fill the GPU WIDE_MIN_WAVES times over take 8 x 1024 tiles
    # (Mamba2-1.3B's in_proj); a group or SwiGLU of such products takes them too and still sums as the separate GEMV.
    device = torch.device(DEV)
    n = 8 * configs.WIDE_MIN_WAVES * configs.multiprocessors(device)
    assert configs.one_row_buckets([n, n + 8], device) == {"m1_wide"}
    weights = [randn(n, K, seed=30), randn(n + 8, K, seed=31)]
    x = randn(1, 1, K, seed=32)
    for y, w in zip(gemv_group(x, weights), weights, strict=True):
        assert torch.equal(y, gemv(x, w))
    gate, up = randn(n, K, seed=33), randn(n, K, seed=34)
    assert torch.equal(gemv_swiglu(x, gate, up), swiglu(gemv(x, gate), gemv(x, up)))


@torch.no_grad()
@pytest.mark.parametrize("rows", [2, 4, 16, 64])
def test_at_a_batchs_rows_group_and_swiglu_are_the_products_to_rounding_eagerly_and_in_a_graph(rows):
    weights = [randn(n, K, seed=i + 1) for i, n in enumerate(GROUP)]
    gate, up = randn(MLP, K, seed=10), randn(MLP, K, seed=11)

    def wanted(x):
        products = [(x.float() @ w.float().T).to(torch.bfloat16) for w in (*weights, gate, up)]
        return [*products[:-2], swiglu(*products[-2:])]

    def run(x):
        return [*gemv_group(x, weights), gemv_swiglu(x, gate, up)]

    x = randn(rows, 1, K, seed=40)
    for got, want in zip(run(x), wanted(x), strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    static_x = x.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = run(static_x)
    for seed in (41, 42):
        static_x.copy_(randn(rows, 1, K, seed=seed))
        graph.replay()
        torch.cuda.synchronize()
        for got, want in zip(static, run(static_x), strict=True):
            assert torch.equal(got, want)
