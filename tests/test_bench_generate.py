"""``benchmarks/bench_generate.py --tiny`` runs on CPU to its end (the README gives it as a check of the script).

Its numbers on CPU mean nothing; the claim is that the worker process, every row kind (decode, eager, time
to first token) and the table come through inside the process's time limit, so that a GPU call only has
to run it at 1.3B shapes.
"""

import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "bench_generate.py")


def test_the_generate_benchmark_finishes_its_tiny_check_on_cpu(tmp_path):
    rows_path = tmp_path / "rows.json"
    command = [sys.executable, BENCH, "--tiny", "--impls", "ours_gla", "--batches", "1", "--new-tokens", "6"]
    command += ["--eager-new-tokens", "6", "--json", str(rows_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(rows_path.read_text())
    assert report["statuses"] == {"ours_gla": "ok"}, result.stderr[-3000:]
    kinds = [row["kind"] for row in report["rows"]]
    assert kinds == ["setup", "decode", "eager", "ttft", "ttft"], kinds
    assert [row["length"] for row in report["rows"] if row["kind"] == "ttft"] == [256, 1024]
    assert next(row for row in report["rows"] if row["kind"] == "eager")["same_tokens_as_graphs"]
    assert "TTFT   1024" in result.stdout
    decode = next(row for row in report["rows"] if row["kind"] == "decode")
    assert decode["step_ms"] > 0 and "step ms" in result.stdout
    # The shares come from the steady clock. They once came from ms/token, a difference of two whole calls, which
    # a busy CI host drove below zero (a share of -2%, CI of a342152).
    assert decode["share"] == pytest.approx(decode["roofline_ms"] / decode["step_ms"])
    assert 0 < decode["weight_share"] <= decode["share"]  # the weights alone: part of the step's bytes


def test_fewer_than_three_timed_tokens_is_one_clear_error_before_any_model_is_built():
    # Each count is timed as generate(N) - generate(2) over N - 2: --eager-new-tokens 2 divided by zero in the
    # workers after the decode rows (seen on the GPU machine).
    command = [sys.executable, BENCH, "--tiny", "--impls", "ours_gla", "--eager-new-tokens", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--eager-new-tokens must be at least 3" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_three_decode_tokens_is_one_clear_error_as_the_step_clock_paces_from_the_third_step():
    command = [sys.executable, BENCH, "--tiny", "--impls", "ours_gla", "--new-tokens", "3"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--new-tokens must be at least 4" in result.stderr.splitlines()[-1]


def test_the_step_clock_paces_a_run_from_its_third_mark_to_its_last(monkeypatch):
    # The prompt's mark and the first step's (which binds the cache to the graph) are left out: a run whose
    # steps after those take 2 s each is paced at 2000 ms, however long the prompt and the first step took.
    monkeypatch.syspath_prepend(os.path.dirname(BENCH))  # undone after the test
    import types

    import bench_generate
    import torch

    clock = bench_generate.StepClock()
    times = iter([0.0, 5.0, 6.0, 8.0, 10.0, 12.0])
    monkeypatch.setattr(bench_generate, "time", types.SimpleNamespace(perf_counter=lambda: next(times)))
    scores = torch.zeros(1, 4)
    for _ in range(6):
        assert clock(None, scores) is scores  # a logits processor that changes nothing
    assert clock.ms_per_step() == 2000.0


def test_a_batch_that_ran_out_of_memory_is_a_row_of_the_table(capsys, monkeypatch):
    # transformers' Mamba2 (torch path) runs out of GPU memory in its B = 64 prefill: the row says so, the
    # table prints the other rows instead of the whole peer being lost.
    monkeypatch.syspath_prepend(os.path.dirname(BENCH))  # undone after the test
    from bench_generate import print_table

    rows = [
        dict(impl="hf_mamba2", kind="decode", batch=64, error="out of GPU memory in the prompt's forward"),
        dict(impl="hf_mamba2", kind="decode", batch=1, ms_per_token=53.2, roofline_ms=0.86, share=0.016,
             first_call_s=1.0, capture_s=None),
    ]  # fmt: skip
    print_table(rows, {"hf_mamba2": "ok"})
    out = capsys.readouterr().out
    assert "hf_mamba2     64 out of GPU memory in the prompt's forward" in out
    assert "hf_mamba2      1     53.20" in out


def test_the_sync_stop_check_baseline_turns_the_deferred_check_off(monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(BENCH))  # undone after the test
    import argparse

    import torch
    from bench_generate import add_baseline_arguments, apply_same_run_baselines
    from statex_hf.modeling import stop_check

    monkeypatch.delenv("STATEX_DEFER_STOP_CHECK", raising=False)
    parser = argparse.ArgumentParser()
    add_baseline_arguments(parser)
    assert stop_check.defers_on(torch.device("cuda"))
    apply_same_run_baselines(parser.parse_args([]))
    assert stop_check.defers_on(torch.device("cuda"))
    monkeypatch.setenv("STATEX_DEFER_STOP_CHECK", "1")  # so that monkeypatch restores the variable afterwards
    apply_same_run_baselines(parser.parse_args(["--sync-stop-check"]))
    assert not stop_check.defers_on(torch.device("cuda"))


def test_the_unfused_residual_norm_baseline_keeps_a_one_row_blocks_norms_apart_too(monkeypatch):
    # "each residual add and each norm its own kernel": at one row the norms and adds went into the products
    # (kernels/linear/row_norm.py), where turning the add + norm kernel off alone changes nothing.
    monkeypatch.syspath_prepend(os.path.dirname(BENCH))
    import argparse

    import torch
    from bench_generate import add_baseline_arguments, apply_same_run_baselines
    from statex_hf.kernels import dispatch
    from statex_hf.modeling.gla import modeling_statex_gla
    from statex_hf.modeling.mamba2 import modeling_statex_mamba2

    families = (modeling_statex_gla, modeling_statex_mamba2)
    for module in families:  # restored after the test: the baselines patch the modules for the whole process
        monkeypatch.setattr(module, "norms_go_into_products", module.norms_go_into_products)
    monkeypatch.setattr(dispatch, "one_launch_add_rmsnorm", dispatch.one_launch_add_rmsnorm)
    monkeypatch.setattr(dispatch, "use_triton", lambda *tensors: True)  # a CUDA step, as in a GPU run
    parser = argparse.ArgumentParser()
    add_baseline_arguments(parser)
    row = torch.zeros(1, 1, 8, dtype=torch.bfloat16)
    with torch.no_grad():
        assert all(module.norms_go_into_products(row, row.dtype, [], []) for module in families)
        apply_same_run_baselines(parser.parse_args(["--unfused-residual-norm"]))
        assert not any(module.norms_go_into_products(row, row.dtype, [], []) for module in families)


def test_every_baseline_flag_reaches_the_worker_processes(monkeypatch):
    # The workers are processes of their own, started with the flags the parent passes on: --sync-stop-check was
    # parsed by the parent and never passed, so its "baseline" measured the default.
    monkeypatch.syspath_prepend(os.path.dirname(BENCH))
    import argparse

    from bench_generate import add_baseline_arguments, baseline_argv

    parser = argparse.ArgumentParser()
    add_baseline_arguments(parser)
    flags = [action for action in parser._actions if action.option_strings and action.dest != "help"]
    argv = []
    for action in flags:
        argv += [action.option_strings[0]] if action.nargs == 0 else [action.option_strings[0], "3"]
    given = parser.parse_args(argv)
    assert all(getattr(given, action.dest) not in (None, False) for action in flags)
    assert parser.parse_args(baseline_argv(given)) == given
    assert baseline_argv(parser.parse_args([])) == []


def test_the_compile_flags_set_the_threads_a_captures_kernels_compile_on(monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(BENCH))
    import argparse

    from bench_generate import add_baseline_arguments, apply_same_run_baselines
    from statex_hf.modeling import decode_graphs

    monkeypatch.setattr(decode_graphs, "COMPILE_THREADS", decode_graphs.COMPILE_THREADS)  # restored afterwards
    parser = argparse.ArgumentParser()
    add_baseline_arguments(parser)
    apply_same_run_baselines(parser.parse_args(["--serial-compile"]))
    assert decode_graphs.COMPILE_THREADS == 1
    apply_same_run_baselines(parser.parse_args(["--compile-threads", "5"]))
    assert decode_graphs.COMPILE_THREADS == 5


@pytest.mark.parametrize(
    "flag,switch,default",
    [("--norm-in-step", "GATED_NORM_IN_OUT_PROJ", True), ("--final-norm-in-head", "FINAL_NORM_IN_HEAD", False)],
)
def test_a_switch_flag_sets_its_dispatch_switch_and_only_when_given(monkeypatch, flag, switch, default):
    monkeypatch.syspath_prepend(os.path.dirname(BENCH))
    import argparse

    from bench_generate import add_baseline_arguments, apply_same_run_baselines
    from statex_hf.kernels import dispatch

    monkeypatch.setattr(dispatch, switch, default)  # restored afterwards
    parser = argparse.ArgumentParser()
    add_baseline_arguments(parser)
    apply_same_run_baselines(parser.parse_args([]))
    assert getattr(dispatch, switch) is default
    apply_same_run_baselines(parser.parse_args([flag]))
    assert getattr(dispatch, switch) is not default


def test_grouped_rows_sets_the_rows_of_the_grouped_launches_and_only_when_given(monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(BENCH))
    import argparse

    from bench_generate import add_baseline_arguments, apply_same_run_baselines
    from statex_hf.kernels import dispatch

    monkeypatch.setattr(dispatch, "GROUPED_MAX_ROWS", 1)  # restored afterwards
    parser = argparse.ArgumentParser()
    add_baseline_arguments(parser)
    apply_same_run_baselines(parser.parse_args([]))
    assert dispatch.GROUPED_MAX_ROWS == 1
    apply_same_run_baselines(parser.parse_args(["--grouped-rows", "64"]))
    assert dispatch.GROUPED_MAX_ROWS == 64
