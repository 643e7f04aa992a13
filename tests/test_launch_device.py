"""Every Triton kernel runs on its tensors' GPU, not on whichever is current (a model split over GPUs by
``device_map``): Triton launches on the current device, so each launch makes the operand's device current.

No second GPU here: the rule is checked on the launch path with torch's device switch recorded, and on the
source (every kernel launch in ``kernels/`` sits inside ``launch.launch``'s runner or an ``on_device_of`` block).
``tests/gpu/test_two_gpus_gpu.py`` runs the kernels on a second GPU where a machine has one.
"""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from statex_hf.kernels import launch
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.utils import on_device_of

CONFIG = LaunchConfig.of(4, 1, BLOCK=16)


def fake_cuda_tensor(index: int):
    return SimpleNamespace(is_cuda=True, device=torch.device("cuda", index), dtype=torch.bfloat16)


@pytest.fixture
def device_switches(monkeypatch):
    """torch.cuda's current device (0) and its ``device`` block, recorded: the devices made current, in order."""
    current, made_current = [0], []

    @contextlib.contextmanager
    def device(target):
        previous, current[0] = current[0], torch.device(target).index
        made_current.append(current[0])
        try:
            yield
        finally:
            current[0] = previous

    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "device", device)
    return current, made_current


def test_a_launch_for_a_tensor_on_another_gpu_runs_with_that_gpu_current(device_switches):
    current, made_current = device_switches
    seen = []
    launch.launch("test.kernel", lambda config: seen.append(current[0]), CONFIG, CONFIG, fake_cuda_tensor(1))
    assert seen == [1] and made_current == [1] and current[0] == 0  # switched for the launch, then back


def test_a_launch_on_the_current_gpu_or_the_cpu_switches_nothing(device_switches):
    current, made_current = device_switches
    seen = []
    launch.launch("test.kernel", lambda config: seen.append(current[0]), CONFIG, CONFIG, fake_cuda_tensor(0))
    launch.launch("test.kernel", lambda config: seen.append(current[0]), CONFIG, CONFIG, torch.zeros(1))
    assert seen == [0, 0] and made_current == []
    assert isinstance(on_device_of(torch.zeros(1)), contextlib.nullcontext)


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether a kernel launch sits in a function named ``run`` (handed to ``launch.launch`` by every op's launcher)
    or in a ``with on_device_of(...)`` block."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef) and node.name == "run":
            return True
        if isinstance(node, ast.With) and any("on_device_of(" in ast.unparse(i.context_expr) for i in node.items):
            return True
    return False


def test_every_kernel_launch_runs_on_its_operands_gpu():
    launches = []
    for path in sorted((Path(__file__).parents[1] / "kernels").rglob("*.py")):
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            launched = isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)
            if launched and "kernel" in ast.unparse(node.func):
                launches.append((path.name, ast.unparse(node.func.value), _guarded(node, parents)))
    assert len(launches) >= 30
    assert [launch for launch in launches if not launch[2]] == []
    launched_by_run = Path(launch.__file__).read_text()
    assert "with on_device_of(operand):" in launched_by_run
