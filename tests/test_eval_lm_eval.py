"""StateX models under lm-eval-harness' ``HFLM`` (what ``lm_eval --model hf --model_args pretrained=DIR`` builds).

The two request types every harness task reduces to are called directly: no task download.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from eval_fixtures import word_tokenizer

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from statex_hf import StateXGLAConfig, StateXGLAForCausalLM, StateXMamba2Config, StateXMamba2ForCausalLM  # noqa: E402
from statex_hf.cli import main as statex_cli  # noqa: E402


def _tiny_statex(kind: str, tokenizer):
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if kind == "gla":  # layer 0 expanded (heads merged), layer 1 as pretrained
        config = StateXGLAConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_heads=2, statex_layers=[0], **ids
        )
        return StateXGLAForCausalLM(config)
    config = StateXMamba2Config(  # layer 1's state grown from 8 to 16
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_heads=4, head_dim=16, n_groups=1,
        state_size=8, statex_layers=[1], statex_state_size=16, chunk_size=16, pad_token_id=tokenizer.pad_token_id,
        **ids,
    )  # fmt: skip
    return StateXMamba2ForCausalLM(config)


@pytest.fixture(scope="module", params=["gla", "mamba2"])
def checkpoint(request, tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(f"statex-{request.param}")
    tokenizer = word_tokenizer()
    model = _tiny_statex(request.param, tokenizer).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


@pytest.fixture(scope="module")
def harness(checkpoint):
    path, _, _ = checkpoint
    return HFLM(pretrained=str(path), device="cpu", dtype="float32", batch_size=2, trust_remote_code=True)


def _continuation_logprob(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """Sum of log p(continuation | context) and whether every continuation token is the argmax."""
    context_ids = tokenizer(context)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    assert whole[: len(context_ids)] == context_ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([whole])).logits[0].float()
    logprobs = logits.log_softmax(-1)[len(context_ids) - 1 : -1]
    targets = torch.tensor(whole[len(context_ids) :])
    greedy = bool((logprobs.argmax(-1) == targets).all())
    return logprobs.gather(-1, targets[:, None]).sum().item(), greedy


def test_harness_loads_the_statex_class(checkpoint, harness):
    _, model, _ = checkpoint
    assert type(harness.model) is type(model)
    assert harness.model.config.statex_layers == model.config.statex_layers


def test_the_harness_knows_statex_models_as_causal_lms_without_remote_code(checkpoint, caplog):
    """``HFLM`` picks its backend from transformers' causal-LM names; without them it warns and guesses."""
    path, _, _ = checkpoint
    with caplog.at_level(logging.WARNING):
        lm = HFLM(pretrained=str(path), device="cpu", dtype="float32", batch_size=1)
    assert lm.backend == "causal"
    assert not [r.getMessage() for r in caplog.records if "neither marked as CausalLM" in r.getMessage()]


def test_loglikelihood_equals_the_model_own_logprob(checkpoint, harness):
    _, model, tokenizer = checkpoint
    pairs = [("The river was slow and brown", " under the bridge"), ("A garden teaches patience", " .")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    results = harness.loglikelihood(requests)
    assert len(results) == 2
    for (context, continuation), (logprob, greedy) in zip(pairs, results):
        expected, expected_greedy = _continuation_logprob(model, tokenizer, context, continuation)
        assert logprob == pytest.approx(expected, abs=1e-3)
        assert greedy == expected_greedy


def test_generate_until_continues_greedily_and_stops(checkpoint, harness):
    _, model, tokenizer = checkpoint
    contexts = ["The old library kept its windows open", "Bread begins with flour"]
    requests = [
        Instance("generate_until", {}, (c, {"until": ["</s>"], "max_gen_toks": 6}), i) for i, c in enumerate(contexts)
    ]
    outputs = harness.generate_until(requests)
    assert len(outputs) == 2 and all(isinstance(o, str) for o in outputs)
    for context, output in zip(contexts, outputs):
        ids = torch.tensor([tokenizer(context)["input_ids"]])
        expected = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1] :]
        assert output.strip() == tokenizer.decode(expected, skip_special_tokens=True).strip()


# What `lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True` does, in a process where
# `statex_hf` cannot be imported: the converted folder's own model code must carry it.
_HARNESS_WITHOUT_PACKAGE = """
import json, sys
sys.modules["statex_hf"] = None  # as if the package were not installed
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
out = {}
for path in sys.argv[1:]:
    lm = HFLM(pretrained=path, device="cpu", dtype="float32", batch_size=1, trust_remote_code=True)
    ll = lm.loglikelihood([Instance("loglikelihood", {}, ("The river was slow", " and brown"), 0)])
    until = {"until": ["</s>"], "max_gen_toks": 4}
    gen = lm.generate_until([Instance("generate_until", {}, ("Bread begins", until), 0)])
    out[path] = {"module": type(lm.model).__module__, "loglikelihood": ll[0][0], "generated": gen[0]}
print(json.dumps(out))
"""


def _unexpanded_source(kind: str, tokenizer, path) -> None:
    """A source checkpoint in the public format `statex-hf convert` reads (fla GLA / transformers Mamba2)."""
    model = _tiny_statex(kind, tokenizer)
    model.config.statex_layers = []
    model = type(model)(model.config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    for key in ("statex_layers", "statex_num_heads", "statex_state_size", "chunked_loss_size", "auto_map"):
        config.pop(key, None)
    config["model_type"] = kind
    (path / "config.json").write_text(json.dumps(config))


def test_converted_checkpoints_run_in_lm_eval_through_their_remote_code_alone(tmp_path):
    tokenizer = word_tokenizer()
    outputs = []
    for kind in ("gla", "mamba2"):
        _unexpanded_source(kind, tokenizer, tmp_path / f"{kind}-source")
        assert statex_cli(["convert", kind, str(tmp_path / f"{kind}-source"), str(tmp_path / kind), "--quiet"]) == 0
        outputs.append(str(tmp_path / kind))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run(
        [sys.executable, "-c", _HARNESS_WITHOUT_PACKAGE, *outputs], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for path in outputs:
        assert results[path]["module"].startswith("transformers_modules.")  # the folder's code, not statex_hf
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        expected, _ = _continuation_logprob(model, tokenizer, "The river was slow", " and brown")
        assert results[path]["loglikelihood"] == pytest.approx(expected, abs=1e-3)
        assert isinstance(results[path]["generated"], str)
