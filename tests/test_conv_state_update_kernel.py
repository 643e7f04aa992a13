"""A Mamba2 decode step in one launch (``kernels/ssd/conv_state_update.py``, issue 20) == the conv update kernel then
the state-update kernel, bit for bit, under the Triton interpreter (set in conftest): y, the conv window and the
state, over several steps that continue both caches, whatever order the programs run in;
``dispatch.one_launch_conv_ssd`` takes it only where the two kernels would run; a Mamba2 model's step launches it
in place of the two and computes what it computed with them.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from launched_ops import LaunchedOps
from statex_hf.kernels import dispatch, launch
from statex_hf.kernels import tickets as tickets_module
from statex_hf.kernels.conv.causal_conv1d_update import causal_conv1d_update
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.norm import gated_rmsnorm as gated_rmsnorm_module
from statex_hf.kernels.ssd import conv_state_update as fused_module
from statex_hf.kernels.ssd.conv_state_update import conv_state_update
from statex_hf.kernels.ssd.state_update import ssd_state_update

H, P, K = 4, 8, 4
# The same tiles for both paths (the state update's sums are the fused kernel's only on the same tiles): several P
# tiles per head and N tiles per state, and the window writes of a group in several blocks.
SMALL_TILES = {"BP": 4, "BN": 8, "BW": 8}
# Several N tiles of the state, loaded one ahead, but the group's B and C windows in one block (read by every program
# before its ticket, written from those reads by the last).
SMALL_STATE_TILES = {"BP": 4, "BN": 8, "BW": 128}


class Step:
    """One layer's caches and parameters; ``run`` takes a step through the fused kernel or the two kernels."""

    def __init__(self, b, G, N, dtype=torch.float32, window_dtype=None, conv_bias=True, D=True, dt_bias=True,
                 dt_limit=(0.0, 4.0), softplus=True, A_log=True):  # fmt: skip
        self.b, self.G, self.N, self.dtype = b, G, N, dtype
        self.conv_dim = H * P + 2 * G * N
        self.weight = (torch.randn(self.conv_dim, K) * 0.5).to(dtype)
        self.conv_bias = (torch.randn(self.conv_dim) * 0.1).to(dtype) if conv_bias else None
        self.window = torch.randn(b, self.conv_dim, K - 1).to(window_dtype or dtype)
        self.state = torch.randn(b, H, P, N)
        self.D = torch.randn(H).to(dtype) if D else None
        self.dt_bias = (torch.randn(H) * 0.5).to(dtype) if dt_bias else None
        self.dt_limit = dt_limit or (0.0, float("inf"))
        self.softplus = softplus
        self.A_log = (torch.rand(H) * 2).to(dtype) if A_log else None
        self.A = None if A_log else -torch.rand(H) * 2

    def copy(self):
        other = object.__new__(Step)
        other.__dict__ = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()}
        return other

    def token(self):
        """xBC and dt as Mamba2 passes them: slices of one in_proj row per sequence (strided over the batch)."""
        row = torch.randn(self.b, H * P + self.conv_dim + H + 3).to(self.dtype)
        _, xBC, dt, _ = row.split([H * P, self.conv_dim, H, 3], dim=-1)
        return xBC, dt

    def fused(self, xBC, dt):
        caches = (self.window, self.state)
        return conv_state_update(xBC, self.weight, *caches, dt, self.A, self.G, self.conv_bias, "silu", self.D,
                                 self.dt_bias, self.softplus, self.dt_limit, A_log=self.A_log)  # fmt: skip

    def two_kernels(self, xBC, dt):
        xBC = causal_conv1d_update(xBC[:, None], self.weight, self.window, self.conv_bias, "silu")[:, 0]
        x, B, C = xBC.split([H * P, self.G * self.N, self.G * self.N], dim=-1)
        B, C = B.view(self.b, self.G, self.N), C.view(self.b, self.G, self.N)
        return ssd_state_update(self.state, x.view(self.b, H, P), dt, self.A, B, C, self.D, self.dt_bias,
                                self.softplus, self.dt_limit, A_log=self.A_log)  # fmt: skip


