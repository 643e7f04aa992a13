"""A first capture compiles its new Triton kernels on threads, before the step runs (``kernels/parallel_compile.py``).

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
capture = decode_graphs.DecodeGraphs._capture
def marked(*args, **kwargs):
    phase[0] = "capture"
    try:
        return capture(*args, **kwargs)
    finally:
        phase[0] = "after"
decode_graphs.DecodeGraphs._capture = marked
ids = torch.randint(3, 256, (1, 12), device="cuda")
kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
graphs = model.generate(ids, **kwargs)
seconds = decode_graphs.decode_graphs_for(model).last_capture_seconds
eager = model.generate(ids, disable_compile=True, **kwargs)
print(json.dumps(dict(compiles=compiles, messages=messages, seconds=seconds, same=torch.equal(graphs, eager))))
"""


def capture_in_a_fresh_process(family: str, threads: int, tmp_path) -> dict:
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / f"triton-{family}-{threads}"))
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run(
        [sys.executable, "-P", "-c", CAPTURE, family, str(threads)], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_a_first_capture_compiles_its_kernels_on_threads_and_decodes_the_eager_tokens(family, tmp_path):
    run = capture_in_a_fresh_process(family, 4, tmp_path)
    assert run["seconds"] is not None and run["same"], run
    in_capture = [thread for phase, thread in run["compiles"] if phase == "capture"]
    # The step's PDL variants are new to the capture: all of them compile on the pool's threads, none when the
    # warm-up and the captured calls launch them.
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
