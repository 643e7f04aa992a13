"""The GEMV kernel on the GPU at the 1.3B models' decode shapes, bf16 (run with STATEX_GPU_TESTS=1).

Against the fp32 product of the same bf16 inputs: the kernel sums in fp32 (in its own order) and rounds
once, so each output is within half a bf16 step of the fp32 product, plus what a different fp32 summation
order can move (bounded by ``K * 2^-24`` times the sum of ``|x| |w|``). Then the product inside a CUDA
graph: replays on new inputs give eager's bits (split-K sums its partials in a fixed order).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from statex_hf.kernels import launch
from statex_hf.kernels.linear import configs
from statex_hf.kernels.linear.gemv import gemv

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_gemv import SHAPES  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEV = "cuda"


def operands(m, k, n, with_bias=False, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(m, k, device=DEV, generator=g).to(torch.bfloat16)
    weight = (torch.randn(n, k, device=DEV, generator=g) / math.sqrt(k)).to(torch.bfloat16)
    bias = torch.randn(n, device=DEV, generator=g).to(torch.bfloat16) if with_bias else None
    return x, weight, bias


def assert_rounded_fp32_sum(y, x, weight, bias):
    exact = torch.nn.functional.linear(x.double(), weight.double(), None if bias is None else bias.double())
    magnitude = x.double().abs() @ weight.double().abs().T + (0 if bias is None else bias.double().abs())
    bound = exact.abs() * 2**-8 + magnitude * x.shape[-1] * 2**-24
    off = (y.double() - exact).abs()
    assert y.dtype == torch.bfloat16
    assert (off <= bound).all(), f"max excess {(off - bound).max().item():.3e} over the bf16 rounding bound"


@pytest.mark.parametrize("m", [1, 16, 64], ids=lambda m: f"M{m}")
@pytest.mark.parametrize("name,k,n", SHAPES, ids=[s[0].replace(" ", "_") for s in SHAPES])
def test_the_tables_pick_is_the_fp32_sum_rounded_to_bf16(name, k, n, m):
    x, weight, _ = operands(m, k, n)
    assert_rounded_fp32_sum(gemv(x, weight), x, weight, None)


@pytest.mark.parametrize("bucket", list(configs.TABLES["default"]))
@pytest.mark.parametrize("splits", [1, 3, 8])
def test_every_bucket_and_split_with_a_bias(monkeypatch, bucket, splits):
    monkeypatch.setitem(launch.OVERRIDES, "linear.gemv", configs.TABLES["default"][bucket].with_(SPLIT_K=splits))
    x, weight, bias = operands(5, 5632, 2048 + 7, with_bias=True)
    assert_rounded_fp32_sum(gemv(x, weight, bias), x, weight, bias)


@pytest.mark.parametrize("splits", [1, 4])
def test_replays_in_a_cuda_graph_give_eagers_bits(monkeypatch, splits):
    monkeypatch.setitem(launch.OVERRIDES, "linear.gemv", configs.TABLES["default"]["m1"].with_(SPLIT_K=splits))
    x, weight, bias = operands(1, 2048, 1024, with_bias=True)
    static_x = x.clone()
    with torch.no_grad():
        gemv(static_x, weight, bias)  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = gemv(static_x, weight, bias)
        for seed in range(1, 4):
            step, _, _ = operands(1, 2048, 1024, seed=seed)
            static_x.copy_(step)
            graph.replay()
            eager = gemv(step, weight, bias)
            torch.cuda.synchronize()
            assert torch.equal(static_y, eager)
            assert_rounded_fp32_sum(static_y, step, weight, bias)
