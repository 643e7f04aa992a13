"""The one-launch Mamba2 decode step (``kernels/ssd/conv_state_update.py``) on the GPU (run with STATEX_GPU_TESTS=1).

At Mamba2-1.3B's shapes (H 64, P 64, G 1; N 128 and the StateX layer's 512, conv_dim 4352 and 5120), bf16, x, B, C
and dt slices of one in_proj row: the fused kernel == the conv update kernel then the state-update kernel, bit for
bit (y, window, state), over three steps. Both compile without fused multiply-adds and sum the state on the same
tiles, so no rounding differs; the B and C windows, which every program of a group reads, are written by the last
program to take a ticket, so no program reads a window already overwritten (on the GPU the programs do run at once).
Replayed as a CUDA graph the step equals the eager steps, in one kernel, and leaves the tickets at zero.
"""

from __future__ import annotations

import pytest
import torch
from statex_hf.kernels import dispatch, launch
from statex_hf.kernels import tickets as tickets_module
from statex_hf.kernels.conv.causal_conv1d_update import causal_conv1d_update
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.ssd.conv_state_update import conv_state_update
from statex_hf.kernels.ssd.state_update import ssd_state_update
from statex_hf.modeling.cache import conv_state, recurrent_state

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEV = "cuda"
K = 4


class Layer:
    """One Mamba2 layer's decode parameters and caches (bf16 parameters, a ``window_dtype`` conv window, fp32 state)."""

    def __init__(self, b, H, P, G, N, window_dtype=torch.bfloat16, seed=0):
        self.g = torch.Generator(device=DEV).manual_seed(seed)
        self.b, self.H, self.P, self.G, self.N = b, H, P, G, N
        self.conv_dim = H * P + 2 * G * N
        self.weight = self.randn(self.conv_dim, K, scale=0.5).to(torch.bfloat16)
        self.conv_bias = self.randn(self.conv_dim, scale=0.1).to(torch.bfloat16)
        self.window = self.randn(b, self.conv_dim, K - 1).to(window_dtype)
        self.state = self.randn(b, H, P, N, scale=0.1)
        self.A_log = torch.log(torch.arange(1, H + 1, device=DEV, dtype=torch.float32)).to(torch.bfloat16)
        self.D = torch.ones(H, device=DEV, dtype=torch.bfloat16)
        self.dt_bias = (torch.rand(H, device=DEV, generator=self.g) - 2.0).to(torch.bfloat16)

    def randn(self, *shape, scale=1.0):
        return torch.randn(*shape, device=DEV, generator=self.g) * scale

    def clone(self):
        other = object.__new__(Layer)
        other.__dict__ = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()}
        return other

    def token(self):
        """xBC and dt as the mixer passes them: slices of one bf16 in_proj row ``[z | xBC | dt]`` per sequence."""
        row = self.randn(self.b, self.H * self.P + self.conv_dim + self.H, scale=0.5).to(torch.bfloat16)
        _, xBC, dt = row.split([self.H * self.P, self.conv_dim, self.H], dim=-1)
        return xBC, dt

    def fused(self, xBC, dt):
        return conv_state_update(xBC, self.weight, self.window, self.state, dt, None, self.G, self.conv_bias, "silu",
                                 self.D, self.dt_bias, True, (0.0, float("inf")), A_log=self.A_log)  # fmt: skip

    def two_kernels(self, xBC, dt):
        b, H, P, G, N = self.b, self.H, self.P, self.G, self.N
        xBC = causal_conv1d_update(xBC[:, None], self.weight, self.window, self.conv_bias, "silu")[:, 0]
        x, B, C = xBC.split([H * P, G * N, G * N], dim=-1)
        return ssd_state_update(self.state, x.view(b, H, P), dt, None, B.view(b, G, N), C.view(b, G, N), self.D,
                                self.dt_bias, True, A_log=self.A_log)  # fmt: skip


def assert_tickets_at_zero():
    for tickets in tickets_module.HELD.get(torch.device(DEV, torch.cuda.current_device()), []):
        assert not tickets.any(), "a launch left a ticket count behind"


def assert_three_steps_equal(layer):
    other = layer.clone()
    for _ in range(3):
        xBC, dt = layer.token()
        y = layer.fused(xBC, dt)
        y_two = other.two_kernels(xBC, dt)
        assert torch.equal(y, y_two), (y.float() - y_two.float()).abs().max().item()
        assert torch.equal(layer.window, other.window)
        assert torch.equal(layer.state, other.state), (layer.state - other.state).abs().max().item()
    torch.cuda.synchronize()
    assert_tickets_at_zero()


@pytest.mark.parametrize("b", [1, 64])
@pytest.mark.parametrize("N", [128, 512])
@torch.no_grad()
def test_one_launch_is_the_two_kernels_bit_for_bit_at_1p3b_shapes(b, N):
    assert_three_steps_equal(Layer(b, 64, 64, 1, N))


