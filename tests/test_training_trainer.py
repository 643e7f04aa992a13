"""``posttrain`` on ``transformers.Trainer``: packing, freezing, accumulation, chunked loss, resume, LoRA.

Tiny models on pre-tokenized documents of uneven length (so rows hold different numbers of
labels and ``num_items_in_batch`` matters); a few steps each, fp32 on CPU.
"""

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from tiny_models import VOCAB, build
from transformers import AutoModelForCausalLM, TrainerCallback

from statex_hf.training import posttrain
from statex_hf.training.families import layout_of

# Tiny tensors: one thread is faster than two fighting over a shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


SEQ = 24
# Fast settings for a few steps; the recipe's optimizer (AdamW 0.9/0.95, wd 0.1, clip 1.0) stays.
FAST = dict(
    seq_len=SEQ,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=1,
    learning_rate=1e-2,
    warmup_steps=0,
    logging_steps=1,
    save_strategy="no",
    bf16=False,
    seed=0,
)


def documents(n=40, seed=0):
    """Documents of a repeating pattern (learnable in a few steps), lengths 5..20."""
    g = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(n):
        length = int(torch.randint(5, 21, (1,), generator=g))
        start = int(torch.randint(3, VOCAB - 8, (1,), generator=g))
        docs.append([2] + [start + (i % 5) for i in range(length)])  # "BOS", then a cycle of 5 tokens
    return Dataset.from_dict({"input_ids": docs})


def model(family, statex_layers=(), seed=0, **overrides):
    torch.manual_seed(seed)
    return build(family, statex_layers=list(statex_layers), **overrides).train()


def losses(trainer):
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


def params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


EXPANDED = [("gla", [0]), ("mamba2", [1])]


@pytest.mark.parametrize("family,statex_layers", EXPANDED)
def test_trainer_learns_packed_documents_and_the_model_sees_their_boundaries(tmp_path, family, statex_layers):
    net = model(family, statex_layers)
    seen = []
    net.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs.get("position_ids")), with_kwargs=True)
    trainer = posttrain(net, documents(), str(tmp_path), max_steps=8, **FAST)
    curve = losses(trainer)
    assert len(curve) == 8 and all(torch.isfinite(torch.tensor(curve)))
    assert sum(curve[-3:]) / 3 < 0.95 * sum(curve[:3]) / 3, curve
    position_ids = seen[0]
    assert position_ids is not None and position_ids.shape == (2, SEQ)
    assert int((position_ids[:, 1:] == 0).sum()) > 0, "documents start inside packed rows"
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()


@pytest.mark.parametrize("family", ["gla", "mamba2"])
@pytest.mark.parametrize("mode", ["expanded", "mixers"])
def test_freezing_trains_only_the_chosen_parameters(tmp_path, family, mode):
    statex_layers = [0] if family == "gla" else [1]
    net = model(family, statex_layers)
    before = params(net)
    posttrain(net, documents(), str(tmp_path), freeze=mode, max_steps=2, save=False, **FAST)
    layout = layout_of(net)
    if mode == "expanded":
        trainable = [layout.block(i) + "." for i in statex_layers]
    else:
        trainable = [m + "." for i in range(2) for m in layout.mixer_modules(i)]
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    expected = {n for n in before if any(n.startswith(t) for t in trainable)}
    assert changed and changed <= expected, sorted(changed - expected)
    assert not any(n.startswith(("lm_head", "model.embeddings", "backbone.embeddings")) for n in changed)


def test_freezing_the_expanded_layers_of_an_unexpanded_model_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="statex_layers is empty"):
        posttrain(model("gla"), documents(), str(tmp_path), freeze="expanded", max_steps=1, **FAST)


@pytest.mark.parametrize("family,statex_layers", EXPANDED)
@pytest.mark.parametrize("chunked", [None, 7])
def test_gradient_accumulation_equals_the_larger_batch(tmp_path, family, statex_layers, chunked):
    """Two micro-batches of 2 and one batch of 4 give the same steps (num_items_in_batch, chunked loss or not)."""
    runs = []
    for batch, accumulation in ((4, 1), (2, 2)):
        net = model(family, statex_layers)
        args = dict(FAST, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation)
        trainer = posttrain(
            net, documents(), str(tmp_path / str(batch)), chunked_loss_size=chunked, max_steps=3, save=False, **args
        )
        runs.append((losses(trainer), params(net)))
    (loss_a, params_a), (loss_b, params_b) = runs
    torch.testing.assert_close(torch.tensor(loss_a), torch.tensor(loss_b), atol=1e-5, rtol=1e-5)
    for name in params_a:
        torch.testing.assert_close(params_a[name], params_b[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family,statex_layers", EXPANDED)
def test_chunked_loss_trains_exactly_like_the_plain_loss(tmp_path, family, statex_layers):
    runs = []
    for chunk in (None, 5):
        net = model(family, statex_layers)
        trainer = posttrain(net, documents(), str(tmp_path), chunked_loss_size=chunk, max_steps=3, save=False, **FAST)
        assert net.config.chunked_loss_size is None, "the chunk size is a training setting, not saved"
        runs.append((losses(trainer), params(net)))
    torch.testing.assert_close(torch.tensor(runs[0][0]), torch.tensor(runs[1][0]), atol=1e-5, rtol=1e-5)
    for name, value in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][name], value, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family,statex_layers", EXPANDED)
def test_chunked_loss_of_a_packed_batch_equals_plain_in_value_and_gradients(family, statex_layers):
    net = model(family, statex_layers)
    ids = torch.randint(0, VOCAB, (2, 19))
    position_ids = torch.cat([torch.arange(7), torch.arange(12)]).repeat(2, 1)
    labels = ids.masked_fill(position_ids == 0, -100)
    results = []
    for chunk in (None, 6):
        net.config.chunked_loss_size = chunk
        net.zero_grad()
        loss = net(ids, position_ids=position_ids, labels=labels, num_items_in_batch=50).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-6, rtol=1e-5)


