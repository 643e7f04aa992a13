"""What GLA's one-token step takes in its launch (``kernels/gla/fused_recurrent.py``) on the GPU, at GLA-1.3B's heads
and its StateX layer's, bf16 (run with STATEX_GPU_TESTS=1): the gate's up projection (``LowRankGate``), the GEMV's
values, and the output norm (``GATED_NORM``), the norm kernel's values on the step's o, eagerly and replayed in a
graph under PDL between the GEMVs that feed and read it; the state the step's own, the tickets left at zero."""

from __future__ import annotations

import pytest
import torch
from statex_hf.kernels import tickets
from statex_hf.kernels.gla.fused_recurrent import fused_recurrent_gla
from statex_hf.kernels.gla.low_rank_gate import LowRankGate
from statex_hf.kernels.linear.gemv import gemv
from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SHAPES = {"unexpanded_h4": (4, 256, 512), "statex_h1": (1, 1024, 2048)}
BF16 = torch.bfloat16


def assert_tickets_at_zero():
    torch.cuda.synchronize()
    for counts in tickets.HELD.get(torch.device("cuda", torch.cuda.current_device()), []):
        assert not counts.any(), "a launch left a ticket count behind"


def inputs(B, H, K, V, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k = (torch.randn(B, 1, H, K, device="cuda", generator=g).to(BF16) for _ in range(2))
    v = torch.randn(B, 1, H, V, device="cuda", generator=g).to(BF16)
    raw = (4 * torch.randn(B, 1, H, K, device="cuda", generator=g)).to(BF16)  # gate logits
    row = torch.randn(B, 1, H * V + 16, device="cuda", generator=g).to(BF16)  # g: a slice of the grouped GEMV's row
    return q, k, v, raw, row[..., : H * V].view(B, 1, H, V)


@pytest.mark.parametrize("B", [1, 4])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@torch.no_grad()
def test_the_step_launch_normalizes_o_as_the_norm_kernel_does(shape, B):
    H, K, V = shape
    weight = (1 + 0.1 * torch.randn(V, device="cuda")).to(BF16)
    state = 0.1 * torch.randn(B, H, K, V, device="cuda")
    apart = state.clone()
    for step in range(3):
        q, k, v, raw, gate = inputs(B, H, K, V, seed=step)
        normed, _ = fused_recurrent_gla(q, k, v, raw, None, state, final_state=state, gate_logit_normalizer=16,
                                        norm_gate=gate, norm_weight=weight, norm_eps=1e-5)  # fmt: skip
        o, _ = fused_recurrent_gla(q, k, v, raw, None, apart, final_state=apart, gate_logit_normalizer=16)
        want = gated_rmsnorm(o, gate, weight, 1e-5, V, norm_before_gate=True)
        assert torch.equal(state, apart)
        # The norm kernel's sums over a [rows, BS] tile, this one's over a [1, BS] tile: equal, or a rounding apart.
        torch.testing.assert_close(normed.float(), want.float(), rtol=8e-3, atol=8e-3)
        assert (normed != want).float().mean() < 0.01
    assert_tickets_at_zero()


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@torch.no_grad()
def test_under_pdl_a_captured_step_gives_the_plain_launches_values_on_every_replay(shape):
    # The decode graphs launch with PDL: the GEMV that makes g, the step with the norm (o stored by every program,
    # read by each head's last), o_proj's GEMV on its output; each replay equals the same kernels launched one after
    # another without PDL.
    from statex_hf.kernels.dependent_launch import dependent_launches

    H, K, V = shape
    hidden = 2048
    w_g = (torch.randn(H * V, hidden, device="cuda") / hidden**0.5).to(BF16)
    w_o = (torch.randn(hidden, H * V, device="cuda") / (H * V) ** 0.5).to(BF16)
    weight = (1 + 0.1 * torch.randn(V, device="cuda")).to(BF16)

    def step(state, x, q, k, v, raw):
        gate = gemv(x, w_g).view(1, 1, H, V)
        normed, _ = fused_recurrent_gla(q, k, v, raw, None, state, final_state=state, gate_logit_normalizer=16,
                                        norm_gate=gate, norm_weight=weight, norm_eps=1e-5)  # fmt: skip
        return gemv(normed.view(1, H * V), w_o)

    plain = 0.1 * torch.randn(1, H, K, V, device="cuda")
    graphed = plain.clone()
    static = [torch.randn(1, hidden, device="cuda").to(BF16), *inputs(1, H, K, V)[:4]]
    with dependent_launches(torch.device("cuda", torch.cuda.current_device())):
        step(graphed.clone(), *static)  # compiles the PDL variants first
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = step(graphed, *static)
    for replay in range(4):
        new = [torch.randn(1, hidden, device="cuda").to(BF16), *inputs(1, H, K, V, seed=replay + 1)[:4]]
        want = step(plain, *new)
        for x, value in zip(static, new):
            x.copy_(value)
        graph.replay()
        assert torch.equal(static_y, want), f"replay {replay}"
        assert torch.equal(graphed, plain), f"replay {replay}"
    assert_tickets_at_zero()


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@torch.no_grad()
def test_the_step_launch_projects_the_gate_as_the_gemv_does(shape):
    H, K, V = shape
    q, k, v, _, _ = inputs(1, H, K, V)
    down = torch.randn(1, 1, 16, device="cuda").to(BF16)
    w_up = (torch.randn(H * K, 16, device="cuda") / 4).to(BF16)
    b_up = torch.randn(H * K, device="cuda").to(BF16)
    state = 0.1 * torch.randn(1, H, K, V, device="cuda")
    apart = state.clone()
    o, _ = fused_recurrent_gla(q, k, v, LowRankGate(down, w_up, b_up), None, state, final_state=state,
                               gate_logit_normalizer=16)  # fmt: skip
    gk = gemv(down.view(1, 16), w_up, b_up).view(1, 1, H, K)
    want, _ = fused_recurrent_gla(q, k, v, gk, None, apart, final_state=apart, gate_logit_normalizer=16)
    # The gate's 16 products summed in another order than the GEMV's: equal, or one bf16 rounding of a gate apart.
    torch.testing.assert_close(o.float(), want.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(state, apart, rtol=1e-2, atol=1e-3)
