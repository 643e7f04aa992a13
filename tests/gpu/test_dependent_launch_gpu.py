"""Programmatic dependent launch on the GPU (STATEX_GPU_TESTS=1): a chain of dependent decode kernels captured
with PDL gives, on every replay, the values the same kernels give launched one after another without it."""

from __future__ import annotations

import math

import pytest
import torch
from statex_hf.kernels.dependent_launch import dependent_launches, pdl_kwargs
from statex_hf.kernels.gla.fused_recurrent import fused_recurrent_gla
from statex_hf.kernels.linear.gemv import gemv
from statex_hf.kernels.linear.gemv_group import gemv_group, gemv_swiglu

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEV = "cuda"
K = 2048


def randn(*shape, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    return (torch.randn(*shape, device=DEV, generator=g) / math.sqrt(shape[-1])).to(torch.bfloat16)


def chain(x, weights, gate, up, log_decay, state):
    """Each kernel reads what the one before it wrote: q, k, v from x; the state step; SwiGLU; a projection."""
    q, k, v = (t.view(1, 1, 1, K) for t in gemv_group(x, weights))
    o, _ = fused_recurrent_gla(q, k, v, log_decay, initial_state=state, final_state=state)
    return gemv(gemv_swiglu(o.view(1, 1, K), gate, up), weights[0])


@torch.no_grad()
def test_pdl_is_on_in_its_block_on_hopper_and_off_outside():
    assert pdl_kwargs() == {"USE_PDL": False}
    with dependent_launches(torch.device(DEV)) as on:
        assert on == (torch.cuda.get_device_capability()[0] >= 9)
        assert pdl_kwargs().get("launch_pdl", False) == on
    assert pdl_kwargs() == {"USE_PDL": False}


@torch.no_grad()
def test_a_captured_chain_with_pdl_gives_the_plain_launches_values_on_every_replay():
    weights = [randn(K, K, seed=i + 1) for i in range(3)]
    gate, up = randn(K, K, seed=10), randn(K, K, seed=11)
    state_plain = torch.randn(1, 1, K, K, device=DEV) * 0.01
    state_graph = state_plain.clone()
    log_decay = torch.full((1, 1, 1, K), -0.1, device=DEV, dtype=torch.bfloat16)
    static_x = randn(1, 1, K, seed=20)
    with dependent_launches(torch.device(DEV)):
        chain(static_x, weights, gate, up, log_decay, state_graph.clone())  # compiles the PDL variants first
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = chain(static_x, weights, gate, up, log_decay, state_graph)
    for step in range(5):
        x = randn(1, 1, K, seed=30 + step)
        want = chain(x, weights, gate, up, log_decay, state_plain)
        static_x.copy_(x)
        graph.replay()
        assert torch.equal(static_y, want), f"replay {step}"
        assert torch.equal(state_graph, state_plain), f"state after replay {step}"