def assert_steps_equal(one, two, steps=3):
    """``steps`` tokens through ``one`` (fused) and ``two`` (two kernels) from equal caches: equal bits throughout."""
    for _ in range(steps):
        xBC, dt = one.token()
        y_fused = one.fused(xBC, dt)
        y_two = two.two_kernels(xBC, dt)
        assert y_fused.dtype == y_two.dtype == one.dtype and y_fused.shape == (one.b, H, P)
        assert torch.equal(y_fused, y_two)
        assert torch.equal(one.window, two.window)
        assert torch.equal(one.state, two.state)
    for tickets in tickets_module.HELD[torch.device("cpu")]:
        assert not tickets.any(), "a launch left a ticket count behind: the next launch would miscount"


@pytest.fixture(params=["default-tiles", "small-tiles", "small-state-tiles"])
def tiles(request, monkeypatch):
    # The default tiles take the state and the windows in one N tile each (at these N); the small ones in several.
    if request.param != "default-tiles":
        chosen = SMALL_TILES if request.param == "small-tiles" else SMALL_STATE_TILES
        monkeypatch.setitem(launch.OVERRIDES, "ssd.conv_state_update", LaunchConfig.of(4, 1, **chosen))
        monkeypatch.setitem(launch.OVERRIDES, "ssd.state_update", LaunchConfig.of(4, 1, BP=4, BN=8))


# N20: tails. Three sequences of two groups run at N 32 (four N tiles of the small tiles), not 64: the interpreter
# pays per program, and one sequence at 64 takes the eight tiles.
SHAPES = [(1, 1, 16), (3, 1, 16), (1, 2, 64), (3, 2, 32), (1, 1, 20), (3, 1, 20)]


@pytest.mark.usefixtures("tiles")
@pytest.mark.parametrize("b, G, N", SHAPES, ids=[f"G{G}-N{N}-{b}" for b, G, N in SHAPES])
def test_the_one_launch_is_the_conv_and_state_update_kernels_bit_for_bit(b, G, N):
    step = Step(b, G, N)
    assert_steps_equal(step, step.copy())


@pytest.mark.parametrize(
    "options",
    [
        dict(D=False, dt_bias=False, dt_limit=None),
        dict(softplus=False, conv_bias=False),
        dict(A_log=False),
        dict(dtype=torch.bfloat16),
        dict(dtype=torch.bfloat16, window_dtype=torch.float32),
    ],
    ids=["no-D-bias-limit", "no-softplus-no-conv-bias", "A-given", "bf16", "bf16-fp32-window"],
)
def test_each_option_is_the_two_kernels_bit_for_bit(options):
    step = Step(3, 2, 16, **options)
    assert_steps_equal(step, step.copy(), steps=2)


def test_no_activation_is_the_two_kernels_bit_for_bit():
    step = Step(2, 1, 16)
    two = step.copy()
    for _ in range(2):
        xBC, dt = step.token()
        y_fused = conv_state_update(xBC, step.weight, step.window, step.state, dt, None, 1, step.conv_bias, None,
                                    step.D, step.dt_bias, True, step.dt_limit, A_log=step.A_log)  # fmt: skip
        xc = causal_conv1d_update(xBC[:, None], two.weight, two.window, two.conv_bias, None)[:, 0]
        x, B, C = xc.split([H * P, 16, 16], dim=-1)
        y_two = ssd_state_update(two.state, x.view(2, H, P), dt, None, B.view(2, 1, 16), C.view(2, 1, 16), two.D,
                                 two.dt_bias, True, two.dt_limit, A_log=two.A_log)  # fmt: skip
        assert torch.equal(y_fused, y_two) and torch.equal(step.window, two.window)
        assert torch.equal(step.state, two.state)


@pytest.fixture
def program_order(monkeypatch):
    """Runs the interpreter's programs in another order: ``program_order(order)``, ``order`` taking each grid
    dimension's indices and returning them rearranged (the interpreter runs them in grid order)."""
    from triton.runtime import interpreter

    grid_loop = interpreter.GridExecutor.__call__.__code__

    def set_order(order):
        def ordered_range(*args):
            indices = list(range(*args))
            return order(indices) if sys._getframe(1).f_code is grid_loop else indices

        monkeypatch.setattr(interpreter, "range", ordered_range, raising=False)

    return set_order


