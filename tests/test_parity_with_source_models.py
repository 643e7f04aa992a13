"""With no layer expanded, StateX models reproduce the code they came from, on the same weights.

References nobody here wrote: transformers' ``Mamba2ForCausalLM`` (its PyTorch path) and
flash-linear-attention 0.6's ``GLAForCausalLM`` (on CPU through the Triton interpreter, fused
recurrent mode). Expanded layers are checked against the same references built with the
expanded shape (one merged GLA head; a larger Mamba2 state), since their math is the source's.
"""

import pytest
import torch
from tiny_models import VOCAB
from transformers import Mamba2Config, Mamba2ForCausalLM

from statex_hf import StateXGLAConfig, StateXGLAForCausalLM, StateXMamba2Config, StateXMamba2ForCausalLM

TOL = 1e-4


def mamba2_pair(statex_layers=(), **fields):
    source = Mamba2ForCausalLM(Mamba2Config(**fields)).eval()
    ours = StateXMamba2ForCausalLM(StateXMamba2Config(**source.config.to_dict(), statex_layers=list(statex_layers)))
    ours.load_state_dict(source.state_dict())
    return source, ours.eval()


MAMBA2_FIELDS = dict(num_heads=4, head_dim=8, hidden_size=16, num_hidden_layers=2, vocab_size=VOCAB, chunk_size=8)


@pytest.mark.parametrize("n_groups", [1, 2])
@pytest.mark.parametrize("seqlen", [13, 21])
def test_mamba2_unexpanded_logits_equal_transformers(n_groups, seqlen):
    source, ours = mamba2_pair(n_groups=n_groups, state_size=8, **MAMBA2_FIELDS)
    ids = torch.randint(0, VOCAB, (2, seqlen))
    with torch.no_grad():
        assert (source(ids).logits - ours(ids).logits).abs().max() <= TOL


def test_mamba2_unexpanded_with_cache_prefix_equals_transformers():
    source, ours = mamba2_pair(n_groups=2, state_size=8, **MAMBA2_FIELDS)
    ids = torch.randint(0, VOCAB, (2, 19))
    with torch.no_grad():
        ref_prefix = source(ids[:, :11], use_cache=True)
        our_prefix = ours(ids[:, :11], use_cache=True)
        ref = source(ids[:, 11:12], cache_params=ref_prefix.cache_params, use_cache=True).logits
        out = ours(ids[:, 11:12], cache_params=our_prefix.cache_params, use_cache=True).logits
    assert (ref - out).abs().max() <= TOL
    # The cached continuation equals the full forward over prefix + token.
    with torch.no_grad():
        full = ours(ids[:, :12]).logits[:, -1:]
    assert (full - out).abs().max() <= TOL


def test_mamba2_expanded_layers_equal_transformers_at_the_larger_state():
    """Every layer expanded to N'=16 is exactly transformers' Mamba2 built with state_size=16."""
    source = Mamba2ForCausalLM(Mamba2Config(n_groups=1, state_size=16, **MAMBA2_FIELDS)).eval()
    config = StateXMamba2Config(
        **{**source.config.to_dict(), "state_size": 8}, statex_layers=[0, 1], statex_state_size=16
    )
    ours = StateXMamba2ForCausalLM(config).eval()
    ours.load_state_dict(source.state_dict())
    ids = torch.randint(0, VOCAB, (2, 13))
    with torch.no_grad():
        assert (source(ids).logits - ours(ids).logits).abs().max() <= TOL


def fla_gla(**fields):
    from fla.models import GLAConfig, GLAForCausalLM

    fields = dict(hidden_size=32, num_hidden_layers=2, vocab_size=VOCAB, attn_mode="fused_recurrent") | fields
    return GLAForCausalLM(GLAConfig(**fields)).eval()


def ours_from(source, **statex_fields):
    ours = StateXGLAForCausalLM(StateXGLAConfig(**source.config.to_dict(), **statex_fields)).eval()
    missing, unexpected = ours.load_state_dict(source.state_dict())
    assert not missing and not unexpected
    return ours


@pytest.mark.parametrize(
    "fields",
    [
        dict(num_heads=4),
        dict(num_heads=2, use_short_conv=True),
        dict(num_heads=4, num_kv_heads=2),
        dict(num_heads=4, fuse_norm=False, clamp_min=-0.5),
    ],
    ids=["default", "short_conv", "grouped_kv", "unfused_norm"],
)
def test_gla_unexpanded_logits_equal_fla(fields):
    source = fla_gla(**fields)
    ours = ours_from(source)
    ids = torch.randint(0, VOCAB, (2, 19))
    with torch.no_grad():
        assert (source(ids).logits.float() - ours(ids).logits).abs().max() <= TOL


def test_gla_unexpanded_with_cache_prefix_equals_fla():
    source = fla_gla(num_heads=4)
    ours = ours_from(source)
    ids = torch.randint(0, VOCAB, (2, 15))
    with torch.no_grad():
        ref_cache = source(ids[:, :9], use_cache=True).past_key_values
        our_cache = ours(ids[:, :9], use_cache=True).past_key_values
        ref = source(ids[:, 9:], past_key_values=ref_cache, use_cache=True).logits.float()
        out = ours(ids[:, 9:], past_key_values=our_cache, use_cache=True).logits
    assert (ref - out).abs().max() <= TOL


def test_gla_merged_head_layers_equal_fla_single_head_model():
    """All layers merged to one head are exactly fla's GLA built with num_heads=1 (same weights)."""
    source = fla_gla(num_heads=1)
    config = StateXGLAConfig(**{**source.config.to_dict(), "num_heads": 4}, statex_layers=[0, 1], statex_num_heads=1)
    ours = StateXGLAForCausalLM(config).eval()
    ours.load_state_dict(source.state_dict())
    ids = torch.randint(0, VOCAB, (2, 19))
    with torch.no_grad():
        assert (source(ids).logits.float() - ours(ids).logits).abs().max() <= TOL
