"""A converted folder's bundled code runs its Triton kernels on CUDA where statex_hf cannot be imported.

Run with STATEX_GPU_TESTS=1 on the GPU machine (needs fla for the GLA source, as the other GPU tests).
The CPU suite proves the bundle loads and matches; this proves the flattened kernel modules work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from source_checkpoints import transformers_mamba2, write_fla_gla, write_tokenizer
from test_hub import BLOCK_STATEX_HF

from statex_hf.conversion import convert

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CHECK = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({folder!r}, trust_remote_code=True).eval()
package = type(model).__module__.rsplit(".", 1)[0]
dispatch = sys.modules[package + ".kernels_dispatch"]
ids = torch.randint(0, 64, (2, 300), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    cpu = model(ids).logits
    model.cuda()
    assert dispatch.use_triton(torch.empty(1, device="cuda"))
    gpu = model(ids.cuda()).logits.float().cpu()
kernels = sorted(n.rsplit(".", 1)[1] for n in sys.modules if n.startswith(package + ".kernels_"))
err = ((gpu - cpu).abs().max() / cpu.abs().max()).item()
print("bundled kernel modules loaded:", kernels, "relative error:", err)
assert {{"kernels_gla_chunk", "kernels_ssd_chunk"}} & set(kernels) and err < 1e-2
"""


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_bundled_code_runs_triton_kernels_without_statex_hf(tmp_path, family):
    source = tmp_path / "source"
    if family == "gla":
        write_fla_gla(source, hidden_size=256, num_heads=4, num_layers=2)
    else:
        model = transformers_mamba2(hidden_size=128, num_heads=8, head_dim=32, state_size=64, chunk_size=64)
        model.save_pretrained(source)
        write_tokenizer(source)
    out = convert(family, str(source), tmp_path / "out", every=1, progress=False).output
    code = BLOCK_STATEX_HF + textwrap.dedent(CHECK.format(folder=str(out)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    print(result.stdout)
