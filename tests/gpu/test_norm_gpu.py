"""GLA's RMSNorms (norm first: ``round(norm(x) * weight * silu(gate))``) as the Triton kernel on the GPU, at
GLA-1.3B shapes (run with STATEX_GPU_TESTS=1 on a CUDA machine).

bf16 inputs against the fp32 PyTorch reference, forward and every gradient, by relative max error; the
rounding order against the reference on the same bf16 inputs; and ``StateXGLARMSNorm`` on CUDA == the kernel.
Mamba2's order is tested in ``test_ssd_kernels_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch
from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm as gated_rmsnorm_triton
from statex_hf.kernels.norm.naive import naive_gated_rmsnorm as gated_rmsnorm
from statex_hf.modeling.gla.modeling_statex_gla import StateXGLARMSNorm

pytestmark = pytest.mark.gpu
DEV = "cuda"
EPS = 1e-6

# GLA-1.3B: hidden 2048 (attn_norm, mlp_norm, the final norm: no gate); the mixer's output norm over
# head_v_dim 512 with 4 heads, or 2048 in a StateX layer whose heads are merged into one.
SHAPES = {
    "hidden-2048": ((2, 1000, 2048), False),
    "output-4-heads-512": ((2, 1000, 4, 512), True),
    "output-1-head-2048": ((2, 1000, 1, 2048), True),
    "decode-output-4-heads-512": ((1, 1, 4, 512), True),
}


def make_inputs(shape, gated, weighted):
    g = torch.Generator(device=DEV).manual_seed(0)
    inputs = {"x": torch.randn(shape, device=DEV, generator=g).to(torch.bfloat16)}
    inputs["gate"] = torch.randn(shape, device=DEV, generator=g).to(torch.bfloat16) if gated else None
    weight = 1.0 + 0.1 * torch.randn(shape[-1], device=DEV, generator=g)
    inputs["weight"] = weight.to(torch.bfloat16) if weighted else None
    return inputs, torch.randn(shape, device=DEV, generator=g).to(torch.bfloat16)


def forward_backward(fn, inputs, dout, dtype):
    leaves = {k: v.detach().to(dtype, copy=True).requires_grad_() for k, v in inputs.items() if v is not None}
    out = fn(leaves["x"], leaves.get("gate"), leaves.get("weight"), EPS, inputs["x"].shape[-1], norm_before_gate=True)
    out.backward(dout.to(out.dtype))
    return {"out": out, **{f"d{k}": v.grad for k, v in leaves.items()}}


@pytest.mark.parametrize("weighted", [True, False], ids=["weight", "no-weight"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_gla_norm_bf16_matches_fp32_reference_forward_and_all_grads(name, weighted):
    shape, gated = SHAPES[name]
    inputs, dout = make_inputs(shape, gated, weighted)
    want = forward_backward(gated_rmsnorm, inputs, dout, torch.float32)
    got = forward_backward(gated_rmsnorm_triton, inputs, dout, torch.bfloat16)
    assert set(got) == set(want) and got["out"].dtype == torch.bfloat16
    for key in want:
        err = ((got[key].double() - want[key].double()).abs().max() / want[key].double().abs().max()).item()
        assert err < 1e-2, f"{key}: relative max error {err:.1e}"


@pytest.mark.parametrize("name", list(SHAPES))
def test_gla_norm_rounds_once_as_the_reference_on_the_same_bf16_inputs(name):
    # fp32 all through, one rounding at the end: against the reference on the same bf16 inputs the output may
    # differ only where fp32 summation order flips a bf16 rounding (rare); rounding n or n * w first (a
    # second rounding) changes about a quarter of them.
    shape, gated = SHAPES[name]
    inputs, _ = make_inputs(shape, gated, weighted=True)
    with torch.no_grad():
        want = gated_rmsnorm(**inputs, eps=EPS, group_size=shape[-1], norm_before_gate=True)
        got = gated_rmsnorm_triton(**inputs, eps=EPS, group_size=shape[-1], norm_before_gate=True)
    differ = (got != want).float().mean().item()
    assert differ < 1e-2, f"{differ:.1%} of the bf16 outputs differ from the reference on the same inputs"


def test_model_gla_rmsnorm_on_cuda_runs_the_kernel():
    norm = StateXGLARMSNorm(512, eps=EPS).to(DEV, torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(1.0 + 0.1 * torch.randn(512, device=DEV))
    inputs, _ = make_inputs((2, 100, 4, 512), True, True)
    with torch.no_grad():
        got = norm(inputs["x"], inputs["gate"])
        want = gated_rmsnorm_triton(inputs["x"], inputs["gate"], norm.weight, EPS, 512, norm_before_gate=True)
    assert torch.equal(got, want)
