"""What GLA's one-token step kernel takes in its launch (``kernels/gla/fused_recurrent.py``; issue 20: a B = 1 decode
launched each on its own): the gate's up projection before it (``LowRankGate``) and the output gate's norm after it
(``GATED_NORM``). A model's decode step against the same step with their own launches
(``GLA_NORM_IN_STEP_MAX_ROWS = 0``, ``_gate_in_step`` off), under the interpreter; the kernel itself against the
GEMV and the norm kernel is in ``test_gla_step_kernel.py``."""

from __future__ import annotations

import pytest
import torch
from residual_norm_checks import assert_all_equal, decode
from statex_hf.kernels import dispatch
from tiny_models import VOCAB, build

BF16 = torch.bfloat16
pytestmark = pytest.mark.usefixtures("on_cuda_dispatch")


def decoded(model, ids, monkeypatch, apart=False):
    with monkeypatch.context() as m:
        if apart:
            m.setattr(dispatch, "GLA_NORM_IN_STEP_MAX_ROWS", 0)
            m.setattr(dispatch, "_gate_in_step", lambda *args: False)
        return decode(model, ids, m)


@pytest.mark.parametrize("fields", [{}, {"statex_layers": [1]}], ids=["heads", "merged"])
def test_a_one_row_step_takes_its_gate_projection_and_output_norm_in_its_launch(monkeypatch, fields):
    model = build("gla", num_hidden_layers=2, **fields).to(BF16)
    ids = torch.randint(3, VOCAB - 2, (1, 6))
    seen, got = decoded(model, ids, monkeypatch)
    apart_seen, want = decoded(model, ids, monkeypatch, apart=True)
    # Each layer's gate up GEMV and output gate norm leave the step: two kernels fewer per layer.
    assert len(seen.kernels) == len(apart_seen.kernels) - 2 * 2
    assert seen.triton.count("linear.gemv") == apart_seen.triton.count("linear.gemv") - 2
    assert seen.triton.count("norm.fwd") == apart_seen.triton.count("norm.fwd") - 2
    # The norm is the norm kernel's bit for bit (test_gla_step_kernel.py); the gate's sums over the rank may be taken
    # in another order than the GEMV's: logits and caches a rounding apart at most, the same greedy tokens.
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-2)
    assert torch.equal(got[0].argmax(-1), want[0].argmax(-1)) and torch.equal(got[1].argmax(-1), want[1].argmax(-1))


def test_more_rows_and_hooked_modules_keep_their_own_launches(monkeypatch):
    model = build("gla", num_hidden_layers=1).to(BF16)
    ids = torch.randint(3, VOCAB - 2, (2, 6))
    seen, _ = decoded(model, ids, monkeypatch)  # two sequences: the output norm's own launch
    assert seen.triton.count("norm.fwd") == 2  # and the attention norm's (at more rows, the MLP's runs with its add)
    mixer = model.model.layers[0].attn
    calls = []
    for module in (mixer.g_norm_swish_gate, mixer.gk_proj[1]):
        module.register_forward_hook(lambda module, args, output: calls.append(module))
    seen, got = decoded(model, ids[:1], monkeypatch)
    assert len(calls) == 2 * 3  # the prompt and two steps: the hooks see every call
    _, want = decoded(model, ids[:1], monkeypatch, apart=True)
    assert_all_equal(got, want)


def test_only_the_mixers_own_norm_class_goes_into_the_step():
    model = build("gla", num_hidden_layers=1)
    mixer = model.model.layers[0].attn
    gate = torch.zeros(1, 1, mixer.num_heads, mixer.head_v_dim)
    assert mixer._output_norm_for_step(gate)["norm_weight"] is mixer.g_norm_swish_gate.weight
    norm = mixer.g_norm_swish_gate
    norm.__class__ = type("OtherNorm", (type(norm),), {})  # a subclass may compute something else: called as a module
    assert mixer._output_norm_for_step(gate) is None