class StopAt(TrainerCallback):
    """Ends training after ``step`` (as a crash right after a checkpoint would)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("family,statex_layers", EXPANDED)
def test_resume_from_checkpoint_continues_the_same_loss_curve(tmp_path, family, statex_layers):
    args = dict(FAST, max_steps=6, save_strategy="steps", save_steps=3, save_total_limit=None)
    whole = model(family, statex_layers)
    full = losses(posttrain(whole, documents(), str(tmp_path / "whole"), save=False, **args))

    out = str(tmp_path / "interrupted")
    first = losses(posttrain(model(family, statex_layers), documents(), out, callbacks=[StopAt(3)], save=False, **args))
    assert (tmp_path / "interrupted" / "checkpoint-3").is_dir()
    # A fresh process: another initialization; weights, optimizer, schedule and data position come from the checkpoint.
    resumed_model = model(family, statex_layers, seed=1)
    second = losses(posttrain(resumed_model, documents(), out, resume_from_checkpoint=True, save=False, **args))

    # The resumed run's log history starts with the checkpoint's (steps 1-3), then its own steps 4-6.
    assert len(full) == 6 and len(first) == 3 and len(second) == 6 and second[:3] == first
    torch.testing.assert_close(torch.tensor(second), torch.tensor(full), atol=1e-5, rtol=1e-5)
    for name, value in params(whole).items():
        torch.testing.assert_close(dict(resumed_model.named_parameters())[name].detach(), value, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family,statex_layers", EXPANDED)
def test_lora_adapter_trains_saves_loads_and_merges(tmp_path, family, statex_layers):
    net = model(family, statex_layers)
    base_before = params(net)
    trainer = posttrain(net, documents(), str(tmp_path), lora=True, merge_lora=False, max_steps=3, **FAST)
    peft_model = trainer.model
    assert isinstance(peft_model, PeftModel)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    layout = layout_of(net)
    expanded_mixer = layout.mixer_modules(statex_layers[0])[0]
    # LoRA everywhere except the expanded layer's mixer, which trains in full (modules_to_save).
    assert any("lora_A" in n for n in trainable)
    assert any(f"{expanded_mixer}.modules_to_save" in n for n in trainable)
    assert not any(f"{expanded_mixer}." in n and "lora_" in n for n in trainable)
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert (tmp_path / "adapter_model.safetensors").exists() and (tmp_path / "adapter_config.json").exists()

    peft_model.eval()
    ids = torch.randint(0, VOCAB, (2, 13))
    with torch.no_grad():
        trained_logits = peft_model(input_ids=ids).logits
    # Load the adapter onto a fresh copy of the same base model.
    fresh = model(family, statex_layers)
    for name, value in params(fresh).items():
        assert torch.equal(value, base_before[name])
    loaded = PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
    merged = loaded.merge_and_unload().eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, trained_logits, atol=1e-5, rtol=1e-4)
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_lora_merge_writes_a_plain_model_that_loads_with_auto(tmp_path):
    net = model("gla", [0])
    trainer = posttrain(net, documents(), str(tmp_path), lora={"r": 4}, merge_lora=True, max_steps=2, **FAST)
    ids = torch.randint(0, VOCAB, (1, 9))
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, trainer.model(input_ids=ids).logits, atol=1e-5, rtol=1e-4)


def test_lora_and_freeze_together_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="LoRA already freezes"):
        posttrain(model("gla", [0]), documents(), str(tmp_path), lora=True, freeze="mixers", **FAST)


def test_streamed_text_trains_for_max_steps_and_needs_them(tmp_path):
    from statex_hf.training.demo import build_tokenizer, corpus_path, corpus_texts

    tokenizer = build_tokenizer(corpus_texts(), vocab_size=VOCAB + 256)
    net = model("gla", [0], vocab_size=len(tokenizer))
    args = dict(FAST, seq_len=32)
    trainer = posttrain(net, corpus_path(), str(tmp_path), tokenizer=tokenizer, streaming=True, max_steps=3, **args)
    assert trainer.state.global_step == 3 and len(losses(trainer)) == 3
    with pytest.raises(ValueError, match="streaming data has no length"):
        posttrain(net, corpus_path(), str(tmp_path), tokenizer=tokenizer, streaming=True, **args)
