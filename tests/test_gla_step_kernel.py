"""The one-token GLA kernel: its launch rule by batch, and every code path it chooses between.

Runs the kernel under ``TRITON_INTERPRET=1`` (set by conftest) on tiny fp32 shapes whose key and
value dimensions are not multiples of the tiles (tails, masked lanes, several tiles a program).
"""

from __future__ import annotations

import pytest
import torch
from statex_hf.kernels.gla import fused_recurrent
from statex_hf.kernels.gla.fused_recurrent import StepConfig, fused_recurrent_gla, step_config
from statex_hf.kernels.gla.naive import gla_log_decay, naive_recurrent_gla
from test_gla_kernels import gate_logits, make_inputs

pytestmark = pytest.mark.filterwarnings(
    "ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning"
)

H100_SMS = 132
CPU = torch.device("cpu")
GLA_13B = {"H4": (4, 256, 512), "H1": (1, 1024, 2048)}  # GLA-1.3B's heads and its StateX layer's


@pytest.fixture
def h100_sms(monkeypatch):
    monkeypatch.setattr(fused_recurrent, "num_sms", lambda device: H100_SMS)


@pytest.mark.parametrize("B", [16, 64])
@pytest.mark.parametrize("head", GLA_13B.values(), ids=GLA_13B.keys())
def test_large_batches_keep_64x64_tiles_of_4_warps_unpipelined(h100_sms, head, B):
    assert step_config(B, *head, CPU) == StepConfig(64, 64, 4, stages=1)


def test_a_batch_of_one_walks_gla_13b_states_in_few_large_tiles(h100_sms):
    # 128 programs at both heads (a 16-wide value slice each); the H4 slice in one 256-row tile of 16 warps,
    # the StateX one in four such tiles, pipelined.
    assert step_config(1, *GLA_13B["H4"], CPU) == StepConfig(256, 16, 16)
    assert step_config(1, *GLA_13B["H1"], CPU) == StepConfig(256, 16, 4, stages=3)


