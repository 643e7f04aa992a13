"""What every user-error test checks: one line, exit code 2, and nothing under the user's folder changed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from statex_hf.cli import main


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with a hash of its bytes: what 'nothing changed' compares."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        found[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return found


def run_cli(capsys, *argv) -> tuple[int, list[str]]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()


def assert_refused(code: int, err: list[str], *phrases: str) -> None:
    assert code == 2, err
    assert len(err) == 1, err
    for phrase in phrases:
        assert phrase in err[0], err[0]


def unwritable_place(tmp_path: Path):
    """Yields a folder this process cannot create anything in, also as root (sysfs refuses new entries to everyone)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if not Path("/sys/kernel").is_dir():
        pytest.skip("running as root without sysfs: no folder here refuses writes to root")
    yield Path("/sys/kernel")
