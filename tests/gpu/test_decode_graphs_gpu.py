"""generate's decode steps as CUDA graphs (run with STATEX_GPU_TESTS=1 on the GPU machine).

Every case compares the default (graphs) with ``disable_compile=True`` (eager) on the same model and
inputs: the same tokens, and the graphs really served the steps (beam search aside: transformers runs it
eagerly).
"""

import pytest
import torch
from statex_hf.modeling.cache import StateXCache, copy_states
from statex_hf.modeling.decode_graphs import decode_graphs_for
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from statex_hf import StateXGLAConfig, StateXGLAForCausalLM, StateXMamba2Config, StateXMamba2ForCausalLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICE = "cuda"
VOCAB = 256


def build(family: str, dtype: torch.dtype = torch.bfloat16, **fields):
    if family == "gla":
        config = StateXGLAConfig(
            hidden_size=256, num_heads=4, num_hidden_layers=3, vocab_size=VOCAB, statex_layers=[1], **fields
        )
        model = StateXGLAForCausalLM(config)
    else:
        config = StateXMamba2Config(
            num_heads=8,
            head_dim=32,
            hidden_size=128,
            state_size=64,
            num_hidden_layers=3,
            n_groups=1,
            vocab_size=VOCAB,
            chunk_size=64,
            statex_layers=[1],
            statex_state_size=128,
            **fields,
        )
        model = StateXMamba2ForCausalLM(config)
    return model.to(DEVICE, dtype).eval()


def generate_both(model, *args, seed: int = 0, **kwargs):
    """(graphs, eager) outputs of the same generate call; the graphs must have served the decode steps."""
    decoder = decode_graphs_for(model)
    decoder.clear()
    torch.manual_seed(seed)
    graphs = model.generate(*args, **kwargs)
    assert decoder.last_capture_seconds is not None, "no decode step was captured"
    torch.manual_seed(seed)
    eager = model.generate(*args, disable_compile=True, **kwargs)
    return graphs, eager


def returned_cache(output):
    """The cache a generate output holds (``cache`` from transformers 5.24 on, else ``past_key_values``)."""
    return next(getattr(output, n) for n in ("cache", "past_key_values") if getattr(output, n, None) is not None)


