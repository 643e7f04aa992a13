"""``kernels/parallel_compile.py`` on CPU: under the Triton interpreter (nothing is compiled) the block is no block.
Its work, compiling a first capture's kernels on threads, is tested on the GPU
(``tests/gpu/test_parallel_compile_gpu.py``).
"""

import contextlib
import logging
import threading
import time
import types

import pytest
import torch
from launched_ops import LaunchedOps
from statex_hf.kernels import parallel_compile
from statex_hf.kernels.parallel_compile import compiled_in_parallel
from tiny_models import VOCAB, build
from triton import knobs


def messages_logged(monkeypatch) -> list[str]:
    """What the block logs from now on (transformers' loggers do not propagate to pytest's caplog)."""
    said = []
    log = logging.Handler()
    log.emit = lambda record: said.append(record.getMessage())
    monkeypatch.setattr(parallel_compile.logger, "handlers", [log])
    monkeypatch.setattr(parallel_compile.logger, "level", parallel_compile.logger.level)  # restored afterwards
    parallel_compile.logger.setLevel(logging.INFO)
    return said


def recorded_in_a_block(kernels: dict, threads: int = 2, block=compiled_in_parallel, **options) -> None:
    """A ``block`` whose forward launches ``kernels`` (name: what ``JITFunction.preload`` does), none compiled yet."""
    with block(torch.device("cuda", 0), threads, **options):
        for name, preload in kernels.items():
            jit = types.SimpleNamespace(preload=preload, __name__=name)
            kernel = types.SimpleNamespace(module="statex_hf.kernels.linear.gemv", jit_function=jit)
            compile = {"specialization_data": name, "device": 0}
            assert knobs.runtime.jit_cache_hook(key=name, fn=kernel, compile=compile, is_manual_warmup=False) is True


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


def test_only_the_recording_threads_launches_of_its_own_kernels_are_skipped_and_compiled_at_the_end(monkeypatch):
    # Triton has one jit_cache_hook for the process. While the capture's thread records, a launch from another
    # thread, or of another package's kernel, must compile and run as usual, and a hook installed before must still
    # be called for it; the block must leave that hook as it found it. At the end each recorded kernel is compiled
    # once, for the GPU it was launched on. (Nothing here compiles or launches: the hook is called as Triton calls
    # it, with kernels that record what they are asked to preload.)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the block is off under the interpreter
    monkeypatch.setattr(parallel_compile, "_runtime_knobs", lambda: knobs.runtime)  # whatever Triton is installed
    earlier, preloaded, current_gpus = [], [], []
    monkeypatch.setattr(torch.cuda, "device", lambda index: current_gpus.append(index) or contextlib.nullcontext())
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", lambda **kwargs: earlier.append(kwargs["key"]))

    def kernel_of(module):
        function = types.SimpleNamespace(preload=lambda data: preloaded.append((module, data)))
        return types.SimpleNamespace(module=module, jit_function=function)

    ours, theirs = kernel_of("statex_hf.kernels.linear.gemv"), kernel_of("fla.ops.gla.chunk")

    def missed(key, kernel=ours, device=1):  # Triton's call of the hook for a launch whose kernel is not compiled
        compile = {"specialization_data": f"data of {key}", "device": device}
        return knobs.runtime.jit_cache_hook(key=key, fn=kernel, compile=compile, is_manual_warmup=False)

    said = messages_logged(monkeypatch)
    with compiled_in_parallel(torch.device("cuda", 0), threads=2):
        assert missed("mine") is True and missed("mine") is True  # skipped: recorded for the pool, once
        assert missed("fla's", kernel=theirs) is None
        in_another_thread = []
        thread = threading.Thread(target=lambda: in_another_thread.append(missed("another thread's")))
        thread.start()
        thread.join()
        assert in_another_thread == [None]
        with compiled_in_parallel(torch.device("cuda", 0), threads=2):
            assert missed("inner") is True
        assert preloaded == [("statex_hf.kernels.linear.gemv", "data of inner")]
        assert missed("outer, after the inner block") is True  # the outer block records again
    assert earlier == ["fla's", "another thread's"]  # compiled and launched as usual
    assert sorted(preloaded[1:]) == [
        ("statex_hf.kernels.linear.gemv", "data of mine"),
        ("statex_hf.kernels.linear.gemv", "data of outer, after the inner block"),
    ]
    assert current_gpus == [1, 1, 1]  # each compile for the GPU its launch was on, not the block's device
    assert [message.split(" in ")[0] for message in said] == [
        "Compiled 1 kernel on 2 threads",
        "Compiled 2 kernels on 2 threads",
    ]
    assert missed("after") is None and earlier[-1] == "after"


