"""The CUDA-graph decoder's bookkeeping, on CPU: which captured step a cache is bound to (no graph is replayed here;
tests/gpu/test_decode_graphs_gpu.py runs the graphs)."""

import gc
import weakref

import pytest
import torch
from statex_hf.modeling import decode_graphs, generation
from statex_hf.modeling.cache import StateXCache, copy_states
from statex_hf.modeling.decode_graphs import DecodeGraphs, _CapturedStep, _layout
from tiny_models import VOCAB, build, returned_cache


def prefilled(model, batch: int = 2) -> StateXCache:
    with torch.no_grad():
        return returned_cache(model(torch.randint(3, VOCAB, (batch, 5)), use_cache=True))


def captured(decoder: DecodeGraphs, model, cache: StateXCache, ids: torch.Tensor) -> _CapturedStep:
    """A step as ``_capture`` leaves it (its own copy of the states), without a graph."""
    states = StateXCache(model.config)
    copy_states(cache, states)
    step = _CapturedStep(None, ids.clone(), torch.zeros(ids.shape[0], 1, VOCAB), states)
    decoder._steps[_layout(model, cache, ids)] = step
    return step


@pytest.fixture
def served_on_cpu(monkeypatch):
    monkeypatch.setattr(decode_graphs, "_served_batch", lambda model, inputs: inputs["input_ids"].shape[0])


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_a_cache_whose_tensors_were_replaced_is_bound_afresh(family, served_on_cpu):
    """A replay must update the cache's own tensors: a binding whose tensors the cache no longer holds is redone."""
    model = build(family)
    decoder, cache, ids = DecodeGraphs(model), prefilled(model), torch.ones(2, 1, dtype=torch.long)
    step = captured(decoder, model, cache, ids)
    assert decoder._step_for(model, {"input_ids": ids, "cache": cache}) is step
    assert all(a is b for a, b in zip(cache.state_tensors(), step.states.state_tensors()))
    fresh = torch.randn_like(cache.layers[0].recurrent_states[0])
    cache.layers[0].recurrent_states[0] = fresh  # replaced, not written in place
    assert decoder._step_for(model, {"input_ids": ids, "cache": cache}) is step
    assert step.states.layers[0].recurrent_states[0] is cache.layers[0].recurrent_states[0]
    assert torch.equal(step.states.layers[0].recurrent_states[0], fresh)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_a_cache_bound_by_another_models_graphs_is_bound_to_this_ones(family, served_on_cpu):
    model, twin = build(family), build(family)
    cache, ids = prefilled(model), torch.ones(2, 1, dtype=torch.long)
    theirs, ours = DecodeGraphs(twin), DecodeGraphs(model)
    their_step = captured(theirs, twin, cache, ids)
    assert theirs._step_for(twin, {"input_ids": ids, "cache": cache}) is their_step
    our_step = captured(ours, model, cache, ids)
    assert ours._step_for(model, {"input_ids": ids, "cache": cache}) is our_step
    assert cache.graph_binding is our_step


def _replace_layer(cache):
    old = cache.layers[1]
    fresh = type(old)(number_of_states=old.number_of_states)
    fresh.__dict__.update({k: (dict(v) if isinstance(v, dict) else v) for k, v in old.__dict__.items()})
    cache.layers[1] = fresh


def _replace_state_dict(cache):
    cache.layers[1].recurrent_states = dict(cache.layers[1].recurrent_states)
    cache.layers[1].recurrent_states[0] = cache.layers[1].recurrent_states[0].clone()


def _replace_conv_window(cache):
    cache.layers[0].conv_states[0] = cache.layers[0].conv_states[0].clone()