def prompt(batch: int = 2, length: int = 9) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), device=DEVICE)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_greedy_tokens_equal_eager(family, dtype):
    model = build(family, dtype)
    graphs, eager = generate_both(model, prompt(), max_new_tokens=24, do_sample=False, eos_token_id=None)
    assert torch.equal(graphs, eager)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_the_graph_updates_the_returned_cache(family):
    """The returned cache continues the sequence: its state is the one the graph wrote."""
    model = build(family, torch.float32)
    ids = prompt()
    first = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, return_dict_in_generate=True)
    assert returned_cache(first).graph_binding is not None
    with torch.no_grad():
        continued = model(first.sequences[:, -1:], cache=returned_cache(first)).logits[:, -1]
        full = model(first.sequences, use_cache=False).logits[:, -1]
    torch.testing.assert_close(continued, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_sampling_left_padding_and_num_return_sequences_equal_eager(family):
    model = build(family)
    ids, mask = prompt(3, 10), torch.ones(3, 10, dtype=torch.long, device=DEVICE)
    ids[0, :4], mask[0, :4] = 0, 0
    ids[2, :7], mask[2, :7] = 0, 0
    kwargs = dict(attention_mask=mask, max_new_tokens=12, eos_token_id=None, pad_token_id=0)
    graphs, eager = generate_both(model, ids, do_sample=False, **kwargs)
    assert torch.equal(graphs, eager)
    graphs, eager = generate_both(model, ids, do_sample=True, top_k=20, num_return_sequences=2, seed=3, **kwargs)
    assert graphs.shape == (6, 22) and torch.equal(graphs, eager)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_beam_search_equals_eager(family):
    """transformers' beam search never asks for the compiled step (only sampling, greedy and assisted decoding
    do): it decodes eagerly, and its in-place reordering leaves a cache bound to a graph right."""
    model = build(family, torch.float32)
    decoder = decode_graphs_for(model)
    decoder.clear()
    kwargs = dict(num_beams=3, max_new_tokens=8, do_sample=False, eos_token_id=None)
    ids = prompt()
    beams = model.generate(ids, **kwargs)
    assert decoder.last_capture_seconds is None
    assert torch.equal(beams, model.generate(ids, disable_compile=True, **kwargs))


class Collect(BaseStreamer):
    def __init__(self):
        self.tokens = []

    def put(self, value):
        self.tokens.append(value.detach().cpu().flatten())

    def end(self):
        pass


class StopAfter(StoppingCriteria):
    def __init__(self, length: int):
        self.length = length

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, device=input_ids.device)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_stopping_criteria_eos_and_streamers_work(family):
    model = build(family)
    ids = prompt(1)
    stop = StoppingCriteriaList([StopAfter(16)])
    graphs, eager = generate_both(
        model, ids, max_new_tokens=30, do_sample=False, eos_token_id=None, stopping_criteria=stop
    )
    assert graphs.shape[1] == 16 and torch.equal(graphs, eager)
    eos = int(eager[0, 13])  # a token greedy decoding produces: generation must stop right there
    graphs, eager = generate_both(model, ids, max_new_tokens=30, do_sample=False, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(graphs, eager) and int(graphs[0, -1]) == eos
    streamer = Collect()
    out = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None, streamer=streamer)
    assert torch.equal(torch.cat(streamer.tokens), out[0].cpu())


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_the_stop_check_is_deferred_on_cuda_with_the_tokens_of_a_check_at_every_step(family, monkeypatch):
    """modeling/stop_check.py: the loop reads its stop flag a step late (never waiting for the GPU); an end token
    or a stopping criterion costs one more step, which generate drops, and a streamer still gets every token."""
    from transformers.generation import utils as generation_utils

    model = build(family)
    ids = prompt(1)
    kinds = []  # the class of each loop's stop check
    init = generation_utils.StopCheck.__init__
    monkeypatch.setattr(generation_utils.StopCheck, "__init__", lambda self, streamer=None: (
        kinds.append(type(self)), init(self, streamer))[1])  # fmt: skip
    free = model.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=None)
    assert kinds[-1].__name__ == "StateXDeferredStopCheck"
    cases = [dict(eos_token_id=int(free[0, 15]), pad_token_id=0),
             dict(eos_token_id=None, stopping_criteria=StoppingCriteriaList([StopAfter(14)]))]  # fmt: skip
    for kwargs in cases:
        streamer = Collect()
        deferred = model.generate(ids, max_new_tokens=20, do_sample=False, streamer=streamer, **kwargs)
        monkeypatch.setenv("STATEX_DEFER_STOP_CHECK", "0")
        every_step = model.generate(ids, max_new_tokens=20, do_sample=False, **kwargs)
        monkeypatch.delenv("STATEX_DEFER_STOP_CHECK")
        assert kinds[-1] is generation_utils.StopCheck
        assert torch.equal(deferred, every_step) and deferred.shape[1] < ids.shape[1] + 20
        assert torch.equal(torch.cat(streamer.tokens), deferred[0].cpu())


