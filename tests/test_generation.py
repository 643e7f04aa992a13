"""generate() with the recurrent cache: greedy equals repeated full forwards; left padding is inert."""

import pytest
import torch
from statex_hf.modeling.generation import LEGACY_CACHE_NAMES
from statex_hf.modeling.recurrent_model import output_cache_field
from tiny_models import VARIANTS, VOCAB, build, returned_cache


def greedy_by_full_forwards(model, ids, steps):
    for _ in range(steps):
        with torch.no_grad():
            next_token = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_token], dim=1)
    return ids


@pytest.mark.parametrize("family,statex_layers", VARIANTS)
def test_greedy_generate_equals_repeated_full_forwards(family, statex_layers):
    model = build(family, statex_layers=statex_layers)
    prompt = torch.randint(3, VOCAB, (2, 7))
    generated = model.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=None)
    assert torch.equal(generated, greedy_by_full_forwards(model, prompt, 6))


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_generate_feeds_the_prompt_once_then_one_token_per_step(family):
    """The cache reaches every step: a lost cache would still generate the same tokens, from the whole
    sequence each step (transformers 5.24 renamed the cache that generate carries, which once did that)."""
    model = build(family, statex_layers=[0])
    lengths = []
    model.register_forward_pre_hook(
        lambda _, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    model.generate(torch.randint(3, VOCAB, (2, 7)), max_new_tokens=4, do_sample=False, eos_token_id=None)
    assert lengths == [7, 1, 1, 1]


@pytest.mark.parametrize("family,statex_layers", VARIANTS)
def test_left_padded_batch_generates_what_each_prompt_generates_alone(family, statex_layers):
    model = build(family, statex_layers=statex_layers)
    prompts = [torch.randint(3, VOCAB, (n,)) for n in (9, 4, 6)]
    width = max(len(p) for p in prompts)
    pad = model.config.pad_token_id
    ids = torch.full((len(prompts), width), pad)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, eos_token_id=None)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], max_new_tokens=5, do_sample=False, eos_token_id=None)
        assert torch.equal(batched[row, width:], alone[0, len(prompt) :])


