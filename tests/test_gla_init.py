"""A freshly initialized GLA with short convolutions must have token mixers that speak.

fla's init (normal(0, 0.02) for the convolutions too) left the mixer output of a 256-wide model at RMS
~1e-6, under the output norm's eps (RMS 1e-3): the norm could not rescale it, and a small model trained
from scratch never learned recall (benchmarks/reproduce_statex.py, MQAR at chance after 2,500 steps).
"""

from __future__ import annotations

import math

import torch
from statex_hf.kernels import dispatch

import statex_hf


def test_short_conv_gla_mixer_output_is_above_the_output_norm_eps(monkeypatch):
    config = statex_hf.StateXGLAConfig(
        vocab_size=1000, hidden_size=256, num_hidden_layers=2, num_heads=4, use_short_conv=True
    )
    torch.manual_seed(0)
    model = statex_hf.StateXGLAForCausalLM(config).eval()
    seen = []
    gla = dispatch.gla

    def spy(*args, **kwargs):
        o, state = gla(*args, **kwargs)
        seen.append(o.float().pow(2).mean().sqrt().item())
        return o, state

    monkeypatch.setattr(dispatch, "gla", spy)
    with torch.no_grad():
        model(input_ids=torch.randint(0, 1000, (2, 128)), use_cache=False)
    assert len(seen) == 2
    # Well above the eps, so the per-head norm actually normalizes (fla's conv init gave ~1e-6).
    assert min(seen) > 2 * math.sqrt(config.norm_eps), seen


def test_short_convs_get_pytorchs_conv_init():
    config = statex_hf.StateXGLAConfig(vocab_size=100, hidden_size=64, num_hidden_layers=1, use_short_conv=True)
    conv = statex_hf.StateXGLAForCausalLM(config).model.layers[0].attn.k_conv1d.weight
    bound = 1 / math.sqrt(config.conv_size)  # nn.Conv1d's default: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert conv.abs().max() <= bound and conv.std() > 0.5 * bound / math.sqrt(3)
