"""The one-token GLA kernel: its launch rule by batch, and every code path it chooses between.

Runs the kernel under ``TRITON_INTERPRET=1`` (set by conftest) on tiny fp32 shapes whose key and
value dimensions are not multiples of the tiles (tails, masked lanes, several tiles a program).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


SM90_STEP_COMPILE = """
import json, sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from statex_hf.kernels.gla.fused_recurrent import fused_recurrent_gla_step_kernel as kernel

pointers = dict(q="*bf16", k="*bf16", v="*bf16", gk="*bf16", o="*bf16", h0="*fp32", ht="*fp32")
pointers |= dict(scale="fp32", gate_scale="fp32", gate_clamp_min="fp32")
compiled = {}
for (H, K, V), BK, stages in (((4, 256, 512), 256, 1), ((1, 1024, 2048), 256, 3)):
    constexprs = dict(H=H, K=K, V=V, BK=BK, BV=16, STAGES=stages, USE_INITIAL_STATE=True, STORE_FINAL_STATE=True,
                      GATE_LOGITS=True, HAS_CLAMP=False, USE_PDL=True, PREFETCH_STATE=K <= BK)
    signature = pointers | dict.fromkeys(constexprs, "constexpr")
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4)).asm["ptx"]
    before, waits, after = ptx.partition("griddepcontrol.wait")
    compiled[f"K{K}"] = dict(waits=bool(waits), early_loads=sum("ld.global" in line for line in before.splitlines()),
                             early_stores="st.global" in before)
print(json.dumps(compiled))
"""


def test_the_step_kernel_compiles_for_sm90_and_reads_only_its_state_before_the_pdl_wait():
    # The interpreter runs a kernel as Python, which lets a name defined in a loop be read after it: Triton's compiler
    # does not (a session's variant of this kernel passed every CPU test and failed to compile on the H100). Compiled
    # for an H100 on this CPU machine (in a process without the interpreter), as the launcher takes it at GLA-1.3B's
    # heads and its StateX layer's: under PDL the one-tile step loads (its state: test_dependent_launch.py names what)
    # before it waits, the pipelined one nothing, and neither stores before it.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run([sys.executable, "-P", "-c", SM90_STEP_COMPILE], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    compiled = json.loads(result.stdout.splitlines()[-1])
    assert set(compiled) == {"K256", "K1024"}
    for name, stats in compiled.items():
        assert stats["waits"] and not stats["early_stores"], (name, stats)
        assert (stats["early_loads"] > 0) == (name == "K256"), (name, stats)