def test_padding_neither_decays_nor_writes_the_state():
    """The state after [pad, pad, x] with its mask equals the state after [x] alone (every layer)."""
    for family, layers in VARIANTS:
        model = build(family, statex_layers=layers)
        ids = torch.randint(3, VOCAB, (1, 5))
        padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
        mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)], dim=1)
        with torch.no_grad():
            alone = model(ids, use_cache=True)
            with_pad = model(padded, attention_mask=mask, use_cache=True)
        cache_a, cache_b = (getattr(out, output_cache_field(type(out))) for out in (alone, with_pad))
        for state_a, state_b in zip(cache_a.state_tensors(), cache_b.state_tensors()):
            torch.testing.assert_close(state_a, state_b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone.logits[:, -1], with_pad.logits[:, -1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_eos_stops_and_sampling_respects_max_new_tokens(family):
    model = build(family, statex_layers=[0])
    prompt = torch.randint(3, VOCAB, (1, 5))
    greedy = model.generate(prompt, max_new_tokens=4, do_sample=False, eos_token_id=None)
    first = int(greedy[0, 5])
    stopped = model.generate(prompt, max_new_tokens=4, do_sample=False, eos_token_id=first, pad_token_id=0)
    assert stopped.shape[1] == 6 and int(stopped[0, -1]) == first
    torch.manual_seed(1)
    sampled = model.generate(prompt, max_new_tokens=8, do_sample=True, top_k=10, eos_token_id=None)
    assert sampled.shape == (1, 13)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_num_return_sequences_and_beam_search_run(family):
    model = build(family, statex_layers=[0])
    prompt = torch.randint(3, VOCAB, (2, 5))
    out = model.generate(prompt, max_new_tokens=3, do_sample=True, num_return_sequences=2, eos_token_id=None)
    assert out.shape == (4, 8)
    beams = model.generate(prompt, max_new_tokens=3, num_beams=2, do_sample=False, eos_token_id=None)
    assert beams.shape == (2, 8)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
@pytest.mark.filterwarnings("ignore:`(past_key_values|cache_params)` is deprecated:FutureWarning")
def test_cache_continues_a_sequence_under_its_new_and_old_names(family):
    model = build(family, statex_layers=[0])
    ids = torch.randint(3, VOCAB, (2, 9))

    def prefix_cache():
        out = model(ids[:, :6], use_cache=True)
        return getattr(out, output_cache_field(type(out)))

    with torch.no_grad():
        full = model(ids).logits[:, 6:]
        for name in ("cache", "past_key_values", "cache_params"):
            continued = model(ids[:, 6:], **{name: prefix_cache()}).logits
            torch.testing.assert_close(continued, full, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="Both `past_key_values` and `cache` are set"):
            model(ids[:, 6:], cache=prefix_cache(), past_key_values=prefix_cache())


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_generate_checks_its_arguments_taking_the_cache_under_its_old_names(family):
    # transformers before 5.24 (5.17, say) checks generate's arguments as they are given, against the forward's
    # signature, which shows `cache` alone: `generate(ids, past_key_values=cache)` failed as an unused argument
    # there (5.24 on renames the old names first). A typo is still one.
    model = build(family)
    with torch.no_grad():
        out = model(torch.randint(3, VOCAB, (1, 5)), use_cache=True)
    cache = getattr(out, output_cache_field(type(out)))
    for name in ("cache", "past_key_values", "cache_params"):
        model._validate_model_kwargs({name: cache, "attention_mask": torch.ones(1, 5), "use_cache": True})
    with pytest.raises(ValueError, match=r"not used by the model: \['past_key_value'\]"):
        model._validate_model_kwargs({"past_key_value": cache})
    # Under two names at once it is an error, as in the forward: transformers before 5.24 would otherwise use one of
    # them and drop the other silently (5.24 on warns and keeps `cache` before this check).
    for names in (("cache", "past_key_values"), ("past_key_values", "cache_params")):
        with pytest.raises(ValueError, match=f"generate got the cache under `{names[0]}` and `{names[1]}`"):
            model._validate_model_kwargs(dict.fromkeys(names, cache))


def greedy_reference(model, prompt, steps):
    return model.generate(prompt, max_new_tokens=steps, do_sample=False, eos_token_id=None)


@pytest.mark.parametrize("family,statex_layers", VARIANTS)
def test_generate_returns_every_steps_hidden_states(family, statex_layers):
    """output_hidden_states reaches the forward at every step, and each step's states are the full forward's."""
    model = build(family, statex_layers=statex_layers)
    prompt = torch.randint(3, VOCAB, (2, 6))
    out = model.generate(
        prompt,
        max_new_tokens=4,
        do_sample=False,
        eos_token_id=None,
        output_hidden_states=True,
        return_dict_in_generate=True,
    )
    assert len(out.hidden_states) == 4
    for step, states in enumerate(out.hidden_states):
        assert len(states) == model.config.num_hidden_layers + 1
        assert states[-1].shape == (2, 6 if step == 0 else 1, model.config.hidden_size)
        with torch.no_grad():
            full = model(out.sequences[:, : 6 + step], output_hidden_states=True, use_cache=False).hidden_states
        for got, want in zip(states, full):
            torch.testing.assert_close(got[:, -1], want[:, -1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_returned_cache_continues_a_generation_from_ids(family):
    """generate(sequence, cache=out.cache) feeds exactly the tokens the cache has not seen: the last
    generated token and any text appended after it, then one per step."""
    model = build(family, statex_layers=[0])
    prompt = torch.randint(3, VOCAB, (2, 7))
    first = model.generate(prompt, max_new_tokens=4, do_sample=False, eos_token_id=None, return_dict_in_generate=True)
    sequence = torch.cat([first.sequences, torch.randint(3, VOCAB, (2, 3))], dim=1)
    lengths = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    continued = model.generate(
        sequence, cache=returned_cache(first), max_new_tokens=5, do_sample=False, eos_token_id=None
    )
    hook.remove()
    assert lengths == [4, 1, 1, 1, 1]
    assert torch.equal(continued, greedy_reference(model, sequence, 5))


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_returned_cache_continues_a_generation_from_embeddings(family):
    model = build(family, statex_layers=[0])
    prompt = torch.randint(3, VOCAB, (2, 7))
    first = model.generate(prompt, max_new_tokens=4, do_sample=False, eos_token_id=None, return_dict_in_generate=True)
    embeds = model.get_input_embeddings()(first.sequences).detach()
    continued = model.generate(
        inputs_embeds=embeds, cache=returned_cache(first), max_new_tokens=5, do_sample=False, eos_token_id=None
    )
    assert torch.equal(continued, greedy_reference(model, prompt, 9)[:, 11:])


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_continuing_from_a_cache_with_too_short_an_input_names_the_fix(family):
    model = build(family, statex_layers=[0])
    prompt = torch.randint(3, VOCAB, (1, 7))
    first = model.generate(prompt, max_new_tokens=2, do_sample=False, eos_token_id=None, return_dict_in_generate=True)
    with pytest.raises(ValueError, match="pass the whole sequence"):
        model.generate(prompt[:, :3], cache=returned_cache(first), max_new_tokens=2, do_sample=False, eos_token_id=None)


def _same_inputs(fast: dict, general: dict) -> bool:
    if fast.keys() != general.keys():
        return False
    for key, value in fast.items():
        other = general[key]
        if isinstance(value, torch.Tensor):
            if not (isinstance(other, torch.Tensor) and torch.equal(value, other)):
                return False
        elif value is not other and value != other:
            return False
    return True


@pytest.mark.parametrize("family", ["gla", "mamba2"])
@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"output_hidden_states": True, "return_dict_in_generate": True, "output_scores": True},
        {"num_beams": 2, "do_sample": False},
        {"do_sample": True, "top_k": 5, "num_return_sequences": 2},
    ],
)
def test_decode_steps_get_the_inputs_transformers_prepares(family, settings, monkeypatch):
    """The quick preparation of a decode step (made while the GPU waits) gives the forward exactly the inputs
    transformers' own preparation and this model's rules give it, at every step, whatever generate passes."""
    model = build(family, statex_layers=[0])
    cls = type(model)
    prepare, plain_step = cls.prepare_inputs_for_generation, cls._is_plain_decode_step
    quick_steps, same = [], []

    def both_ways(self, *args, **kwargs):
        with monkeypatch.context() as patch:
            patch.setattr(cls, "_is_plain_decode_step", lambda *a: False)
            general = prepare(self, *args, **dict(kwargs))
        # generate before transformers 5.24 hands the cache back as past_key_values / cache_params (the model takes
        # either): the probe looks under every name, as prepare_inputs_for_generation does.
        cache = next((kwargs[n] for n in ("cache", *LEGACY_CACHE_NAMES) if kwargs.get(n) is not None), None)
        quick_steps.append(plain_step(self, args[0], kwargs.get("next_sequence_length"), cache, {}))
        prepared = prepare(self, *args, **kwargs)
        same.append(_same_inputs(prepared, general))
        return prepared

    monkeypatch.setattr(cls, "prepare_inputs_for_generation", both_ways)
    prompt = torch.randint(3, VOCAB, (2, 6))
    mask = torch.ones_like(prompt)
    mask[0, :2] = 0  # left padding: generate carries a mask through every step
    model.generate(prompt, attention_mask=mask, max_new_tokens=4, eos_token_id=None, pad_token_id=0, **settings)
    assert quick_steps.count(True) >= 3  # every decode step took the quick path
    assert same and all(same)
