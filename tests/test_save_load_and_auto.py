"""save_pretrained / from_pretrained, Auto classes, dtype and device_map loading."""

import pytest
import torch
from tiny_models import VARIANTS, VOCAB, build
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import statex_hf


@pytest.mark.parametrize("family,statex_layers", VARIANTS)
def test_save_and_auto_load_round_trip_in_safetensors(tmp_path, family, statex_layers):
    model = build(family, statex_layers=statex_layers)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.config.statex_layers == statex_layers
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_auto_classes_resolve_the_statex_classes(tmp_path, family):
    model = build(family, statex_layers=[0])
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.model_type == f"statex_{family}"
    base = AutoModel.from_pretrained(tmp_path)
    expected = statex_hf.StateXGLAModel if family == "gla" else statex_hf.StateXMamba2Model
    assert type(base) is expected


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_bf16_loading_and_device_map_auto(tmp_path, family):
    build(family, statex_layers=[0]).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, device_map="auto")
    assert model.lm_head.weight.dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(torch.randint(0, VOCAB, (1, 6)).to(model.device)).logits
    assert torch.isfinite(logits).all()


def test_expanded_layer_shapes_and_state_sizes():
    gla = build("gla", statex_layers=[1])
    assert gla.model.layers[1].attn.num_heads == 1 and gla.model.layers[0].attn.num_heads == 4
    assert gla.model.layers[1].attn.q_proj.weight.shape == gla.model.layers[0].attn.q_proj.weight.shape
    mamba = build("mamba2", statex_layers=[1])
    small, large = mamba.backbone.layers[0].mixer, mamba.backbone.layers[1].mixer
    assert large.in_proj.weight.shape[0] - small.in_proj.weight.shape[0] == 2 * 1 * (16 - 8)
    with torch.no_grad():
        cache = mamba(torch.randint(0, VOCAB, (1, 4)), use_cache=True).cache_params
    assert cache.layers[0].recurrent_states[0].shape == (1, 4, 8, 8)
    assert cache.layers[1].recurrent_states[0].shape == (1, 4, 8, 16)


def test_return_dict_false_and_hidden_states():
    for family in ("gla", "mamba2"):
        model = build(family, statex_layers=[0])
        ids = torch.randint(0, VOCAB, (1, 5))
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
            tup = model(ids, labels=ids, return_dict=False)
        assert len(out.hidden_states) == model.config.num_hidden_layers + 1
        torch.testing.assert_close(tup[1], out.logits)
        assert tup[0].ndim == 0
