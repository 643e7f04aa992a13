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


def decoded(model, ids, monkeypatch, in_step_rows=1, gate_in_step=True):
    with monkeypatch.context() as m:
        m.setattr(dispatch, "GLA_NORM_IN_STEP_MAX_ROWS", in_step_rows)
        if not gate_in_step:
            m.setattr(dispatch, "_gate_in_step", lambda *args: False)
        return decode(model, ids, m)


@pytest.mark.parametrize("fields", [{}, {"statex_layers": [1]}], ids=["heads", "merged"])
def test_a_one_row_step_normalizes_in_the_step_launch_as_the_norm_would(monkeypatch, fields):
    model = build("gla", num_hidden_layers=2, **fields).to(BF16)
    ids = torch.randint(3, VOCAB - 2, (1, 6))
    seen, got = decoded(model, ids, monkeypatch)
    apart_seen, want = decoded(model, ids, monkeypatch, in_step_rows=0)
    # Each layer's output gate norm leaves the step: one kernel fewer per layer, the same logits and caches (the
    # norm's sums in one pass, in the norm kernel's order).
    assert len(seen.kernels) == len(apart_seen.kernels) - 2
    assert seen.triton.count("norm.fwd") == apart_seen.triton.count("norm.fwd") - 2
    assert_all_equal(got, want)


def test_more_rows_a_hooked_or_replaced_norm_keep_the_norms_own_launch(monkeypatch):
    model = build("gla", num_hidden_layers=2).to(BF16)
    ids = torch.randint(3, VOCAB - 2, (2, 6))
    seen, _ = decoded(model, ids, monkeypatch)  # two sequences
    # The two output norms, and the first attention norm (at more rows the others run with the adds before them).
    assert seen.triton.count("norm.fwd") == 2 + 1  # the hooked norm, the replaced one, the final norm
    ids = ids[:1]
    mixers = [layer.attn for layer in model.model.layers]
    calls = []
    mixers[0].g_norm_swish_gate.register_forward_hook(lambda module, args, output: calls.append(output))
    seen, got = decoded(model, ids, monkeypatch)
    assert len(calls) == 3  # the prompt and two steps: the hook sees every call
    assert seen.triton.count("norm.fwd") == 1 + 1  # the hooked norm, the final norm
    _, want = decoded(model, ids, monkeypatch, in_step_rows=0)
    assert_all_equal(got, want)

    class OtherNorm(type(mixers[1].g_norm_swish_gate)):
        pass

    mixers[1].g_norm_swish_gate.__class__ = OtherNorm  # a subclass may compute something else: called as a module
    seen, _ = decoded(model, ids, monkeypatch)
    assert seen.triton.count("norm.fwd") == 2 + 1  # the hooked norm, the replaced one, the final norm


@pytest.mark.parametrize("fields", [{}, {"statex_layers": [1]}], ids=["heads", "merged"])
def test_a_one_row_step_projects_its_gate_in_the_step_launch_as_the_gemv_would(monkeypatch, fields):
    model = build("gla", num_hidden_layers=2, **fields).to(BF16)
    ids = torch.randint(3, VOCAB - 2, (1, 6))
    seen, got = decoded(model, ids, monkeypatch)
    apart_seen, want = decoded(model, ids, monkeypatch, gate_in_step=False)
    # Each layer's gate up GEMV leaves the step (its sums over the rank in another order: logits and caches a
    # rounding apart at most, the same greedy tokens).
    assert seen.triton.count("linear.gemv") == apart_seen.triton.count("linear.gemv") - 2
    assert len(seen.kernels) == len(apart_seen.kernels) - 2
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-2)
    assert torch.equal(got[0].argmax(-1), want[0].argmax(-1)) and torch.equal(got[1].argmax(-1), want[1].argmax(-1))


def test_a_hooked_or_replaced_gate_projection_keeps_its_own_launch(monkeypatch):
    model = build("gla", num_hidden_layers=2).to(BF16)
    ids = torch.randint(3, VOCAB - 2, (1, 6))
    ups = [layer.attn.gk_proj[1] for layer in model.model.layers]
    calls = []
    ups[0].register_forward_hook(lambda module, args, output: calls.append(output))
    seen, got = decoded(model, ids, monkeypatch)
    assert len(calls) == 3  # the prompt and two steps: the hook sees every call
    _, want = decoded(model, ids, monkeypatch, gate_in_step=False)
    assert_all_equal(got, want)  # the hooked layer's gate is the GEMV's, the other layer's as in the step launch
    ups[1].__class__ = type("OtherLinear", (type(ups[1]),), {})  # a subclass may compute something else
    seen, got = decoded(model, ids, monkeypatch)
    _, want = decoded(model, ids, monkeypatch, gate_in_step=False)
    assert_all_equal(got, want)
    assert seen.triton.count("linear.gemv") == 2 * 2 + 2 + 1  # o_proj and down_proj a layer, both ups, the head
