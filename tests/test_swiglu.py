"""The SwiGLU kernel (``kernels/activations/swiglu.py``) == torch's ``F.silu(gate) * up``, and the torch formulas
other kernels inline (``kernels/activations/elementwise.py``) == torch's ops.

Under the Triton interpreter (set in conftest): numpy's ``exp`` may differ from torch's CPU ``exp`` in the last
bit, and the interpreter casts fp32 to bf16 by truncation where the GPU (and torch) round to nearest, so fp32
results agree to a few ulp and bf16 ones to a bf16 step per rounding. tests/gpu/test_gla_kernels_gpu.py checks
bf16 on the GPU, against torch's CUDA ops.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from statex_hf.kernels import dispatch, launch
from statex_hf.kernels.activations import swiglu as swiglu_module
from statex_hf.kernels.activations.elementwise import logsigmoid, silu
from statex_hf.kernels.activations.naive import naive_swiglu
from statex_hf.kernels.activations.swiglu import swiglu

pytestmark = pytest.mark.filterwarnings(
    "ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning"
)

FP32_TOL = {"rtol": 1e-6, "atol": 1e-7}  # a few ulp: numpy's exp against torch's
BF16_TOL = {"rtol": 2**-6, "atol": 2**-14}  # two roundings, each up to a bf16 step off (truncation)
# Logits past where exp overflows, zeros of both signs, and the tails where log1p(z) needs a tiny z.
EXTREMES = [-1000.0, -100.0, -30.0, -20.0, -1e-3, -0.0, 0.0, 1e-3, 20.0, 30.0, 100.0, 1000.0]


def make_inputs(shape, dtype=torch.float32):
    gate = torch.randn(shape) * 6
    gate.view(-1)[: len(EXTREMES)] = torch.tensor(EXTREMES)[: gate.numel()]
    return gate.to(dtype), torch.randn(shape).to(dtype)


@pytest.mark.parametrize("shape", [(1, 1, 5632), (3, 7, 200), (1, 1, 1), (2, 0, 16)], ids=str)
def test_swiglu_equals_torch_fp32(shape):
    # 5632: GLA-1.3B's MLP width at one decode token; 3 * 7 * 200 is not a multiple of the block.
    gate, up = make_inputs(shape)
    out = swiglu(gate, up)
    assert out.shape == gate.shape and out.dtype == gate.dtype and out.is_contiguous()
    torch.testing.assert_close(out, naive_swiglu(gate, up), **FP32_TOL)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_swiglu_equals_torch_in_half_precision(dtype):
    gate, up = make_inputs((2, 3, 300), dtype)
    out = swiglu(gate, up)
    assert out.dtype == dtype
    torch.testing.assert_close(out, F.silu(gate) * up, **BF16_TOL)


def test_swiglu_rounds_silu_before_the_product_as_torch_does():
    # torch rounds silu(gate) to bf16 before the product; one rounding of the fp32 product (as fla's swiglu
    # does) gives another number: silu(0.75) = 0.50938 -> bf16 0.5078125, times 3: 1.5234375 (exact in bf16),
    # where bf16(0.50938 * 3 = 1.52815) = 1.53125. (Truncation and rounding to nearest agree on this input.)
    gate = torch.tensor([0.75], dtype=torch.bfloat16)
    up = torch.tensor([3.0], dtype=torch.bfloat16)
    want = F.silu(gate) * up
    assert want.item() == 1.5234375 and (F.silu(gate.float()) * 3.0).bfloat16().item() == 1.53125
    assert swiglu(gate, up).item() == want.item()


def test_a_strided_input_is_read_as_torch_reads_it():
    wide = torch.randn(2, 5, 64) * 4
    gate, up = wide[..., :24], wide[..., 30:54]
    torch.testing.assert_close(swiglu(gate, up), F.silu(gate) * up, **FP32_TOL)


def test_inputs_of_different_shapes_or_dtypes_are_one_clear_error():
    gate, up = make_inputs((2, 8))
    with pytest.raises(ValueError, match=r"swiglu: gate \(2, 8\) torch.float32 and up \(2, 4\)"):
        swiglu(gate, up[:, :4])
    with pytest.raises(ValueError, match="one shape and dtype"):
        swiglu(gate, up.double())


def test_swiglu_refuses_gradients():
    gate, up = make_inputs((2, 8))
    with pytest.raises(RuntimeError, match="no backward"):
        swiglu(gate.requires_grad_(), up)


def test_small_blocks_on_a_gpu_the_configured_block_does_not_fit(monkeypatch):
    from launch_fakes import on_small_gpu

    monkeypatch.setattr(launch, "_REPLACED", {})
    fakes = on_small_gpu(monkeypatch, swiglu_module, "_swiglu_fwd_kernel", max_tile=128)
    gate, up = make_inputs((3, 500))
    with pytest.warns(UserWarning, match="activations.swiglu.*does not fit"):
        out = swiglu(gate, up)
    torch.testing.assert_close(out, naive_swiglu(gate, up), **FP32_TOL)
    assert fakes["_swiglu_fwd_kernel"].launches[-1]["BLOCK"] == 128


@triton.jit
def _apply(x, y, n, FN: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    v = tl.load(x + offs, mask=offs < n, other=0.0)
    if FN == "silu":
        out = silu(v)
    else:
        out = logsigmoid(v)
    tl.store(y + offs, out, mask=offs < n)


@pytest.mark.parametrize("fn, reference", [("silu", F.silu), ("logsigmoid", F.logsigmoid)])
def test_the_inlined_formulas_equal_torch_over_the_whole_range(fn, reference):
    x = torch.cat([torch.tensor(EXTREMES), torch.randn(500) * 8, torch.linspace(-90, 90, 500)])
    y = torch.empty_like(x)
    _apply[(1,)](x, y, x.numel(), FN=fn, BLOCK=triton.next_power_of_2(x.numel()))
    want = reference(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, want, **FP32_TOL)
    # Where log(1 + z) would round z away (logsigmoid of a large logit is -exp(-x), not 0), short of subnormals.
    if fn == "logsigmoid":
        tail = (x > 20) & (x < 80)
        torch.testing.assert_close(y[tail], want[tail], rtol=1e-6, atol=0.0)
        assert (y[tail] < 0).all()


def test_dispatch_runs_the_kernel_without_gradients_and_torch_with_them(on_cuda_dispatch, monkeypatch):
    calls = []
    real = swiglu_module.swiglu
    monkeypatch.setattr(swiglu_module, "swiglu", lambda g, u: calls.append(g.shape) or real(g, u))
    gate, up = make_inputs((2, 3, 40))
    with torch.no_grad():
        out = dispatch.swiglu(gate, up)
    assert calls == [gate.shape]
    torch.testing.assert_close(out, naive_swiglu(gate, up), **FP32_TOL)
    gate.requires_grad_()
    out = dispatch.swiglu(gate, up)
    assert calls == [gate.shape] and out.grad_fn is not None  # training: torch's ops, with their backward
    with torch.no_grad():  # one operand of another dtype: torch's promotion, not the kernel
        assert dispatch.swiglu(gate, up.double()).dtype == torch.float64
    assert len(calls) == 1


def test_dispatch_on_cpu_is_torch_bit_for_bit():
    gate, up = make_inputs((2, 3, 40), torch.bfloat16)
    assert torch.equal(dispatch.swiglu(gate, up), F.silu(gate) * up)
