"""Hub round trips against a real Hub-compatible HTTP server (tests/hub_server.py) with the unmodified client.

``HF_ENDPOINT`` is read when huggingface_hub is imported, so every client runs in a subprocess
with the fixture's environment: the server's URL, a throwaway token, Xet off (classic LFS upload
path), offline mode unset, and a fresh ``HF_HOME`` per process so no cache hides a download bug.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hub_server import HubServer
from source_checkpoints import VOCAB, write_fla_gla, write_mamba_ssm, write_mistral_mamba2, write_tokenizer
from transformers import AutoModelForCausalLM
from without_statex_hf import BLOCK_STATEX_HF, IDS

import statex_hf  # noqa: F401 - registers the Auto classes
from statex_hf.conversion import convert


@dataclass
class Hub:
    server: HubServer
    token: str
    root: Path

    def env(self, *, with_token: bool = True, home: Path | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
        home = home or self.root / f"hf_home_{secrets.token_hex(4)}"  # a fresh cache for every process
        env.update(
            HF_ENDPOINT=self.server.endpoint,
            HF_HOME=str(home),
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
        )
        if with_token:
            env["HF_TOKEN"] = self.token
        return env

    def run(self, args: list[str], *, with_token: bool = True, home: Path | None = None) -> subprocess.CompletedProcess:
        env = self.env(with_token=with_token, home=home)
        return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)

    def python(self, code: str, *, with_token: bool = True) -> subprocess.CompletedProcess:
        return self.run(["-c", textwrap.dedent(code)], with_token=with_token)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The server on 127.0.0.1 with an OS-chosen port, and a throwaway token."""
    server = HubServer(token=f"hf_test_{secrets.token_hex(12)}").start()
    yield Hub(server, server.state.token, tmp_path_factory.mktemp("hub"))
    assert not server.state.server_errors, server.state.server_errors
    server.stop()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub-sources")
    write_fla_gla(root / "gla")
    write_mamba_ssm(root / "mamba-ssm")
    write_tokenizer(root / "tokenizer")
    return root


