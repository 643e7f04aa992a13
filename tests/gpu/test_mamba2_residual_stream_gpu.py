"""A Mamba2 block's fp32 residual stream on the GPU (issue 20), at Mamba2-1.3B's hidden size (run with
STATEX_GPU_TESTS=1 on a CUDA machine): the residual-add kernel is torch's add bit for bit, the norm rounds the
fp32 stream to bf16 as torch's cast does (ties to even included), and a bf16 model's decode step computes what
the previous block (a cast for the norm, torch's mixed-dtype add) computed, bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from residual_norm_checks import assert_all_equal, decode_step, mamba2_of_1_3b_shapes, previous_mamba2_block_forward
from statex_hf.kernels import dispatch
from statex_hf.kernels.activations.residual_add import residual_add
from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm
from statex_hf.modeling.mamba2.modeling_statex_mamba2 import StateXMamba2Block

# At one row a block's norms and adds go into its sublayers' products (test_norms_in_products_gpu.py); here apart.
pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.usefixtures("norms_apart"),
]
DEVICE = "cuda"
HIDDEN = 2048  # Mamba2-1.3B
SHAPES = [(1, 1, HIDDEN), (4, 1, HIDDEN), (2, 7, HIDDEN), (2, 1000, HIDDEN)]
SHAPE_IDS = ["decode-1", "decode-4", "2x7", "prefill-2x1000"]


def fp32_stream(shape, dtype):
    """Random fp32 values, the first ones exactly halfway between two ``dtype`` neighbours."""
    x = 4 * torch.randn(*shape, device=DEVICE)
    mantissa = 7 if dtype == torch.bfloat16 else 10
    k = torch.arange(64, device=DEVICE, dtype=torch.float32)
    x.view(-1)[:64] = (1.0 + k * 2.0**-mantissa + 2.0 ** -(mantissa + 1)) * (-1.0) ** k
    return x


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize(
    "residual_dtype, update_dtype, dtype",
    [
        (torch.float32, torch.bfloat16, None),
        (torch.float32, torch.float16, None),
        (torch.bfloat16, torch.bfloat16, torch.float32),
    ],
    ids=["fp32+bf16", "fp32+fp16", "bf16->fp32+bf16"],
)
@torch.no_grad()
def test_the_residual_add_kernel_is_torchs_add_bit_for_bit(shape, residual_dtype, update_dtype, dtype):
    residual = (100 * torch.randn(*shape, device=DEVICE)).to(residual_dtype)
    update = torch.randn(*shape, device=DEVICE).to(update_dtype)
    want = residual.to(dtype or residual_dtype) + update
    for got in (residual_add(residual, update, dtype), dispatch.residual_add(residual, update, dtype)):
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@torch.no_grad()
def test_the_norm_rounds_an_fp32_stream_as_torchs_cast(shape, dtype):
    x = fp32_stream(shape, dtype)
    weight = (1.0 + 0.1 * torch.randn(HIDDEN, device=DEVICE)).to(dtype)
    cast = x.to(dtype)
    want = gated_rmsnorm(cast, None, weight, 1e-5, HIDDEN)
    for got in (
        gated_rmsnorm(x, None, weight, 1e-5, HIDDEN, input_dtype=dtype),
        dispatch.gated_rmsnorm(x, None, weight, 1e-5, HIDDEN, input_dtype=dtype),
    ):
        assert got.dtype == want.dtype == dtype and torch.equal(got, want)


@pytest.mark.parametrize("batch", [1, 4])
def test_a_bf16_decode_step_is_the_previous_blocks_bit_for_bit(monkeypatch, batch):
    model = mamba2_of_1_3b_shapes(DEVICE, torch.bfloat16)  # two layers, the second expanded (N 512)
    ids = torch.randint(3, 512, (batch, 12), device=DEVICE)
    got = decode_step(model, ids)
    monkeypatch.setattr(StateXMamba2Block, "forward", previous_mamba2_block_forward)
    assert_all_equal(got, decode_step(model, ids))