@pytest.mark.parametrize(
    "tiles", [dict(BP=16, BN=128, BW=512), dict(BP=8, BN=128, BW=128)], ids=["windows-at-once", "narrower-p-tiles"]
)
@torch.no_grad()
def test_other_tiles_of_the_one_launch_keep_the_two_kernels_bits(monkeypatch, tiles):
    # The group's B and C windows in one block at N = 512 (read before the ticket with four state tiles loaded one
    # ahead), and more programs with the state update's N tile: the two kernels' bits at either N.
    monkeypatch.setitem(launch.OVERRIDES, "ssd.conv_state_update", LaunchConfig.of(4, 2, **tiles))
    for N in (128, 512):
        assert_three_steps_equal(Layer(1, 64, 64, 1, N))


@pytest.mark.parametrize("window_dtype", [torch.bfloat16, torch.float32], ids=["bf16-window", "fp32-window"])
@torch.no_grad()
def test_two_groups_and_either_window_dtype(window_dtype):
    assert_three_steps_equal(Layer(3, 8, 64, 2, 128, window_dtype=window_dtype))


@torch.no_grad()
def test_a_cuda_graph_replays_the_eager_steps_in_one_kernel():
    layer = Layer(1, 64, 64, 1, 512)
    eager = layer.clone()
    tokens = [layer.token() for _ in range(3)]
    wants = [eager.fused(*token) for token in tokens]
    static_xBC, static_dt = (t.clone() for t in tokens[0])
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compile and allocate the tickets outside the capture
        layer.clone().fused(static_xBC, static_dt)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    capture = layer.clone()  # its caches: the eager steps' starting point (a capture runs nothing)
    with torch.cuda.graph(graph):
        static_y = capture.fused(static_xBC, static_dt)
    for (xBC, dt), want in zip(tokens, wants):
        static_xBC.copy_(xBC)
        static_dt.copy_(dt)
        graph.replay()
        assert torch.equal(static_y, want)
    torch.cuda.synchronize()
    assert torch.equal(capture.window, eager.window) and torch.equal(capture.state, eager.state)
    assert_tickets_at_zero()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        layer.fused(*tokens[0])
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 1 and "_conv_state_update_kernel" in kernels[0], kernels


