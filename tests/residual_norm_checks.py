"""What the tests of a block's residual add fused into the next norm share, for both families
(``test_gla_residual_norm.py``, ``test_mamba2_residual_norm.py``, ``test_mamba2_residual_stream.py`` and their GPU
twins): decode steps after a prompt, fused or not, and what they leave; a training step; hooks that change a block's
input or output; Mamba2's block as it was before issue 20."""

from __future__ import annotations

import torch
from launched_ops import LaunchedOps
from statex_hf.kernels import dispatch
from statex_hf.modeling.cache import conv_state, recurrent_state
from tiny_models import returned_cache


def cache_states(model, cache) -> list[torch.Tensor]:
    """Copies of every layer's recurrent state and first convolution window (where the layer has one)."""
    layers = range(model.config.num_hidden_layers)
    windows = [conv_state(cache, i) for i in layers]
    return [recurrent_state(cache, i).clone() for i in layers] + [w.clone() for w in windows if w is not None]


def prefilled(model, ids, monkeypatch):
    """The cache after ``ids[:, :-1]``, run on torch (the interpreter's ``tl.dot`` misreads bf16)."""
    with torch.no_grad(), monkeypatch.context() as m:
        m.setattr(dispatch, "use_triton", lambda *tensors: False)
        return returned_cache(model(ids[:, :-1], use_cache=True))


def decode(model, ids, monkeypatch, steps=2, unfused=False):
    """Logits and every layer's caches after ``steps`` decode steps after the prompt, and the ops of the last step
    (``unfused``: each add and each norm its own kernel, as before the fusion)."""
    cache = prefilled(model, ids, monkeypatch)
    logits = []
    with torch.no_grad(), monkeypatch.context() as m:
        if unfused:
            m.setattr(dispatch, "one_launch_add_rmsnorm", lambda *args, **kwargs: None)
        for step in range(steps):
            token = ids[:, -1:] + step
            with LaunchedOps(m) as seen:
                out = model(token, cache=cache, use_cache=True, logits_to_keep=1)
            logits.append(out.logits)
    return seen, [*logits, *cache_states(model, cache)]


def decode_step(model, ids) -> list[torch.Tensor]:
    """The logits and caches of one decode step after the prompt ``ids[:, :-1]``, on whatever device ``model`` is."""
    with torch.no_grad():
        cache = returned_cache(model(ids[:, :-1], use_cache=True))
        logits = model(ids[:, -1:], cache=cache, use_cache=True, logits_to_keep=1).logits
    return [logits, *cache_states(model, cache)]


def assert_all_equal(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and torch.equal(g, w)


def train_step(model, ids):
    """Logits and every parameter's gradient of one forward and backward."""
    model.zero_grad()
    logits = model(ids).logits
    logits.float().pow(2).mean().backward()
    return [logits] + [p.grad for p in model.parameters()]


def double_in_place(module, args, output):
    output.mul_(2)  # a forward hook that changes the block's output in place (same tensor, new version)


def double_new(module, args):
    return (2 * args[0], *args[1:])  # a pre-hook that hands the block a new tensor


def previous_mamba2_block_forward(self, hidden_states, attention_mask=None, cache=None, cu_seqlens=None):
    """``StateXMamba2Block.forward`` before issue 20's changes: a cast for the norm, torch's add."""
    residual = hidden_states.float() if self.residual_in_fp32 else hidden_states
    normed = self.norm(hidden_states.to(self.norm.weight.dtype))
    return residual + self.mixer(normed, attention_mask, cache, cu_seqlens)


def mamba2_of_1_3b_shapes(device, dtype, layers=2):
    """Mamba2-1.3B's layer shapes (hidden 2048, 64 heads of 64), the second layer expanded (N 512), and a small
    vocabulary, seeded."""
    from statex_hf import StateXMamba2Config, StateXMamba2ForCausalLM

    config = StateXMamba2Config(
        hidden_size=2048, num_heads=64, head_dim=64, state_size=128, n_groups=1, num_hidden_layers=layers,
        vocab_size=512, statex_layers=[1], statex_state_size=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return StateXMamba2ForCausalLM(config).to(device, dtype).eval()


def decode_after_change(model, decoder, case: str, monkeypatch, hooked_norm=None):
    """``decode`` fused and unfused (the ops of the fused one's last step, both results) after ``case``'s change to
    ``decoder``: "hook-on-…" a forward hook on ``hooked_norm`` (it counts its calls in the returned list),
    "in-place-on-block-output" the first block's output doubled in place, "new-block-input" the second block handed a
    new tensor, "inference-mode" the steps in ``torch.inference_mode``, "layers-reversed" the blocks run backwards."""
    from torch import nn

    blocks, calls = decoder.layers, []
    if case.startswith("hook-on"):
        hooked_norm.register_forward_hook(lambda module, args, out: calls.append(case))
    if case == "in-place-on-block-output":
        blocks[0].register_forward_hook(double_in_place)
    if case == "new-block-input":
        blocks[1].register_forward_pre_hook(double_new)
    if case == "layers-reversed":
        decoder.layers = nn.ModuleList(list(blocks)[::-1])
    ids = torch.randint(3, model.config.vocab_size - 2, (1, 6))

    def run(**kwargs):
        if case != "inference-mode":
            return decode(model, ids, monkeypatch, **kwargs)
        with torch.inference_mode():
            return decode(model, ids, monkeypatch, **kwargs)

    seen, got = run()
    return seen, got, run(unfused=True)[1], calls


def assert_trains_as_before(model, block_class, previous_forward, monkeypatch):
    """One training step of ``model`` (logits and every gradient) equals that of its blocks with ``previous_forward``
    (``block_class.forward`` before the fusion), and launches no add + norm kernel."""
    ids = torch.randint(3, model.config.vocab_size, (2, 6))
    with LaunchedOps(monkeypatch) as seen:
        got = train_step(model, ids)
    assert "norm.add_fwd" not in seen.triton
    monkeypatch.setattr(block_class, "forward", previous_forward)
    want = train_step(model, ids)
    for g, w in zip(got, want, strict=True):
        assert g is not None and torch.equal(g, w)


def assert_close_to_torch(model, ids, monkeypatch, got):
    """``got`` (``decode``'s results on the kernels) close to the same steps on torch's ops (the reference)."""
    with monkeypatch.context() as m:
        m.setattr(dispatch, "use_triton", lambda *tensors: False)
        _, on_torch = decode(model, ids, m)
    fp32 = model.dtype == torch.float32
    tolerance = {"rtol": 1e-4, "atol": 1e-4} if fp32 else {"rtol": 2e-2, "atol": 2e-2}
    for g, t in zip(got, on_torch, strict=True):
        torch.testing.assert_close(g, t, **tolerance)


def greedy_with_logits(model, ids, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``generate``'s 12 greedy tokens after ``ids`` and their logits, its captured decode steps made anew."""
    from statex_hf.modeling.decode_graphs import decode_graphs_for

    decode_graphs_for(model).clear()
    out = model.generate(
        ids, max_new_tokens=12, do_sample=False, eos_token_id=None, return_dict_in_generate=True, output_logits=True,
        **kwargs,
    )  # fmt: skip
    return out.sequences, torch.stack(out.logits)
