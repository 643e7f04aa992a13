"""The kernels on a second GPU while the first is current (a model split over GPUs by ``device_map``): each runs on
its tensors' GPU and gives what it gives there when that GPU is current. Needs two GPUs (STATEX_GPU_TESTS=1); the
launch rule itself is tested without a GPU in ``tests/test_launch_device.py``."""

from __future__ import annotations

import pytest
import torch
from statex_hf.kernels import dispatch

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


def _ops(device: torch.device) -> list[torch.Tensor]:
    """A decode step's kernels and a chunked scan, on ``device``, from one seed."""
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, device=device, generator=g).to(dtype)

    x, w = randn(1, 2048), randn(4096, 2048) / 45
    q, k, v, gk = (randn(1, 1, 4, 512) for _ in range(4))
    state = randn(1, 4, 512, 512, dtype=torch.float32)
    o, _ = dispatch.gla(q, k, v, gk, initial_state=state, output_final_state=True, final_state=state)
    xs, dt, B, C = randn(1, 300, 8, 64), randn(1, 300, 8), randn(1, 300, 1, 128), randn(1, 300, 1, 128)
    y, final = dispatch.ssd(xs, dt, -torch.ones(8, device=device), B, C, output_final_state=True, chunk_size=64)
    normed = dispatch.gated_rmsnorm(x, None, randn(2048), 1e-5, 2048)
    return [dispatch.linear(x, w), o, state, y, final, normed]


@torch.no_grad()
def test_kernels_on_the_second_gpu_while_the_first_is_current_give_its_results():
    torch.cuda.set_device(1)
    want = [t.cpu() for t in _ops(torch.device("cuda", 1))]
    torch.cuda.set_device(0)
    got = _ops(torch.device("cuda", 1))
    torch.cuda.synchronize(1)
    for g, w in zip(got, want, strict=True):
        assert g.device == torch.device("cuda", 1) and torch.equal(g.cpu(), w)