@pytest.mark.parametrize("family", ["gla", "mamba2"])
@pytest.mark.parametrize("replace", [_replace_layer, _replace_state_dict, _replace_conv_window])
def test_a_cache_whose_layers_or_state_dicts_were_replaced_is_bound_afresh(family, replace, served_on_cpu):
    """The quick binding check sees a replaced layer, a replaced state dict and a replaced tensor in any slot: after
    each, the next step copies the cache's values into the graph's tensors and the cache holds those again."""
    model = build(family, use_short_conv=True) if family == "gla" else build(family)
    decoder, cache, ids = DecodeGraphs(model), prefilled(model), torch.ones(2, 1, dtype=torch.long)
    step = captured(decoder, model, cache, ids)
    assert decoder._step_for(model, {"input_ids": ids, "cache": cache}) is step
    assert step.binding.holds(cache)
    replace(cache)
    assert not step.binding.holds(cache)
    values = [t.clone() for t in cache.state_tensors()]
    assert decoder._step_for(model, {"input_ids": ids, "cache": cache}) is step
    assert step.binding.holds(cache)
    assert all(a is b for a, b in zip(cache.state_tensors(), step.states.state_tensors()))
    assert all(torch.equal(a, b) for a, b in zip(cache.state_tensors(), values))


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_a_dropped_cache_leaves_nothing_of_its_own_alive_in_the_graphs(family, served_on_cpu):
    """A captured step keeps only a weak reference to the cache bound to it: once that cache is dropped, what it
    held beside the graph's tensors (here a state it was handed after binding) is freed with it."""
    model = build(family)
    decoder, cache, ids = DecodeGraphs(model), prefilled(model), torch.ones(2, 1, dtype=torch.long)
    step = captured(decoder, model, cache, ids)
    assert decoder._step_for(model, {"input_ids": ids, "cache": cache}) is step
    fresh = cache.layers[0].recurrent_states[0].clone()
    cache.layers[0].recurrent_states[0] = fresh  # say, moved by an offload or a reordering
    fresh_alive, cache_alive = weakref.ref(fresh), weakref.ref(cache)
    del cache, fresh
    gc.collect()
    assert cache_alive() is None and fresh_alive() is None
    assert step.binding is None


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_generate_compiles_the_decode_steps_ahead_where_graphs_will_serve_them(family, monkeypatch):
    """``generate``'s sampling loop starts compiling its decode step's kernels before the prompt's forward, for its
    batch (as expanded) and the steps' ``logits_to_keep``, where graphs will replay its steps (by default): not
    where no step follows the prompt's token, nor where the steps run eagerly, nor with ``STATEX_COMPILE_AHEAD=0``.
    (On CPU no graph serves a step: here the model is told graphs would.)"""
    monkeypatch.delenv("STATEX_COMPILE_AHEAD", raising=False)  # on by default
    model = build(family).eval()
    asked = []
    monkeypatch.setattr(type(model), "_valid_auto_compile_criteria", lambda self, kwargs, config: True)
    monkeypatch.setattr(DecodeGraphs, "compile_ahead", lambda self, batch, device, keep: asked.append((batch, keep)))
    ids = torch.randint(3, VOCAB, (2, 5))
    greedy = dict(do_sample=False, pad_token_id=0)
    model.generate(ids, max_new_tokens=3, **greedy)
    model.generate(ids, max_new_tokens=3, num_return_sequences=2, do_sample=True, pad_token_id=0)
    assert asked == [(2, 1), (4, 1)]  # generate keeps one position's logits
    model.generate(ids, max_new_tokens=1, **greedy)  # the prompt's forward gives the only token
    model.generate(ids, max_new_tokens=3, output_hidden_states=True, return_dict_in_generate=True, **greedy)
    monkeypatch.setenv("STATEX_COMPILE_AHEAD", "0")  # the switch off
    model.generate(ids, max_new_tokens=3, **greedy)
    assert asked == [(2, 1), (4, 1)]


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_a_compile_ahead_that_fails_leaves_generate_as_it_was_with_a_warning(family, monkeypatch):
    """Compiling ahead only saves time: where it raises (out of GPU memory in its forwards, say), ``generate``
    returns what it returns without it, and says once that it went without."""
    model = build(family).eval()
    ids = torch.randint(3, VOCAB, (2, 5))
    want = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    monkeypatch.setenv("STATEX_COMPILE_AHEAD", "1")
    monkeypatch.setattr(type(model), "_valid_auto_compile_criteria", lambda self, kwargs, config: True)

    def fails(self, batch, device, keep):
        raise torch.OutOfMemoryError("CUDA out of memory (a stand-in)")

    monkeypatch.setattr(DecodeGraphs, "compile_ahead", fails)
    said = []
    monkeypatch.setattr(generation.logger, "warning_once", said.append)
    got = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(got, want)
    assert len(said) == 1 and "not compiled ahead" in said[0] and "out of memory" in said[0], said


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_compile_ahead_runs_once_for_a_batch_size_until_the_graphs_are_cleared(family, monkeypatch):
    """Its two forwards (the states' one-token forward, then the step's) would cost a repeated ``generate`` two
    eager steps: they run once for a batch size, and not for one a graph was captured for (nor with
    ``STATEX_COMPILE_AHEAD=0``; nor where launches cannot be recorded, off CUDA say, where they would compile for
    real). Here on CPU the model is told they can be."""
    monkeypatch.setattr(decode_graphs, "blocks_record", lambda device, threads: True)
    monkeypatch.delenv("STATEX_COMPILE_AHEAD", raising=False)  # on by default
    model = build(family).eval()
    cache, forwards = prefilled(model), []
    model.register_forward_pre_hook(lambda module, args, kwargs: forwards.append(kwargs["input_ids"].shape[0]),
                                    with_kwargs=True)  # fmt: skip
    decoder, cpu = DecodeGraphs(model), torch.device("cpu")
    decoder.compile_ahead(3, cpu)
    decoder.compile_ahead(3, cpu)
    assert forwards == [3, 3]
    decoder.compile_ahead(1, cpu)
    assert forwards == [3, 3, 1, 1]
    decoder.clear()
    decoder.compile_ahead(3, cpu)
    assert forwards == [3, 3, 1, 1, 3, 3]
    ids = torch.ones(2, 1, dtype=torch.long)
    captured(decoder, model, cache, ids)
    forwards.clear()
    decoder.compile_ahead(2, cpu)
    monkeypatch.setattr(decode_graphs, "blocks_record", lambda device, threads: False)
    decoder.compile_ahead(5, cpu)
    monkeypatch.setattr(decode_graphs, "blocks_record", lambda device, threads: True)
    monkeypatch.setenv("STATEX_COMPILE_AHEAD", "0")
    decoder.compile_ahead(6, cpu)
    assert forwards == []
