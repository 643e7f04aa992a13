"""Nothing of the user's is ever lost: every command writes only where the output rule allows (statex_hf.outputs).

Each refusal is checked against real folders: exit code 2, one line on stderr naming the problem
and the fix, and every file that was there before still there, byte for byte.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_checks import assert_refused, run_cli, snapshot, unwritable_place
from source_checkpoints import write_fla_gla


@pytest.fixture
def unwritable_folder(tmp_path):
    yield from unwritable_place(tmp_path)


@pytest.fixture(scope="module")
def gla_source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sources") / "fla-gla"
    write_fla_gla(folder)
    return folder


@pytest.fixture
def workspace(tmp_path, gla_source):
    """A user's folder: src/ with the source and two other models, project/ with their own files."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(gla_source, src / "fla-gla")
    for other in ("other-a", "other-b"):
        (src / other).mkdir()
        (src / other / "model.safetensors").write_bytes(os.urandom(64))
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "train.py").write_text("print('my experiment')\n")
    return tmp_path


def convert(capsys, source, output, *extra) -> tuple[int, list[str]]:
    return run_cli(capsys, "convert", "gla", source, output, "--quiet", *extra)


# ---- convert --overwrite never deletes what a save did not write --------------------------------


def test_overwrite_refuses_the_folder_that_holds_the_source(workspace, capsys):
    before = snapshot(workspace)
    code, err = convert(capsys, workspace / "src" / "fla-gla", workspace / "src", "--overwrite")
    assert_refused(code, err, "contains the source checkpoint", "choose a new folder")
    assert snapshot(workspace) == before


def test_overwrite_refuses_the_current_folder(workspace, capsys, monkeypatch):
    monkeypatch.chdir(workspace / "project")
    before = snapshot(workspace)
    code, err = convert(capsys, "../src/fla-gla", ".", "--overwrite")
    assert_refused(code, err, "is the current folder", "choose a new folder")
    assert snapshot(workspace) == before


def test_overwrite_refuses_a_folder_that_holds_the_current_folder(workspace, capsys, monkeypatch):
    monkeypatch.chdir(workspace / "project")
    before = snapshot(workspace)
    code, err = convert(capsys, workspace / "src" / "fla-gla", workspace, "--overwrite")
    assert_refused(code, err, "contains the current folder")
    assert snapshot(workspace) == before


def test_overwrite_refuses_the_source_itself(workspace, capsys):
    before = snapshot(workspace)
    source = workspace / "src" / "fla-gla"
    code, err = convert(capsys, source, source, "--overwrite")
    assert_refused(code, err, "is the source checkpoint itself")
    assert snapshot(workspace) == before


def test_overwrite_refuses_a_folder_of_the_users_files(workspace, capsys):
    before = snapshot(workspace)
    code, err = convert(capsys, workspace / "src" / "fla-gla", workspace / "project", "--overwrite")
    assert_refused(code, err, "is not a saved StateX model", "train.py", "choose another folder")
    assert snapshot(workspace) == before


def test_overwrite_refuses_a_model_that_is_not_a_statex_save(workspace, capsys):
    """Another (source) checkpoint is a saved model, but not one convert wrote: it is kept."""
    other = workspace / "other-source"
    write_fla_gla(other)
    capsys.readouterr()  # the save's progress bar
    before = snapshot(workspace)
    code, err = convert(capsys, workspace / "src" / "fla-gla", other, "--overwrite")
    assert_refused(code, err, "model_type 'gla', not a StateX model")
    assert snapshot(workspace) == before


def test_existing_folder_of_user_files_is_not_offered_overwrite(workspace, capsys):
    before = snapshot(workspace)
    code, err = convert(capsys, workspace / "src" / "fla-gla", workspace / "project")
    assert_refused(code, err, "already exists and is not a saved StateX model")
    assert "pass --overwrite" not in err[0]
    assert snapshot(workspace) == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_file_destination_is_refused_without_suggesting_overwrite(workspace, capsys, overwrite):
    target = workspace / "project" / "notes.txt"
    target.write_text("keep me\n")
    before = snapshot(workspace)
    code, err = convert(capsys, workspace / "src" / "fla-gla", target, *overwrite)
    assert_refused(code, err, "is a file, not a folder", "choose a folder path")
    assert "pass --overwrite" not in err[0]
    assert snapshot(workspace) == before


def test_a_destination_under_a_file_is_one_line(workspace, capsys):
    before = snapshot(workspace)
    code, err = convert(capsys, workspace / "src" / "fla-gla", workspace / "project" / "train.py" / "out")
    assert_refused(code, err, "train.py is a file, not a folder", "choose another path")
    assert snapshot(workspace) == before


def test_an_unwritable_destination_is_one_line_before_any_work(workspace, unwritable_folder, capsys):
    before = snapshot(workspace)
    code, err = convert(capsys, workspace / "src" / "fla-gla", unwritable_folder / "statex-out")
    assert_refused(code, err, f"no write access to {unwritable_folder}", "choose a folder you can write to")
    assert "tmp" not in err[0]
    assert snapshot(workspace) == before


def test_overwrite_replaces_an_earlier_conversion(workspace, capsys):
    source, out = workspace / "src" / "fla-gla", workspace / "out"
    assert convert(capsys, source, out, "--layers", "0")[0] == 0
    (out / "checkpoint-1").mkdir()  # also a folder posttrain wrote into it
    (out / "checkpoint-1" / "trainer_state.json").write_text("{}")
    assert convert(capsys, source, out, "--layers", "1", "--overwrite")[0] == 0
    assert '"statex_layers": [\n    1\n  ]' in (out / "config.json").read_text()
    assert not (out / "checkpoint-1").exists()
    assert sorted(p.name for p in workspace.iterdir()) == ["out", "project", "src"]  # no temporary folder left


# ---- SIGTERM cleans up as Ctrl-C does ------------------------------------------------------------

# The conversion of a tiny model takes milliseconds, so the signal is sent from inside it (as the first
# tensor is written), which is where a real `kill` lands in a long conversion.
SIGTERM_DURING_CONVERT = """
import os, signal, sys
from statex_hf.conversion import writer
add = writer.ShardWriter.add
def add_then_terminate(self, name, tensor):
    os.kill(os.getpid(), signal.SIGTERM)
    return add(self, name, tensor)
writer.ShardWriter.add = add_then_terminate
from statex_hf.cli import main
sys.exit(main(["convert", "gla", sys.argv[1], sys.argv[2], "--quiet"]))
"""


def test_sigterm_during_convert_leaves_no_temporary_folder(workspace):
    out = workspace / "out"
    result = subprocess.run(
        [sys.executable, "-c", SIGTERM_DURING_CONVERT, str(workspace / "src" / "fla-gla"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 128 + 15, (result.returncode, result.stderr[-2000:])
    assert result.stderr.strip().splitlines() == ["statex-hf convert gla: terminated (SIGTERM); nothing written"]
    assert sorted(p.name for p in workspace.iterdir()) == ["project", "src"]
