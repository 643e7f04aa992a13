"""The state lives in a transformers Cache; outputs are autograd tensors; the forward compiles without breaks."""

import pytest
import torch
from statex_hf.modeling import recurrent_run
from statex_hf.modeling.cache import StateXCache, copy_states, share_states, tokens_seen, unshare_states
from tiny_models import VARIANTS, VOCAB, build, returned_cache
from transformers import DynamicCache, GenerationConfig
from transformers.cache_utils import Cache, LinearAttentionLayer
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as hf_logging


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_the_state_is_a_transformers_cache_with_one_linear_attention_layer_per_layer(family):
    short_convs = {"use_short_conv": True} if family == "gla" else {}
    model = build(family, statex_layers=[1], **short_convs)
    with torch.no_grad():
        cache = returned_cache(model(torch.randint(3, VOCAB, (3, 5)), use_cache=True))
    assert isinstance(cache, Cache) and len(cache.layers) == model.config.num_hidden_layers
    assert all(isinstance(layer, LinearAttentionLayer) for layer in cache.layers)
    assert cache.get_seq_length() == 5 and all(cache.is_linear)
    small, large = (layer.recurrent_states[0] for layer in cache.layers)
    assert small.shape[0] == large.shape[0] == 3 and small.dtype == large.dtype == torch.float32
    assert large[0].numel() > small[0].numel()  # the StateX layer holds the larger state
    for layer in cache.layers:  # every convolution window is kept: q, k and v (GLA) or [x | B | C] (Mamba2)
        windows = [layer.conv_states[i] for i in range(model.config.number_of_conv_states)]
        assert all(w is not None and w.shape[0] == 3 for w in windows)


@pytest.mark.parametrize("family,statex_layers", VARIANTS)
def test_a_dynamic_cache_built_from_the_config_is_accepted(family, statex_layers):
    """As transformers builds one for its own recurrent models: same logits as the model's own cache."""
    model = build(family, statex_layers=statex_layers)
    ids = torch.randint(3, VOCAB, (2, 9))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        full = model(ids).logits
        model(ids[:, :6], cache=cache)
        continued = model(ids[:, 6:], cache=cache).logits
    torch.testing.assert_close(continued, full[:, 6:], atol=1e-5, rtol=1e-5)
    assert tokens_seen(cache) == 9
    # generate asks a given cache its length itself; transformers' DynamicCache can tell it for recurrent
    # layers from the version whose layers count tokens (5.2x); before, generate stops in transformers.
    if hasattr(LinearAttentionLayer(), "cumulative_length_linear"):
        generated = model.generate(ids, cache=DynamicCache(config=model.config), max_new_tokens=3, do_sample=False)
        assert torch.equal(generated, model.generate(ids, max_new_tokens=3, do_sample=False))


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_returned_hidden_states_are_on_the_autograd_path(family):
    model = build(family, statex_layers=[0]).train()
    out = model(torch.randint(3, VOCAB, (2, 7)), output_hidden_states=True)
    for hidden in out.hidden_states:
        hidden.retain_grad()
    out.logits.square().mean().backward()
    assert all(hidden.grad is not None and hidden.grad.abs().sum() > 0 for hidden in out.hidden_states)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_forward_with_an_attention_mask_compiles_as_one_graph(family):
    """fullgraph=True fails on any graph break (the padding check used to read the mask on the host)."""
    torch._dynamo.reset()
    model = build(family, statex_layers=[0])
    ids = torch.randint(3, VOCAB, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # a left-padded row
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        for attention_mask in (mask, torch.ones_like(ids)):
            got = compiled(ids, attention_mask=attention_mask).logits
            want = model(ids, attention_mask=attention_mask).logits
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_packed_sequence_warning_uses_transformers_logging_once():
    model = build("gla")
    packed = {"input_ids": torch.randint(3, VOCAB, (1, 8)), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])}
    hf_logging.warning_once.cache_clear()
    with CaptureLogger(recurrent_run.logger) as shown, torch.no_grad():
        model(**packed)
        model(**packed)
    assert shown.out.count("Packed sequences") == 1
    hf_logging.warning_once.cache_clear()
    hf_logging.set_verbosity_error()
    try:
        with CaptureLogger(recurrent_run.logger) as silenced, torch.no_grad():
            model(**packed)
    finally:
        hf_logging.set_verbosity_warning()
    assert silenced.out == ""


def test_reordering_keeps_the_states_where_they_are_and_sharing_can_be_undone():
    """Beam search reorders in place (a CUDA graph keeps reading the same memory); a shared state can be
    given back as a copy."""
    model = build("mamba2", statex_layers=[1])
    with torch.no_grad():
        cache = returned_cache(model(torch.randint(3, VOCAB, (3, 5)), use_cache=True))
    addresses = [t.data_ptr() for t in cache.state_tensors()]
    expected = [t[[2, 0, 0]].clone() for t in cache.state_tensors()]
    cache.reorder_cache(torch.tensor([2, 0, 0]))
    assert [t.data_ptr() for t in cache.state_tensors()] == addresses
    assert all(torch.equal(t, e) for t, e in zip(cache.state_tensors(), expected))

    other = StateXCache(model.config)
    copy_states(cache, other)
    share_states(other, cache)
    assert all(a is b for a, b in zip(cache.state_tensors(), other.state_tensors()))
    unshare_states(cache)
    assert all(a is not b and torch.equal(a, b) for a, b in zip(cache.state_tensors(), other.state_tensors()))


def test_decoding_on_cpu_never_asks_for_graphs():
    model = build("gla")
    assert not model._valid_auto_compile_criteria({}, GenerationConfig())
