from __future__ import annotations

from pathlib import Path

from flowflexd.config import Folder
from flowflexd.preflight import Findings, check_folder, mount_of


def mounts(tmp_path: Path, fstype: str) -> str:
    table = tmp_path / "mounts"
    table.write_text(
        f"/dev/vda / ext4 rw 0 0\n//server/scans {tmp_path / 'share'} {fstype} rw 0 0\n"
    )
    return str(table)


def folder(path: Path, *, poll: bool) -> Folder:
    return Folder(path=path, done=path / "done", failed=path / "failed", rules=(), poll=poll)


def test_a_network_inbox_without_polling_is_warned(tmp_path: Path) -> None:
    (tmp_path / "share" / "inbox").mkdir(parents=True)
    findings = Findings()

    check_folder(
        folder(tmp_path / "share" / "inbox", poll=False), findings, mounts(tmp_path, "cifs")
    )

    [warning] = findings.warnings
    assert "network filesystem (cifs" in warning
    assert "poll: true" in warning


def test_a_network_inbox_with_polling_is_fine(tmp_path: Path) -> None:
    (tmp_path / "share" / "inbox").mkdir(parents=True)
    findings = Findings()

    check_folder(
        folder(tmp_path / "share" / "inbox", poll=True), findings, mounts(tmp_path, "nfs4")
    )

    assert findings.warnings == []


def test_the_longest_mount_point_wins(tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()

    assert mount_of(tmp_path / "share" / "not-yet", mounts(tmp_path, "smb3")) == (
        str(tmp_path / "share"),
        "smb3",
    )
