"""``kernels/parallel_compile.py`` on CPU: under the Triton interpreter (nothing is compiled) the block is no block.
Its work, compiling a first capture's kernels on threads, is tested on the GPU
(``tests/gpu/test_parallel_compile_gpu.py``).
"""

import threading
import types

import torch
from launched_ops import LaunchedOps
from statex_hf.kernels import parallel_compile
from statex_hf.kernels.parallel_compile import compiled_in_parallel
from tiny_models import VOCAB, build
from triton import knobs


def test_under_the_interpreter_the_forward_in_the_block_launches_and_computes_what_it_does_outside(
    monkeypatch, on_cuda_dispatch, narrow_row_tiles
):
    model = build("gla", statex_layers=[1]).to(torch.bfloat16)
    ids = torch.randint(3, VOCAB, (1, 1))
    with torch.no_grad():
        with monkeypatch.context() as m, LaunchedOps(m) as outside:
            want = model(ids).logits
        with monkeypatch.context() as m, LaunchedOps(m) as inside, compiled_in_parallel(torch.device("cuda"), 4):
            assert knobs.runtime.jit_cache_hook is None  # nothing recorded, nothing skipped
            got = model(ids).logits
    assert inside.triton == outside.triton and outside.triton
    assert torch.equal(got, want)


def test_the_compiles_take_the_machines_cores_up_to_the_cap(monkeypatch):
    monkeypatch.setattr(parallel_compile.os, "cpu_count", lambda: 64)
    assert parallel_compile.workers() == parallel_compile.MAX_WORKERS
    monkeypatch.setattr(parallel_compile.os, "cpu_count", lambda: None)
    assert parallel_compile.workers() == 1


def test_only_the_recording_threads_launches_are_skipped_and_the_hook_before_it_is_put_back(monkeypatch):
    # Triton has one jit_cache_hook for the process: while the capture's thread records, a launch from another
    # thread must compile and run as usual, a hook installed before must still be called for it, and the block must
    # leave that hook as it found it. (Nothing here compiles or launches: the hook is called as Triton calls it.)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the block is off under the interpreter
    earlier = []
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", lambda **kwargs: earlier.append(kwargs["key"]))
    kernel = types.SimpleNamespace(jit_function=types.SimpleNamespace(preload=lambda data: None))

    def missed(key):  # Triton's call of the hook for a launch whose kernel is not compiled
        compile = {"specialization_data": f"data of {key}"}
        return knobs.runtime.jit_cache_hook(key=key, fn=kernel, compile=compile, is_manual_warmup=False)

    with compiled_in_parallel(torch.device("cuda", 0), threads=2):
        assert missed("mine") is True  # skipped: recorded for the pool
        in_another_thread = []
        thread = threading.Thread(target=lambda: in_another_thread.append(missed("theirs")))
        thread.start()
        thread.join()
        assert in_another_thread == [None] and earlier == ["theirs"]  # compiled and launched as usual
        assert list(parallel_compile._recording.pending.values()) == [(kernel.jit_function, "data of mine")]
    assert missed("after") is None and earlier == ["theirs", "after"]
