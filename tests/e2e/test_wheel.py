"""The built wheel, installed with pipx as the README says, runs the quick start."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, LoggedProcess, child_env, files_in, readme_block, wait_until

pytestmark = pytest.mark.slow


def built_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the tracked files, so the checkout stays clean."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    source = tmp_path / "source"
    for raw in filter(None, listed):
        name = os.fsdecode(raw)
        target, original = source / name, ROOT / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if original.is_symlink():
            target.symlink_to(os.readlink(original))
        elif original.exists():
            shutil.copy2(original, target)
    dist = tmp_path / "work" / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), "."],
        cwd=source,
        check=True,
        capture_output=True,
    )
    [wheel] = dist.glob("flowflexd-*.whl")
    return wheel


def test_the_wheel_carries_what_the_readme_needs_and_runs_the_quick_start(
    tmp_path: Path,
) -> None:
    wheel = built_wheel(tmp_path)
    work = wheel.parent.parent
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "pipx"  # pipx from the test extra, by the name the README uses
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m pipx "$@"\n')
    shim.chmod(0o755)
    env = child_env(
        PIPX_HOME=str(tmp_path / "pipx"),
        PIPX_BIN_DIR=str(bin_dir),
        PIPX_MAN_DIR=str(tmp_path / "man"),
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    )
    command = readme_block("quickstart:wheel").strip()
    assert wheel.name in command

    proc = LoggedProcess(["bash", "-euc", command], env=env, cwd=work)
    try:
        proc.wait_for_log("flowflexd ready", timeout=120)
        subprocess.run(["bash", "-euc", readme_block("quickstart:drop")], cwd=work, check=True)
        wait_until(
            lambda: (
                files_in(work / "demo" / "done") == {"INV-1001.pdf", "INV-1001.json", "letter.pdf"}
            ),
            timeout=30,
        )
        proc.proc.send_signal(signal.SIGINT)
        assert proc.wait_exit() == 0
    finally:
        proc.stop()

    assert (work / "config.example.yaml").read_bytes() == (
        ROOT / "config.example.yaml"
    ).read_bytes()
    for which, shipped in (("unit", "flowflexd.service"), ("sysusers", "flowflexd.sysusers.conf")):
        printed = subprocess.run(
            [str(bin_dir / "flowflexd"), "example", which],
            capture_output=True,
            text=True,
            check=True,
        )
        assert printed.stdout == (ROOT / "systemd" / shipped).read_text()
