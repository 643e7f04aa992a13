"""A first ``generate`` compiles its decode step's new Triton kernels on threads (``kernels/parallel_compile.py``):
while the prompt's forward runs (``DecodeGraphs.compile_ahead``), or else in the first capture, before the step runs.

Each case runs in a process of its own with an empty Triton cache (``TRITON_CACHE_DIR``), so every kernel of the
step is compiled in it: in this pytest process other tests compiled them already.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CAPTURE = """
import json, logging, sys, threading, torch
from triton import knobs
from statex_hf.modeling import decode_graphs
from statex_hf import StateXGLAConfig, StateXGLAForCausalLM, StateXMamba2Config, StateXMamba2ForCausalLM

family, threads = sys.argv[1], int(sys.argv[2])
decode_graphs.COMPILE_THREADS = threads
if family == "gla":
    config = StateXGLAConfig(hidden_size=256, num_heads=4, num_hidden_layers=3, vocab_size=256, statex_layers=[1])
    model = StateXGLAForCausalLM(config)
else:
    config = StateXMamba2Config(num_heads=8, head_dim=32, hidden_size=128, state_size=64, num_hidden_layers=3,
                                n_groups=1, vocab_size=256, chunk_size=64, statex_layers=[1], statex_state_size=128)
    model = StateXMamba2ForCausalLM(config)
torch.manual_seed(0)
model = model.to("cuda", torch.bfloat16).eval()
phase, compiles, messages = ["before"], [], []
log = logging.Handler()
log.emit = lambda record: messages.append(record.getMessage())
logging.getLogger("transformers.statex_hf.kernels.parallel_compile").addHandler(log)
logging.getLogger("transformers.statex_hf.kernels.parallel_compile").setLevel(logging.INFO)
knobs.runtime.jit_post_compile_hook = lambda **kw: compiles.append((phase[0], threading.current_thread().name))
def marked(method, name):
    def during(*args, **kwargs):
        phase[0] = name
        try:
            return method(*args, **kwargs)
        finally:
            phase[0] = "after"
    return during
decode_graphs.DecodeGraphs._capture = marked(decode_graphs.DecodeGraphs._capture, "capture")
model._prefill = marked(model._prefill, "prompt")
ids = torch.randint(3, 256, (1, 12), device="cuda")
kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
graphs = model.generate(ids, **kwargs)
seconds = decode_graphs.decode_graphs_for(model).last_capture_seconds
eager = model.generate(ids, disable_compile=True, **kwargs)
print(json.dumps(dict(compiles=compiles, messages=messages, seconds=seconds, same=torch.equal(graphs, eager))))
"""


def capture_in_a_fresh_process(family: str, threads: int, tmp_path, ahead: bool = True) -> dict:
    """A first ``generate`` in a fresh process, its Triton cache empty: as the package runs by default (the step
    compiled ahead), or with ``ahead=False`` as with ``STATEX_COMPILE_AHEAD=0`` (compiled in the capture)."""
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / f"triton-{family}-{threads}"))
    env.pop("TRITON_INTERPRET", None)
    env["STATEX_COMPILE_AHEAD"] = "1" if ahead else "0"
    result = subprocess.run(
        [sys.executable, "-P", "-c", CAPTURE, family, str(threads)], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_the_decode_steps_kernels_compile_on_threads_while_the_prompts_forward_runs(family, tmp_path):
    run = capture_in_a_fresh_process(family, 4, tmp_path)  # compiled ahead, the default
    assert run["seconds"] is not None and run["same"], run
    on_threads = [phase for phase, thread in run["compiles"] if thread.startswith("statex-compile")]
    # The step's PDL variants are new to the step: they compile on the pool's threads, started before the prompt's
    # forward, and the capture waits for what is left of them. It compiles nothing itself: not where it launches
    # them, nor on a pool of its own (its log line would be a second one).
    assert len(on_threads) >= 3 and "prompt" in on_threads, run
    assert ("capture", "MainThread") not in run["compiles"], run
    said = f"Compiled {len(on_threads)} kernels on 4 threads in "
    assert len(run["messages"]) == 1 and run["messages"][0].startswith(said), run


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_a_first_capture_compiles_what_is_not_compiled_ahead_on_threads(family, tmp_path):
    run = capture_in_a_fresh_process(family, 4, tmp_path, ahead=False)  # STATEX_COMPILE_AHEAD=0
    assert run["seconds"] is not None and run["same"], run
    in_capture = [thread for phase, thread in run["compiles"] if phase == "capture"]
    # All of the step's new kernels compile on the pool's threads, none when the warm-up and the captured calls
    # launch them.
    assert len(in_capture) >= 3, run
    assert all(thread.startswith("statex-compile") for thread in in_capture), run
    # And the log says how many, for a user to see what a first capture's time went to.
    said = f"Compiled {len(in_capture)} kernels on 4 threads in "
    assert len(run["messages"]) == 1 and run["messages"][0].startswith(said), run


def test_one_thread_compiles_each_kernel_where_it_is_launched(tmp_path):
    run = capture_in_a_fresh_process("gla", 1, tmp_path)
    assert run["seconds"] is not None and run["same"], run
    in_capture = [thread for phase, thread in run["compiles"] if phase == "capture"]
    assert in_capture and all(thread == "MainThread" for thread in in_capture), run
    assert run["messages"] == [], run
