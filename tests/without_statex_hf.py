"""Load saved StateX folders in a Python process where ``import statex_hf`` fails.

A saved folder is a self-contained Hub repo when ``from_pretrained(..., trust_remote_code=True)``
builds the model from the code saved beside the weights alone; the logits it gives are compared with
the package's own on the same folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

IDS = [[1, 5, 9, 3, 7, 11, 2, 4], [6, 6, 8, 1, 0, 12, 5, 9]]

# Prepended to code that must run without the package: the import system refuses statex_hf.
BLOCK_STATEX_HF = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "statex_hf" or name.startswith("statex_hf."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, _Block())
try:
    import statex_hf
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("statex_hf is importable; the test would prove nothing")
"""


def run_without_statex_hf(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that cannot import statex_hf; stdin is closed (no prompt can wait)."""
    script = BLOCK_STATEX_HF + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def remote_code_logits(folders: list[str | Path], out: Path, *, resave: bool = False) -> list[torch.Tensor]:
    """Logits of each folder's model loaded with ``trust_remote_code=True`` without statex_hf (one process).

    With ``resave``, each model loaded that way is saved again and the logits come from that second folder.
    """
    out.mkdir(parents=True, exist_ok=True)
    code = f"""
    import json, torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(1)
    modules = []
    for i, folder in enumerate({[str(f) for f in folders]!r}):
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        if {resave}:
            again = {str(out)!r} + f"/resaved-{{i}}"
            model.save_pretrained(again)
            model = AutoModelForCausalLM.from_pretrained(again, trust_remote_code=True).eval()
        modules.append(type(model).__module__)
        with torch.no_grad():
            torch.save(model(torch.tensor({IDS})).logits, {str(out)!r} + f"/logits-{{i}}.pt")
    print(json.dumps(modules))
    """
    result = run_without_statex_hf(code)
    assert result.returncode == 0, result.stderr[-4000:]
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(m.startswith("transformers_modules.") for m in modules), modules  # the saved code, not the package
    return [torch.load(out / f"logits-{i}.pt") for i in range(len(folders))]


def package_logits(folder: str | Path) -> torch.Tensor:
    """Logits of the folder's model loaded through the installed package (one thread, as in the subprocess)."""
    import statex_hf  # noqa: F401 - registers the StateX classes

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        assert type(model).__module__.startswith("statex_hf."), type(model).__module__
        with torch.no_grad():
            return model(torch.tensor(IDS)).logits
    finally:
        torch.set_num_threads(threads)


def assert_self_contained(folders: list[str | Path], tmp: Path) -> None:
    """Every folder loads without statex_hf and gives exactly the package's logits."""
    for folder, logits in zip(folders, remote_code_logits(folders, tmp / "remote-logits"), strict=True):
        assert torch.equal(logits, package_logits(folder)), folder