@pytest.mark.parametrize("batch", [1, 4])
@torch.no_grad()
def test_a_model_decode_step_computes_what_the_two_kernels_did(monkeypatch, batch):
    # Two layers of Mamba2-1.3B's mixer shapes, the second expanded (N 512), bf16: three greedy steps' logits and
    # caches with the one launch equal those with the conv and state-update kernels.
    from statex_hf import StateXMamba2Config, StateXMamba2ForCausalLM

    config = StateXMamba2Config(
        hidden_size=2048, num_heads=64, head_dim=64, state_size=128, n_groups=1, num_hidden_layers=2,
        vocab_size=256, statex_layers=[1], statex_state_size=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = StateXMamba2ForCausalLM(config).to(DEV, torch.bfloat16).eval()
    ids = torch.randint(3, 256, (batch, 9), device=DEV)

    def decode(fused):
        with monkeypatch.context() as m:
            m.setattr(dispatch, "ONE_LAUNCH_CONV_SSD_MAX_ROWS", 64)  # the one launch at every batch here
            if not fused:
                m.setattr(dispatch, "one_launch_conv_ssd", lambda *args, **kwargs: None)  # the two kernels
            out = model(ids[:, :-3], use_cache=True)
            cache = out.cache if "cache" in out else out.cache_params  # `cache` from transformers 5.24 on
            logits = [model(ids[:, i : i + 1], cache=cache, use_cache=True).logits for i in range(6, 9)]
        layers = range(config.num_hidden_layers)
        return logits + [recurrent_state(cache, i) for i in layers] + [conv_state(cache, i) for i in layers]

    # The caches are the two kernels' bit for bit; the logits to rounding: the one launch takes the mixer's gated
    # norm too, whose sum of squares its 4 warps take in another order than the norm kernel's 8.
    got, want = decode(True), decode(False)
    for g, w in zip(got[3:], want[3:], strict=True):
        assert torch.equal(g, w)
    for g, w in zip(got[:3], want[:3], strict=True):
        torch.testing.assert_close(g, w, rtol=0.05, atol=0.05)


def token_with_gate(layer):
    """z, xBC and dt of one token of a Mamba2-1.3B mixer (64 heads of 64): slices of one bf16 in_proj row."""
    row = layer.randn(1, 64 * 64 + layer.conv_dim + 64, scale=0.5).to(torch.bfloat16)
    return row.split([64 * 64, layer.conv_dim, 64], dim=-1)


@pytest.mark.parametrize("N", [128, 512])
@torch.no_grad()
def test_the_gated_norm_in_the_one_launch_is_the_norm_kernels_to_rounding(N):
    # Mamba2-1.3B's mixer: y of the one launch, normalized by the group's last program once every program has stored
    # its y, against the norm kernel on the two kernels' y: within a rounding of bf16 (the sums' order differs).
    from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm

    layer = Layer(1, 64, 64, 1, N)
    other = layer.clone()
    weight = (1 + 0.1 * layer.randn(64 * 64)).to(torch.bfloat16)
    for _ in range(3):
        z, xBC, dt = token_with_gate(layer)
        normed = conv_state_update(xBC, layer.weight, layer.window, layer.state, dt, None, 1, layer.conv_bias, "silu",
                                   layer.D, layer.dt_bias, True, A_log=layer.A_log, norm_gate=z, norm_weight=weight,
                                   norm_eps=1e-5)  # fmt: skip
        want = gated_rmsnorm(other.two_kernels(xBC, dt).reshape(1, -1), z, weight, 1e-5, 64 * 64)
        assert normed.dtype == want.dtype and normed.shape == want.shape
        torch.testing.assert_close(normed, want, rtol=2**-7, atol=1e-3)  # a bf16 ulp
        assert torch.equal(layer.state, other.state) and torch.equal(layer.window, other.window)
    torch.cuda.synchronize()
    assert_tickets_at_zero()


@pytest.mark.parametrize("N", [128, 512])
@torch.no_grad()
def test_out_projs_gated_norm_from_the_one_launchs_partial_sums_is_the_norm_kernels_to_rounding(N):
    # Mamba2-1.3B's mixer with its norm left to out_proj (gate_squares): y is the two kernels' bit for bit, its
    # partial sums add up to the sum of squares, and out_proj's product on them is the norm kernel's then the GEMV's.
    from statex_hf.kernels.linear.gemv import gemv
    from statex_hf.kernels.linear.row_norm import RowNorm
    from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm

    layer = Layer(1, 64, 64, 1, N)
    other = layer.clone()
    weight = (1 + 0.1 * layer.randn(64 * 64)).to(torch.bfloat16)
    w_out = (layer.randn(2048, 64 * 64) / 64).to(torch.bfloat16)
    for _ in range(3):
        z, xBC, dt = token_with_gate(layer)
        y, squares = conv_state_update(xBC, layer.weight, layer.window, layer.state, dt, None, 1, layer.conv_bias,
                                       "silu", layer.D, layer.dt_bias, True, A_log=layer.A_log, norm_gate=z,
                                       gate_squares=True)  # fmt: skip
        want_y = other.two_kernels(xBC, dt).reshape(1, -1)
        assert torch.equal(y.reshape(1, -1), want_y)
        u = want_y.float() * torch.nn.functional.silu(z.float())
        torch.testing.assert_close(squares.sum(), u.pow(2).sum(), rtol=1e-5, atol=0)
        norm = RowNorm(weight, 1e-5, False, gate=z, squares=squares)
        got = gemv(y.reshape(1, -1), w_out, norm=norm)
        want = gemv(gated_rmsnorm(want_y, z, weight, 1e-5, 64 * 64), w_out)
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
        assert torch.equal(layer.state, other.state) and torch.equal(layer.window, other.window)
    torch.cuda.synchronize()
    assert_tickets_at_zero()


@torch.no_grad()
def test_under_pdl_a_captured_step_gives_the_plain_launches_values_on_every_replay():
    # The decode graphs launch with PDL: in_proj's GEMV, the one-launch step on its output (with the gated norm),
    # out_proj's GEMV; each replay equals the same kernels launched one after another without PDL (the tickets too
    # are left at zero).
    from statex_hf.kernels.dependent_launch import dependent_launches
    from statex_hf.kernels.linear.gemv import gemv

    hidden = 2048
    plain = Layer(1, 64, 64, 1, 512)
    width = plain.H * plain.P + plain.conv_dim + plain.H
    w_in = (plain.randn(width, hidden) / hidden**0.5).to(torch.bfloat16)
    w_out = (plain.randn(hidden, plain.H * plain.P) / 64).to(torch.bfloat16)
    graphed = plain.clone()

    norm_weight = (1 + 0.1 * plain.randn(plain.H * plain.P)).to(torch.bfloat16)

    def step(layer, x):  # with the mixer's gated norm in the one launch: y stored by every program, read by the last
        z, xBC, dt = gemv(x, w_in).split([layer.H * layer.P, layer.conv_dim, layer.H], dim=-1)
        normed = conv_state_update(xBC, layer.weight, layer.window, layer.state, dt, None, layer.G, layer.conv_bias,
                                   "silu", layer.D, layer.dt_bias, True, A_log=layer.A_log, norm_gate=z,
                                   norm_weight=norm_weight, norm_eps=1e-5)  # fmt: skip
        return gemv(normed, w_out)

    static_x = plain.randn(1, hidden).to(torch.bfloat16)
    with dependent_launches(torch.device(DEV)):
        step(graphed.clone(), static_x)  # compiles the PDL variants first
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = step(graphed, static_x)
    for replay in range(4):
        x = plain.randn(1, hidden).to(torch.bfloat16)
        want = step(plain, x)
        static_x.copy_(x)
        graph.replay()
        assert torch.equal(static_y, want), f"replay {replay}"
        assert torch.equal(graphed.window, plain.window) and torch.equal(graphed.state, plain.state), f"replay {replay}"
    torch.cuda.synchronize()
    assert_tickets_at_zero()