@pytest.mark.parametrize("name", ["cache", "past_key_values", "cache_params"])
def test_a_passed_in_cache_is_never_run_past_the_sequence_on_cuda(name):
    """A cache passed in outlives generate, under any of its names (transformers before 5.24 marks it as the user's
    only under the class's own name): its loop checks for the end at every step, so a sequence that stops on an end
    token leaves the cache at the tokens it returned, not one step further (modeling/stop_check.py)."""
    from statex_hf.modeling.cache import tokens_seen

    model = build("gla")
    ids = prompt(1)
    first = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, return_dict_in_generate=True)
    mask = torch.ones_like(first.sequences)
    free = model.generate(first.sequences, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=None)
    eos = int(free[0, first.sequences.shape[1] + 2])
    cache = returned_cache(first)
    out = model.generate(first.sequences, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=eos,
                         pad_token_id=0, **{name: cache})  # fmt: skip
    assert int(out[0, -1]) == eos and out.shape[1] < first.sequences.shape[1] + 8
    assert tokens_seen(cache) == out.shape[1] - 1  # every token but the last one fed, none past it


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_a_second_generate_leaves_a_kept_cache_as_it_was(family):
    """Two caches of one batch size take turns on the same graph: the first keeps its own state."""
    model = build(family, torch.float32)
    first = model.generate(prompt(), max_new_tokens=5, do_sample=False, eos_token_id=None, return_dict_in_generate=True)
    cache = returned_cache(first)
    kept = [t.clone() for t in cache.state_tensors()]
    model.generate(prompt(), max_new_tokens=5, do_sample=False, eos_token_id=None)
    for before, after in zip(kept, cache.state_tensors()):
        assert torch.equal(before, after)
    twin = StateXCache(model.config)
    copy_states(cache, twin)
    twin.seen_tokens = cache.seen_tokens
    kwargs = dict(max_new_tokens=4, do_sample=False, eos_token_id=None)
    graphs = model.generate(first.sequences, cache=cache, **kwargs)
    eager = model.generate(first.sequences, cache=twin, disable_compile=True, **kwargs)
    assert torch.equal(graphs, eager)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_steps_a_graph_cannot_serve_run_eagerly(family):
    """Hidden states asked for, or weights moved after a capture: right results either way."""
    model = build(family, torch.float32)
    ids = prompt()
    kwargs = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, return_dict_in_generate=True)
    graphs = model.generate(ids, output_hidden_states=True, **kwargs)
    eager = model.generate(ids, output_hidden_states=True, disable_compile=True, **kwargs)
    assert torch.equal(graphs.sequences, eager.sequences)
    assert all(s[-1].shape[1] == 1 for s in graphs.hidden_states[1:])
    model.generate(ids, max_new_tokens=3, do_sample=False, eos_token_id=None)  # captured at fp32
    model.to(torch.bfloat16)  # new parameter tensors: the old graph must not be replayed
    graphs, eager = generate_both(model, ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert torch.equal(graphs, eager)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_a_capture_the_forward_breaks_falls_back_on_the_callers_stream(family, monkeypatch):
    """A host sync inside the captured forward invalidates the capture: generate decodes eagerly, with the
    same tokens, every later kernel runs on the caller's stream again (not on torch's capture stream), and
    random ops and later captures work (the suite runs this test in a process of its own: see
    benchmarks/gpu_session.sh)."""
    model = build(family, torch.float32)
    block = type(model.get_decoder().layers[0])
    forward = block.forward

    def syncing_forward(self, *args, **kwargs):
        if torch.cuda.is_current_stream_capturing():
            torch.ones(1, device=DEVICE).item()  # not allowed while capturing
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(block, "forward", syncing_forward)
    decoder = decode_graphs_for(model)
    decoder.clear()
    caller = torch.cuda.current_stream()
    ids = prompt()
    graphs = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None)
    assert decoder.last_capture_seconds is None and decoder._failed
    assert torch.cuda.current_stream() == caller
    eager = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, disable_compile=True)
    assert torch.equal(graphs, eager)
    # The process goes on as before: random ops on the device, sampling, and a later model's capture.
    torch.randn(4, device=DEVICE)
    monkeypatch.undo()
    fresh = build(family, torch.float32)
    graphs, eager = generate_both(fresh, ids, max_new_tokens=6, do_sample=True, top_k=5, eos_token_id=None, seed=1)
    assert torch.equal(graphs, eager)
