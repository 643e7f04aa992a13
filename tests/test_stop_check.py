"""generate's stop check deferred by a step while a StateX model samples on CUDA (modeling/stop_check.py).

On CPU transformers' ``DeferredStopCheck`` cannot run as it is (it records CUDA / mps events), so the end-to-end
tests stand a host event in for ``torch.Event`` (CPU work is done when it returns, so recording and waiting are
no-ops) and let the rule accept the CPU: the loop then runs exactly as it does on CUDA.
"""

import threading

import pytest
import torch
from statex_hf.modeling import stop_check
from statex_hf.modeling.cache import tokens_seen
from tiny_models import VOCAB, build, returned_cache
from transformers import GenerationMixin
from transformers.cache_utils import Cache
from transformers.generation import utils as generation_utils
from transformers.generation.streamers import BaseStreamer

pytestmark = pytest.mark.skipif(
    stop_check._TRANSFORMERS_DEFERRED is None, reason="a transformers before DeferredStopCheck"
)
CUDA = torch.device("cuda")


def _supported(**overrides) -> bool:
    args = dict(device=CUDA, cache=None, cache_is_returned=False, is_assistant=False) | overrides
    return generation_utils.DeferredStopCheck.is_supported(**args)


def test_deferred_on_cuda_only_inside_the_block_and_only_for_a_cache_that_is_not_returned(monkeypatch):
    monkeypatch.delenv("STATEX_DEFER_STOP_CHECK", raising=False)
    with stop_check.deferred_stop_checks():
        assert _supported()
        assert not _supported(cache_is_returned=True)
        assert not _supported(is_assistant=True)
        assert not _supported(device=torch.device("cpu"))
        seen_by_another_thread = []
        thread = threading.Thread(target=lambda: seen_by_another_thread.append(_supported()))
        thread.start()
        thread.join()
        assert seen_by_another_thread == [False]
        monkeypatch.setenv("STATEX_DEFER_STOP_CHECK", "0")
        assert not _supported()
    monkeypatch.delenv("STATEX_DEFER_STOP_CHECK")
    assert generation_utils.DeferredStopCheck is stop_check.StateXDeferredStopCheck
    assert not _supported()  # transformers' own answer again: mps only
    assert _supported(device=torch.device("mps")) == stop_check._TRANSFORMERS_DEFERRED.is_supported(
        torch.device("mps"), None, False, False
    )


class _HostEvent:
    """``torch.Event`` for the CPU, where every op has finished when it returns."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def record(self, *args) -> None:
        pass

    def synchronize(self) -> None:
        pass


class _Tokens(BaseStreamer):
    """A streamer that keeps the token ids it is handed."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        self.ids += value.flatten().tolist()

    def end(self) -> None:
        pass


@pytest.fixture
def loops_counted(monkeypatch):
    """Defer on the CPU as on CUDA, and count the calls of each kind of stop check."""
    monkeypatch.setattr(torch, "Event", _HostEvent)
    monkeypatch.setattr(stop_check, "defers_on", lambda device: True)
    stop_check._install()
    calls = {"deferred": 0, "every step": 0}
    deferred_call, plain_call = generation_utils.DeferredStopCheck.__call__, generation_utils.StopCheck.__call__

    def counted(kind, call):
        def wrapper(self, *args):
            calls[kind] += 1
            return call(self, *args)

        return wrapper

    monkeypatch.setattr(generation_utils.DeferredStopCheck, "__call__", counted("deferred", deferred_call))
    monkeypatch.setattr(generation_utils.StopCheck, "__call__", counted("every step", plain_call))
    return calls


def _without_deferral(monkeypatch, generate):
    monkeypatch.setattr(stop_check, "defers_on", lambda device: False)
    try:
        return generate()
    finally:
        monkeypatch.setattr(stop_check, "defers_on", lambda device: True)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_a_deferred_loop_gives_the_same_tokens_and_streams_them_all(family, loops_counted, monkeypatch):
    torch.manual_seed(0)
    model = build(family, statex_layers=[1]).eval()
    prompts = torch.randint(3, VOCAB, (2, 5))
    free = model.generate(prompts, max_new_tokens=6, do_sample=False, eos_token_id=None)
    eos = int(free[0, 7])  # the first row's third new token: it stops early, the other row may run on
    streamer, baseline_streamer = _Tokens(), _Tokens()
    kwargs = dict(max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=1)

    def generate(streamer):
        return model.generate(prompts[:1], streamer=streamer, **kwargs)

    deferred = model.generate(prompts, **kwargs)
    deferred_alone = generate(streamer)
    assert loops_counted["deferred"] > 0 and loops_counted["every step"] == 0
    plain = _without_deferral(monkeypatch, lambda: model.generate(prompts, **kwargs))
    plain_alone = _without_deferral(monkeypatch, lambda: generate(baseline_streamer))
    assert loops_counted["every step"] > 0
    assert torch.equal(deferred, plain) and torch.equal(deferred_alone, plain_alone)
    stop = 5 + free[0, 5:].tolist().index(eos)  # where the first row meets the end token
    assert deferred_alone.shape[1] == stop + 1  # stopped there: the extra step's token was dropped
    assert streamer.ids == baseline_streamer.ids == deferred_alone[0].tolist()


