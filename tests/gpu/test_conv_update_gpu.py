"""The conv decode kernel on the GPU at Mamba2-1.3B decode shapes, bf16 (run with STATEX_GPU_TESTS=1).

Against the PyTorch path with a conv state (``naive_causal_conv1d(..., conv_state, True)``): the same fp32
sum (no fused multiply-adds) then one rounding, so without an activation the output is bit for bit the
torch path's, and with SiLU it may differ only where the last bit of ``exp`` tips a bf16 rounding; the
new window is moved, not computed, so it is exact. conv_dim 4352 is Mamba2-1.3B's ``[x | B | C]``
(4096 + 2 * 128), 5120 the StateX layer's (N = 512).
"""

from __future__ import annotations

import pytest
import torch
from statex_hf.kernels import dispatch
from statex_hf.kernels.conv.causal_conv1d_update import causal_conv1d_update
from statex_hf.kernels.conv.naive import naive_causal_conv1d

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEV = "cuda"
K = 4


def decode_inputs(b, D, T=1, dtype=torch.bfloat16, state_dtype=torch.bfloat16):
    g = torch.Generator(device=DEV).manual_seed(0)
    x = torch.randn(b, T, D, device=DEV, generator=g).to(dtype)
    weight = (torch.randn(D, K, device=DEV, generator=g) * 0.5).to(dtype)
    bias = (torch.randn(D, device=DEV, generator=g) * 0.1).to(dtype)
    state = torch.randn(b, D, K - 1, device=DEV, generator=g).to(state_dtype)
    return x, weight, bias, state


def assert_within_one_bf16_step(got, want):
    # One step of bf16 at the value: a rounding tipped the other way, nothing more.
    step = want.float().abs().clamp_min(2**-126) * 2**-7
    off = (got.float() - want.float()).abs()
    assert (off <= step).all(), f"max error {off.max().item():.3e} at {want.flatten()[off.argmax()].item():.3e}"
    assert (got != want).float().mean().item() < 0.01, "more than 1% of the outputs differ from the torch path"


@pytest.mark.parametrize("b", [1, 64])
@pytest.mark.parametrize("D", [4352, 5120])
@pytest.mark.parametrize("activation", ["silu", None], ids=["silu", "no_act"])
def test_a_decode_step_matches_the_torch_path_bf16(b, D, activation):
    x, weight, bias, state = decode_inputs(b, D)
    y_ref, window_ref = naive_causal_conv1d(x, weight, bias, activation, state.clone(), True)
    address = state.data_ptr()
    y = causal_conv1d_update(x, weight, state, bias, activation)
    assert state.data_ptr() == address
    assert torch.equal(state, window_ref)
    if activation is None:  # the same products and sums in the same order, one rounding: bit for bit
        assert torch.equal(y, y_ref)
    else:
        assert_within_one_bf16_step(y, y_ref)


@pytest.mark.parametrize("T", [2, 5])
def test_several_tokens_and_an_fp32_state(T):
    x, weight, bias, state = decode_inputs(64, 5120, T=T, state_dtype=torch.float32)
    y_ref, window_ref = naive_causal_conv1d(x, weight, bias, "silu", state.clone(), True)
    y = causal_conv1d_update(x, weight, state, bias, "silu")
    assert torch.equal(state, window_ref.float())
    assert_within_one_bf16_step(y, y_ref)


def test_a_strided_slice_of_the_projection_as_mamba2_passes_it():
    # xBC is a slice of in_proj's output: no copy, the same result.
    g = torch.Generator(device=DEV).manual_seed(1)
    projected = torch.randn(64, 1, 2 * 4096 + 4352 + 64, device=DEV, generator=g).to(torch.bfloat16)
    x = projected[..., 4096 : 4096 + 4352]
    _, weight, bias, state = decode_inputs(64, 4352)
    y_ref, window_ref = naive_causal_conv1d(x, weight, bias, "silu", state.clone(), True)
    y = causal_conv1d_update(x, weight, state, bias, "silu")
    assert torch.equal(state, window_ref)
    assert_within_one_bf16_step(y, y_ref)


def test_dispatch_runs_a_step_in_one_launch_on_the_cached_state_and_replays_as_a_cuda_graph():
    x, weight, bias, state = decode_inputs(64, 5120)
    steps = [torch.randn_like(x) for _ in range(3)]
    ref_state = state.clone()
    refs = []
    for step in steps:
        y_ref, ref_state = naive_causal_conv1d(step, weight, bias, "silu", ref_state, True)
        refs.append(y_ref)
    static_x = x.clone()
    with torch.no_grad():
        dispatch.causal_conv1d(static_x, weight, bias, "silu", state.clone(), True)  # compile outside capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y, window = dispatch.causal_conv1d(static_x, weight, bias, "silu", state, True)
    assert window is state
    spare = state.clone()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        with torch.no_grad():
            dispatch.causal_conv1d(static_x, weight, bias, "silu", spare, True)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 1 and "_conv_update_kernel" in kernels[0], kernels
    for step, y_ref in zip(steps, refs):
        static_x.copy_(step)
        graph.replay()
        assert_within_one_bf16_step(static_y, y_ref)
    torch.cuda.synchronize()
    assert torch.equal(state, ref_state)