@pytest.fixture
def pool_off_the_gpu(monkeypatch):
    """The block on: its pool runs here, with kernels that stand for Triton's (nothing compiles or launches)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(parallel_compile, "_runtime_knobs", lambda: knobs.runtime)
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", None)


def test_each_compiled_kernel_is_readied_for_its_first_launch_on_the_pools_threads(pool_off_the_gpu):
    # Triton 3.6 builds a kernel's launcher with the C compiler, and loads its module, at its first launch: the pool
    # does it beside the compile, so the capturing thread's first launches do not build them one after another. A
    # kernel that cannot be readied (too much shared memory, say) is left to its launch, as a failed compile is.
    readied = []

    def too_large():
        raise RuntimeError("out of resource: shared memory")

    def compiles_to(name):  # JITFunction.preload: it returns the compiled kernel, not yet loaded
        ready = too_large if name == "too large" else lambda: readied.append((name, threading.current_thread().name))
        return lambda data: types.SimpleNamespace(_init_handles=ready)

    recorded_in_a_block({name: compiles_to(name) for name in ("one", "too large", "two")})
    assert sorted(name for name, _ in readied) == ["one", "two"]
    assert all(thread.startswith("statex-compile") for _, thread in readied), readied


def test_the_log_names_the_kernel_that_took_longest(monkeypatch, pool_off_the_gpu):
    # With a thread for each kernel the block lasts as long as its slowest compile: the log says which one it was.
    said = messages_logged(monkeypatch)
    quick = lambda data: types.SimpleNamespace()  # noqa: E731 - a compiled kernel with nothing to ready
    recorded_in_a_block({"_gemv_kernel": quick, "_step_kernel": lambda data: time.sleep(0.3), "_norm": quick}, 3)
    assert len(said) == 1 and said[0].startswith("Compiled 3 kernels on 3 threads in "), said
    slowest = said[0].partition("(the slowest, ")[2]
    assert slowest.startswith("_step_kernel, in ") and slowest.endswith(" s)."), said
    assert float(slowest.split(" in ")[1].split()[0]) >= 0.3, said


def test_a_background_block_returns_as_its_compiles_start_and_its_waiter_waits_for_them(monkeypatch, pool_off_the_gpu):
    # What a decode step compiles ahead runs beside the prompt's forward: the block must not wait for it, and the
    # first capture waits for all of it (and logs it) before it records what is still missing. The kernels are
    # readied only then, on the pool's threads: not beside the forward, which readies its own kernels meanwhile.
    said, done, readied, mine, theirs = messages_logged(monkeypatch), threading.Event(), [], [], []

    def compiles_slowly(data):
        time.sleep(0.3)
        done.set()
        return types.SimpleNamespace(_init_handles=lambda: readied.append(threading.current_thread().name))

    recorded_in_a_block({"_step_kernel": compiles_slowly}, background=mine)
    assert not done.is_set() and said == [] and len(mine) == 1
    time.sleep(0.5)
    assert done.is_set() and readied == []
    parallel_compile.wait_for_compiles(theirs)  # another caller's list: not this block's compiles
    assert said == [] and readied == [] and len(mine) == 1
    parallel_compile.wait_for_compiles(mine)
    assert len(said) == 1 and said[0].startswith("Compiled 1 kernel on 2 threads in "), said
    assert len(readied) == 1 and readied[0].startswith("statex-compile"), readied
    parallel_compile.wait_for_compiles(mine)  # nothing left: returns at once, logs and readies nothing
    assert len(said) == 1 and len(readied) == 1 and mine == []


def test_launches_skipped_skips_like_a_block_and_compiles_nothing(monkeypatch, pool_off_the_gpu):
    said, compiled = messages_logged(monkeypatch), []
    recorded_in_a_block({"_step_kernel": compiled.append}, block=parallel_compile.launches_skipped)
    time.sleep(0.1)
    assert compiled == [] and said == [] and knobs.runtime.jit_cache_hook is None