@pytest.mark.usefixtures("tiles")
@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_the_result_does_not_depend_on_the_order_the_programs_run_in(program_order, order):
    # Every program of a group reads the group's B and C windows, which are overwritten in place: were they
    # written by a fixed program of the group (say its first), a program running after it would read the new
    # window. The last program to take a ticket writes them, whichever it is.
    shuffle = random.Random(0).sample
    program_order(lambda indices: indices[::-1] if order == "reversed" else shuffle(indices, len(indices)))
    step = Step(3, 2, 16)
    assert_steps_equal(step, step.copy())


@pytest.mark.parametrize("tiles", [SMALL_TILES, SMALL_STATE_TILES], ids=["windows-in-blocks", "windows-at-once"])
def test_a_window_written_before_every_program_read_it_shows(monkeypatch, tiles):
    # The hazard the tickets guard against is real, and these tests see it: with every group's count starting
    # at its last ticket, a group's first program writes the B and C windows before the others read them.
    step = Step(1, 1, 16)
    monkeypatch.setitem(launch.OVERRIDES, "ssd.conv_state_update", LaunchConfig.of(4, 1, **tiles))
    monkeypatch.setitem(launch.OVERRIDES, "ssd.state_update", LaunchConfig.of(4, 1, BP=4, BN=8))  # the same sums
    readers = H * (P // SMALL_TILES["BP"])
    monkeypatch.setattr(fused_module, "zeroed_tickets", lambda device, count: torch.full((count,), readers - 1))
    two = step.copy()
    xBC, dt = step.token()
    y_fused = step.fused(xBC, dt)
    y_two = two.two_kernels(xBC, dt)
    assert torch.equal(step.window, two.window), "the windows themselves are written right, once"
    assert not torch.equal(y_fused, y_two)


def test_bad_input_is_one_clear_error():
    step = Step(2, 1, 16)
    xBC, dt = step.token()
    call = dict(xBC=xBC, conv_weight=step.weight, conv_state=step.window, state=step.state, dt=dt, A=None,
                n_groups=1, A_log=step.A_log)  # fmt: skip
    cases = [
        (dict(state=step.state.double()), "contiguous fp32"),
        (dict(state=step.state.transpose(2, 3)), "contiguous fp32"),
        (dict(n_groups=3), "3 groups of B/C must divide the 4 heads"),
        (dict(xBC=xBC[:, 1:]), r"xBC must be \[2, 64\]"),
        (dict(xBC=torch.randn(64, 2).t()), "unit-stride"),
        (dict(conv_state=step.window[:, :, 1:]), r"conv state must be \(2, 64, 3\)"),
        (dict(A=-torch.ones(H)), "exactly one of A and A_log"),
        (dict(activation="relu"), "unsupported activation 'relu'"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            conv_state_update(**{**call, **change})


def test_small_tiles_on_a_gpu_the_tuned_config_does_not_fit(monkeypatch):
    from launch_fakes import on_small_gpu

    monkeypatch.setattr(launch, "_REPLACED", {})
    fakes = on_small_gpu(monkeypatch, fused_module, "_conv_state_update_kernel")
    step = Step(2, 1, 64)
    two = step.copy()
    xBC, dt = step.token()
    with pytest.warns(UserWarning, match="conv_state_update.*does not fit"):
        y = step.fused(xBC, dt)
    assert fakes["_conv_state_update_kernel"].launches[-1]["BN"] == 32
    torch.testing.assert_close(y, two.two_kernels(xBC, dt), rtol=1e-5, atol=1e-5)  # other tiles: other sums
    assert torch.equal(step.window, two.window)
    torch.testing.assert_close(step.state, two.state, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("gpu", ["", "NVIDIA H100 80GB HBM3", "NVIDIA H200"])
@pytest.mark.parametrize("P, N", [(64, 128), (64, 512), (8, 16)])
def test_the_one_launch_takes_the_state_updates_tiles_on_every_gpu(monkeypatch, gpu, P, N):
    # The same state tiles, warps and stages: its state sums are then the state update's (bit for bit), on any GPU
    # a table has an entry for.
    from statex_hf.kernels.ssd import configs

    monkeypatch.setattr(launch, "device_name", lambda device: gpu)
    fused = configs.ssd_config("conv_state_update", 0, P, N)
    alone = configs.ssd_config("state_update", 0, P, N)
    assert (fused.BP, fused.BN, fused.num_warps, fused.num_stages) == (
        alone.BP, alone.BN, alone.num_warps, alone.num_stages,
    )  # fmt: skip
    assert fused.BW == min(N, 128)


@pytest.mark.parametrize("P, N", [(64, 128), (64, 512), (8, 16)])
def test_the_one_launch_keeps_the_state_updates_n_tile_with_other_p_tiles(monkeypatch, P, N):
    # The state update doubles its N tile for narrow P tiles; the one launch, whatever its own P tile, sums over N on
    # the state update's N tiles (its y is the two kernels' only on those).
    from statex_hf.kernels.ssd import configs

    for BP in (4, 8, 32):
        entry = configs.TABLES["default"]["conv_state_update"].with_(BP=BP)
        monkeypatch.setitem(configs.TABLES["default"], "conv_state_update", entry)
        assert configs.ssd_config("conv_state_update", 0, P, N).BN == configs.ssd_config("state_update", 0, P, N).BN


def test_the_tickets_are_allocated_once_and_a_larger_batch_keeps_the_smaller_buffer_alive():
    # A captured CUDA graph replays the buffer it was captured with: a larger batch may not free it.
    device = torch.device("meta")
    try:
        first = tickets_module.zeroed_tickets(device, 3)
        assert tickets_module.zeroed_tickets(device, 1024) is first and first.numel() == 1024
        larger = tickets_module.zeroed_tickets(device, 1025)
        held = tickets_module.HELD[device]
        assert larger.numel() == 2048 and len(held) == 2 and held[0] is first and held[1] is larger
        assert tickets_module.zeroed_tickets(device, 5) is larger
    finally:
        tickets_module.HELD.pop(device, None)


# ----- the mixer's gated norm in the same launch -----


def tokens_with_gate(step):
    """z, xBC and dt as Mamba2 passes them: slices of one in_proj row per sequence."""
    row = torch.randn(step.b, H * P + step.conv_dim + H + 3).to(step.dtype)
    z, xBC, dt, _ = row.split([H * P, step.conv_dim, H, 3], dim=-1)
    return z, xBC, dt


@pytest.mark.usefixtures("tiles")
@pytest.mark.parametrize("chunk", [4096, 8], ids=["one-pass", "chunked"])  # a group of 32 / G channels
@pytest.mark.parametrize("G", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_gated_norm_in_the_same_launch_is_the_norm_after_the_two_kernels(monkeypatch, chunk, G, dtype):
    # Issue 20: the mixer's gated norm, a launch of its own after every layer's step, is taken by the group's last
    # program. The caches are the two kernels' bit for bit still; the norm is the norm kernel's, its sums of squares
    # taken in the same order in one pass (equal here), in chunks otherwise (equal to rounding).
    from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm

    monkeypatch.setattr(gated_rmsnorm_module, "ONE_PROGRAM_CHUNK", chunk)
    step = Step(3, G, 16, dtype=dtype)
    two = step.copy()
    weight = (1 + 0.1 * torch.randn(H * P)).to(dtype)
    for _ in range(2):  # the second step starts from the caches the first wrote
        z, xBC, dt = tokens_with_gate(step)
        normed = conv_state_update(xBC, step.weight, step.window, step.state, dt, None, G, step.conv_bias, "silu",
                                   step.D, step.dt_bias, True, step.dt_limit, A_log=step.A_log, norm_gate=z,
                                   norm_weight=weight, norm_eps=1e-5)  # fmt: skip
        y = two.two_kernels(xBC, dt)
        want = gated_rmsnorm(y.reshape(3, H * P), z, weight, 1e-5, H * P // G)
        assert normed.shape == (3, H * P) and normed.dtype == want.dtype == dtype
        if chunk == 4096:
            assert torch.equal(normed, want)
        else:
            torch.testing.assert_close(normed, want)
        assert torch.equal(step.window, two.window) and torch.equal(step.state, two.state)
    for tickets in tickets_module.HELD[torch.device("cpu")]:
        assert not tickets.any()


def test_the_gated_norm_needs_its_gate_and_weight_of_the_right_shapes():
    step = Step(2, 1, 16)
    z, xBC, dt = tokens_with_gate(step)
    args = (xBC, step.weight, step.window, step.state, dt, None, 1)
    with pytest.raises(ValueError, match="takes both norm_gate"):
        conv_state_update(*args, A_log=step.A_log, norm_gate=z)
    # With the norm left to the caller (gate_squares): the gate and no weight.
    with pytest.raises(ValueError, match="gate_squares takes norm_gate"):
        conv_state_update(*args, A_log=step.A_log, gate_squares=True)
    with pytest.raises(ValueError, match="gate_squares takes norm_gate"):
        conv_state_update(*args, A_log=step.A_log, norm_gate=z, norm_weight=torch.ones(H * P), gate_squares=True)
    with pytest.raises(ValueError, match=r"needs z \[2, 32\]"):
        conv_state_update(*args, A_log=step.A_log, norm_gate=z[:, :16], norm_weight=torch.ones(H * P))


# ----- dispatch: the one launch where the two kernels would run, nowhere else -----


def dispatch_args(step, xBC, dt):
    return (xBC[:, None], step.weight, step.conv_bias, "silu", step.window, dt[:, None], step.A_log, step.G,
            step.state, step.D, step.dt_bias, True, step.dt_limit)  # fmt: skip


def test_dispatch_runs_a_no_grad_cuda_step_in_one_launch_on_the_caches_themselves(monkeypatch, on_cuda_dispatch):
    monkeypatch.setattr(dispatch, "ONE_LAUNCH_CONV_SSD_MAX_ROWS", 2)
    step = Step(2, 1, 16)
    two = step.copy()
    window, state = step.window, step.state
    xBC, dt = step.token()
    with torch.no_grad(), LaunchedOps(monkeypatch) as seen:
        y = dispatch.one_launch_conv_ssd(*dispatch_args(step, xBC, dt))
    assert seen.triton == ["ssd.conv_state_update"] and seen.ops == [], (seen.triton, seen.ops)
    assert y.shape == (2, 1, H, P) and torch.equal(y[:, 0], two.two_kernels(xBC, dt))
    assert step.window is window and step.state is state
    assert torch.equal(window, two.window) and torch.equal(state, two.state)


@pytest.mark.parametrize("case", ["cpu", "xBC-grad", "D-grad", "dt_bias-grad", "A_log-grad", "two-tokens",
                                  "bf16-state", "strided-state", "strided-channels", "strided-weight", "relu",
                                  "compiling", "more-rows"])  # fmt: skip
def test_dispatch_leaves_everything_else_to_the_two_calls(monkeypatch, case):
    # A step that trains D or dt_bias keeps its gradient: the kernel has no backward (the rule of dispatch.ssd).
    # A conv weight not contiguous would be copied by the kernel just before the one launch, which under PDL reads
    # it before waiting for its predecessor (kernels/dependent_launch.py).
    if case != "cpu":
        monkeypatch.setattr(dispatch, "use_triton", lambda *tensors: True)
    monkeypatch.setattr(dispatch, "ONE_LAUNCH_CONV_SSD_MAX_ROWS", 1 if case == "more-rows" else 64)
    step = Step(2, 1, 16)
    xBC, dt = step.token()
    args = list(dispatch_args(step, xBC, dt))
    if case.endswith("-grad"):
        index = {"xBC": 0, "D": 9, "dt_bias": 10, "A_log": 6}[case.split("-")[0]]
        args[index] = args[index].clone().requires_grad_()
    elif case == "two-tokens":
        args[0], args[5] = torch.cat([args[0]] * 2, dim=1), torch.cat([args[5]] * 2, dim=1)
    elif case == "bf16-state":
        args[8] = step.state.bfloat16()
    elif case == "strided-state":
        args[8] = step.state.transpose(2, 3).contiguous().transpose(2, 3)
    elif case == "strided-weight":
        args[1] = step.weight.t().contiguous().t()
    elif case == "strided-channels":
        args[0] = torch.randn(2, 1, 2 * step.conv_dim)[..., ::2]
    elif case == "relu":
        args[3] = "relu"
    elif case == "compiling":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    before = [step.window.clone(), step.state.clone()]
    with LaunchedOps(monkeypatch) as seen:
        assert dispatch.one_launch_conv_ssd(*args) is None
    assert seen.triton == [] and seen.ops == []
    assert torch.equal(step.window, before[0]) and torch.equal(step.state, before[1])


# ----- the model: one launch per layer in place of two, the same step -----


def decode(model, ids, steps, monkeypatch, fused=True, attention_mask=None, one_launch_rows=64):
    """Logits and caches of ``steps`` one-token steps (the kernels under the interpreter) after a prefill of
    ``ids`` (on torch), and the Triton launches of the last step."""
    from tiny_models import returned_cache

    with torch.no_grad(), monkeypatch.context() as m:
        m.setattr(dispatch, "use_triton", lambda *tensors: False)
        mask = attention_mask
        cache = returned_cache(model(ids, attention_mask=mask, use_cache=True))
        m.setattr(dispatch, "use_triton", lambda *tensors: True)
        m.setattr(dispatch, "ONE_LAUNCH_CONV_SSD_MAX_ROWS", one_launch_rows)
        if not fused:
            m.setattr(dispatch, "one_launch_conv_ssd", lambda *args, **kwargs: None)
        outs = []
        for token in steps.unbind(1):
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            with LaunchedOps(m) as seen:
                logits = model(token[:, None], attention_mask=mask, cache=cache, use_cache=True).logits
            outs.append(logits)
    layers = model.config.num_hidden_layers
    outs += [cache.layers[i].recurrent_states[0] for i in range(layers)]
    outs += [cache.layers[i].conv_states[0] for i in range(layers)]
    return outs, seen.triton


@pytest.mark.usefixtures("narrow_row_tiles")
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_mamba2_step_launches_one_kernel_for_conv_and_state_and_computes_what_the_two_did(monkeypatch, batch, dtype):
    # Issue 20: a layer's step launched the conv update, the state update and the gated norm; now one kernel.
    from tiny_models import VOCAB, build

    model = build("mamba2", statex_layers=[1], n_groups=2).to(dtype)  # layer 1 expanded (N 16), G = 2
    ids, steps = torch.randint(3, VOCAB, (batch, 5)), torch.randint(3, VOCAB, (batch, 3))
    got, launched = decode(model, ids, steps, monkeypatch)
    want, launched_before = decode(model, ids, steps, monkeypatch, fused=False)
    layers = model.config.num_hidden_layers
    assert launched.count("ssd.conv_state_update") == layers and "conv.update" not in launched, launched
    assert launched_before.count("conv.update") == launched_before.count("ssd.state_update") == layers
    # The gated norm of each layer is in its one launch too (bit for bit here, where the two sum in one order).
    assert launched_before.count("norm.fwd") - launched.count("norm.fwd") == layers, (launched, launched_before)
    assert len(launched) == len(launched_before) - 2 * layers
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and torch.equal(g, w)
    if batch > dispatch.ONE_LAUNCH_CONV_SSD_MAX_ROWS:  # more sequences than the one launch takes by default
        _, launched = decode(model, ids, steps, monkeypatch, one_launch_rows=dispatch.ONE_LAUNCH_CONV_SSD_MAX_ROWS)
        assert launched == launched_before, launched


def test_a_hooked_gated_norm_is_called_as_a_module_and_the_rest_of_the_step_stays_one_launch(monkeypatch):
    # A hook on a mixer's norm (peft, a user's probe) sees every call: that layer's norm is not taken into the launch.
    from tiny_models import VOCAB, build

    model = build("mamba2", statex_layers=[1])
    ids, steps = torch.randint(3, VOCAB, (1, 5)), torch.randint(3, VOCAB, (1, 2))
    _, launched_unhooked = decode(model, ids, steps, monkeypatch)
    seen = []
    model.backbone.layers[0].mixer.norm.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    got, launched = decode(model, ids, steps, monkeypatch)
    want, _ = decode(model, ids, steps, monkeypatch, fused=False)
    assert seen[-2:] == [(1, 1, model.config.num_heads * model.config.head_dim)] * 2  # the two steps
    assert launched.count("ssd.conv_state_update") == model.config.num_hidden_layers
    assert launched.count("norm.fwd") == launched_unhooked.count("norm.fwd") + 1, launched
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


def test_a_left_padded_batch_steps_in_one_launch_and_computes_what_the_two_did(monkeypatch):
    # generate's mask after a left-padded prompt: the new tokens are no padding, so the step takes the one launch.
    from tiny_models import VOCAB, build

    model = build("mamba2", statex_layers=[1])
    ids, steps = torch.randint(3, VOCAB, (2, 5)), torch.randint(3, VOCAB, (2, 2))
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, :2] = 0
    got, launched = decode(model, ids, steps, monkeypatch, attention_mask=mask)
    want, _ = decode(model, ids, steps, monkeypatch, fused=False, attention_mask=mask)
    assert launched.count("ssd.conv_state_update") == model.config.num_hidden_layers, launched
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


@pytest.mark.usefixtures("tiles")
@pytest.mark.parametrize("G", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gate_squares_leaves_y_and_each_programs_share_of_its_groups_sum_of_squares(G, dtype):
    # Issue 20: with the gated norm left to out_proj's product, the launch returns y as the two kernels compute it
    # and each program's sum of (y * silu(z))^2 over its channels (the norm's u of y as stored), which add up to the
    # group's.
    step = Step(3, G, 16, dtype=dtype)
    two = step.copy()
    config = launch.OVERRIDES.get("ssd.conv_state_update")
    BP = config.BP if config is not None else P  # the default tiles take a head's P rows in one program
    for _ in range(2):
        z, xBC, dt = tokens_with_gate(step)
        y, squares = conv_state_update(xBC, step.weight, step.window, step.state, dt, None, G, step.conv_bias, "silu",
                                       step.D, step.dt_bias, True, step.dt_limit, A_log=step.A_log, norm_gate=z,
                                       gate_squares=True)  # fmt: skip
        want_y = two.two_kernels(xBC, dt)
        assert torch.equal(y, want_y)
        assert torch.equal(step.window, two.window) and torch.equal(step.state, two.state)
        u = want_y.float().reshape(3, H * P) * F.silu(z.float())
        per_program = u.pow(2).reshape(3, G, H // G * P // BP, BP).sum(-1)
        assert squares.shape == per_program.shape and squares.dtype == torch.float32
        torch.testing.assert_close(squares, per_program, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(squares.sum(-1), u.pow(2).reshape(3, G, -1).sum(-1), rtol=1e-5, atol=1e-6)
    for tickets in tickets_module.HELD[torch.device("cpu")]:
        assert not tickets.any()


SM90_ONE_LAUNCH_COMPILE = """
import inspect, json, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from statex_hf.kernels.ssd.conv_state_update import _conv_state_update_kernel as kernel

pointers = dict(xBC="*bf16", conv_w="*bf16", conv_bias="*bf16", conv_state="*bf16", state="*fp32", dt="*bf16",
                A="*fp32", D="*fp32", dt_bias="*fp32", y="*bf16", tickets="*i32", z="*bf16", norm_w="*bf16",
                normed="*bf16", squares="*fp32", norm_eps="fp32", dt_min="fp32", dt_max="fp32")
compiled = {}
for mode in ("norm in the launch", "gate squares"):
    constexprs = dict(K=4, KP=4, BP=16, BN=128, BW=128, WINDOWS_AT_ONCE=True, HAS_CONV_BIAS=True, SILU=True, HAS_D=True,
                      HAS_BIAS=True, SOFTPLUS=True, A_IS_LOG=True, USE_PDL=True, NORM_BS=4096, NORM_NCHUNK=1,
                      GATED_NORM=mode == "norm in the launch", GATE_SQUARES=mode == "gate squares")
    names = inspect.signature(kernel.fn).parameters
    signature = {n: "constexpr" if n in constexprs else pointers.get(n, "i32") for n in names}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=2)).asm["ptx"]
    before, waits, _ = ptx.partition("griddepcontrol.wait")
    compiled[mode] = dict(waits=bool(waits), early_stores="st.global" in before)
print(json.dumps(compiled))
"""


def test_the_one_launch_compiles_for_sm90_with_its_norm_or_its_partial_sums_and_stores_nothing_before_the_wait():
    # The interpreter runs a kernel as Python and accepts what Triton's compiler may not: Mamba2-1.3B's one launch,
    # with the gated norm in the launch and with the partial sums left for out_proj (gate_squares), compiled for an
    # H100 on this CPU machine (a process without the interpreter). Under PDL both wait, and store nothing before.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run([sys.executable, "-P", "-c", SM90_ONE_LAUNCH_COMPILE], capture_output=True, text=True,
                            env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    compiled = json.loads(result.stdout.splitlines()[-1])
    assert compiled == dict.fromkeys(("norm in the launch", "gate squares"), {"waits": True, "early_stores": False})