def local_logits(folder: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def load_and_save_logits(repo: str, out: Path, *, trust_remote_code: bool = False, preamble: str = "") -> str:
    return f"""
{preamble}
import torch
from transformers import AutoModelForCausalLM
kwargs = {{"trust_remote_code": True}} if {trust_remote_code} else {{}}
if not {trust_remote_code}:
    import statex_hf
model = AutoModelForCausalLM.from_pretrained({repo!r}, **kwargs).eval()
print(type(model).__module__, type(model).__name__)
with torch.no_grad():
    torch.save(model(torch.tensor({IDS})).logits, {str(out)!r})
"""


@pytest.fixture(scope="module")
def pushed_gla(hub, sources, tmp_path_factory):
    """`statex-hf convert gla <Hub repo id> ... --push-to-hub` in its own process: the repo the other tests read.

    The source is itself on the Hub, next to files a conversion must not download.
    """
    source_files = {p.name: p.read_bytes() for p in (sources / "gla").iterdir()}
    source_files["README.md"] = b"---\nlicense: apache-2.0\n---\n# GLA source\n"
    unneeded = {"consolidated.safetensors": source_files["model.safetensors"], "pytorch_model.bin": b"not needed"}
    hub.server.seed("tester/gla-source", {**source_files, **unneeded})
    out, home = tmp_path_factory.mktemp("converted") / "statex-gla", hub.root / "convert-home"
    args = ["-m", "statex_hf.cli", "convert", "gla", "tester/gla-source", str(out), "--layers", "0,2", "--quiet"]
    result = ok(hub.run([*args, "--push-to-hub", "tester/statex-gla"], home=home))
    assert "pushed: " in result.stdout
    downloaded = {p.name for p in home.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= downloaded
    assert not downloaded & set(unneeded)  # only the files a conversion needs
    return "tester/statex-gla", out


def test_convert_push_then_fresh_process_loads_identical_logits(hub, pushed_gla, tmp_path):
    repo, out = pushed_gla
    commits = hub.server.commits(repo)
    assert len(commits) == 2  # the repo's initial commit, then the whole upload as one commit
    files = hub.server.files(repo)
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "modeling_statex_gla.py"} <= set(files)
    assert not hub.server.state.repo("models", repo).private
    assert b"license: apache-2.0" in files["README.md"]  # the source card's license
    ok(hub.python(load_and_save_logits(repo, tmp_path / "logits.pt")))
    assert torch.equal(torch.load(tmp_path / "logits.pt"), local_logits(out))


def test_private_repo_round_trip_and_invisible_without_the_token(hub, sources, tmp_path):
    """A state-spaces Mamba2 checkpoint, expanded, pushed private; only the token holder can read it."""
    out, repo = tmp_path / "statex-m2", "tester/statex-mamba2-private"
    args = ["-m", "statex_hf.cli", "convert", "mamba2", str(sources / "mamba-ssm"), str(out), "--every", "2"]
    args += ["--tokenizer", str(sources / "tokenizer"), "--quiet", "--push-to-hub", repo, "--private"]
    ok(hub.run(args))
    assert hub.server.state.repo("models", repo).private
    anonymous = hub.python(
        f"""
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import RepositoryNotFoundError
        for attempt in (lambda: HfApi().model_info({repo!r}), lambda: hf_hub_download({repo!r}, "config.json")):
            try:
                attempt()
            except RepositoryNotFoundError:
                print("not found")
        """,
        with_token=False,
    )
    assert ok(anonymous).stdout.split() == ["not", "found", "not", "found"]
    ok(hub.python(load_and_save_logits(repo, tmp_path / "logits.pt")))
    assert torch.equal(torch.load(tmp_path / "logits.pt"), local_logits(out))


def test_remote_code_from_the_hub_in_a_process_that_cannot_import_statex_hf(hub, pushed_gla, tmp_path):
    repo, out = pushed_gla
    code = load_and_save_logits(repo, tmp_path / "logits.pt", trust_remote_code=True, preamble=BLOCK_STATEX_HF)
    result = ok(hub.python(code))
    assert result.stdout.startswith("transformers_modules.") and "StateXGLAForCausalLM" in result.stdout
    assert torch.equal(torch.load(tmp_path / "logits.pt"), local_logits(out))


def _two_conversions(sources: Path, root: Path) -> tuple[Path, Path]:
    sharded = convert("gla", str(sources / "gla"), root / "a", max_shard_size=100_000, seed=1, progress=False).output
    single = convert("gla", str(sources / "gla"), root / "b", seed=2, progress=False).output
    assert (sharded / "model.safetensors.index.json").is_file() and not (
        single / "model.safetensors.index.json"
    ).exists()
    return sharded, single


def test_pushing_again_to_an_existing_repo_replaces_it_in_one_commit(hub, sources, tmp_path):
    sharded, single = _two_conversions(sources, tmp_path)
    repo = "tester/pushed-twice"
    code = f"""
    import json
    from huggingface_hub import HfApi
    from statex_hf.hub import push_folder
    shas = []
    for folder in ({str(sharded)!r}, {str(single)!r}, {str(single)!r}):
        push_folder(folder, {repo!r})
        shas.append(HfApi().model_info({repo!r}).sha)
    print(json.dumps(shas))
    """
    shas = json.loads(ok(hub.python(code)).stdout.strip().splitlines()[-1])
    assert shas[0] != shas[1] == shas[2]  # an unchanged folder makes no commit
    assert len(hub.server.commits(repo)) == 3  # initial, first push, second push: one commit each
    remote = hub.server.files(repo)
    local = {p.name: p.read_bytes() for p in single.iterdir()}
    assert remote.keys() - {".gitattributes"} == local.keys()  # no stale shard or index from the first push
    assert all(remote[name] == content for name, content in local.items())


def test_a_failed_upload_leaves_no_partial_commit(hub, sources, tmp_path):
    first, second = _two_conversions(sources, tmp_path)
    repo = "tester/interrupted"
    hub.server.seed(repo, {p.name: p.read_bytes() for p in first.iterdir()})
    before = hub.server.commits(repo)
    # The CLI's push dies uploading an LFS object: one line, exit 1, no commit sent.
    hub.server.state.fail_next("lfs_put")
    cli = ["-m", "statex_hf.cli", "convert", "gla", str(sources / "gla"), str(tmp_path / "o"), "--quiet"]
    result = hub.run([*cli, "--push-to-hub", repo])
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"statex-hf convert gla: push to {repo} failed:")
    assert hub.server.commits(repo) == before
    # Next the commit itself is refused after every LFS object arrived: still nothing; then a retry lands.
    hub.server.state.fail_next("commit")
    code = f"""
    from statex_hf.hub import HubPushError, push_folder
    try:
        push_folder({str(second)!r}, {repo!r})
    except HubPushError as err:
        print("refused:", err)
    else:
        raise SystemExit("the injected failure did not happen")
    """
    assert "injected failure: commit refused" in ok(hub.python(code)).stdout
    assert hub.server.commits(repo) == before
    assert hub.server.files(repo) == {p.name: p.read_bytes() for p in first.iterdir()}
    ok(hub.python(f"from statex_hf.hub import push_folder; push_folder({str(second)!r}, {repo!r})"))
    assert len(hub.server.commits(repo)) == len(before) + 1


