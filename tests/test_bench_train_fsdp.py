"""``benchmarks/bench_train_fsdp.py`` runs: ``--tiny`` on CPU, 2 processes under the shipped 2-GPU config.

Its numbers on CPU mean nothing; the claim is that the launcher, the worker under FSDP (through
``tests/fsdp_on_cpu.py``), the gathering of every process's timings and the table work, so that a
machine with GPUs only has to run it.
"""

import argparse
import importlib
import json
import math
import os
import subprocess
import sys

from free_port import free_port

BENCH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "bench_train_fsdp.py")


def test_the_fsdp_benchmark_runs_two_processes_on_cpu_with_tiny_models(tmp_path):
    rows_path = str(tmp_path / "rows.json")
    command = [sys.executable, BENCH, "--tiny", "--gpus", "2", "--families", "mamba2", "--steps", "1"]
    command += ["--json", rows_path, "--port", free_port()]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    with open(rows_path) as f:
        (row,) = json.load(f)
    assert "error" not in row, (row, result.stderr[-4000:])  # the workers' stderr, which names the cause
    assert (row["family"], row["gpus"], row["fsdp"], row["tiny"]) == ("mamba2", 2, True, True)
    assert [p["rank"] for p in row["per_process"]] == [0, 1] and row["step_s"] > 0
    assert math.isfinite(row["loss"]) and row["tokens_per_s_per_gpu"] == row["T"] / row["step_s"]
    assert "| StateX-Mamba2-tiny | 2 | 256 |" in result.stdout


def test_a_failed_launch_row_names_the_workers_error_not_the_launchers(monkeypatch):
    """torch's launcher ends a failed run with ``ChildFailedError:`` and nothing after the colon; the row carries the
    first error a worker raised, which says what to fix."""
    monkeypatch.syspath_prepend(os.path.dirname(BENCH))
    bench = importlib.import_module("bench_train_fsdp")
    stderr = (
        "[rank1]: Traceback (most recent call last):\n"
        "[rank1]: torch.distributed.DistNetworkError: The client socket has timed out after 60000ms\n"
        "Traceback (most recent call last):\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "Root Cause (first observed failure):\n"
    )
    failed = subprocess.CompletedProcess([], returncode=1, stdout="", stderr=stderr)
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: failed)
    args = argparse.Namespace(port=1, tiny=True, seq_len=256, steps=1, warmup=0, accumulation=1, timeout=10)
    row = bench.launch("mamba2", 2, args)
    assert row["error"] == "[rank1]: torch.distributed.DistNetworkError: The client socket has timed out after 60000ms"
