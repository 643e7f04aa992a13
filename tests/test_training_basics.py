"""Loss, gradient checkpointing and the chunked long-context loss behave as in transformers' models."""

import pytest
import torch
import torch.nn.functional as F
from tiny_models import VARIANTS, VOCAB, build


@pytest.mark.parametrize("family,statex_layers", VARIANTS)
def test_labels_loss_is_shifted_cross_entropy_ignoring_minus_100(family, statex_layers):
    model = build(family, statex_layers=statex_layers)
    ids = torch.randint(0, VOCAB, (2, 9))
    labels = ids.clone()
    labels[0, :3] = -100
    out = model(ids, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    summed = F.cross_entropy(
        out.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    )
    torch.testing.assert_close(model(ids, labels=labels, num_items_in_batch=40).loss, summed / 40)


def grads(model, ids):
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family,statex_layers", VARIANTS)
def test_gradient_checkpointing_gives_the_same_gradients(family, statex_layers):
    model = build(family, statex_layers=statex_layers).train()
    ids = torch.randint(0, VOCAB, (2, 10))
    plain = grads(model, ids)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_gradient_checkpointing
    calls = []
    layers = model.model.layers if family == "gla" else model.backbone.layers
    mixer = layers[0].attn if family == "gla" else layers[0].mixer
    # A pre-hook: recomputation may stop early, once every tensor backward needs exists again.
    mixer.register_forward_pre_hook(lambda *args: calls.append(1))
    checkpointed = grads(model, ids)
    assert len(calls) == 2, "the block should run again in backward (recomputation)"
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family,statex_layers", VARIANTS)
def test_chunked_loss_equals_plain_loss_in_value_and_gradients(family, statex_layers):
    model = build(family, statex_layers=statex_layers).train()
    ids = torch.randint(0, VOCAB, (2, 11))
    labels = ids.clone()
    labels[1, 4:] = -100
    model.zero_grad()
    plain = model(ids, labels=labels).loss
    plain.backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.config.chunked_loss_size = 4
    model.zero_grad()
    out = model(ids, labels=labels)
    assert out.logits is None
    out.loss.backward()
    torch.testing.assert_close(out.loss, plain)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-5)
