"""When the decode kernels are launched with programmatic dependent launch: only inside ``dependent_launches``, on a
GPU that has it (compute capability 9+), outside Triton's interpreter, and not under ``STATEX_PDL=0``."""

from __future__ import annotations

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