def test_a_returned_cache_and_other_models_keep_the_check_at_every_step(loops_counted):
    model = build("gla").eval()
    prompt = torch.randint(3, VOCAB, (1, 4))
    model.generate(prompt, max_new_tokens=3, do_sample=False, eos_token_id=None, return_dict_in_generate=True)
    assert loops_counted == {"deferred": 0, "every step": 3}  # once a token
    from transformers import Mamba2Config, Mamba2ForCausalLM

    other = Mamba2ForCausalLM(Mamba2Config(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_heads=2,
                                           head_dim=16, state_size=8, n_groups=1, expand=2)).eval()  # fmt: skip
    other.generate(prompt, max_new_tokens=3, do_sample=False, eos_token_id=None)
    assert loops_counted["deferred"] == 0


@pytest.mark.parametrize("marked", [True, False], ids=["marked as the user's", "unmarked (transformers 5.17)"])
@pytest.mark.parametrize("name", ["cache", "past_key_values", "cache_params"])
def test_a_passed_in_cache_keeps_the_check_at_every_step_under_each_name(name, marked, loops_counted, monkeypatch):
    """The models accept the cache under each of its names on every transformers version, but transformers before
    5.24 marks a passed-in cache as the user's (``cache_is_returned``) only under the one name it expects for the
    class (``past_key_values`` for GLA, ``cache_params`` for Mamba2; never ``cache``). A deferred loop would run its
    extra step into the user's cache, which would then hold one token more than the sequence it returned."""
    if not marked:  # as transformers 5.17 leaves a cache passed as `cache=`
        prepare = GenerationMixin._prepare_cache_for_generation

        def unmarked(self, generation_config, model_kwargs, *args, **kwargs):
            result = prepare(self, generation_config, model_kwargs, *args, **kwargs)
            for value in model_kwargs.values():
                if isinstance(value, Cache):
                    vars(value).pop("_is_user_defined", None)
            return result

        monkeypatch.setattr(GenerationMixin, "_prepare_cache_for_generation", unmarked)
    torch.manual_seed(0)
    model = build("gla").eval()
    prompt = torch.randint(3, VOCAB, (1, 5))
    first = model.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=None, return_dict_in_generate=True)
    mask = torch.ones_like(first.sequences)  # a generated 0 is no padding
    free = model.generate(first.sequences, attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=None)
    eos = int(free[0, first.sequences.shape[1] + 2])  # stops on the third new token, before max_new_tokens
    cache = returned_cache(first)
    loops_counted.update({"deferred": 0, "every step": 0})
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=1)
    out = model.generate(first.sequences, **kwargs, **{name: cache})
    assert loops_counted["deferred"] == 0
    assert out[0, -1] == eos and tokens_seen(cache) == out.shape[1] - 1  # every token but the last one fed


@pytest.mark.parametrize("outlives", ["returned", "passed in"])
def test_a_cache_that_outlives_generate_keeps_the_check_at_every_step_where_transformers_defers_itself(
    outlives, monkeypatch
):
    """transformers defers on mps, and (5.25) with a returned or passed-in linear-attention cache too (it takes it as
    one it can put back a step by recording its layers' past states): the StateX layers update their states in place,
    past that recording, and putting the extra step back failed inside the cache's ``crop``. mps is stood in for by
    the CPU (transformers' rule asked about mps, host events)."""
    monkeypatch.setattr(torch, "Event", _HostEvent)
    transformers_rule = stop_check._TRANSFORMERS_DEFERRED.is_supported
    as_on_mps = staticmethod(lambda device, *args: transformers_rule(torch.device("mps"), *args))
    monkeypatch.setattr(stop_check._TRANSFORMERS_DEFERRED, "is_supported", as_on_mps)
    torch.manual_seed(0)
    model = build("gla").eval()
    prompt = torch.randint(3, VOCAB, (1, 5))
    free = model.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=1)
    if outlives == "returned":
        eos = int(free[0, 7])  # the third new token
        out = model.generate(prompt, eos_token_id=eos, return_dict_in_generate=True, **kwargs)
        sequences, cache = out.sequences, returned_cache(out)
    else:
        two_tokens = kwargs | dict(max_new_tokens=2, eos_token_id=None, return_dict_in_generate=True)
        first = model.generate(prompt, **two_tokens)
        eos, cache = int(free[0, 9]), returned_cache(first)  # the third token after the first call's two
        sequences = model.generate(first.sequences, attention_mask=torch.ones_like(free[:, :7]), cache=cache,
                                   eos_token_id=eos, **kwargs)  # fmt: skip
    assert sequences[0, -1] == eos and torch.equal(sequences, free[:, : sequences.shape[1]])
    assert tokens_seen(cache) == sequences.shape[1] - 1  # every token but the last one fed
