"""Run a module with accelerate's FSDP allowed on CPU: the CPU proofs of FSDP launch through this file.

accelerate applies FSDP only on GPU-type devices: on CPU (its ``MULTI_CPU`` type) it drops the FSDP
plugin, whether from an accelerate config or from ``TrainingArguments(fsdp=...)``, and wraps the model
in DDP instead. torch's FSDP2 itself runs on CPU over gloo, so this lifts that one rule: where
accelerate would take ``MULTI_CPU`` with an FSDP plugin, it takes FSDP. The config file, the
launcher's environment, the wrapping, FSDP's activation checkpointing and the Trainer are the real
ones. Each process prints what ``Accelerator.prepare`` made of the model (``fsdp_on_cpu: ...``), so a
test can see that FSDP ran.

    accelerate launch --config_file CONFIG --num_processes 2 --mixed_precision no \
        tests/fsdp_on_cpu.py -m statex_hf.cli posttrain ... --training-arg use_cpu=true --training-arg ddp_backend=gloo
    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_on_cpu.py -m statex_hf.cli posttrain ... \
        --training-arg fsdp=true ...
    python tests/fsdp_on_cpu.py path/to/script.py ...
"""

import os
import runpy
import sys

import torch
from accelerate import Accelerator, state
from accelerate.utils import DistributedType

_accelerator_state_init = state.AcceleratorState.__init__
_prepare = Accelerator.prepare


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def _prepare_and_report(self, *args, **kwargs):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    from torch.distributed.fsdp import FSDPModule

    prepared = _prepare(self, *args, **kwargs)
    for obj in prepared if isinstance(prepared, (tuple, list)) else (prepared,):
        if isinstance(obj, torch.nn.Module):
            modules = list(obj.modules())
            units = sum(isinstance(m, FSDPModule) for m in modules)
            checkpointed = sum(isinstance(m, CheckpointWrapper) for m in modules)
            print(
                f"fsdp_on_cpu: rank {os.environ.get('RANK', '0')}: {self.distributed_type.value}, "
                f"{units} FSDP units, {checkpointed} checkpointed blocks",
                flush=True,
            )
    return prepared


state.AcceleratorState.__init__ = _init_with_fsdp_on_cpu
Accelerator.prepare = _prepare_and_report

if __name__ == "__main__":
    if sys.argv[1] == "-m":
        sys.argv = sys.argv[2:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
