"""When the decode kernels are launched with programmatic dependent launch: only inside ``dependent_launches``, on a
GPU that has it (compute capability 9+), outside Triton's interpreter, and not under ``STATEX_PDL=0``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import torch
from statex_hf.kernels import dependent_launch
from statex_hf.kernels.dependent_launch import dependent_launches, pdl_kwargs

HOPPER = torch.device("cuda", 0)


def test_outside_the_block_every_kernel_launches_as_before():
    assert pdl_kwargs() == {"USE_PDL": False}


def test_on_cpu_the_block_changes_nothing():
    with dependent_launches(torch.device("cpu")) as on:
        assert on is False
        assert pdl_kwargs() == {"USE_PDL": False}


def test_on_a_hopper_gpu_the_block_turns_it_on_and_restores_the_outer_setting(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with dependent_launches(HOPPER) as on:
        assert on is True
        assert pdl_kwargs() == {"USE_PDL": True, "launch_pdl": True}
        with dependent_launches(torch.device("cpu")):
            assert pdl_kwargs() == {"USE_PDL": False}
        assert pdl_kwargs()["USE_PDL"] is True
    assert pdl_kwargs() == {"USE_PDL": False}


def test_older_gpus_the_interpreter_and_the_switch_keep_it_off(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert not dependent_launch.supported(HOPPER)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert dependent_launch.supported(HOPPER)
    monkeypatch.setenv("STATEX_PDL", "0")
    assert not dependent_launch.supported(HOPPER)
    monkeypatch.delenv("STATEX_PDL")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not dependent_launch.supported(HOPPER)


def _kernels_and_pdl_launches() -> tuple[dict[str, ast.FunctionDef], list[tuple[str, str]]]:
    """Every ``@triton.jit`` function of ``kernels/`` by name, and each launch ``kernel[grid](..., **pdl_kwargs())``
    as (file, kernel name)."""
    jitted, launches = {}, []
    for path in sorted((Path(__file__).parents[1] / "kernels").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and any("jit" in ast.unparse(d) for d in node.decorator_list):
                jitted[node.name] = node
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
                if any(k.arg is None and "pdl_kwargs" in ast.unparse(k.value) for k in node.keywords):
                    launches.append((path.name, ast.unparse(node.func.value).split(".")[-1]))
    return jitted, launches


def test_every_kernel_with_pdl_waits_before_anything_else_and_only_those_launch_with_it():
    # The rule of kernels/dependent_launch.py, which no CPU test can see break (the interpreter has no PDL): a
    # kernel launched with launch_pdl must wait for its predecessor before its first global load or store.
    # The exceptions: the one-row GEMV loop and the GLA and Mamba2 one-token steps read, before they wait, only what no
    # kernel of a step writes before them (weights; the step's own layer state), and a kernel that hands its one-row
    # case to the GEMV loop waits there (its other cases first thing).
    jitted, launches = _kernels_and_pdl_launches()
    with_switch = {name: fn for name, fn in jitted.items() if "USE_PDL" in [a.arg for a in fn.args.args]}
    with_switch.pop("wait_for_predecessor")  # the wait itself
    assert len(launches) >= 8 and len(with_switch) >= 7
    for file, kernel in launches:
        assert kernel in with_switch, f"{file}: {kernel} is launched with pdl_kwargs() but has no USE_PDL switch"
    waits_in_the_loop = {"_gemv_kernel", "_gemv_group_kernel", "_gemv_swiglu_kernel"}
    touching_memory = _touching_memory(jitted)
    read_before_the_wait = {
        "_one_row_dot": {"w_tile", "v_tile"},  # the weights
        "_conv_state_update_kernel": {"rows", "_conv_taps"},  # the layer's state tile; windows and weights (below)
        "_conv_taps": {"window_row", "w", "conv_bias"},
        "fused_recurrent_gla_step_kernel": {"h0"},  # the layer's state, its one tile
    }
    assert _reads(jitted["_conv_taps"].body) == read_before_the_wait["_conv_taps"]
    for name, fn in with_switch.items():
        body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        first = ast.unparse(body[0])
        if name in waits_in_the_loop:
            calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call) and ast.unparse(n.func) == "_one_row_dot"]
            switch = [a.arg for a in jitted["_one_row_dot"].args.args].index("USE_PDL")
            assert calls and all(ast.unparse(c.args[switch]) == "USE_PDL" for c in calls), name
            read = _reads(_before_call(body, "_one_row_dot"), helpers=touching_memory)
            assert not read, f"{name} reads {read} before the loop it waits in"
            if name == "_gemv_kernel":  # rows of x in blocks: the wait first, as in the kernels without exceptions
                assert first == "if BM != 1:\n    wait_for_predecessor(USE_PDL)", first
        elif name in read_before_the_wait:
            waited = [i for i, s in enumerate(body) if ast.unparse(s) == "wait_for_predecessor(USE_PDL)"]
            assert len(waited) == 1, f"{name} waits exactly once, in its body"
            read = _reads(body[: waited[0]], helpers=set(jitted))
            assert read == read_before_the_wait[name], f"before its wait {name} reads {read}"
        else:
            assert first == "wait_for_predecessor(USE_PDL)", f"{name} starts with {first!r}, not the wait"


def _touching_memory(jitted: dict[str, ast.FunctionDef]) -> set[str]:
    """The jitted functions that load, store or take an atomic, themselves or through a jitted helper they call."""
    calls = {
        name: {ast.unparse(n.func) for n in ast.walk(fn) if isinstance(n, ast.Call)} for name, fn in jitted.items()
    }
    touching = {
        name
        for name, called in calls.items()
        if any(c.startswith(("tl.load", "tl.store", "tl.atomic")) for c in called)
    }
    while more := {name for name, called in calls.items() if called & touching} - touching:
        touching |= more
    return touching


def _before_call(statements: list[ast.stmt], callee: str) -> list[ast.AST]:
    """What runs before the first call of ``callee``: the statements before the one that holds it, then, where that
    one is an ``if``, its test and what comes before the call in the branch that holds it; then the call's arguments."""

    def holds(node: ast.AST) -> bool:
        return any(isinstance(n, ast.Call) and ast.unparse(n.func) == callee for n in ast.walk(node))

    for i, statement in enumerate(statements):
        if not holds(statement):
            continue
        if isinstance(statement, ast.If):
            branch = statement.body if any(map(holds, statement.body)) else statement.orelse
            return [*statements[:i], statement.test, *_before_call(branch, callee)]
        call = next(n for n in ast.walk(statement) if isinstance(n, ast.Call) and ast.unparse(n.func) == callee)
        return [*statements[:i], *call.args]
    raise AssertionError(f"no call of {callee}")