def test_model_push_to_hub_on_the_class_is_one_commit_with_the_code(hub, pushed_gla, tmp_path):
    """``push_to_hub`` and ``save_pretrained(push_to_hub=True)`` of a loaded model: repos that stand alone."""
    _, out = pushed_gla
    saved = str(tmp_path / "saved")
    pushes = {
        "tester/pushed-by-model": "model.push_to_hub(repo)",
        "tester/saved-and-pushed": f"model.save_pretrained({saved!r}, push_to_hub=True, repo_id=repo)",
    }
    for repo, push in pushes.items():
        code = f"""
        import statex_hf, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(out)!r})
        repo = {repo!r}
        {push}
        again = AutoModelForCausalLM.from_pretrained(repo)
        ids = torch.tensor({IDS})
        assert torch.equal(model(ids).logits, again(ids).logits)
        """
        ok(hub.python(code))
        assert len(hub.server.commits(repo)) == 2
        files = set(hub.server.files(repo))
        assert {"model.safetensors", "config.json", "configuration_statex_gla.py", "modeling_statex_gla.py"} <= files
        assert {p.name for p in out.iterdir() if p.suffix == ".py"} <= files  # the whole bundle
        logits = tmp_path / f"{repo.split('/')[1]}.pt"
        ok(hub.python(load_and_save_logits(repo, logits, trust_remote_code=True, preamble=BLOCK_STATEX_HF)))
        assert torch.equal(torch.load(logits), local_logits(out))


def test_convert_from_a_hub_repo_in_mistrals_layout_downloads_params_and_consolidated(hub, tmp_path):
    """A repo holding only mistral's files (params.json, consolidated.safetensors, tokenizer.model.v3)."""
    source = tmp_path / "mistral"
    reference = write_mistral_mamba2(source, num_layers=1, dim=256)
    write_tokenizer(tmp_path / "tokenizer")
    hub.server.seed("tester/codestral-tiny", {p.name: p.read_bytes() for p in source.iterdir()})
    out, home = tmp_path / "out", tmp_path / "home"
    args = ["-m", "statex_hf.cli", "convert", "mamba2", "tester/codestral-tiny", str(out), "--layers", ""]
    ok(hub.run([*args, "--tokenizer", str(tmp_path / "tokenizer"), "--quiet"], home=home))
    downloaded = {p.name for p in home.rglob("*") if p.is_file() and p.parent.name != "refs"}
    assert {"params.json", "consolidated.safetensors"} <= downloaded and "tokenizer.model.v3" not in downloaded
    with torch.no_grad():
        assert (local_logits(out) - reference(torch.tensor(IDS)).logits).abs().max() <= 1e-4


def test_wrong_token_is_refused(hub, tmp_path):
    env_code = "from huggingface_hub import HfApi; HfApi(token='hf_wrong').create_repo('tester/nope')"
    result = hub.python(env_code)
    assert result.returncode != 0 and "401" in result.stderr
    assert hub.server.state.repo("models", "tester/nope") is None
    assert VOCAB  # the shared tiny vocabulary is what the pushed models use
