"""Every benchmark script starts: ``--help`` prints its usage, with ``python -P`` too.

The README runs the tests with ``-P`` (and tests/conftest.py sets PYTHONSAFEPATH for subprocesses), which
keeps a script's own folder off ``sys.path``: a script that imports a sibling (``gpu_specs``, ``bench_gla``,
``miniature``) must put its folder there itself. ``--help`` must also never start a run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MODULES = ("gpu_specs.py", "worker_process.py")  # imported by the scripts, not run
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("*.py") if path.name not in MODULES)


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_benchmark_script_prints_its_usage_under_python_dash_p(script):
    env = dict(os.environ, PYTHONSAFEPATH="1")
    result = subprocess.run(
        [sys.executable, "-P", str(BENCHMARKS / script), "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:"), result.stdout[:500]


def test_bench_gemv_tiny_times_every_path_on_cpu(tmp_path):
    # One toy shape under the Triton interpreter: the torch row, the table's pick and the split-K variants
    # run and agree with the fp32 product (a check of the script; its timings mean nothing).
    out = tmp_path / "gemv.json"
    command = [sys.executable, "-P", str(BENCHMARKS / "bench_gemv.py"), "--tiny", "--ms", "1", "--shapes", "q/k"]
    result = subprocess.run([*command, "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["impl"] for r in rows} == {"torch", "ours pick", "ours"}
    assert any(" S2 " in r["config"] for r in rows)
    assert all(r["err"] < 1e-5 for r in rows) and sum(r["best"] for r in rows) == 1


def test_bench_gemv_times_a_fused_case_at_several_rows_beside_separate_and_stacked_library_calls(tmp_path):
    # At more than one row a fused case is our kernel at the table's tiles for those rows (dispatch.GROUPED_MAX_ROWS)
    # beside the library's separate products and one product over the weights stacked; each computes what the fp32
    # reference does.
    out = tmp_path / "gemv.json"
    command = [sys.executable, "-P", str(BENCHMARKS / "bench_gemv.py"), "--tiny", "--ms", "3", "--pick-only"]
    command += ["--shapes", "group,swiglu", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["shape"].split()[-1], r["impl"], r["config"].split(" ")[0]) for r in rows] == [
        ("group", "torch", "-"), ("group", "torch", "cat"), ("group", "ours pick", "BM4"),
        ("swiglu", "torch", "-"), ("swiglu", "torch", "cat"), ("swiglu", "ours pick", "BM4"),
    ]  # fmt: skip
    assert all(r["M"] == 3 and r["err"] < 1e-5 for r in rows)


def test_profile_generate_loop_tiny_times_each_stage_on_cpu():
    # Toy shapes on CPU: every stage that runs without a GPU gets a median (a check of the script's bookkeeping).
    command = [sys.executable, "-P", str(BENCHMARKS / "profile_generate_loop.py"), "--tiny", "--tokens", "6"]
    result = subprocess.run([*command, "--impls", "ours_gla"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for stage in ("wait", "loop", "prepare", "to forward", "to replay", "post"):
        assert f"{stage}: median" in result.stdout, result.stdout


def test_profile_generate_loop_leaves_the_wrapped_methods_as_they_were(monkeypatch):
    # Its stage clocks wrap classes' methods (the model's class, transformers' stop check, CUDAGraph.replay): a second
    # model profiled in the same process must not run under the first one's wraps, nor a caller under any.
    import importlib

    from transformers.generation import utils as generation_utils

    from statex_hf import StateXGLAForCausalLM

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    profile = importlib.import_module("profile_generate_loop")
    wrapped = [
        (StateXGLAForCausalLM, "prepare_inputs_for_generation"),
        (generation_utils.StopCheck, "__call__"),
        (torch.cuda.CUDAGraph, "replay"),
    ]
    for owner, name in wrapped:  # put back whatever the run leaves, for the tests after this one
        monkeypatch.setattr(owner, name, getattr(owner, name))
    before = [getattr(owner, name) for owner, name in wrapped]
    profile.profile_loop("ours_gla", batch=1, tokens=3, tiny=True)
    assert [getattr(owner, name) for owner, name in wrapped] == before