def _reads(statements: list[ast.AST], helpers: frozenset | set = frozenset()) -> set[str]:
    """What ``statements`` read from memory: the base pointer of each ``tl.load`` and each jitted helper they call
    (whose own reads are checked apart); a store or an atomic is an error."""
    read = set()
    for node in (n for s in statements for n in ast.walk(s) if isinstance(n, ast.Call)):
        called = ast.unparse(node.func)
        assert not called.startswith(("tl.store", "tl.atomic")), f"{called} before the wait"
        if called == "tl.load":
            pointer = node.args[0]
            while isinstance(pointer, (ast.BinOp, ast.Subscript)):
                pointer = pointer.left if isinstance(pointer, ast.BinOp) else pointer.value
            read.add(ast.unparse(pointer))
        elif called in helpers:
            read.add(called)
    return read


WITHOUT_PDL = """
import inspect
import torch
import triton.language as tl
del tl.extra.cuda.gdc_wait, tl.extra.cuda.gdc_launch_dependents  # as in Triton 3.2, which pyproject.toml allows
from statex_hf.kernels import dependent_launch
torch.cuda.get_device_capability = lambda device=None: (9, 0)
assert not dependent_launch.TRITON_HAS_PDL and not dependent_launch.supported(torch.device("cuda", 0))
assert "gdc_" not in inspect.getsource(dependent_launch.wait_for_predecessor.fn)
"""


def test_a_triton_without_pdl_keeps_it_off_and_its_kernels_name_no_missing_intrinsic():
    # Triton 3.2 computes a kernel's cache key by looking up every attribute its code names, in a branch not
    # taken too: a wait naming tl.extra.cuda.gdc_wait failed every kernel that calls it, on any GPU, PDL or not
    # (checked against the triton 3.2.0 wheel: the GEMVs, norms, residual add, GLA step, one-launch Mamba2 step).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-P", "-c", WITHOUT_PDL], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