def test_small_batch_configs_at_other_shapes_follow_the_same_rule(h100_sms):
    # Small batches: fewer than two programs an SM even with 16-wide slices (GLA-1.3B: B = 1 and 2).
    for B in (1, 2, 4, 8):
        for H, K, V in [*GLA_13B.values(), (2, 4096, 128), (1, 64, 32), (3, 20, 40)]:
            c = step_config(B, H, K, V, CPU)
            if B * H * -(-V // 16) >= 2 * H100_SMS:
                assert c == StepConfig(64, min(64, c.BV), 4), (B, H, K, V, c)
                continue
            assert c.BK <= fused_recurrent.SMALL_BATCH_BK and c.BV == 16, (B, H, K, V, c)
            one_tile = c.BK >= K
            assert c.stages == (1 if one_tile else 3) and 4 <= c.num_warps <= 16, (B, H, K, V, c)
            assert c.num_warps * 32 <= max(128, c.BK * c.BV // 8), (B, H, K, V, c)  # no idle warps on tiny tiles
    assert step_config(2, *GLA_13B["H4"], CPU).num_warps == 16 and step_config(4, *GLA_13B["H4"], CPU).num_warps == 4


# One tile a slice; several, plain or pipelined (the interpreter runs the pipelined loop as a plain one:
# the GPU test compares them); narrow slices.
CONFIGS = [
    StepConfig(64, 16, 4),
    StepConfig(16, 16, 4),
    StepConfig(32, 8, 2),
    StepConfig(16, 16, 4, stages=3),
    StepConfig(32, 8, 2, stages=2),
]
# K = 40 and V = 24: a partial last key tile and masked value lanes at every config above.
STEP_SHAPE = (2, 1, 2, 40, 24)


@pytest.fixture
def forced_config(monkeypatch):
    def force(config: StepConfig):
        monkeypatch.setattr(fused_recurrent, "step_config", lambda *args: config)

    return force


@pytest.mark.parametrize("with_state", [True, False], ids=["state", "no_state"])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_every_step_config_equals_naive(forced_config, config, with_state):
    forced_config(config)
    q, k, v, gk, h0 = make_inputs(*STEP_SHAPE, with_state=with_state)
    with torch.no_grad():
        o, ht = fused_recurrent_gla(q, k, v, gk, None, h0, True)
    o_ref, ht_ref = naive_recurrent_gla(q, k, v, gk, None, h0, True)
    torch.testing.assert_close(o, o_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ht, ht_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("config", CONFIGS[3:], ids=str)
def test_pipelined_tiles_update_the_state_in_place_from_gate_logits_as_plain_ones(forced_config, config):
    # h0 is ht (a decode step's cache): the next tile's loads come before this tile's store, of other rows.
    # Pipelining only moves loads: o and the state are bit for bit those of the same tiles without it.
    B, T, H, K, V = STEP_SHAPE
    q, k, v, _, h0 = make_inputs(*STEP_SHAPE)
    raw = gate_logits(B, T, H, K)
    forced_config(config._replace(stages=1))
    with torch.no_grad():
        o_plain, ht_plain = fused_recurrent_gla(q, k, v, raw, None, h0, True, gate_logit_normalizer=16)
        forced_config(config)
        state = h0.clone()
        o, ht = fused_recurrent_gla(q, k, v, raw, None, state, final_state=state, gate_logit_normalizer=16)
    assert ht is state
    assert torch.equal(o, o_plain) and torch.equal(state, ht_plain)
    o_ref, ht_ref = naive_recurrent_gla(q, k, v, gla_log_decay(raw, 16), None, h0, True)
    torch.testing.assert_close(o, o_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state, ht_ref, atol=1e-4, rtol=1e-4)


def test_the_small_batch_rule_runs_and_equals_naive(h100_sms):
    # Tiny heads at B = 2 under the H100's SM count: the small-batch branch, as the launcher picks it.
    q, k, v, gk, h0 = make_inputs(*STEP_SHAPE)
    assert step_config(2, 2, 40, 24, CPU) == StepConfig(64, 16, 4)
    with torch.no_grad():
        o, ht = fused_recurrent_gla(q, k, v, gk, None, h0, True)
    o_ref, ht_ref = naive_recurrent_gla(q, k, v, gk, None, h0, True)
    torch.testing.assert_close(o, o_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ht, ht_ref, atol=1e-4, rtol=1e-4)


# ----- the output norm in the same launch (issue 20) -----


def norm_inputs(B, H, V, dtype):
    """The swish gate as the mixer passes it: a slice of a wider projection row per sequence, and a weight."""
    row = torch.randn(B, 1, H * V + 5).to(dtype)
    gate = row[..., : H * V].view(B, 1, H, V)
    return gate, (1 + 0.1 * torch.randn(V)).to(dtype)


@pytest.mark.parametrize("chunk", [4096, 8], ids=["one-pass", "chunked"])
@pytest.mark.parametrize("with_weight", [True, False], ids=["weight", "no_weight"])
@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[2], CONFIGS[3]], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_output_norm_in_the_same_launch_is_the_norm_kernel_after_the_step(
    forced_config, monkeypatch, chunk, with_weight, config, dtype
):
    # GLA's output norm, a launch of its own after every layer's step, is taken by each head's last program. The
    # state is the step's bit for bit; the norm is the norm kernel's on the step's o, its sums of squares taken in
    # the same order in one pass (equal here), in chunks otherwise (equal to rounding).
    from statex_hf.kernels import tickets
    from statex_hf.kernels.norm import gated_rmsnorm as norm_module

    monkeypatch.setattr(norm_module, "ONE_PROGRAM_CHUNK", chunk)
    forced_config(config)
    B, T, H, K, V = STEP_SHAPE
    q, k, v, _, h0 = make_inputs(*STEP_SHAPE)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    raw = gate_logits(B, T, H, K, dtype)
    gate, weight = norm_inputs(B, H, V, dtype)
    weight = weight if with_weight else None
    state, apart = h0.clone(), h0.clone()
    with torch.no_grad():
        for _ in range(2):  # the counts are back at zero for the next launch
            normed, ht = fused_recurrent_gla(q, k, v, raw, None, state, final_state=state, gate_logit_normalizer=16,
                                             norm_gate=gate, norm_weight=weight, norm_eps=1e-5)  # fmt: skip
            o, _ = fused_recurrent_gla(q, k, v, raw, None, apart, final_state=apart, gate_logit_normalizer=16)
            want = norm_module.gated_rmsnorm(o, gate, weight, 1e-5, V, norm_before_gate=True)
            assert ht is state and torch.equal(state, apart)
            assert normed.shape == o.shape and normed.dtype == want.dtype == dtype
            if chunk == 4096:
                assert torch.equal(normed, want)
            else:
                torch.testing.assert_close(normed, want)
    for counts in tickets.HELD[CPU]:
        assert not counts.any(), "a launch left a ticket count behind: the next launch would miscount"


def test_a_head_normalized_before_every_program_stored_its_slice_shows(forced_config, monkeypatch):
    # The hazard the tickets guard against is real, and this test sees it: with every head's count starting at its
    # last ticket, each head's first program normalizes an o that the others have not all written.
    from statex_hf.kernels.gla import fused_recurrent as module

    forced_config(CONFIGS[2])  # 3 value slices a head
    B, T, H, K, V = STEP_SHAPE
    slices = -(-V // CONFIGS[2].BV)
    monkeypatch.setattr(module, "zeroed_tickets", lambda device, count: torch.full((count,), slices - 1))
    q, k, v, gk, h0 = make_inputs(*STEP_SHAPE)
    gate, weight = norm_inputs(B, H, V, torch.float32)
    with torch.no_grad():
        normed, _ = fused_recurrent_gla(q, k, v, gk, None, h0, norm_gate=gate, norm_weight=weight)
        o, _ = fused_recurrent_gla(q, k, v, gk, None, h0)
    from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm

    assert not torch.allclose(normed, gated_rmsnorm(o, gate, weight, 1e-6, V, norm_before_gate=True))


def test_the_output_norm_takes_one_token_and_checks_its_gate():
    q, k, v, gk, h0 = make_inputs(2, 2, 2, 40, 24)
    gate, weight = norm_inputs(2, 2, 24, torch.float32)
    with torch.no_grad(), pytest.raises(ValueError, match="one token"):
        fused_recurrent_gla(q, k, v, gk, None, h0, norm_gate=gate.expand(2, 2, 2, 24), norm_weight=weight)
    q, k, v, gk, h0 = make_inputs(*STEP_SHAPE)
    with torch.no_grad(), pytest.raises(ValueError, match=r"norm_gate must be \[2, 1, 2, 24\]"):
        fused_recurrent_gla(q, k, v, gk, None, h0, norm_gate=torch.randn(2, 1, 2, 48)[..., ::2])
    with torch.no_grad(), pytest.raises(ValueError, match=r"norm_weight must be \[24\]"):
        fused_recurrent_gla(q, k, v, gk, None, h0, norm_gate=gate, norm_weight=weight[:20])


# ----- the gate's low-rank up projection in the same launch (issue 20) -----


def low_rank_gate(B, H, K, dtype, bias=True, R=16):
    from statex_hf.kernels.gla.fused_recurrent import LowRankGate

    down = torch.randn(B, 1, R + 3).to(dtype)[..., :R]  # a slice of the grouped GEMV's row
    weight = (torch.randn(H * K, R) / R**0.5).to(dtype)
    return LowRankGate(down, weight, (0.5 * torch.randn(H * K)).to(dtype) if bias else None)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[2], CONFIGS[3]], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_low_rank_gate_is_its_projection_then_the_step(forced_config, config, dtype, bias):
    # GLA's gate is two products, 2048 -> 16 -> key_dim: the second one, a launch of its own before the step, is taken
    # by the step as it loads each key tile. Against the projection stored (fp32 sums, one rounding) then the step.
    forced_config(config)
    B, T, H, K, V = STEP_SHAPE
    q, k, v, _, h0 = make_inputs(*STEP_SHAPE)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    gate = low_rank_gate(B, H, K, dtype, bias)
    projected = torch.nn.functional.linear(
        gate.down.float(), gate.weight.float(), None if gate.bias is None else gate.bias.float()
    ).to(dtype)
    state, apart = h0.clone(), h0.clone()
    with torch.no_grad():
        o, _ = fused_recurrent_gla(q, k, v, gate, None, state, final_state=state, gate_logit_normalizer=16)
        want, _ = fused_recurrent_gla(q, k, v, projected.view(B, T, H, K), None, apart, final_state=apart,
                                      gate_logit_normalizer=16)  # fmt: skip
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(o, want, **tol)
    torch.testing.assert_close(state, apart, **tol)


def test_a_low_rank_gate_with_the_output_norm_is_both_in_one_launch(forced_config):
    forced_config(CONFIGS[2])
    B, T, H, K, V = STEP_SHAPE
    q, k, v, _, h0 = make_inputs(*STEP_SHAPE)
    gate = low_rank_gate(B, H, K, torch.float32)
    norm_gate, weight = norm_inputs(B, H, V, torch.float32)
    projected = torch.nn.functional.linear(gate.down, gate.weight, gate.bias).view(B, T, H, K)
    with torch.no_grad():
        both, _ = fused_recurrent_gla(q, k, v, gate, None, h0, gate_logit_normalizer=16, norm_gate=norm_gate,
                                      norm_weight=weight)  # fmt: skip
        o, _ = fused_recurrent_gla(q, k, v, projected, None, h0, gate_logit_normalizer=16)
    from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm

    want = gated_rmsnorm(o, norm_gate, weight, 1e-6, V, norm_before_gate=True)
    torch.testing.assert_close(both, want, atol=1e-5, rtol=1e-5)


def test_a_low_rank_gate_takes_one_token_and_checks_its_shapes():
    from statex_hf.kernels.gla.fused_recurrent import LowRankGate

    B, T, H, K, V = STEP_SHAPE
    q, k, v, _, h0 = make_inputs(*STEP_SHAPE)
    gate = low_rank_gate(B, H, K, torch.float32)
    with torch.no_grad():
        with pytest.raises(ValueError, match="one token"):
            q2, k2, v2, _, _ = make_inputs(B, 2, H, K, V)
            fused_recurrent_gla(q2, k2, v2, gate, None, h0)
        for bad in (
            gate._replace(down=torch.randn(B, 1, 12)),  # a rank that is not a power of two
            gate._replace(weight=gate.weight[: H * K - 1]),
            gate._replace(weight=gate.weight.to(torch.bfloat16)),
            gate._replace(bias=gate.bias[:3]),
        ):
            with pytest.raises(ValueError, match=r"LowRankGate needs down \[2, 1, R\]"):
                fused_recurrent_gla(q, k, v, LowRankGate(*bad), None, h0)


SM90_STEP_COMPILE = """
import json, re, sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from statex_hf.kernels.gla.fused_recurrent import fused_recurrent_gla_step_kernel as kernel
from statex_hf.kernels.norm.gated_rmsnorm import one_program_chunks

pointers = dict(q="*bf16", k="*bf16", v="*bf16", gk="*bf16", o="*bf16", h0="*fp32", ht="*fp32")
pointers |= dict(scale="fp32", gate_scale="fp32", gate_clamp_min="fp32", tickets="*i32", norm_gate="*bf16",
                 norm_w="*bf16", normed="*bf16", stride_gate_n="i32", norm_eps="fp32", gk_w="*bf16", gk_b="*bf16",
                 stride_gk_n="i32")
compiled = {}
for (H, K, V), BK, stages in (((4, 256, 512), 256, 1), ((1, 1024, 2048), 256, 3)):
    for norm, rank in ((False, 0), (True, 0), (False, 16), (True, 16)):
        BS, NCHUNK = one_program_chunks(V)
        constexprs = dict(H=H, K=K, V=V, BK=BK, BV=16, STAGES=stages, USE_INITIAL_STATE=True, STORE_FINAL_STATE=True,
                          GATE_LOGITS=True, HAS_CLAMP=False, USE_PDL=True, PREFETCH_STATE=K <= BK, GATED_NORM=norm,
                          HAS_NORM_WEIGHT=norm, NORM_BS=BS, NORM_NCHUNK=NCHUNK, GATE_RANK=rank, GATE_BIAS=rank > 0)
        signature = pointers | dict.fromkeys(constexprs, "constexpr")
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4)).asm["ptx"]
        before, waits, after = ptx.partition("griddepcontrol.wait")
        compiled[f"K{K}-norm{norm}-rank{rank}"] = dict(
            waits=bool(waits), atomics=len(re.findall(r"(?m)^\\s*(@!?%p\\d+\\s+)?(atom|red)\\.", after)),
            early_loads=sum("ld.global" in line for line in before.splitlines()),
            early_stores="st.global" in before,
        )
print(json.dumps(compiled))
"""


def test_the_step_kernel_compiles_for_sm90_with_its_gate_and_norm():
    # The interpreter runs a kernel as Python, which lets a name defined in a loop be read after it: Triton's compiler
    # does not. Compiled for an H100 on this CPU machine (in a process without the interpreter), each variant the
    # launcher takes: GLA-1.3B's heads (one key tile, loaded before the PDL wait) and its StateX layer's (pipelined
    # tiles), with and without the output norm (a ticket: atomics) and the low-rank gate. Under PDL the only loads
    # before the wait are the one tile's state, and nothing is stored before it.
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run([sys.executable, "-P", "-c", SM90_STEP_COMPILE], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    compiled = json.loads(result.stdout.splitlines()[-1])
    assert len(compiled) == 8
    for name, stats in compiled.items():
        assert stats["waits"] and not stats["early_stores"], (name, stats)
        assert (stats["atomics"] > 0) == ("normTrue" in name), (name, stats)
        assert (stats["early_loads"] > 0) == name.startswith("K256"), (name, stats)
